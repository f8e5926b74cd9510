use dsr_adapters::wiring::{aws_config, DeskConfig};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("sweep");
    let desk = &DeskConfig::from_env()?.desk(&aws_config().await, "sweep");
    let env = |name: &str| std::env::var(name).ok();
    let settings = dsr_sweep::settings_from_lookup(env)?;
    let reconcile = dsr_sweep::reconcile_settings_from_lookup(env)?;
    // Two schedules: every minute the sweep; every 15 minutes `{"task": "reconcile"}`.
    run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move {
            if event.payload["task"] == "reconcile" {
                dsr_sweep::reconcile(desk, reconcile).await.map(|_| ())
            } else {
                dsr_sweep::handle(desk, settings).await.map(|_| ())
            }
        },
    ))
    .await
}
