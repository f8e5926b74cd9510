//! Plays Lambda's SQS event source mapping: polls a queue, hands batches to the same handler
//! code that runs in Lambda, and deletes exactly the messages the handler did not report as
//! failed (`ReportBatchItemFailures`). Failed messages become visible again when their
//! visibility timeout ends, and SQS itself moves them to the dead-letter queue after
//! `maxReceiveCount` receives, as in AWS.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use futures::future::BoxFuture;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub type SqsFunction =
    Arc<dyn Fn(SqsEvent) -> BoxFuture<'static, Result<SqsBatchResponse, Error>> + Send + Sync>;

/// One queue → function mapping.
#[derive(Debug, Clone)]
pub struct EventSource {
    pub queue_url: String,
    pub queue_arn: String,
    /// Up to 10 per receive; more (up to 10,000) are gathered over `batching_window`.
    pub batch_size: i32,
    /// `MaximumBatchingWindowInSeconds`: once a message is in, how long more are gathered
    /// before the batch is handed over (zero: one receive).
    pub batching_window: Duration,
    /// Long-poll wait per receive.
    pub wait_seconds: i32,
    pub region: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    pub received: usize,
    pub succeeded: usize,
    pub failed: usize,
}

/// Receives one batch and delivers it. An empty receive returns a zero delivery.
pub async fn deliver_once(
    client: &aws_sdk_sqs::Client,
    source: &EventSource,
    function: &SqsFunction,
) -> Result<Delivery, Error> {
    let mut messages: Vec<Message> = Vec::new();
    let mut gathering_until: Option<tokio::time::Instant> = None;
    loop {
        let wait = match gathering_until {
            None => source.wait_seconds,
            Some(until) => {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                i32::from(left >= Duration::from_secs(1))
            }
        };
        let want =
            (source.batch_size - i32::try_from(messages.len()).unwrap_or(i32::MAX)).clamp(1, 10);
        let received = client
            .receive_message()
            .queue_url(&source.queue_url)
            .max_number_of_messages(want)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        messages.extend(received.messages.unwrap_or_default());
        // As Lambda does: the window opens with the first message.
        if messages.is_empty()
            || source.batching_window.is_zero()
            || messages.len() >= usize::try_from(source.batch_size).unwrap_or(10)
        {
            break;
        }
        if gathering_until.is_none() {
            gathering_until = Some(tokio::time::Instant::now() + source.batching_window);
        } else if wait == 0 {
            // Under a second left and nothing more came: a short pause, not a busy loop.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if messages.is_empty() {
        return Ok(Delivery::default());
    }
    let mut event = SqsEvent::default();
    event.records = messages.iter().map(|m| lambda_record(m, source)).collect();
    let in_batch: HashSet<&str> = messages.iter().filter_map(|m| m.message_id()).collect();

    let failed: HashSet<String> = match function(event).await {
        Ok(response) => {
            let reported: HashSet<String> = response
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier)
                .collect();
            // Lambda treats a response naming a message not in the batch as a failure of the
            // whole batch; so do we.
            if reported.iter().all(|id| in_batch.contains(id.as_str())) {
                reported
            } else {
                tracing::warn!(queue = %source.queue_arn, "handler reported unknown message ids; whole batch retried");
                in_batch.iter().map(|id| (*id).to_owned()).collect()
            }
        }
        Err(err) => {
            tracing::warn!(queue = %source.queue_arn, error = %err, "handler failed; whole batch retried");
            in_batch.iter().map(|id| (*id).to_owned()).collect()
        }
    };

    let done: Vec<DeleteMessageBatchRequestEntry> = messages
        .iter()
        .filter(|m| m.message_id().is_some_and(|id| !failed.contains(id)))
        .enumerate()
        .filter_map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle()?)
                .build()
                .ok()
        })
        .collect();
    let succeeded = done.len();
    if !done.is_empty() {
        client
            .delete_message_batch()
            .queue_url(&source.queue_url)
            .set_entries(Some(done))
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
    }
    Ok(Delivery {
        received: messages.len(),
        succeeded,
        failed: messages.len() - succeeded,
    })
}

/// Delivers until `shutdown` turns true. Errors talking to SQS are logged and retried after a
/// pause, so an emulator restart does not end the poller.
pub async fn run(
    client: aws_sdk_sqs::Client,
    source: EventSource,
    function: SqsFunction,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            delivered = deliver_once(&client, &source, &function) => {
                if let Err(err) = delivered {
                    tracing::warn!(queue = %source.queue_arn, error = %err, "polling failed; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

/// The record Lambda would put in the event for this message.
fn lambda_record(message: &Message, source: &EventSource) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = message.message_id.clone();
    record.receipt_handle = message.receipt_handle.clone();
    record.body = message.body.clone();
    record.md5_of_body = message.md5_of_body.clone();
    record.attributes = message
        .attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    // As Lambda's event source does: the bridge's `broker_user` travels here.
    record.message_attributes = message
        .message_attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| {
                    let mut attribute = aws_lambda_events::sqs::SqsMessageAttribute::default();
                    attribute.string_value = value.string_value().map(str::to_owned);
                    attribute.data_type = Some(value.data_type().to_owned());
                    (name.clone(), attribute)
                })
                .collect()
        })
        .unwrap_or_default();
    record.event_source = Some("aws:sqs".into());
    record.event_source_arn = Some(source.queue_arn.clone());
    record.aws_region = Some(source.region.clone());
    record
}

/// SQS's at-least-once delivery, made the rule: every batch goes to `copies` of the `workers`
/// (distinct instances of one function, as Lambda runs them), at the same time. A message is
/// deleted when any copy handled it, as with SQS, where any receiver's delete removes it; it
/// comes back only if every copy failed it. The proving ground's duplicates-and-races run.
pub fn duplicating(workers: Vec<SqsFunction>, copies: usize) -> SqsFunction {
    let workers = Arc::new(workers);
    Arc::new(move |event: SqsEvent| {
        let workers = workers.clone();
        Box::pin(async move {
            let mut chosen: Vec<usize> = (0..workers.len()).collect();
            fastrand::shuffle(&mut chosen);
            chosen.truncate(copies.clamp(1, workers.len().max(1)));
            let all: HashSet<String> = event
                .records
                .iter()
                .filter_map(|r| r.message_id.clone())
                .collect();
            let answers =
                futures::future::join_all(chosen.iter().map(|&i| (workers[i])(event.clone())))
                    .await;
            // Failed only where every copy failed.
            let mut failed = all;
            for answer in answers {
                let this: HashSet<String> = match answer {
                    Ok(response) => response
                        .batch_item_failures
                        .into_iter()
                        .map(|f| f.item_identifier)
                        .collect(),
                    Err(_) => failed.clone(),
                };
                failed.retain(|id| this.contains(id));
            }
            let mut response = SqsBatchResponse::default();
            response.batch_item_failures = failed
                .into_iter()
                .map(|id| {
                    let mut failure = aws_lambda_events::sqs::BatchItemFailure::default();
                    failure.item_identifier = id;
                    failure
                })
                .collect();
            Ok(response)
        })
    })
}

/// Messages to lose on purpose, as if someone deleted them from their queue: the proof that
/// the reconciliation names the hop where a message went missing, and the request.
#[derive(Debug, Default)]
pub struct Losses {
    /// (function, every substring the body must contain), each taken once.
    pending: std::sync::Mutex<Vec<(String, Vec<String>)>>,
    /// (function, body) of every message lost.
    lost: std::sync::Mutex<Vec<(String, String)>>,
}

impl Losses {
    /// The next message for `function` whose body contains every one of `needles` is deleted
    /// without reaching it.
    pub fn lose(&self, function: &str, needles: &[&str]) {
        lock(&self.pending).push((
            function.to_owned(),
            needles.iter().map(|n| (*n).to_owned()).collect(),
        ));
    }

    /// What was lost so far: (function, body).
    pub fn lost(&self) -> Vec<(String, String)> {
        lock(&self.lost).clone()
    }

    /// Whether `body` is to be lost on its way to `function` (and if so, it now is).
    fn take(&self, function: &str, body: &str) -> bool {
        let mut pending = lock(&self.pending);
        let Some(at) = pending
            .iter()
            .position(|(f, needles)| f == function && needles.iter().all(|n| body.contains(n)))
        else {
            return false;
        };
        pending.remove(at);
        lock(&self.lost).push((function.to_owned(), body.to_owned()));
        true
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// `handler` for `function`, minus the messages `losses` names: those are reported as handled,
/// so the event source deletes them, and nothing took them.
pub fn losing(function: &str, handler: SqsFunction, losses: Arc<Losses>) -> SqsFunction {
    let function = function.to_owned();
    Arc::new(move |mut event: SqsEvent| {
        let handler = handler.clone();
        let losses = losses.clone();
        let function = function.clone();
        Box::pin(async move {
            event.records.retain(|record| {
                !losses.take(&function, record.body.as_deref().unwrap_or_default())
            });
            if event.records.is_empty() {
                return Ok(SqsBatchResponse::default());
            }
            handler(event).await
        })
    })
}
