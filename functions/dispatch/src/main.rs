use dsr_adapters::config::{self, Env};
use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("dispatch");
    let dispatch = dsr_dispatch::build(&config::aws().await, &Env::from_process())?;
    run(service_fn(|event| dispatch.handle_lambda(event))).await
}
