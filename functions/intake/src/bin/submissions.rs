use dsr_adapters::config;
use lambda_runtime::{run, service_fn, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    dsr_adapters::logging::init_for_lambda();
    dsr_adapters::emf::install_for_lambda("submissions");
    let aws = config::aws_in_lambda();
    // Secrets come from SSM Parameter Store, by the names the environment gives.
    let handler =
        dsr_intake::submissions::build(&aws, &config::from_process_with_secrets(&aws).await?)?;
    run(service_fn(|event| Box::pin(handler.handle_lambda(event)))).await
}
