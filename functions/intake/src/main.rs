use dsr_adapters::config::{self, Env};
use lambda_http::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("intake");
    let api = dsr_intake::build(&config::aws().await, &Env::from_process())?;
    run(service_fn(|request| api.handle(request))).await
}
