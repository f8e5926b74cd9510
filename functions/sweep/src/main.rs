use dsr_adapters::config::{self, Env};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("sweep");
    let sweep = dsr_sweep::build(&config::aws().await, &Env::from_process())?;
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        sweep.handle(event.payload)
    }))
    .await
}
