use dsr_adapters::config::{self, Env};
use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("erasure");
    let handler = dsr_erasure::build(&config::aws().await, &Env::from_process())?;
    // Boxed: the handler's nested future types overflow the compiler's query depth otherwise.
    run(service_fn(|event| Box::pin(handler.handle_lambda(event)))).await
}
