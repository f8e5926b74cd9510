use dsr_bridge::inbound::{
    run_daemon, DeadLetters, Inbound, Topology, CONFIRMATIONS_QUEUE_URL, RABBITMQ_NAMESPACE,
    SCHEDULE_REQUESTS_QUEUE_URL,
};
use dsr_bridge::{Publisher, DEFAULT_EVENTS_EXCHANGE, EVENTS_EXCHANGE, RABBITMQ_URL};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;

/// One binary, three hosts: the outbound Lambda (SQS `outbound` event source), the inbound
/// Lambda (Amazon MQ event source), and `bridge daemon`, the long-lived inbound consumer for a
/// self-managed broker.
#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("bridge");
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let url = env(RABBITMQ_URL)?;
    let topology =
        Topology::new(&std::env::var(RABBITMQ_NAMESPACE).unwrap_or_else(|_| "gdpr".into()));
    let aws = dsr_adapters::wiring::aws_config().await;
    let inbound = Inbound {
        sqs: aws_sdk_sqs::Client::new(&aws),
        confirmations_queue_url: env(CONFIRMATIONS_QUEUE_URL).unwrap_or_default(),
        schedule_requests_queue_url: env(SCHEDULE_REQUESTS_QUEUE_URL).unwrap_or_default(),
        topology: topology.clone(),
    };
    if std::env::args().nth(1).as_deref() == Some("daemon") {
        if inbound.confirmations_queue_url.is_empty()
            || inbound.schedule_requests_queue_url.is_empty()
        {
            return Err(format!(
                "{CONFIRMATIONS_QUEUE_URL} and {SCHEDULE_REQUESTS_QUEUE_URL} must be set"
            )
            .into());
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = stop.send(true);
        });
        run_daemon(url, inbound, stopped).await;
        return Ok(());
    }
    let exchange =
        std::env::var(EVENTS_EXCHANGE).unwrap_or_else(|_| DEFAULT_EVENTS_EXCHANGE.into());
    let dead_letters = DeadLetters::new(url.clone(), &topology);
    let publisher = Publisher::new(url, exchange);
    run(service_fn(|event: LambdaEvent<Value>| async {
        if event.payload.get("rmqMessagesByQueue").is_some() {
            let batch = serde_json::from_value(event.payload)?;
            let forwarded = inbound.handle_event(batch, &dead_letters).await?;
            return Ok::<_, Error>(serde_json::json!({ "forwarded": forwarded }));
        }
        let batch = serde_json::from_value(event.payload)?;
        Ok(serde_json::to_value(publisher.handle(batch).await)?)
    }))
    .await
}
