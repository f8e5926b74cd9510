//! The erasure function: an erasure request's message (SQS `erasure-requests`) becomes one
//! obligation per service in the registry and one `erase_subject` command to each (see
//! `dsr_domain::erasure`). It also sends the commands to vendors that take batches: those wait
//! on `vendor-erasures`, and each batch of that queue leaves in as few calls as the vendors take.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use dsr_adapters::batch::{BatchHandler, Outcome, QueueDriver, RecordHandler};
use dsr_adapters::config::{vars, ConfigError, Env};
use dsr_adapters::wiring::{self, CloudErasures};
use dsr_domain::erasure::{
    CheckScheduler, ErasureChannel, ErasureCommand, Erasures, EventOutbox, ObligationStore,
};
use dsr_domain::messages::Origin;
use dsr_domain::report::ReportStore;
use dsr_domain::{Clock, RequestKind, RequestMessage, RequestStore};
use std::sync::Arc;

/// The function as Lambda runs it: one handler, two queues (each batch comes from one).
pub struct Handler {
    pub requests: QueueDriver<ErasureRequestHandler<Arc<CloudErasures>>>,
    pub vendor_erasures: QueueDriver<VendorBatchHandler<Arc<CloudErasures>>>,
    /// The vendor-erasures queue's name: a batch whose records come from it goes there.
    vendor_queue: String,
}

impl Handler {
    pub async fn handle_lambda(
        &self,
        event: lambda_runtime::LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        if from_queue(&event.payload, &self.vendor_queue) {
            self.vendor_erasures.handle_lambda_together(event).await
        } else {
            self.requests.handle_lambda(event).await
        }
    }
}

/// Whether the batch came from the queue called `name` (an event source mapping's batch comes
/// from one queue: its ARN ends in the queue's name, as its URL does).
pub fn from_queue(event: &SqsEvent, name: &str) -> bool {
    event.records.first().is_some_and(|r| {
        r.event_source_arn
            .as_deref()
            .and_then(|arn| arn.rsplit(':').next())
            == Some(name)
    })
}

/// Builds the function from its configuration: the same wiring in Lambda and the local stack.
pub fn build(aws: &aws_config::SdkConfig, env: &Env) -> Result<Handler, ConfigError> {
    let erasures = Arc::new(wiring::erasures(aws, env, "erasure")?);
    let vendor_queue_url = env.required(vars::VENDOR_ERASURES_QUEUE_URL)?;
    let vendor_queue = vendor_queue_url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(Handler {
        requests: QueueDriver::from_env(
            "erasure",
            ErasureRequestHandler {
                erasures: erasures.clone(),
            },
            aws,
            env,
            vars::ERASURE_REQUESTS_QUEUE_URL,
        )?,
        vendor_erasures: QueueDriver::new(
            "erasure",
            VendorBatchHandler { erasures },
            aws_sdk_sqs::Client::new(aws),
            vendor_queue_url,
            Some(env.required(vars::VENDOR_ERASURES_DEAD_LETTER_QUEUE_URL)?),
        ),
        vendor_queue,
    })
}

/// One message of `erasure-requests`: one request to fan out.
pub struct ErasureRequestHandler<E> {
    pub erasures: E,
}

impl<S, X, D, E, C, R> RecordHandler for ErasureRequestHandler<Arc<Erasures<S, X, D, E, C, R>>>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
    R: ReportStore,
{
    type Message = RequestMessage;

    async fn handle(&self, message: RequestMessage, _: &Origin) -> Outcome {
        if message.kind != RequestKind::Erasure {
            return Outcome::Reject(format!(
                "a request of kind `{}` on the erasure-requests queue",
                message.kind
            ));
        }
        let id = message.request_id;
        let handled = self.erasures.fan_out(id).await;
        if let Ok(handled) = &handled {
            tracing::info!(request_id = %id, outcome = ?handled, "erasure request handled");
        }
        handled.map_or_else(Outcome::from, |_| Outcome::Done)
    }
}

/// A batch of `vendor-erasures`: commands to vendors that take many subjects per call.
pub struct VendorBatchHandler<E> {
    pub erasures: E,
}

impl<S, X, D, E, C, R> BatchHandler for VendorBatchHandler<Arc<Erasures<S, X, D, E, C, R>>>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
    R: ReportStore,
{
    type Message = ErasureCommand;

    async fn handle_all(&self, messages: Vec<(ErasureCommand, Origin)>) -> Vec<Outcome> {
        // Only the erasure and confirm functions write this queue; the bridge never forwards
        // to it, so a message stamped with a broker user did not come from them.
        let (mut commands, mut places) = (Vec::new(), Vec::new());
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(messages.len());
        for (i, (command, origin)) in messages.into_iter().enumerate() {
            match origin {
                Origin::Internal => {
                    commands.push(command);
                    places.push(i);
                    outcomes.push(None);
                }
                Origin::Broker(user) => outcomes.push(Some(Outcome::Reject(format!(
                    "an erase_subject command from broker user `{user}`: only the service sends vendor commands"
                )))),
            }
        }
        let results = self.erasures.erase_in_batches(&commands).await;
        for (i, result) in places.into_iter().zip(results) {
            outcomes[i] = Some(result.map_or_else(Outcome::from, |_| Outcome::Done));
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Retry(None)))
            .collect()
    }
}

#[cfg(test)]
mod use_cases;

#[cfg(test)]
mod tests {
    #[test]
    fn a_batch_goes_to_the_queue_it_came_from() {
        let event = |arn: Option<&str>| {
            let mut record = aws_lambda_events::sqs::SqsMessage::default();
            record.event_source_arn = arn.map(str::to_owned);
            let mut event = aws_lambda_events::sqs::SqsEvent::default();
            event.records.push(record);
            event
        };
        let vendors = "dsr-VendorErasuresQueue-X1";
        assert!(super::from_queue(
            &event(Some(
                "arn:aws:sqs:eu-west-1:123456789012:dsr-VendorErasuresQueue-X1"
            )),
            vendors
        ));
        assert!(!super::from_queue(
            &event(Some(
                "arn:aws:sqs:eu-west-1:123456789012:dsr-ErasureRequestsQueue-X1"
            )),
            vendors
        ));
        // Not even a suffix of another queue's name.
        assert!(!super::from_queue(
            &event(Some(
                "arn:aws:sqs:eu-west-1:1:my-dsr-VendorErasuresQueue-X1"
            )),
            vendors
        ));
        assert!(!super::from_queue(&event(None), vendors));
        assert!(!super::from_queue(
            &aws_lambda_events::sqs::SqsEvent::default(),
            vendors
        ));
    }
}
