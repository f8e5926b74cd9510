//! The whole service in one process: the user API on a local port, the work queues polled and
//! delivered to their functions, and the sweep on a timer (the local stand-in for EventBridge
//! Scheduler, which the emulator stores but never fires).

use crate::event_source::{self, EventSource, SqsFunction};
use crate::gateway::{self, HttpFunction};
use crate::jwt::JwtAuthorizer;
use crate::provision::provision;
use crate::template::{StackContext, Template};
use anyhow::{anyhow, Context, Result};
use aws_config::SdkConfig;
use dsr_adapters::collect::Collectors;
use dsr_adapters::delayed::DynamoDelayedStore;
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_adapters::s3::{self, S3ReportStore};
use dsr_adapters::scheduler::SchedulerWaker;
use dsr_adapters::sqs::SqsDestinationSender;
use dsr_adapters::sqs::SqsOutbox;
use dsr_adapters::wiring::{self, DeskConfig};
use dsr_domain::delayed::{DispatchSettings, Dispatcher};
use dsr_domain::{SubjectHasher, SystemClock};
use dsr_report::{ReportSettings, ReportWorker};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Parameter values for the local stack; documented in the README. Not secrets anywhere else.
pub fn local_parameters() -> HashMap<String, String> {
    HashMap::from([
        ("JwtIssuer".to_owned(), "dsr-local".to_owned()),
        ("JwtAudience".to_owned(), "dsr-api".to_owned()),
        (
            "SubjectHashKey".to_owned(),
            "local-subject-hash-key-not-secret".to_owned(),
        ),
        (
            "RabbitMqUrl".to_owned(),
            "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
        ),
        // Locally the email service is erased 20 s after the notice, not 72 h.
        ("ErasureGraceSeconds".to_owned(), "20".to_owned()),
    ])
}

#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub template: PathBuf,
    pub stack_name: String,
    pub listen: SocketAddr,
    pub jwt_secret: String,
    pub parameters: HashMap<String, String>,
    pub sweep_every: Duration,
    /// How often the reconciliation runs (every 15 minutes in AWS).
    pub reconcile_every: Duration,
    /// How often the dispatch function is woken (EventBridge Scheduler's job in AWS: moto
    /// stores schedules but never fires them).
    pub dispatch_every: Duration,
    /// Run the functions on their queues: reports, erasures, confirmations, delayed dispatch
    /// and both directions of the RabbitMQ bridge.
    pub consume_work_queues: bool,
    /// The report function's service registry (YAML); `None` keeps the bundled one.
    pub registry: Option<String>,
    /// Seed demo sources for the demo user and serve the fake services here.
    pub demo: Option<SocketAddr>,
}

impl LocalSettings {
    pub fn new(template: impl Into<PathBuf>, stack_name: impl Into<String>) -> Self {
        Self {
            template: template.into(),
            stack_name: stack_name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            jwt_secret: crate::jwt::LOCAL_JWT_SECRET.to_owned(),
            parameters: local_parameters(),
            sweep_every: Duration::from_secs(10),
            reconcile_every: Duration::from_secs(60),
            dispatch_every: Duration::from_secs(2),
            consume_work_queues: true,
            registry: None,
            demo: None,
        }
    }
}

fn required(env: &BTreeMap<String, String>, name: &str) -> Result<String> {
    env.get(name)
        .cloned()
        .ok_or_else(|| anyhow!("the template does not set {name}"))
}

/// The provisioned stack plus what is needed to host its functions.
pub struct LocalStack {
    pub template: Template,
    pub context: StackContext,
    pub aws: SdkConfig,
    pub jwt_secret: String,
}

impl LocalStack {
    pub async fn provision(aws: &SdkConfig, settings: &LocalSettings) -> Result<Self> {
        let template = Template::load(&settings.template)?;
        let context = provision(
            aws,
            &template,
            &settings.stack_name,
            settings.parameters.clone(),
        )
        .await
        .context(
            "provisioning the template into the emulator (is it running on AWS_ENDPOINT_URL?)",
        )?;
        Ok(Self {
            template,
            context,
            aws: aws.clone(),
            jwt_secret: settings.jwt_secret.clone(),
        })
    }

    /// The environment the template gives `function`, resolved against this stack.
    pub fn environment(&self, function: &str) -> Result<BTreeMap<String, String>> {
        self.template.function_environment(function, &self.context)
    }

    pub fn desk_config(&self, function: &str) -> Result<DeskConfig> {
        let env = self.environment(function)?;
        Ok(DeskConfig::from_lookup(|name| env.get(name).cloned())?)
    }

    pub fn authorizer(&self) -> Result<JwtAuthorizer> {
        template_authorizer(&self.template, &self.context, &self.jwt_secret)
    }

    pub fn queue(&self, logical_id: &str) -> Result<EventSource> {
        let queue = self
            .context
            .resources
            .get(logical_id)
            .ok_or_else(|| anyhow!("no queue {logical_id} in the stack"))?;
        Ok(EventSource {
            queue_url: queue.url.clone().unwrap_or_default(),
            queue_arn: queue.arn.clone(),
            batch_size: 10,
            wait_seconds: 1,
            region: self.context.region.clone(),
        })
    }

    /// The intake function, as API Gateway would call it.
    pub fn intake(&self) -> Result<HttpFunction> {
        let env = self.environment("IntakeFunction")?;
        let api = Arc::new(dsr_intake::IntakeApi {
            desk: self
                .desk_config("IntakeFunction")?
                .desk(&self.aws, "intake"),
            reports: S3ReportStore::new(
                s3::client(&self.aws),
                required(&env, wiring::REPORTS_BUCKET)?,
            ),
            link_ttl: dsr_intake::link_ttl_from_lookup(|n| env.get(n).cloned())
                .map_err(|e| anyhow!(e))?,
        });
        Ok(Arc::new(move |request| {
            let api = api.clone();
            Box::pin(async move { dsr_intake::handle(&*api, request).await })
        }))
    }

    /// The erasure or confirm function (`function`) as Lambda would run it; the registry (YAML)
    /// replaces the bundled one when given.
    pub fn erasure_function(
        &self,
        function: &str,
        registry: Option<&str>,
    ) -> Result<dsr_erasure::ErasureFunction<dsr_erasure::CloudErasureDesk>> {
        let mut env = self.environment(function)?;
        if let Some(registry) = registry {
            env.insert(
                dsr_domain::registry::SERVICE_REGISTRY.into(),
                registry.to_owned(),
            );
        }
        let actor = if function == "ConfirmFunction" {
            "confirm"
        } else {
            "erasure"
        };
        dsr_erasure::desk_from_lookup(&self.aws, |name| env.get(name).cloned(), actor)
            .map_err(|e| anyhow!(e))
    }

    /// The inbound bridge's forwarding side, with the template's environment.
    pub fn inbound_bridge(&self) -> Result<(String, dsr_bridge::inbound::Inbound)> {
        use dsr_bridge::inbound::{self, Inbound, Topology};
        let env = self.environment("BridgeInboundFunction")?;
        Ok((
            required(&env, dsr_bridge::RABBITMQ_URL)?,
            Inbound {
                sqs: aws_sdk_sqs::Client::new(&self.aws),
                confirmations_queue_url: required(&env, inbound::CONFIRMATIONS_QUEUE_URL)?,
                schedule_requests_queue_url: required(&env, inbound::SCHEDULE_REQUESTS_QUEUE_URL)?,
                topology: Topology::new(&required(&env, inbound::RABBITMQ_NAMESPACE)?),
            },
        ))
    }

    /// The report function as Lambda would run it, with the template's environment; the
    /// registry (YAML) replaces the bundled one when given.
    pub fn report_worker(
        &self,
        registry: Option<&str>,
    ) -> Result<ReportWorker<DynamoRequestStore, SystemClock>> {
        let mut env = self.environment("ReportFunction")?;
        if let Some(registry) = registry {
            env.insert(dsr_report::SERVICE_REGISTRY.into(), registry.to_owned());
        }
        let lookup = |name: &str| env.get(name).cloned();
        let config = DeskConfig::from_lookup(lookup)?;
        let aws = &self.aws;
        Ok(ReportWorker {
            store: DynamoRequestStore::new(
                aws_sdk_dynamodb::Client::new(aws),
                &config.requests_table,
                "report",
            ),
            clock: SystemClock,
            hasher: SubjectHasher::new(&config.subject_hash_key),
            registry: dsr_report::load_registry(lookup).map_err(|e| anyhow!(e))?,
            collectors: Collectors::new(
                aws_sdk_dynamodb::Client::new(aws),
                s3::client(aws),
                |name| std::env::var(name).ok(),
            ),
            reports: S3ReportStore::new(s3::client(aws), required(&env, wiring::REPORTS_BUCKET)?),
            outbox: SqsOutbox::new(
                aws_sdk_sqs::Client::new(aws),
                required(&env, wiring::OUTBOUND_QUEUE_URL)?,
            ),
            sqs: aws_sdk_sqs::Client::new(aws),
            queue_url: config.access_queue_url.clone(),
            dead_letter_queue_url: required(&env, wiring::ACCESS_REQUESTS_DLQ_URL)?,
            settings: ReportSettings::from_lookup(lookup).map_err(|e| anyhow!(e))?,
            owner: format!("report-{}", ulid::Ulid::new()),
        })
    }

    /// The dispatch function as Lambda would run it, with the given clock.
    pub fn dispatcher<C: dsr_domain::Clock>(
        &self,
        clock: C,
    ) -> Result<Dispatcher<DynamoDelayedStore, SchedulerWaker, SqsDestinationSender, C>> {
        let env = self.environment("DispatchFunction")?;
        let get = |name: &str| required(&env, name);
        let aws = &self.aws;
        Ok(Dispatcher {
            store: DynamoDelayedStore::new(
                aws_sdk_dynamodb::Client::new(aws),
                get(dsr_dispatch::DELAYED_MESSAGES_TABLE)?,
            ),
            waker: SchedulerWaker::new(
                aws_sdk_scheduler::Client::new(aws),
                get(dsr_dispatch::SCHEDULE_GROUP)?,
                get(dsr_dispatch::DISPATCH_TARGET_ARN)?,
                get(dsr_dispatch::SCHEDULER_ROLE_ARN)?,
                get(dsr_dispatch::SCHEDULER_DLQ_ARN)?,
            ),
            sender: SqsDestinationSender::new(
                aws_sdk_sqs::Client::new(aws),
                get(wiring::OUTBOUND_QUEUE_URL)?,
            ),
            clock,
            settings: DispatchSettings::default(),
        })
    }

    /// The event source of `function` as the template declares it (queue, batch size).
    pub fn event_source(&self, function: &str) -> Result<EventSource> {
        let (queue, batch_size) = self
            .template
            .sqs_event_sources(function)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("{function} has no SQS event source in the template"))?;
        Ok(EventSource {
            batch_size,
            ..self.queue(&queue)?
        })
    }
}

/// The local JWT authorizer with the issuer and audience the template's HTTP API demands.
pub fn template_authorizer(
    template: &Template,
    context: &StackContext,
    secret: &str,
) -> Result<JwtAuthorizer> {
    let (issuer, audiences) = template
        .jwt_authorizer()
        .ok_or_else(|| anyhow!("the template declares no JWT authorizer"))?;
    let audience = audiences
        .first()
        .ok_or_else(|| anyhow!("the JWT authorizer lists no audience"))?;
    Ok(JwtAuthorizer::new(
        secret,
        context.resolve(&issuer)?,
        context.resolve(audience)?,
    ))
}

pub struct RunningStack {
    pub http_addr: SocketAddr,
    /// The demo's fake data holders (`make run`).
    pub holders: Option<Arc<crate::holders::Holders>>,
    pub stack: Arc<LocalStack>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningStack {
    /// Stops every poller and the HTTP server, letting in-flight work finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

pub async fn start(aws: &SdkConfig, settings: &LocalSettings) -> Result<RunningStack> {
    let stack = Arc::new(LocalStack::provision(aws, settings).await?);
    let (shutdown, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding the API to {}", settings.listen))?;
    let http_addr = listener.local_addr()?;
    let router = gateway::router(stack.intake()?, stack.authorizer()?);
    let mut http_stop = stopped.clone();
    tasks.spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        });
        if let Err(err) = serve.await {
            tracing::error!(error = %err, "HTTP server failed");
        }
    });

    let sweep_desk = stack.desk_config("SweepFunction")?.desk(aws, "sweep");
    let sweep_env = stack.environment("SweepFunction")?;
    let sweep_settings = dsr_sweep::settings_from_lookup(|name| sweep_env.get(name).cloned())
        .map_err(|e| anyhow!(e))?;
    let sweep_desk = Arc::new(sweep_desk);
    tasks.spawn(recurring(
        settings.sweep_every,
        stopped.clone(),
        move || {
            let desk = sweep_desk.clone();
            async move {
                if let Err(err) = dsr_sweep::handle(&*desk, sweep_settings).await {
                    tracing::warn!(error = %err, "sweep failed");
                }
            }
        },
    ));

    let reconcile_desk = Arc::new(stack.desk_config("SweepFunction")?.desk(aws, "sweep"));
    let reconcile_settings =
        dsr_sweep::reconcile_settings_from_lookup(|name| sweep_env.get(name).cloned())
            .map_err(|e| anyhow!(e))?;
    tasks.spawn(recurring(
        settings.reconcile_every,
        stopped.clone(),
        move || {
            let desk = reconcile_desk.clone();
            async move {
                if let Err(err) = dsr_sweep::reconcile(&*desk, reconcile_settings).await {
                    tracing::warn!(error = %err, "reconciliation failed");
                }
            }
        },
    ));

    let mut registry = settings.registry.clone();
    let mut holders = None;
    if let Some(listen) = settings.demo {
        let demo = crate::demo::seed(&stack, listen).await?;
        // The services that take erasure commands: AMQP consumers and a vendor's HTTP API
        // (on the next port), all holding data about the demo user.
        let env = stack.environment("BridgeInboundFunction")?;
        let fakes = crate::holders::start(
            &required(&env, dsr_bridge::RABBITMQ_URL)?,
            &required(&env, dsr_bridge::inbound::RABBITMQ_NAMESPACE)?,
            SocketAddr::new(listen.ip(), listen.port().saturating_add(1)),
            stopped.clone(),
        )
        .await?;
        fakes.seed(crate::demo::DEMO_SUBJECT);
        let demo_registry = format!("{}{}", demo.registry, fakes.registry_entries(60, 3));
        registry = registry.or(Some(demo_registry));
        holders = Some(Arc::new(fakes));
    }
    if settings.consume_work_queues {
        let sqs = aws_sdk_sqs::Client::new(aws);
        let worker = Arc::new(stack.report_worker(registry.as_deref())?);
        let report: SqsFunction = Arc::new(move |event| {
            let worker = worker.clone();
            Box::pin(async move { Ok(worker.handle(event).await) })
        });
        tasks.spawn(event_source::run(
            sqs.clone(),
            stack.event_source("ReportFunction")?,
            report,
            stopped.clone(),
        ));
        let dispatcher = Arc::new(stack.dispatcher(SystemClock)?);
        let requests = dispatcher.clone();
        let dispatch: SqsFunction = Arc::new(move |event| {
            let dispatcher = requests.clone();
            Box::pin(async move {
                let answer =
                    dsr_dispatch::handle(&*dispatcher, serde_json::to_value(event)?).await?;
                Ok(serde_json::from_value(answer)?)
            })
        });
        tasks.spawn(event_source::run(
            sqs.clone(),
            stack.event_source("DispatchFunction")?,
            dispatch,
            stopped.clone(),
        ));
        tasks.spawn(recurring(
            settings.dispatch_every,
            stopped.clone(),
            move || {
                let dispatcher = dispatcher.clone();
                async move {
                    if let Err(err) =
                        dsr_dispatch::handle(&*dispatcher, serde_json::json!({})).await
                    {
                        tracing::warn!(error = %err, "dispatch sweep failed");
                    }
                }
            },
        ));
        let env = stack.environment("BridgeOutboundFunction")?;
        let publisher = Arc::new(dsr_bridge::Publisher::new(
            required(&env, dsr_bridge::RABBITMQ_URL)?,
            required(&env, dsr_bridge::EVENTS_EXCHANGE)?,
        ));
        let bridge: SqsFunction = Arc::new(move |event| {
            let publisher = publisher.clone();
            Box::pin(async move { Ok(publisher.handle(event).await) })
        });
        tasks.spawn(event_source::run(
            sqs.clone(),
            stack.event_source("BridgeOutboundFunction")?,
            bridge,
            stopped.clone(),
        ));
        let erasure = Arc::new(stack.erasure_function("ErasureFunction", registry.as_deref())?);
        let fan_out: SqsFunction = Arc::new(move |event| {
            let erasure = erasure.clone();
            Box::pin(async move { Ok(erasure.handle_requests(event).await) })
        });
        tasks.spawn(event_source::run(
            sqs.clone(),
            stack.event_source("ErasureFunction")?,
            fan_out,
            stopped.clone(),
        ));
        let confirm = Arc::new(stack.erasure_function("ConfirmFunction", registry.as_deref())?);
        let confirmations: SqsFunction = Arc::new(move |event| {
            let confirm = confirm.clone();
            Box::pin(async move { Ok(dsr_confirm::handle(&*confirm, event).await) })
        });
        tasks.spawn(event_source::run(
            sqs.clone(),
            stack.event_source("ConfirmFunction")?,
            confirmations,
            stopped.clone(),
        ));
        // Inbound, as for a self-managed broker: the long-lived consumer.
        let (url, inbound) = stack.inbound_bridge()?;
        tasks.spawn(dsr_bridge::inbound::run_daemon(
            url,
            inbound,
            stopped.clone(),
        ));
    }

    Ok(RunningStack {
        http_addr,
        holders,
        stack,
        shutdown,
        tasks,
    })
}

/// A recurring schedule, locally: runs `tick` every `every` until shutdown.
async fn recurring<F, Fut>(every: Duration, mut stopped: watch::Receiver<bool>, tick: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = async { let _ = stopped.wait_for(|stop| *stop).await; } => return,
            _ = ticks.tick() => tick().await,
        }
    }
}
