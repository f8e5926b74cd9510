use dsr_adapters::wiring::aws_config;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("erasure");
    let aws = aws_config().await;
    let function = dsr_erasure::desk_from_lookup(&aws, |n| std::env::var(n).ok(), "erasure")?;
    run(service_fn(
        |event: LambdaEvent<aws_lambda_events::sqs::SqsEvent>| async {
            Ok::<_, Error>(Box::pin(function.handle_requests(event.payload)).await)
        },
    ))
    .await
}
