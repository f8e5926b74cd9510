use dsr_adapters::delayed::DynamoDelayedStore;
use dsr_adapters::scheduler::SchedulerWaker;
use dsr_adapters::sqs::SqsDestinationSender;
use dsr_adapters::wiring::{aws_config, OUTBOUND_QUEUE_URL};
use dsr_dispatch::*;
use dsr_domain::delayed::{DispatchSettings, Dispatcher};
use dsr_domain::SystemClock;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    dsr_adapters::emf::install_for_lambda("dispatch");
    let aws = aws_config().await;
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let dispatcher = Dispatcher {
        store: DynamoDelayedStore::new(
            aws_sdk_dynamodb::Client::new(&aws),
            env(DELAYED_MESSAGES_TABLE)?,
        ),
        waker: SchedulerWaker::new(
            aws_sdk_scheduler::Client::new(&aws),
            env(SCHEDULE_GROUP)?,
            env(DISPATCH_TARGET_ARN)?,
            env(SCHEDULER_ROLE_ARN)?,
            env(SCHEDULER_DLQ_ARN)?,
        ),
        sender: SqsDestinationSender::new(aws_sdk_sqs::Client::new(&aws), env(OUTBOUND_QUEUE_URL)?),
        clock: SystemClock,
        settings: DispatchSettings::default(),
    };
    run(service_fn(|event: LambdaEvent<serde_json::Value>| async {
        handle(&dispatcher, event.payload).await
    }))
    .await
}
