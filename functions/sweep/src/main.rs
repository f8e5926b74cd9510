use dsr_adapters::wiring::{aws_config, DeskConfig};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let desk = DeskConfig::from_env()?.desk(&aws_config().await, "sweep");
    let settings = dsr_sweep::settings_from_lookup(|name| std::env::var(name).ok())?;
    // EventBridge Scheduler's payload only says "now"; accept whatever it sends.
    run(service_fn(|_: LambdaEvent<serde_json::Value>| async {
        dsr_sweep::handle(&desk, settings).await.map(|_| ())
    }))
    .await
}
