use dsr_adapters::config;
use lambda_runtime::{run, service_fn, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    dsr_adapters::logging::init_for_lambda();
    dsr_adapters::emf::install_for_lambda("confirm");
    let aws = config::aws_in_lambda();
    // Secrets come from SSM Parameter Store, by the names the environment gives.
    let handler = dsr_confirm::build(&aws, &config::from_process_with_secrets(&aws).await?)?;
    // Boxed: the handler's nested future types overflow the compiler's query depth otherwise.
    run(service_fn(|event| Box::pin(handler.handle_lambda(event)))).await
}
