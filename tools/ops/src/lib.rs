//! `dsr-ops`, the operator's command line. It works against a deployed stack by its name
//! (`--stack`: its outputs and parameters say where everything is), the local stack
//! (`--local-stack`), or resources named one by one (the functions' environment variables),
//! with the same use cases the functions run: nothing here writes around the domain's rules.

use anyhow::{anyhow, bail, Context, Result};
use dsr_adapters::config::{vars, Env};
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_adapters::sqs::SqsOperatorDecisions;
use dsr_adapters::wiring::{self, CloudRequests};
use dsr_domain::erasure::{
    ConfirmationOutcome, ObligationStore, OperatorAction, OperatorDecision, OperatorDecisions,
};
use dsr_domain::hops::Hop;
use dsr_domain::requests::reconcile::ReconcileSettings;
use dsr_domain::{RequestId, RequestKind, RequestState, RequestStore, ServiceName, SubjectHasher};
use serde_json::{json, Value};
use std::io::Write;

#[derive(Debug, clap::Parser)]
#[command(
    name = "dsr-ops",
    about = "Operate the GDPR data subject rights service"
)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// Operate on the deployed CloudFormation stack of this name (SAM or CDK): its outputs name
    /// the tables and queues, its SecretsPath the subject hash key in Parameter Store, and a
    /// dead-letter queue can be named by its logical id (`redrive OutboundDeadLetterQueue`).
    #[arg(long, env = "DSR_STACK", conflicts_with = "local_stack")]
    pub stack: Option<String>,
    /// Operate on the local stack of this name (`make run` uses `dsr-local`). Without it or
    /// `--stack`, the resources come from REQUESTS_TABLE, HOPS_TABLE,
    /// ACCESS_REQUESTS_QUEUE_URL, ERASURE_REQUESTS_QUEUE_URL (and, for `extend`, OUTBOUND_QUEUE_URL
    /// and COMMANDS_EXCHANGE) and the subject hash key, read from
    /// Parameter Store by SUBJECT_HASH_KEY_PARAMETER (`<SecretsPath>/subject-hash-key`).
    #[arg(long, env = "DSR_LOCAL_STACK")]
    pub local_stack: Option<String>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Requests per type and state now, and whether every hop's count agrees.
    Stats,
    /// The hops of the last hours compared: per window and hop what was counted, and every
    /// request missing at a hop it should have taken by now (exit status 1 if any).
    Sync {
        /// Hourly windows to compare, the current one included.
        #[arg(long)]
        hours: Option<u32>,
    },
    /// One request: its timeline from the audit trail, and its obligations with receipts.
    Show { id: String },
    /// Open requests that are stuck, at risk of missing their deadline, or past it.
    Stuck {
        /// Days before the deadline that count as "at risk".
        #[arg(long, default_value_t = 7)]
        warning_days: u32,
    },
    /// Sends requests' work messages again (received, or a worker's lease ran out).
    Retry {
        /// The requests, by id.
        ids: Vec<String>,
        /// Every request the reconciliation finds stuck, too.
        #[arg(long)]
        stuck: bool,
    },
    /// Moves every message of a dead-letter queue back to the queue it came from.
    Redrive {
        /// The dead-letter queue: its URL, its name, or (local) its logical id in template.yaml.
        queue: String,
    },
    /// Extends an open request's deadline once, by 1 or 2 months (GDPR Art. 12(3)), before its
    /// first deadline; the subject is told (a `deadline_extended` notice for the email
    /// service). Run the same command again if telling them failed.
    Extend {
        id: String,
        #[arg(long, default_value_t = 2)]
        months: u32,
        /// Why; the subject is told it and sees it on their request.
        #[arg(long)]
        reason: String,
    },
    /// The proof of erasure: every obligation, its receipt and timestamps, as JSON.
    Proof { id: String },
    /// Submits a request on a verified subject's behalf: support took it by e-mail, phone,
    /// post or in person. The same rules as the subject's own (one open request per type, the
    /// limit on access requests); the channel, you and the reference of how the subject was
    /// verified are kept on the request and in its audit trail, and the subject sees it in
    /// their own list. Running it again returns the same request.
    Submit {
        /// The subject's user id.
        #[arg(long)]
        subject: String,
        #[arg(long = "type", value_enum)]
        kind: Kind,
        /// How the subject asked: email, phone, post or in_person.
        #[arg(long)]
        channel: String,
        /// How the subject was verified (a ticket, a case number).
        #[arg(long)]
        reference: String,
        #[command(flatten)]
        operator: OperatorName,
    },
    /// Sends an obligation's command again (a new attempt under the same idempotency key, with
    /// its own watchdog check): for a holder that was escalated and may answer now. The confirm
    /// function sends it; this waits until the obligation shows the new attempt.
    Resend {
        id: String,
        /// The holder (its registry name).
        service: String,
        #[command(flatten)]
        operator: OperatorName,
    },
    /// Records a holder's answer obtained by other means (its support, a deletion done by
    /// hand), with the evidence: the erasure moves on as if the holder had answered, and the
    /// proof and the certificate mark it as settled by hand.
    Resolve {
        id: String,
        /// The holder (its registry name).
        service: String,
        #[arg(long, value_enum)]
        outcome: Resolution,
        /// What shows it: a ticket, a reference, what was done.
        #[arg(long)]
        evidence: String,
        #[command(flatten)]
        operator: OperatorName,
    },
}

/// Who acts: kept in the audit trail and, for a resolution, in the obligation's receipt.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OperatorName {
    /// Your name as the audit trail keeps it (letters, digits, @ . _ : + -); default: $USER.
    #[arg(long = "as", env = "DSR_OPERATOR")]
    pub name: Option<String>,
}

impl OperatorName {
    fn resolve(&self) -> Result<String> {
        self.name
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| anyhow!("say who you are: --as <name> (or DSR_OPERATOR)"))
    }
}

/// The two kinds of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Access and portability (Art. 15 and 20): the subject's data.
    Access,
    /// Erasure (Art. 17).
    Erasure,
}

/// The holder's answer, as an operator obtained it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resolution {
    /// The holder erased the subject's data.
    Erased,
    /// The holder held nothing about the subject.
    NotFound,
}

/// How long `resend` and `resolve` wait to see the confirm function act.
const ACTION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// The local stack's parameter value (`infra/local`): not a secret anywhere else.
const LOCAL_SUBJECT_HASH_KEY: &str = "local-subject-hash-key-not-secret";
/// The template's default `RabbitMqNamespace`, which the local stack keeps unless told.
const LOCAL_RABBITMQ_NAMESPACE: &str = "gdpr";

pub struct Ops {
    requests: CloudRequests,
    /// Where the subject is told of an extension: the outbound queue, notices to the commands
    /// exchange. `None` when the environment names no outbound queue.
    outbox: Option<dsr_adapters::sqs::SqsOutbox>,
    reconcile: ReconcileSettings,
    store: DynamoRequestStore,
    sqs: aws_sdk_sqs::Client,
    /// Where operators' decisions on obligations go (the confirm function's queue).
    confirmations: Option<String>,
    local_stack: Option<String>,
    deployed: Option<DeployedStack>,
}

/// A deployed stack as CloudFormation describes it.
#[derive(Debug, Clone)]
pub struct DeployedStack {
    name: String,
    outputs: std::collections::BTreeMap<String, String>,
    parameters: std::collections::BTreeMap<String, String>,
    cloudformation: aws_sdk_cloudformation::Client,
}

impl DeployedStack {
    pub async fn describe(aws: &aws_config::SdkConfig, name: &str) -> Result<Self> {
        let cloudformation = aws_sdk_cloudformation::Client::new(aws);
        let out = cloudformation
            .describe_stacks()
            .stack_name(name)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "no stack {name}: {}",
                    aws_sdk_cloudformation::error::DisplayErrorContext(e)
                )
            })?;
        let stack = out
            .stacks()
            .first()
            .ok_or_else(|| anyhow!("no stack {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            outputs: stack
                .outputs()
                .iter()
                .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
                .collect(),
            parameters: stack
                .parameters()
                .iter()
                .filter_map(|p| {
                    Some((
                        p.parameter_key()?.to_owned(),
                        p.parameter_value()?.to_owned(),
                    ))
                })
                .collect(),
            cloudformation,
        })
    }

    fn output(&self, key: &str) -> Result<String> {
        self.outputs.get(key).cloned().ok_or_else(|| {
            anyhow!(
                "stack {} has no output {key}: is it this service's stack, deployed from this version?",
                self.name
            )
        })
    }

    /// What the functions of this stack are configured with, as far as the operator's commands
    /// need it; the subject hash key stays a reference into Parameter Store.
    fn env(&self) -> Result<Env> {
        let mut pairs = vec![
            (vars::REQUESTS_TABLE, self.output("RequestsTableName")?),
            (vars::HOPS_TABLE, self.output("HopsTableName")?),
            (
                vars::ACCESS_REQUESTS_QUEUE_URL,
                self.output("AccessRequestsQueueUrl")?,
            ),
            (
                vars::ERASURE_REQUESTS_QUEUE_URL,
                self.output("ErasureRequestsQueueUrl")?,
            ),
            (
                "SUBJECT_HASH_KEY_PARAMETER",
                self.output("SubjectHashKeyParameter")?,
            ),
            (vars::OUTBOUND_QUEUE_URL, self.output("OutboundQueueUrl")?),
        ];
        if let Some(url) = self.outputs.get("ConfirmationsQueueUrl") {
            pairs.push((vars::CONFIRMATIONS_QUEUE_URL, url.clone()));
        }
        if let Some(namespace) = self.parameters.get("RabbitMqNamespace") {
            pairs.push((vars::COMMANDS_EXCHANGE, format!("{namespace}.commands")));
        }
        // The reconciliation allows what the deployed functions allow.
        for (variable, parameter) in [
            (vars::DEADLINE_WARNING_DAYS, "DeadlineWarningDays"),
            (vars::ERASURE_GRACE_SECONDS, "ErasureGraceSeconds"),
        ] {
            if let Some(value) = self.parameters.get(parameter) {
                pairs.push((variable, value.clone()));
            }
        }
        Ok(Env::from_pairs(pairs))
    }

    /// A resource of the stack by its logical id (for a queue: its URL).
    async fn resource(&self, logical_id: &str) -> Option<String> {
        self.cloudformation
            .describe_stack_resource()
            .stack_name(&self.name)
            .logical_resource_id(logical_id)
            .send()
            .await
            .ok()?
            .stack_resource_detail?
            .physical_resource_id
    }
}

impl Ops {
    pub async fn connect(aws: &aws_config::SdkConfig, target: &Target, env: &Env) -> Result<Self> {
        let sqs = aws_sdk_sqs::Client::new(aws);
        let deployed = match &target.stack {
            Some(name) => Some(DeployedStack::describe(aws, name).await?),
            None => None,
        };
        let env = match &deployed {
            // What the operator sets in the environment still wins over the stack's own.
            Some(stack) => {
                dsr_adapters::config::with_parameters(aws, stack.env()?.overlaid_with(env)).await?
            }
            None => env.clone(),
        };
        // The reconciliation's allowances are the operator's to set, local stack or not.
        let reconcile = wiring::reconcile_settings(&env)?;
        let env = match &target.local_stack {
            Some(stack) => {
                let url = |logical: &str| {
                    let sqs = sqs.clone();
                    let name = format!("{stack}-{logical}");
                    async move {
                        sqs.get_queue_url()
                            .queue_name(&name)
                            .send()
                            .await
                            .with_context(|| {
                                format!("no queue {name}: is the local stack provisioned?")
                            })
                            .map(|out| out.queue_url.unwrap_or_default())
                    }
                };
                Env::from_pairs([
                    (vars::REQUESTS_TABLE, format!("{stack}-RequestsTable")),
                    (vars::HOPS_TABLE, format!("{stack}-HopsTable")),
                    (
                        vars::ACCESS_REQUESTS_QUEUE_URL,
                        url("AccessRequestsQueue").await?,
                    ),
                    (
                        vars::ERASURE_REQUESTS_QUEUE_URL,
                        url("ErasureRequestsQueue").await?,
                    ),
                    (
                        vars::SUBJECT_HASH_KEY,
                        env.optional(vars::SUBJECT_HASH_KEY)
                            .unwrap_or_else(|| LOCAL_SUBJECT_HASH_KEY.to_owned()),
                    ),
                    (vars::OUTBOUND_QUEUE_URL, url("OutboundQueue").await?),
                    (
                        vars::CONFIRMATIONS_QUEUE_URL,
                        url("ConfirmationsQueue").await?,
                    ),
                    (
                        vars::COMMANDS_EXCHANGE,
                        match env.optional(vars::COMMANDS_EXCHANGE) {
                            Some(exchange) => exchange,
                            None => format!(
                                "{}.commands",
                                env.optional(vars::RABBITMQ_NAMESPACE)
                                    .unwrap_or_else(|| LOCAL_RABBITMQ_NAMESPACE.to_owned())
                            ),
                        },
                    ),
                ])
            }
            None => env.clone(),
        };
        let outbox = match (
            env.optional(vars::OUTBOUND_QUEUE_URL),
            env.optional(vars::COMMANDS_EXCHANGE),
        ) {
            (Some(queue), Some(exchange)) => Some(dsr_adapters::sqs::SqsOutbox::new(
                sqs.clone(),
                queue,
                exchange,
            )),
            _ => None,
        };
        Ok(Self {
            requests: wiring::requests(aws, &env, "ops")?,
            outbox,
            reconcile,
            store: wiring::request_store(aws, &env, "ops")?,
            confirmations: env.optional(vars::CONFIRMATIONS_QUEUE_URL),
            sqs,
            local_stack: target.local_stack.clone(),
            deployed,
        })
    }

    /// Runs one command: results on `out`, progress on `progress`.
    pub async fn run(
        &self,
        command: &Command,
        out: &mut dyn Write,
        progress: &mut dyn Write,
    ) -> Result<()> {
        match command {
            Command::Stats => self.stats(out).await,
            Command::Sync { hours } => self.sync(*hours, out).await,
            Command::Show { id } => self.show(parse(id)?, out).await,
            Command::Stuck { warning_days } => self.stuck(*warning_days, out).await,
            Command::Retry { ids, stuck } => self.retry(ids, *stuck, out).await,
            Command::Redrive { queue } => self.redrive(queue, out, progress).await,
            Command::Extend { id, months, reason } => {
                let outbox = self.outbox.as_ref().ok_or_else(|| {
                    anyhow!(
                        "extend tells the subject through the outbound queue: set {} and {} (or use --stack)",
                        vars::OUTBOUND_QUEUE_URL,
                        vars::COMMANDS_EXCHANGE
                    )
                })?;
                let request = self
                    .requests
                    .extend_deadline(parse(id)?, *months, reason, outbox)
                    .await?;
                writeln!(
                    out,
                    "{}: deadline extended by {months} month(s) to {}; the subject is told",
                    request.id,
                    request.due_at.to_rfc3339()
                )?;
                Ok(())
            }
            Command::Proof { id } => {
                let proof = self.proof(parse(id)?).await?;
                writeln!(out, "{}", serde_json::to_string_pretty(&proof)?)?;
                Ok(())
            }
            Command::Submit {
                subject,
                kind,
                channel,
                reference,
                operator,
            } => {
                self.submit(subject, *kind, channel, reference, operator, out)
                    .await
            }
            Command::Resend {
                id,
                service,
                operator,
            } => {
                self.act(id, service, OperatorDecision::Resend, operator, None, out)
                    .await
            }
            Command::Resolve {
                id,
                service,
                outcome,
                evidence,
                operator,
            } => {
                let outcome = match outcome {
                    Resolution::Erased => ConfirmationOutcome::Erased,
                    Resolution::NotFound => ConfirmationOutcome::NotFound,
                };
                self.act(
                    id,
                    service,
                    OperatorDecision::Resolve,
                    operator,
                    Some((outcome, evidence.as_str())),
                    out,
                )
                .await
            }
        }
    }

    /// A request on the subject's behalf, as support took it.
    async fn submit(
        &self,
        subject: &str,
        kind: Kind,
        channel: &str,
        reference: &str,
        operator: &OperatorName,
        out: &mut dyn Write,
    ) -> Result<()> {
        let subject = dsr_domain::SubjectId::parse(subject).map_err(|e| anyhow!("{e}"))?;
        let channel: dsr_domain::Channel = channel.parse().map_err(|e: String| anyhow!(e))?;
        if matches!(
            channel,
            dsr_domain::Channel::Api | dsr_domain::Channel::System
        ) {
            bail!("support submits requests taken by email, phone, post or in_person");
        }
        let operator = operator.resolve()?;
        let via = dsr_domain::SubmittedVia::new(channel, &operator, Some(reference))
            .map_err(|e| anyhow!(e))?;
        let kind = match kind {
            Kind::Access => RequestKind::Access,
            Kind::Erasure => RequestKind::Erasure,
        };
        // The same command twice (a retry after a network error) is the same submission.
        let key = dsr_domain::IdempotencyKey::parse(&format!(
            "support:{}:{reference}:{}",
            channel.as_str(),
            kind.as_str()
        ))
        .map_err(|e| anyhow!(e))?;
        let submission = self
            .requests
            .submit_via(&subject, kind, Some(&key), Some(via))
            .await?;
        let request = submission.request();
        let what = match &submission {
            dsr_domain::Submission::Created(_) => "submitted",
            dsr_domain::Submission::Replayed(_) => "already submitted by this command",
            dsr_domain::Submission::AlreadyOpen(_) => {
                "not submitted: the subject already has an open request of this type"
            }
        };
        writeln!(
            out,
            "{} {} ({}): {what}; due {}",
            request.id,
            kind.as_str(),
            request.state.as_str(),
            request.due_at.format("%Y-%m-%d")
        )?;
        Ok(())
    }

    /// Hands an operator's decision to the confirm function (which holds the registry and the
    /// channels, and applies the domain's rules), then waits until the obligation shows it.
    async fn act(
        &self,
        id: &str,
        service: &str,
        decision: OperatorDecision,
        operator: &OperatorName,
        resolution: Option<(ConfirmationOutcome, &str)>,
        out: &mut dyn Write,
    ) -> Result<()> {
        let id = parse(id)?;
        let service = ServiceName::parse(service).map_err(|e| anyhow!("{e}"))?;
        let operator = operator.resolve()?;
        let queue = self.confirmations.as_ref().ok_or_else(|| {
            anyhow!(
                "resend and resolve go through the confirm function's queue: set {} (or use --stack)",
                vars::CONFIRMATIONS_QUEUE_URL
            )
        })?;
        let request = self.store.get(id).await?;
        let obligations = self.store.obligations(id).await?;
        let before =
            match dsr_domain::erasure::actionable(id, request, &service, decision, obligations) {
                Ok((_, obligation)) => obligation,
                Err(answered @ dsr_domain::erasure::NotActionable::Answered(..)) => {
                    writeln!(out, "{id} {answered}")?;
                    return Ok(());
                }
                Err(refused) => bail!("{refused}"),
            };
        let obligation = |obligations: Vec<dsr_domain::erasure::Obligation>| {
            obligations.into_iter().find(|o| o.service == service)
        };
        let mut action = OperatorAction::new(
            id,
            &service,
            decision,
            &operator,
            chrono::Utc::now(),
            &ulid::Ulid::new().to_string(),
        );
        if let Some((outcome, evidence)) = resolution {
            action = action.resolved(outcome, evidence);
        }
        action.check().map_err(|e| anyhow!(e))?;
        SqsOperatorDecisions::new(self.sqs.clone(), queue)
            .ask(&action)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let deadline = std::time::Instant::now() + ACTION_PATIENCE;
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let Some(now) = obligation(self.store.obligations(id).await?) else {
                continue;
            };
            if now.status.is_done() {
                let how = match decision {
                    OperatorDecision::Resolve => format!(", settled by hand by {operator}"),
                    OperatorDecision::Resend => format!(
                        " (command sent again: attempt {}, and answered at once)",
                        now.attempts
                    ),
                };
                writeln!(out, "{id} {service}: {}{how}", now.status.as_str())?;
                return Ok(());
            }
            if decision == OperatorDecision::Resend && now.attempts > before.attempts {
                writeln!(
                    out,
                    "{id} {service}: command sent again (attempt {}, same idempotency key); its answer is awaited",
                    now.attempts
                )?;
                return Ok(());
            }
        }
        bail!(
            "asked, but the confirm function did not act within {} s: is it running? (its dead-letter queue says why it refused)",
            ACTION_PATIENCE.as_secs()
        )
    }

    async fn stats(&self, out: &mut dyn Write) -> Result<()> {
        let tally = self.requests.tally().await?;
        let windows = self.requests.hop_windows(&self.reconcile).await?;
        write!(out, "{:<8}", "type")?;
        for state in RequestState::ALL {
            write!(
                out,
                " {:>w$}",
                state.as_str(),
                w = state.as_str().len().max(6)
            )?;
        }
        writeln!(out, " {:>6}  hops in sync", "total")?;
        for kind in RequestKind::ALL {
            write!(out, "{:<8}", kind.as_str())?;
            let mut total = 0;
            for state in RequestState::ALL {
                let n = tally.count(kind, state);
                total += n;
                write!(out, " {:>w$}", n, w = state.as_str().len().max(6))?;
            }
            let missing: usize = windows
                .iter()
                .filter(|w| w.kind == kind)
                .map(|w| w.missing.len())
                .sum();
            let sync = if missing == 0 {
                "yes".to_owned()
            } else {
                format!("NO ({missing} missing: dsr-ops sync)")
            };
            writeln!(out, " {total:>6}  {sync}")?;
        }
        Ok(())
    }

    /// The reconciliation of hops, as a table per kind, then every request missing a hop.
    async fn sync(&self, hours: Option<u32>, out: &mut dyn Write) -> Result<()> {
        let settings = ReconcileSettings {
            windows: hours.unwrap_or(self.reconcile.windows),
            ..self.reconcile
        };
        let windows = self.requests.hop_windows(&settings).await?;
        let mut missing = 0;
        for kind in RequestKind::ALL {
            let path = Hop::path(kind);
            write!(out, "{:<8} {:<14}", kind.as_str(), "window")?;
            for hop in path {
                write!(out, " {:>w$}", hop.as_str(), w = hop.as_str().len().max(5))?;
            }
            writeln!(out, "  missing")?;
            let mut total: Vec<usize> = vec![0; path.len()];
            let mut kind_missing = 0;
            for window in windows.iter().filter(|w| w.kind == kind) {
                if window.clicks.is_empty() && window.requests.is_empty() {
                    continue;
                }
                write!(out, "{:<8} {:<14}", "", window.hour.format("%Y-%m-%dT%H"))?;
                for (i, hop) in path.iter().enumerate() {
                    let n = window.count(*hop);
                    total[i] += n;
                    write!(out, " {:>w$}", n, w = hop.as_str().len().max(5))?;
                }
                writeln!(out, "  {}", window.missing.len())?;
                kind_missing += window.missing.len();
            }
            write!(out, "{:<8} {:<14}", "", "total")?;
            for (i, hop) in path.iter().enumerate() {
                write!(out, " {:>w$}", total[i], w = hop.as_str().len().max(5))?;
            }
            writeln!(out, "  {kind_missing}")?;
            missing += kind_missing;
        }
        for window in windows.iter().rev() {
            for m in &window.missing {
                writeln!(
                    out,
                    "MISSING  {:<8} {:<11} {}{}  late since {}",
                    window.kind.as_str(),
                    m.hop.as_str(),
                    m.request,
                    m.service
                        .as_ref()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default(),
                    m.due_at.to_rfc3339()
                )?;
            }
        }
        if missing > 0 {
            bail!("{missing} hop(s) missing: the requests above were lost on the way to them");
        }
        writeln!(out, "every hop in sync")?;
        Ok(())
    }

    async fn show(&self, id: RequestId, out: &mut dyn Write) -> Result<()> {
        let request = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| anyhow!("no request {id}"))?;
        let hash = self.subject_hasher().hash(&request.subject);
        writeln!(out, "request   {}", request.id)?;
        writeln!(out, "type      {}", request.kind)?;
        writeln!(out, "state     {}", request.state)?;
        writeln!(out, "subject   {hash} (keyed hash)")?;
        writeln!(out, "received  {}", request.received_at.to_rfc3339())?;
        writeln!(out, "due       {}", request.due_at.to_rfc3339())?;
        if let Some(e) = &request.deadline_extension {
            writeln!(
                out,
                "extended  by {} month(s) on {}: {}",
                e.months,
                e.extended_at.to_rfc3339(),
                e.reason
            )?;
        }
        writeln!(out, "attempts  {}", request.attempts)?;
        if let Some(error) = &request.last_error {
            writeln!(out, "error     {error}")?;
        }
        writeln!(out, "timeline:")?;
        for event in self.store.audit_trail(id).await? {
            writeln!(
                out,
                "  {}  {:<40} {}",
                event.at.to_rfc3339(),
                event.event,
                event.actor
            )?;
        }
        let mut obligations = self.store.obligations(id).await?;
        if !obligations.is_empty() {
            obligations.sort_by(|a, b| a.service.cmp(&b.service));
            writeln!(out, "obligations:")?;
            for o in obligations {
                writeln!(
                    out,
                    "  {:<20} {:<10} sends={} sent={} confirmed={}{} receipt={}",
                    o.service,
                    o.status.as_str(),
                    o.attempts,
                    o.sent_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into()),
                    o.confirmed_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into()),
                    if o.escalated_at.is_some() {
                        " ESCALATED"
                    } else {
                        ""
                    },
                    o.receipt.as_deref().unwrap_or("-"),
                )?;
            }
        }
        Ok(())
    }

    async fn stuck(&self, warning_days: u32, out: &mut dyn Write) -> Result<()> {
        let settings = ReconcileSettings {
            warning: chrono::Duration::days(i64::from(warning_days)),
            redrive: false,
            ..self.reconcile
        };
        let found = self.requests.reconcile(settings).await?;
        for id in &found.deadline_missed {
            writeln!(out, "{id}  deadline missed")?;
        }
        for id in &found.deadline_at_risk {
            writeln!(out, "{id}  deadline within {warning_days} days")?;
        }
        for (id, state) in &found.stuck {
            writeln!(out, "{id}  stuck in {state}")?;
        }
        if found.deadline_missed.is_empty()
            && found.deadline_at_risk.is_empty()
            && found.stuck.is_empty()
        {
            writeln!(out, "nothing stuck, nothing at risk")?;
        }
        Ok(())
    }

    async fn retry(&self, ids: &[String], stuck: bool, out: &mut dyn Write) -> Result<()> {
        let mut requests = ids.iter().map(|id| parse(id)).collect::<Result<Vec<_>>>()?;
        if stuck {
            let settings = ReconcileSettings {
                redrive: false,
                ..self.reconcile
            };
            let found = self.requests.reconcile(settings).await?;
            requests.extend(found.stuck.iter().map(|(id, _)| *id));
        }
        if requests.is_empty() {
            bail!("no request to retry: name them, or --stuck for every stuck one");
        }
        let bar = progress_bar(requests.len(), "retried");
        let mut failed = Vec::new();
        for id in requests {
            // One that cannot be retried (finished meanwhile, not stuck) does not stop the rest.
            match self.requests.retry(id).await {
                Ok(request) => bar.suspend(|| {
                    writeln!(
                        out,
                        "sent the work message of {} ({}, {}) again",
                        request.id, request.kind, request.state
                    )
                })?,
                Err(err) => failed.push(format!("{id}: {err}")),
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        if !failed.is_empty() {
            bail!("not retried:\n{}", failed.join("\n"));
        }
        Ok(())
    }

    async fn queue_url(&self, queue: &str) -> Result<String> {
        if queue.starts_with("http://") || queue.starts_with("https://") {
            return Ok(queue.to_owned());
        }
        if let Some(stack) = &self.deployed {
            if let Some(url) = stack.resource(queue).await {
                return Ok(url);
            }
        }
        let mut names = vec![queue.to_owned()];
        if let Some(stack) = &self.local_stack {
            names.insert(0, format!("{stack}-{queue}"));
        }
        for name in &names {
            if let Ok(out) = self.sqs.get_queue_url().queue_name(name).send().await {
                return Ok(out.queue_url.unwrap_or_default());
            }
        }
        bail!("no queue named {}", names.join(" or "))
    }

    async fn redrive(
        &self,
        queue: &str,
        out: &mut dyn Write,
        progress: &mut dyn Write,
    ) -> Result<()> {
        let dlq = self.queue_url(queue).await?;
        let sources = self
            .sqs
            .list_dead_letter_source_queues()
            .queue_url(&dlq)
            .send()
            .await
            .map_err(|e| anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))?
            .queue_urls;
        let source = match sources.as_slice() {
            [one] => one.clone(),
            [] => bail!("{queue} is no queue's dead-letter queue"),
            _ => bail!("{queue} is the dead-letter queue of several queues: {sources:?}"),
        };
        let total = self.depth(&dlq).await?;
        writeln!(progress, "moving {total} message(s) back to {source}")?;
        let bar = progress_bar(total, "moved");
        let mut moved = 0usize;
        loop {
            let batch = self
                .sqs
                .receive_message()
                .queue_url(&dlq)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))?
                .messages
                .unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            for message in batch {
                // The reason stays in the log; the message goes back as it first came.
                let mut attributes = message.message_attributes.clone().unwrap_or_default();
                attributes.remove("reason");
                self.sqs
                    .send_message()
                    .queue_url(&source)
                    .message_body(message.body().unwrap_or_default())
                    .set_message_attributes((!attributes.is_empty()).then_some(attributes))
                    .send()
                    .await
                    .map_err(|e| anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))?;
                self.sqs
                    .delete_message()
                    .queue_url(&dlq)
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .map_err(|e| anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))?;
                moved += 1;
                bar.inc(1);
            }
            if bar.is_hidden() {
                writeln!(progress, "moved {moved}/{total}")?;
            }
        }
        bar.finish_and_clear();
        writeln!(out, "moved {moved} message(s) from {dlq} to {source}")?;
        Ok(())
    }

    async fn depth(&self, queue_url: &str) -> Result<usize> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))?
            .attributes
            .unwrap_or_default();
        Ok(attributes
            .get(&QueueAttributeName::ApproximateNumberOfMessages)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Everything that proves an erasure, without the subject's id (its keyed hash instead).
    pub async fn proof(&self, id: RequestId) -> Result<Value> {
        let request = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| anyhow!("no request {id}"))?;
        if request.kind != RequestKind::Erasure {
            bail!("{id} is an access request; proofs are of erasures");
        }
        let mut obligations = self.store.obligations(id).await?;
        obligations.sort_by(|a, b| a.service.cmp(&b.service));
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339());
        Ok(json!({
            "request_id": request.id,
            "subject_hash": self.subject_hasher().hash(&request.subject).to_string(),
            "state": request.state,
            "complete": request.state == RequestState::Completed,
            "received_at": request.received_at.to_rfc3339(),
            "due_at": request.due_at.to_rfc3339(),
            "obligations": obligations.iter().map(|o| json!({
                "service": o.service,
                "status": o.status.as_str(),
                "erased_last": o.last,
                "commands_sent": o.attempts,
                "sent_at": time(o.sent_at),
                "confirmed_at": time(o.confirmed_at),
                "escalated_at": time(o.escalated_at),
                "settled_by_hand": dsr_domain::erasure::settled_by_hand(o.receipt.as_deref()),
                "receipt": o.receipt.as_deref().map(|r| serde_json::from_str::<Value>(r).unwrap_or(Value::String(r.to_owned()))),
            })).collect::<Vec<_>>(),
            "audit_trail": self.store.audit_trail(id).await?.iter().map(|e| json!({
                "at": e.at.to_rfc3339(), "event": e.event, "by": e.actor,
            })).collect::<Vec<_>>(),
        }))
    }

    fn subject_hasher(&self) -> SubjectHasher {
        self.requests.hasher().clone()
    }
}

/// A progress bar on the terminal (stderr), hidden when stderr is not one.
fn progress_bar(total: usize, done: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} {msg} ({elapsed}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar.set_message(done);
    bar
}

fn parse(id: &str) -> Result<RequestId> {
    id.parse()
        .map_err(|e: dsr_domain::RequestIdError| anyhow!(e))
}
