use dsr_bridge::{Publisher, DEFAULT_EVENTS_EXCHANGE, EVENTS_EXCHANGE, RABBITMQ_URL};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

/// Outbound as a Lambda on the SQS `outbound` queue.
#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let url = std::env::var(RABBITMQ_URL).map_err(|_| format!("{RABBITMQ_URL} is not set"))?;
    let exchange =
        std::env::var(EVENTS_EXCHANGE).unwrap_or_else(|_| DEFAULT_EVENTS_EXCHANGE.into());
    let publisher = Publisher::new(url, exchange);
    run(service_fn(
        |event: LambdaEvent<aws_lambda_events::sqs::SqsEvent>| async {
            Ok::<_, Error>(publisher.handle(event.payload).await)
        },
    ))
    .await
}
