//! `dsr-ops`, the operator's command line. It works against the local stack (`--local-stack`)
//! and a real account (the functions' environment variables, from the stack's outputs), with
//! the same use cases the functions run: nothing here writes around the domain's rules.

use anyhow::{anyhow, bail, Context, Result};
use dsr_adapters::config::{vars, Env};
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_adapters::wiring::{self, CloudRequests};
use dsr_domain::erasure::ObligationStore;
use dsr_domain::hops::Hop;
use dsr_domain::requests::reconcile::ReconcileSettings;
use dsr_domain::{RequestId, RequestKind, RequestState, RequestStore, SubjectHasher};
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

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Operate on the local stack of this name (`make run` uses `dsr-local`). Without it, the
    /// resources come from REQUESTS_TABLE, ACCESS_REQUESTS_QUEUE_URL,
    /// ERASURE_REQUESTS_QUEUE_URL (the stack's outputs) and the subject hash key, read from
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
    /// Sends a request's work message again (received, or a worker's lease ran out).
    Retry { id: String },
    /// Moves every message of a dead-letter queue back to the queue it came from.
    Redrive {
        /// The dead-letter queue: its URL, its name, or (local) its logical id in template.yaml.
        queue: String,
    },
    /// Extends an open request's deadline once, by 1 or 2 months (GDPR Art. 12(3)).
    Extend {
        id: String,
        #[arg(long, default_value_t = 2)]
        months: u32,
        /// Why; the subject sees it on their request.
        #[arg(long)]
        reason: String,
    },
    /// The proof of erasure: every obligation, its receipt and timestamps, as JSON.
    Proof { id: String },
}

/// The local stack's parameter value (`infra/local`): not a secret anywhere else.
const LOCAL_SUBJECT_HASH_KEY: &str = "local-subject-hash-key-not-secret";

pub struct Ops {
    requests: CloudRequests,
    reconcile: ReconcileSettings,
    store: DynamoRequestStore,
    sqs: aws_sdk_sqs::Client,
    local_stack: Option<String>,
}

impl Ops {
    pub async fn connect(aws: &aws_config::SdkConfig, target: &Target, env: &Env) -> Result<Self> {
        let sqs = aws_sdk_sqs::Client::new(aws);
        // The reconciliation's allowances are the operator's to set, local stack or not.
        let reconcile = wiring::reconcile_settings(env)?;
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
                ])
            }
            None => env.clone(),
        };
        Ok(Self {
            requests: wiring::requests(aws, &env, "ops")?,
            reconcile,
            store: wiring::request_store(aws, &env, "ops")?,
            sqs,
            local_stack: target.local_stack.clone(),
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
            Command::Retry { id } => {
                let request = self.requests.retry(parse(id)?).await?;
                writeln!(
                    out,
                    "sent the work message of {} ({}, {}) again",
                    request.id, request.kind, request.state
                )?;
                Ok(())
            }
            Command::Redrive { queue } => self.redrive(queue, out, progress).await,
            Command::Extend { id, months, reason } => {
                let request = self
                    .requests
                    .extend_deadline(parse(id)?, *months, reason)
                    .await?;
                writeln!(
                    out,
                    "{}: deadline extended by {months} month(s) to {}",
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
        }
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

    async fn queue_url(&self, queue: &str) -> Result<String> {
        if queue.starts_with("http://") || queue.starts_with("https://") {
            return Ok(queue.to_owned());
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
            }
            writeln!(progress, "moved {moved}/{total}")?;
        }
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

fn parse(id: &str) -> Result<RequestId> {
    id.parse()
        .map_err(|e: dsr_domain::RequestIdError| anyhow!(e))
}
