use dsr_adapters::config;
use lambda_http::{run, service_fn, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    dsr_adapters::logging::init_for_lambda();
    dsr_adapters::emf::install_for_lambda("intake");
    let aws = config::aws_in_lambda();
    // Secrets come from SSM Parameter Store, by the names the environment gives.
    let api = dsr_intake::build(&aws, &config::from_process_with_secrets(&aws).await?)?;
    run(service_fn(|request| api.handle(request))).await
}
