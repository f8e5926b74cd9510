use dsr_adapters::s3::{self, S3ReportStore};
use dsr_adapters::wiring::{aws_config, DeskConfig, REPORTS_BUCKET};
use dsr_intake::{link_ttl_from_lookup, IntakeApi};
use lambda_http::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("intake");
    let aws = aws_config().await;
    let env = |name: &str| std::env::var(name).ok();
    let api = IntakeApi {
        desk: DeskConfig::from_env()?.desk(&aws, "intake"),
        reports: S3ReportStore::new(
            s3::client(&aws),
            env(REPORTS_BUCKET).ok_or("REPORTS_BUCKET is not set")?,
        ),
        link_ttl: link_ttl_from_lookup(env)?,
    };
    run(service_fn(|request| dsr_intake::handle(&api, request))).await
}
