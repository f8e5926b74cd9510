//! The confirm function: holders' confirmations and the watchdog's checks (SQS
//! `confirmations`) move obligations on, and with them the erasure request (see
//! `dsr_domain::erasure`).

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use dsr_domain::erasure::{
    CheckScheduler, ConfirmationsMessage, ErasureChannel, ErasureDesk, ErasureError, EventOutbox,
    ObligationStore,
};
use dsr_domain::{Clock, RequestStore};
use dsr_erasure::ErasureFunction;
use tracing::Instrument;

pub const CONFIRMATION_VERSION: u32 = 1;

/// One SQS batch of `confirmations`. Unknown requests or services, and anything that is not a
/// documented message, are dead-lettered with the reason; duplicates change nothing.
pub async fn handle<S, X, D, E, C>(
    function: &ErasureFunction<ErasureDesk<S, X, D, E, C>>,
    event: SqsEvent,
) -> SqsBatchResponse
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
{
    let mut response = SqsBatchResponse::default();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let body = record.body.as_deref().unwrap_or_default();
        let outcome = match serde_json::from_str::<ConfirmationsMessage>(body) {
            Err(err) => Err(ErasureError::Rejected(format!(
                "not a confirmation or check: {err}"
            ))),
            Ok(ConfirmationsMessage::ErasureConfirmation(c)) if c.version != CONFIRMATION_VERSION => {
                Err(ErasureError::Rejected(format!(
                    "unknown confirmation version {}",
                    c.version
                )))
            }
            Ok(ConfirmationsMessage::ErasureConfirmation(c)) => {
                function
                    .desk
                    .confirm(&c)
                    .instrument(tracing::info_span!("confirmation", request_id = %c.request_id, service = %c.service))
                    .await
                    .map(|handled| {
                    tracing::info!(request_id = %c.request_id, service = %c.service, message_id = %c.message_id, outcome = ?handled, "confirmation handled");
                })
            }
            Ok(ConfirmationsMessage::ObligationDue(due)) => {
                function
                    .desk
                    .check(&due)
                    .instrument(tracing::info_span!("check", request_id = %due.request_id, service = %due.service))
                    .await
                    .map(|handled| {
                    tracing::info!(request_id = %due.request_id, service = %due.service, attempt = due.attempt, outcome = ?handled, "obligation check handled");
                })
            }
        };
        if !function.settled(body, outcome).await {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}
