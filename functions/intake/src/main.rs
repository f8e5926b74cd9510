use dsr_adapters::wiring::{aws_config, DeskConfig};
use lambda_http::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    let desk = DeskConfig::from_env()?.desk(&aws_config().await, "intake");
    run(service_fn(|request| dsr_intake::handle(&desk, request))).await
}
