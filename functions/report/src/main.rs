use dsr_adapters::config::{self, Env};
use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("report");
    let handler = dsr_report::build(&config::aws().await, &Env::from_process())?;
    run(service_fn(|event| handler.handle_lambda(event))).await
}
