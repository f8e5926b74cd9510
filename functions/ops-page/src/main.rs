use dsr_adapters::config;
use lambda_http::{run, service_fn, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    dsr_adapters::logging::init_for_lambda();
    dsr_adapters::emf::install_for_lambda("ops-page");
    let aws = config::aws_in_lambda();
    let page = dsr_ops_page::build(&aws, &config::from_process_with_secrets(&aws).await?)?;
    run(service_fn(|request| page.handle(request))).await
}
