use dsr_adapters::collect::Collectors;
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_adapters::s3::{self, S3ReportStore};
use dsr_adapters::sqs::SqsOutbox;
use dsr_adapters::wiring::{aws_config, DeskConfig};
use dsr_domain::{SubjectHasher, SystemClock};
use dsr_report::{load_registry, ReportSettings, ReportWorker};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("report");
    let env = |name: &str| std::env::var(name).ok();
    let config = DeskConfig::from_env()?;
    let aws = aws_config().await;
    let required = |name: &str| env(name).ok_or_else(|| format!("{name} is not set"));
    let worker = ReportWorker {
        store: DynamoRequestStore::new(
            aws_sdk_dynamodb::Client::new(&aws),
            &config.requests_table,
            "report",
        ),
        clock: SystemClock,
        hasher: SubjectHasher::new(&config.subject_hash_key),
        registry: load_registry(env)?,
        collectors: Collectors::new(aws_sdk_dynamodb::Client::new(&aws), s3::client(&aws), env),
        reports: S3ReportStore::new(s3::client(&aws), required("REPORTS_BUCKET")?),
        outbox: SqsOutbox::new(
            aws_sdk_sqs::Client::new(&aws),
            required("OUTBOUND_QUEUE_URL")?,
        ),
        sqs: aws_sdk_sqs::Client::new(&aws),
        queue_url: config.access_queue_url.clone(),
        dead_letter_queue_url: required("ACCESS_REQUESTS_DLQ_URL")?,
        settings: ReportSettings::from_lookup(env)?,
        owner: format!("report-{}", ulid::Ulid::new()),
    };
    run(service_fn(
        |event: LambdaEvent<aws_lambda_events::sqs::SqsEvent>| async {
            Ok::<_, Error>(worker.handle(event.payload).await)
        },
    ))
    .await
}
