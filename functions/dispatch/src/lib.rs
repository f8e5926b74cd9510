//! The dispatch function: delayed dispatch as a service (see `dsr_domain::delayed`).
//!
//! Two kinds of invocation reach it:
//! - an SQS batch from `schedule-requests`: `schedule` and `cancel` requests from any service
//!   (RabbitMQ's `schedule` messages arrive here through the bridge);
//! - an EventBridge Scheduler wake-up, one-time (`{"wake": key}`) or the recurring safety-net
//!   sweep: either way everything due is sent.

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use dsr_domain::delayed::{DelayedMessage, DelayedStore, Dispatcher, Sender, Waker};
use dsr_domain::Clock;
use serde_json::{json, Value};

pub const DELAYED_MESSAGES_TABLE: &str = "DELAYED_MESSAGES_TABLE";
pub const SCHEDULE_GROUP: &str = "SCHEDULE_GROUP";
pub const DISPATCH_TARGET_ARN: &str = "DISPATCH_TARGET_ARN";
pub const SCHEDULER_ROLE_ARN: &str = "SCHEDULER_ROLE_ARN";
pub const SCHEDULER_DLQ_ARN: &str = "SCHEDULER_DLQ_ARN";

pub use dsr_domain::delayed::ScheduleRequest;

/// One invocation, whatever woke it. Returns what Lambda should answer: the batch response
/// for SQS, a summary for the scheduler.
pub async fn handle<S, W, X, C>(
    dispatcher: &Dispatcher<S, W, X, C>,
    event: Value,
) -> Result<Value, Box<dyn std::error::Error + Send + Sync>>
where
    S: DelayedStore,
    W: Waker,
    X: Sender,
    C: Clock,
{
    if event.get("Records").is_some() {
        let batch: SqsEvent = serde_json::from_value(event)?;
        return Ok(serde_json::to_value(
            handle_requests(dispatcher, batch).await,
        )?);
    }
    let report = dispatcher.dispatch_due().await?;
    // Woken every minute (every 2 s locally): only sweeps that found something are news.
    if report.due > 0 {
        tracing::info!(
            due = report.due,
            sent = report.sent,
            skipped = report.skipped,
            failed = report.failed,
            "dispatch sweep"
        );
    }
    if report.failed > 0 {
        // Failing makes the scheduler retry (and, in the end, dead-letter) the wake-up.
        return Err(format!("{} due messages could not be sent", report.failed).into());
    }
    Ok(json!({ "due": report.due, "sent": report.sent, "skipped": report.skipped }))
}

async fn handle_requests<S, W, X, C>(
    dispatcher: &Dispatcher<S, W, X, C>,
    batch: SqsEvent,
) -> SqsBatchResponse
where
    S: DelayedStore,
    W: Waker,
    X: Sender,
    C: Clock,
{
    let mut response = SqsBatchResponse::default();
    let mut due_now = false;
    for record in batch.records {
        let id = record.message_id.clone().unwrap_or_default();
        let body = record.body.as_deref().unwrap_or_default();
        let outcome = match serde_json::from_str::<ScheduleRequest>(body) {
            Ok(request) if request.version() != ScheduleRequest::VERSION => Err(format!(
                "unknown schedule request version {}",
                request.version()
            )),
            Ok(ScheduleRequest::Schedule {
                key,
                deliver_at,
                destination,
                payload,
                ..
            }) => {
                due_now |= deliver_at <= dispatcher.clock.now();
                let message = DelayedMessage {
                    key,
                    deliver_at,
                    destination,
                    payload,
                };
                dispatcher
                    .schedule(&message)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Ok(ScheduleRequest::Cancel { key, .. }) => dispatcher
                .cancel(&key)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(err) => Err(format!("malformed schedule request: {err}")),
        };
        if let Err(reason) = outcome {
            // Retried, then dead-lettered by the queue's redrive policy.
            tracing::warn!(message_id = %id, %reason, "schedule request not taken");
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    if due_now {
        // Something was asked for "now" (or the past): no need to wait for the sweep.
        if let Err(err) = dispatcher.dispatch_due().await {
            tracing::warn!(error = %err, "immediate dispatch failed; the sweep will retry");
        }
    }
    response
}

#[cfg(test)]
mod tests;
