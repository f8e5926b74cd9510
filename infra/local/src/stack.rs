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
use dsr_adapters::batch::{QueueDriver, RecordHandler};
use dsr_adapters::config::{vars, Env};
use dsr_adapters::wiring::{self, CloudRequests};
use dsr_domain::{SubjectHasher, SystemClock};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Parameter values for the local stack; documented in the README.
pub fn local_parameters() -> HashMap<String, String> {
    HashMap::from([
        ("JwtIssuer".to_owned(), "dsr-local".to_owned()),
        ("JwtAudience".to_owned(), "dsr-api".to_owned()),
        // Locally the email service is erased 20 s after the notice, not 72 h.
        ("ErasureGraceSeconds".to_owned(), "20".to_owned()),
    ])
}

/// The secrets the local stack puts in the emulator's Parameter Store (as SecureStrings, under
/// the stack's `SecretsPath`), by name. Not secrets anywhere else.
pub fn local_secrets() -> HashMap<String, String> {
    HashMap::from([
        (
            "subject-hash-key".to_owned(),
            "local-subject-hash-key-not-secret".to_owned(),
        ),
        (
            "rabbitmq-url".to_owned(),
            "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
        ),
        (
            "certificate-signing-key".to_owned(),
            dsr_adapters::signing::LOCAL_KEY_PEM.to_owned(),
        ),
    ])
}

#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub template: PathBuf,
    pub stack_name: String,
    pub listen: SocketAddr,
    pub jwt_secret: String,
    pub parameters: HashMap<String, String>,
    /// Put into the emulator's Parameter Store under `SecretsPath` (see [`local_secrets`]).
    pub secrets: HashMap<String, String>,
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
    /// How long the demo's CRM export takes to be ready (90 s: the report takes minutes).
    pub demo_export_after: Duration,
    /// Where the functions reach AWS, when not where the stack was provisioned (the proving
    /// ground's fault-injecting proxy in front of the emulator).
    pub functions_endpoint: Option<String>,
    /// Variables every function sees instead of the template's (the crash proof's short
    /// leases); empty normally.
    pub overrides: BTreeMap<String, String>,
    /// Instances of each queue-fed function (each its own worker, as Lambda scales out);
    /// with one delivery per batch, each polls its queue on its own.
    pub workers: usize,
    /// How many of them receive every batch at once (1: SQS's usual once; more: the proving
    /// ground's duplicates).
    pub deliveries: usize,
    /// Messages to lose on purpose on their way to a function (the reconciliation's tests).
    pub losses: Option<Arc<event_source::Losses>>,
    /// Counts every AWS call the functions make, by function and operation (the cost of a
    /// request); none normally.
    pub call_counter: Option<crate::call_count::CallCounter>,
}

impl LocalSettings {
    pub fn new(template: impl Into<PathBuf>, stack_name: impl Into<String>) -> Self {
        let stack_name = stack_name.into();
        let mut parameters = local_parameters();
        // Each stack its own secrets: tests run many stacks against one emulator.
        parameters.insert("SecretsPath".into(), format!("/dsr-local/{stack_name}"));
        Self {
            template: template.into(),
            stack_name,
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            jwt_secret: crate::jwt::LOCAL_JWT_SECRET.to_owned(),
            parameters,
            secrets: local_secrets(),
            sweep_every: Duration::from_secs(10),
            reconcile_every: Duration::from_secs(60),
            dispatch_every: Duration::from_secs(2),
            consume_work_queues: true,
            registry: None,
            demo: None,
            demo_export_after: Duration::from_secs(90),
            functions_endpoint: None,
            overrides: BTreeMap::new(),
            workers: 1,
            deliveries: 1,
            losses: None,
            call_counter: None,
        }
    }
}

/// The provisioned stack plus what is needed to host its functions.
pub struct LocalStack {
    pub template: Template,
    pub context: StackContext,
    pub aws: SdkConfig,
    pub jwt_secret: String,
    /// Each function's configuration with its secrets read from Parameter Store, as each
    /// function's `main` reads it, once.
    envs: HashMap<String, Env>,
    overrides: Env,
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
        let path = context
            .parameters
            .get("SecretsPath")
            .cloned()
            .unwrap_or_else(|| "/gdpr-dsr".to_owned());
        let ssm = aws_sdk_ssm::Client::new(aws);
        for (name, value) in &settings.secrets {
            ssm.put_parameter()
                .name(format!("{path}/{name}"))
                .value(value)
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .overwrite(true)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("{}", aws_sdk_ssm::error::DisplayErrorContext(e)))
                .with_context(|| format!("putting the secret {path}/{name}"))?;
        }
        let mut envs = HashMap::new();
        for (function, kind, _) in template.resources() {
            if kind != "AWS::Serverless::Function" {
                continue;
            }
            let declared = Env::from_pairs(template.function_environment(&function, &context)?);
            let resolved = dsr_adapters::config::with_parameters(aws, declared)
                .await
                .with_context(|| format!("reading {function}'s secrets"))?;
            envs.insert(function, resolved);
        }
        let aws = match &settings.functions_endpoint {
            Some(endpoint) => aws.to_builder().endpoint_url(endpoint).build(),
            None => aws.clone(),
        };
        let aws = match &settings.call_counter {
            Some(counter) => {
                let client = aws
                    .http_client()
                    .unwrap_or_else(dsr_adapters::config::https_client);
                aws.to_builder().http_client(counter.wrap(client)).build()
            }
            None => aws,
        };
        Ok(Self {
            template,
            context,
            aws,
            jwt_secret: settings.jwt_secret.clone(),
            envs,
            overrides: Env::from_pairs(settings.overrides.clone()),
        })
    }

    /// The environment the template gives `function`, resolved against this stack.
    pub fn environment(&self, function: &str) -> Result<BTreeMap<String, String>> {
        self.template.function_environment(function, &self.context)
    }

    /// What `function` reads its configuration from: this process's environment (where a
    /// developer puts vendors' API tokens) under the template's variables, as in Lambda.
    pub fn env(&self, function: &str) -> Result<Env> {
        let declared = match self.envs.get(function) {
            Some(env) => env.clone(),
            None => Env::from_pairs(self.environment(function)?),
        };
        Ok(Env::from_process()
            .overlaid_with(&declared)
            .overlaid_with(&self.overrides))
    }

    /// `function`'s configuration with the service registry (YAML) given, when one is.
    fn env_with_registry(&self, function: &str, registry: Option<&str>) -> Result<Env> {
        let env = self.env(function)?;
        Ok(match registry {
            Some(registry) => env.with(vars::SERVICE_REGISTRY, registry),
            None => env,
        })
    }

    /// The request use cases as `function` builds them; `actor` names it in the audit trail.
    pub fn requests(&self, function: &str, actor: &str) -> Result<CloudRequests> {
        Ok(wiring::requests(&self.aws, &self.env(function)?, actor)?)
    }

    /// The subject hasher the functions share.
    pub fn subject_hasher(&self) -> Result<SubjectHasher> {
        Ok(wiring::subject_hasher(&self.env("IntakeFunction")?)?)
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
            batching_window: Duration::ZERO,
            wait_seconds: 1,
            region: self.context.region.clone(),
        })
    }

    /// The intake function, as API Gateway would call it.
    /// The operations page as Lambda runs it.
    pub fn ops_page(&self) -> Result<HttpFunction> {
        let page = Arc::new(dsr_ops_page::build(
            &self.aws,
            &self.env("OpsPageFunction")?,
        )?);
        Ok(Arc::new(move |request| {
            let page = page.clone();
            Box::pin(crate::metric_check::as_function(
                "OpsPageFunction",
                async move { page.handle(request).await },
            ))
        }))
    }

    pub fn intake(&self) -> Result<HttpFunction> {
        let api = Arc::new(dsr_intake::build(&self.aws, &self.env("IntakeFunction")?)?);
        Ok(Arc::new(move |request| {
            let api = api.clone();
            Box::pin(crate::metric_check::as_function(
                "IntakeFunction",
                async move { api.handle(request).await },
            ))
        }))
    }

    /// The erasure function as Lambda runs it; the registry (YAML) replaces the bundled one
    /// when given.
    pub fn erasure(&self, registry: Option<&str>) -> Result<dsr_erasure::Handler> {
        let env = self.env_with_registry("ErasureFunction", registry)?;
        Ok(dsr_erasure::build(&self.aws, &env)?)
    }

    /// The confirm function as Lambda runs it.
    pub fn confirm(&self, registry: Option<&str>) -> Result<dsr_confirm::Handler> {
        let env = self.env_with_registry("ConfirmFunction", registry)?;
        Ok(dsr_confirm::build(&self.aws, &env)?)
    }

    /// The submissions function (other systems' `submit_request`s) as Lambda runs it.
    pub fn submissions(&self) -> Result<dsr_intake::submissions::SubmissionsFunction> {
        Ok(dsr_intake::submissions::build(
            &self.aws,
            &self.env("SubmissionsFunction")?,
        )?)
    }

    /// The inbound bridge's forwarding side, with the template's environment.
    pub fn inbound_bridge(&self) -> Result<(String, dsr_bridge::inbound::Inbound)> {
        let bridge = dsr_bridge::build(&self.aws, &self.env("BridgeInboundFunction")?)?;
        Ok((bridge.rabbitmq_url, bridge.inbound))
    }

    /// The outbound bridge as Lambda runs it.
    pub fn outbound_bridge(&self) -> Result<dsr_bridge::Bridge> {
        Ok(dsr_bridge::build(
            &self.aws,
            &self.env("BridgeOutboundFunction")?,
        )?)
    }

    /// The report function as Lambda runs it; the registry (YAML) replaces the bundled one
    /// when given.
    pub fn report(&self, registry: Option<&str>) -> Result<dsr_report::Handler> {
        let env = self.env_with_registry("ReportFunction", registry)?;
        Ok(dsr_report::build(&self.aws, &env)?)
    }

    /// The dispatch function as Lambda runs it, with the given clock.
    pub fn dispatch<C: dsr_domain::Clock>(
        &self,
        clock: C,
    ) -> Result<dsr_dispatch::Dispatch<dsr_dispatch::CloudDispatcher<C>>> {
        Ok(dsr_dispatch::build_with_clock(
            &self.aws,
            &self.env("DispatchFunction")?,
            clock,
        )?)
    }

    /// The dispatcher alone, with the given clock.
    pub fn dispatcher<C: dsr_domain::Clock>(
        &self,
        clock: C,
    ) -> Result<dsr_dispatch::CloudDispatcher<C>> {
        Ok(dsr_dispatch::dispatcher(
            &self.aws,
            &self.env("DispatchFunction")?,
            clock,
        )?)
    }

    /// The (first) event source of `function` as the template declares it (queue, batch size,
    /// batching window).
    pub fn event_source(&self, function: &str) -> Result<EventSource> {
        let (queue, _, _) = self
            .template
            .sqs_event_sources(function)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("{function} has no SQS event source in the template"))?;
        self.event_source_of(function, &queue)
    }

    /// The event source of `function` on `queue` (a logical id) as the template declares it.
    pub fn event_source_of(&self, function: &str, queue: &str) -> Result<EventSource> {
        let (queue, batch_size, window) = self
            .template
            .sqs_event_sources(function)
            .into_iter()
            .find(|(q, _, _)| q == queue)
            .ok_or_else(|| anyhow!("{function} has no SQS event source on {queue}"))?;
        Ok(EventSource {
            batch_size,
            batching_window: Duration::from_secs(window),
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
    /// The demo's fake data services (`make run`).
    pub services: Option<Arc<crate::erasing_services::ErasingServices>>,
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
    crate::metric_check::install();
    let stack = Arc::new(LocalStack::provision(aws, settings).await?);
    let (shutdown, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding the API to {}", settings.listen))?;
    let http_addr = listener.local_addr()?;
    let router = gateway::router(
        stack.intake()?,
        Some(stack.ops_page()?),
        stack.authorizer()?,
    );
    let mut http_stop = stopped.clone();
    tasks.spawn(async move {
        let serve = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        });
        if let Err(err) = serve.await {
            tracing::error!(error = %err, "HTTP server failed");
        }
    });

    let sweep = Arc::new(dsr_sweep::build(&stack.aws, &stack.env("SweepFunction")?)?);
    let sweeper = sweep.clone();
    tasks.spawn(recurring(
        settings.sweep_every,
        stopped.clone(),
        move || {
            let sweep = sweeper.clone();
            crate::metric_check::as_function("SweepFunction", async move {
                if let Err(err) = sweep.handle(serde_json::json!({})).await {
                    tracing::warn!(error = %err, "sweep failed");
                }
            })
        },
    ));
    tasks.spawn(recurring(
        settings.reconcile_every,
        stopped.clone(),
        move || {
            let sweep = sweep.clone();
            crate::metric_check::as_function("SweepFunction", async move {
                if let Err(err) = sweep.handle(serde_json::json!({"task": "reconcile"})).await {
                    tracing::warn!(error = %err, "reconciliation failed");
                }
            })
        },
    ));

    let mut registry = settings.registry.clone();
    let mut services = None;
    if let Some(listen) = settings.demo {
        let demo = crate::demo::seed(
            aws,
            &stack.context.stack_name,
            listen,
            settings.demo_export_after,
        )
        .await?;
        // The services that take erasure commands: AMQP consumers and a vendor's HTTP API
        // (on the next port), all holding data about the demo user.
        let env = stack.env("BridgeInboundFunction")?;
        let fakes = crate::erasing_services::start(
            &env.required(vars::RABBITMQ_URL)?,
            &env.required(vars::RABBITMQ_NAMESPACE)?,
            SocketAddr::new(listen.ip(), listen.port().saturating_add(1)),
            stopped.clone(),
        )
        .await?;
        fakes.seed(crate::demo::DEMO_SUBJECT);
        // Two of the services speak only AMQP for their data too: billing answers with its
        // records, viewing-history uploads them (docs/holders.md).
        fakes
            .service("viewing-history")
            .behaviour
            .uploads_exports
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let demo_registry = format!(
            "{}{}",
            demo.registry,
            fakes.registry_entries(60, 3, &["billing", "viewing-history"])
        );
        registry = registry.or(Some(demo_registry));
        services = Some(Arc::new(fakes));
    }
    if settings.consume_work_queues {
        let sqs = aws_sdk_sqs::Client::new(aws);
        let (workers, deliveries) = (settings.workers.max(1), settings.deliveries.max(1));
        // `queue`: the logical id of one of the function's queues (`None`: its first).
        let mut consume = |function: &str,
                           queue: Option<&str>,
                           build: &dyn Fn() -> Result<SqsFunction>|
         -> Result<()> {
            let instances = (0..workers).map(|_| build()).collect::<Result<Vec<_>>>()?;
            // Each batch to one instance: every instance polls on its own, as Lambda scales
            // a queue's function out to several concurrent invocations.
            let pollers = if deliveries == 1 {
                instances
            } else {
                vec![event_source::duplicating(instances, deliveries)]
            };
            for mut handler in pollers {
                handler = crate::metric_check::attributed(function, handler);
                if let Some(losses) = &settings.losses {
                    handler = event_source::losing(function, handler, losses.clone());
                }
                let source = match queue {
                    Some(queue) => stack.event_source_of(function, queue)?,
                    None => stack.event_source(function)?,
                };
                tasks.spawn(event_source::run(
                    sqs.clone(),
                    source,
                    handler,
                    stopped.clone(),
                ));
            }
            Ok(())
        };
        consume("ReportFunction", None, &|| {
            Ok(queue_function(
                &stack,
                "ReportFunction",
                stack.report(registry.as_deref())?,
            ))
        })?;
        consume("ErasureFunction", None, &|| {
            Ok(queue_function(
                &stack,
                "ErasureFunction",
                stack.erasure(registry.as_deref())?.requests,
            ))
        })?;
        // The same function on its second queue: commands to vendors that take batches.
        consume("ErasureFunction", Some("VendorErasuresQueue"), &|| {
            Ok(queue_function_together(
                &stack,
                "ErasureFunction",
                stack.erasure(registry.as_deref())?.vendor_erasures,
            ))
        })?;
        consume("ConfirmFunction", None, &|| {
            Ok(queue_function(
                &stack,
                "ConfirmFunction",
                stack.confirm(registry.as_deref())?,
            ))
        })?;
        consume("SubmissionsFunction", None, &|| {
            Ok(queue_function(
                &stack,
                "SubmissionsFunction",
                stack.submissions()?,
            ))
        })?;
        consume("BridgeOutboundFunction", None, &|| {
            Ok(queue_function(
                &stack,
                "BridgeOutboundFunction",
                stack.outbound_bridge()?.outbound,
            ))
        })?;
        let dispatch = Arc::new(stack.dispatch(SystemClock)?);
        let timeout = stack.template.function_timeout("DispatchFunction");
        consume("DispatchFunction", None, &|| {
            let requests = Arc::new(stack.dispatch(SystemClock)?);
            let function: SqsFunction = Arc::new(move |event| {
                let dispatch = requests.clone();
                Box::pin(async move {
                    let deadline = SystemTime::now() + timeout;
                    let answer = dispatch
                        .handle(serde_json::to_value(event)?, Some(deadline))
                        .await?;
                    Ok(serde_json::from_value(answer)?)
                })
            });
            Ok(function)
        })?;
        // EventBridge Scheduler's wake-ups: moto stores schedules but never fires them.
        tasks.spawn(recurring(
            settings.dispatch_every,
            stopped.clone(),
            move || {
                let dispatch = dispatch.clone();
                crate::metric_check::as_function("DispatchFunction", async move {
                    if let Err(err) = dispatch.handle(serde_json::json!({}), None).await {
                        tracing::warn!(error = %err, "dispatch sweep failed");
                    }
                })
            },
        ));
        // Inbound, as for a self-managed broker: the long-lived consumer.
        let (url, inbound) = stack.inbound_bridge()?;
        tasks.spawn(crate::metric_check::as_function(
            "BridgeInboundFunction",
            dsr_bridge::inbound::run_daemon(url, inbound, stopped.clone()),
        ));
    }

    Ok(RunningStack {
        http_addr,
        services,
        stack,
        shutdown,
        tasks,
    })
}

/// A queue-fed function as Lambda's event source mapping calls it: with the deadline its
/// template `Timeout` gives each invocation.
pub fn queue_function<H: RecordHandler + 'static>(
    stack: &LocalStack,
    function: &str,
    driver: QueueDriver<H>,
) -> SqsFunction {
    invoked(
        stack,
        function,
        driver,
        |driver, event, deadline| async move { driver.handle(event, Some(deadline)).await },
    )
}

/// A function whose queue's batches are handled as one, as Lambda's event source mapping calls
/// it.
pub fn queue_function_together<H: dsr_adapters::batch::BatchHandler + 'static>(
    stack: &LocalStack,
    function: &str,
    driver: QueueDriver<H>,
) -> SqsFunction {
    invoked(
        stack,
        function,
        driver,
        |driver, event, deadline| async move { driver.handle_together(event, Some(deadline)).await },
    )
}

/// `run` on each batch, with the deadline the function's template `Timeout` gives it.
fn invoked<D, F, Fut>(stack: &LocalStack, function: &str, driver: D, run: F) -> SqsFunction
where
    D: Send + Sync + 'static,
    F: Fn(Arc<D>, aws_lambda_events::sqs::SqsEvent, SystemTime) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = aws_lambda_events::sqs::SqsBatchResponse> + Send + 'static,
{
    let timeout = stack.template.function_timeout(function);
    let driver = Arc::new(driver);
    let run = Arc::new(run);
    Arc::new(move |event| {
        let work = run(driver.clone(), event, SystemTime::now() + timeout);
        Box::pin(async move { Ok(work.await) })
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
