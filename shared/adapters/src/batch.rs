//! The one SQS batch driver every queue-fed function runs on.
//!
//! A function only says what one message means ([`RecordHandler`]); the driver does the rest,
//! the same way for all of them:
//! - reads the body as the handler's message type (one version check per type, in
//!   [`dsr_domain::messages::parse`]); a body that is not one is rejected;
//! - runs each record in a span carrying its SQS message id and the request it is about;
//! - turns each [`Outcome`] into Lambda's partial batch answer: done records are left out of
//!   `batchItemFailures` (Lambda deletes them), a retry changes the message's visibility to the
//!   delay asked for, a rejection moves the message to the dead-letter queue with its reason;
//! - stops before the invocation's deadline: records it did not reach are reported as failures
//!   (they come back), instead of Lambda timing out the whole batch and re-running the records
//!   that were done.

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use dsr_domain::messages::{parse, Origin, QueueMessage};
use std::future::Future;
use std::time::{Duration, SystemTime};
use tracing::Instrument;

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled (or nothing to do, as for a duplicate): delete it.
    Done,
    /// Try again later: after `Some(delay)`, or after the queue's visibility timeout.
    Retry(Option<Duration>),
    /// It can never succeed: to the dead-letter queue, with the reason.
    Reject(String),
    /// Something outside the message is not there yet (the broker is down, nobody is bound
    /// to receive it): the message is fine and must not use up its receives towards the
    /// dead-letter queue. The driver puts a fresh copy back on the queue after a growing delay
    /// (5 s doubling to 5 minutes), carrying since when it waits, and deletes this one. After
    /// `dead_letter_after` of waiting (`None`: never) it is dead-lettered with the reason.
    WaitOut {
        reason: String,
        dead_letter_after: Option<Duration>,
    },
}

/// When a message whose handling failed for a passing reason (a store error, another worker
/// busy) is tried again.
pub const RETRY_SOON: Duration = Duration::from_secs(30);

/// Message attributes the driver keeps on a message it puts back to wait: how many times it
/// waited, and since when (RFC 3339).
pub const WAITS_ATTRIBUTE: &str = "waits";
pub const WAITING_SINCE_ATTRIBUTE: &str = "waiting_since";

/// The delay before the `waits`-th retry of a waiting message: 5 s doubling, at most 5 min (a
/// broker back after a 10-minute outage has its traffic within 5 minutes).
pub fn wait_delay(waits: u32) -> Duration {
    wait_delay_from(Duration::from_secs(5), waits)
}

fn wait_delay_from(base: Duration, waits: u32) -> Duration {
    base.saturating_mul(1u32 << waits.saturating_sub(1).min(10))
        .min(Duration::from_secs(300))
}

/// A waiting message's alarm: past this it is logged as an alert, not a warning.
const WAIT_ALERT_AFTER: Duration = Duration::from_secs(300);

/// An erasure use case's error: a rejection can never succeed (to the dead-letter queue);
/// anything else may later (store down, another worker busy).
impl Outcome {
    /// Another worker holds the request for `left` more: back when its lease runs out (and a
    /// second later), once, so that a lease a vanished worker keeps costs one receive, not
    /// every receive the message has.
    pub fn after_lease(left: chrono::Duration) -> Self {
        let wait = left
            .to_std()
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        Outcome::Retry(Some(wait + Duration::from_secs(1)))
    }
}

impl From<dsr_domain::erasure::ErasureError> for Outcome {
    fn from(err: dsr_domain::erasure::ErasureError) -> Self {
        match err {
            dsr_domain::erasure::ErasureError::Rejected(reason) => Outcome::Reject(reason),
            dsr_domain::erasure::ErasureError::Busy {
                lease_left: Some(left),
                ..
            } => Outcome::after_lease(left),
            err => {
                tracing::warn!(error = %err, "message returned to its queue for a later attempt");
                // Sooner than the queue's visibility timeout (six times the function's).
                Outcome::Retry(Some(RETRY_SOON))
            }
        }
    }
}

/// What one function does with one message of its queue.
pub trait RecordHandler: Send + Sync {
    type Message: QueueMessage;

    /// `origin`: who sent it (the broker user the bridge vouches for, or the service itself).
    fn handle(
        &self,
        message: Self::Message,
        origin: &Origin,
    ) -> impl Future<Output = Outcome> + Send;

    /// Runs once after every batch (delayed dispatch sends what became due meanwhile).
    fn after_batch(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A queue, its dead-letter queue, and the function that consumes it.
pub struct QueueDriver<H> {
    pub handler: H,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_queue_url: Option<String>,
    /// Records are not started when less than this is left before the deadline.
    reserve: Duration,
    /// Names the function in logs.
    function: &'static str,
    /// The first delay of a waiting message (doubling from there).
    wait_base: Duration,
}

impl<H> QueueDriver<H> {
    /// `dead_letter_queue_url`: where rejected messages go with their reason; without one a
    /// rejected message is left to the queue's redrive policy (logged with the reason).
    pub fn new(
        function: &'static str,
        handler: H,
        sqs: aws_sdk_sqs::Client,
        queue_url: impl Into<String>,
        dead_letter_queue_url: Option<String>,
    ) -> Self {
        Self {
            handler,
            sqs,
            queue_url: queue_url.into(),
            dead_letter_queue_url,
            reserve: Duration::from_secs(5),
            function,
            wait_base: Duration::from_secs(5),
        }
    }

    /// The driver of a function that consumes the queue named by `queue_variable`, and
    /// dead-letters to `DEAD_LETTER_QUEUE_URL` (required: a poison message must end there with
    /// its reason).
    pub fn from_env(
        function: &'static str,
        handler: H,
        aws: &aws_config::SdkConfig,
        env: &crate::config::Env,
        queue_variable: &str,
    ) -> Result<Self, crate::config::ConfigError> {
        use crate::config::vars::DEAD_LETTER_QUEUE_URL;
        Ok(Self::new(
            function,
            handler,
            aws_sdk_sqs::Client::new(aws),
            env.required(queue_variable)?,
            Some(env.required(DEAD_LETTER_QUEUE_URL)?),
        ))
    }

    /// Records are not started when less than `reserve` is left before the deadline.
    pub fn with_reserve(mut self, reserve: Duration) -> Self {
        self.reserve = reserve;
        self
    }

    /// The first delay of a waiting message (tests: none, to see many waits quickly).
    pub fn with_wait_base(mut self, base: Duration) -> Self {
        self.wait_base = base;
        self
    }

    /// Does what `outcome` says with the record; true when it is done with (handled or
    /// dead-lettered).
    async fn apply(&self, record: &SqsMessage, body: &str, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Done => true,
            Outcome::Retry(delay) => {
                if let Some(delay) = delay {
                    self.delay(record, delay).await;
                }
                false
            }
            Outcome::Reject(reason) => self.dead_letter(body, &reason).await,
            Outcome::WaitOut {
                reason,
                dead_letter_after,
            } => {
                self.wait_out(record, body, &reason, dead_letter_after)
                    .await
            }
        }
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> bool {
        match &self.dead_letter_queue_url {
            Some(dlq) => match crate::sqs::dead_letter(&self.sqs, dlq, body, reason).await {
                Ok(()) => true,
                Err(err) => {
                    // Not acknowledged then: the queue's redrive moves it after its retries.
                    tracing::error!(error = %err, %reason, "could not dead-letter the message");
                    false
                }
            },
            None => {
                tracing::error!(%reason, "message refused; the queue's redrive will dead-letter it");
                false
            }
        }
    }

    /// Puts a fresh copy of a waiting message back on its queue (a new message: its receives
    /// start from zero), or dead-letters it once it waited `dead_letter_after`. True when the
    /// original may be deleted.
    async fn wait_out(
        &self,
        record: &SqsMessage,
        body: &str,
        reason: &str,
        dead_letter_after: Option<Duration>,
    ) -> bool {
        let now = chrono::Utc::now();
        let attribute = |name: &str| {
            record
                .message_attributes
                .get(name)
                .and_then(|a| a.string_value.clone())
        };
        let since = attribute(WAITING_SINCE_ATTRIBUTE)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map_or(now, |t| t.with_timezone(&chrono::Utc));
        let waits: u32 = attribute(WAITS_ATTRIBUTE)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
            + 1;
        let waited = (now - since).to_std().unwrap_or_default();
        if dead_letter_after.is_some_and(|limit| waited >= limit) {
            let reason = format!("{reason} (waited {} s)", waited.as_secs());
            return self.dead_letter(body, &reason).await;
        }
        let delay = wait_delay_from(self.wait_base, waits);
        if waited >= WAIT_ALERT_AFTER {
            // The line operators alert on: something the service needs has been away long.
            tracing::error!(function = self.function, %reason, waits, waited_seconds = waited.as_secs(), alert = "message_waiting", "message still waiting; put back on its queue");
        } else {
            tracing::warn!(function = self.function, %reason, waits, retry_in_seconds = delay.as_secs(), "message waits; put back on its queue");
        }
        // The sink names the function (every metric's `Function` dimension).
        dsr_domain::metrics::emit(dsr_domain::metrics::Metric::count("MessagesWaiting", 1));
        let string = |value: String| {
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
        };
        let mut attributes = std::collections::HashMap::new();
        for (name, value) in &record.message_attributes {
            if let (Some(text), false) = (
                value.string_value.clone(),
                name == WAITS_ATTRIBUTE || name == WAITING_SINCE_ATTRIBUTE,
            ) {
                if let Ok(value) = string(text) {
                    attributes.insert(name.clone(), value);
                }
            }
        }
        for (name, value) in [
            (WAITS_ATTRIBUTE, waits.to_string()),
            (WAITING_SINCE_ATTRIBUTE, since.to_rfc3339()),
        ] {
            if let Ok(value) = string(value) {
                attributes.insert(name.to_owned(), value);
            }
        }
        let sent = self
            .sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(i32::try_from(delay.as_secs()).unwrap_or(300))
            .set_message_attributes(Some(attributes))
            .send()
            .await;
        match sent {
            Ok(_) => true,
            Err(err) => {
                // Then it counts as a receive after all, but it is not lost.
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(err), "could not put the waiting message back; it comes back after a delay");
                self.delay(record, delay).await;
                false
            }
        }
    }

    /// Makes a failed message come back after `delay` instead of the queue's default.
    async fn delay(&self, record: &SqsMessage, delay: Duration) {
        let Some(receipt) = record.receipt_handle.as_deref() else {
            return;
        };
        // SQS takes visibility timeouts up to 12 hours.
        let seconds = i32::try_from(delay.as_secs().min(43_199)).unwrap_or(43_199);
        // Tried a few times: without it the message stays away for the queue's whole
        // visibility timeout (90 minutes for the work queues), not the retry's delay.
        let mut tries = 0;
        while let Err(err) = self
            .sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds)
            .send()
            .await
        {
            tries += 1;
            if tries == 3 {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(err), "could not delay the retry; the queue's timeout applies (the reconciliation re-drives a request stuck so)");
                break;
            }
        }
    }
}

impl<H: RecordHandler> QueueDriver<H> {
    /// The Lambda handler.
    pub async fn handle_lambda(
        &self,
        event: lambda_runtime::LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let deadline = (event.context.deadline > 0).then(|| event.context.deadline());
        Ok(self.handle(event.payload, deadline).await)
    }

    /// One batch, to be answered by `deadline` (none: no limit).
    pub async fn handle(&self, event: SqsEvent, deadline: Option<SystemTime>) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        let mut records = event.records.into_iter();
        for record in records.by_ref() {
            let sqs_id = record.message_id.clone().unwrap_or_default();
            if deadline.is_some_and(|d| left_until(d) < self.reserve) {
                tracing::warn!(
                    function = self.function,
                    "deadline near: the rest of the batch comes back"
                );
                response.batch_item_failures.push(failure(sqs_id));
                break;
            }
            // A record still running when the deadline is near is given up (as a crash would
            // be: every effect is keyed and every lease expires) and comes back, rather than
            // Lambda killing the invocation and re-running the records already done.
            let settled = match deadline {
                Some(d) => {
                    let budget = left_until(d).saturating_sub(self.reserve / 2);
                    match tokio::time::timeout(budget, self.settle(&record, &sqs_id)).await {
                        Ok(settled) => settled,
                        Err(_) => {
                            tracing::warn!(
                                function = self.function,
                                message_id = %sqs_id,
                                "deadline near: a record still running was given up; it and the rest of the batch come back"
                            );
                            response.batch_item_failures.push(failure(sqs_id));
                            break;
                        }
                    }
                }
                None => self.settle(&record, &sqs_id).await,
            };
            if !settled {
                response.batch_item_failures.push(failure(sqs_id));
            }
        }
        // Whatever was not reached comes back, unharmed.
        response
            .batch_item_failures
            .extend(records.map(|r| failure(r.message_id.unwrap_or_default())));
        self.handler.after_batch().await;
        dsr_domain::kill_point::reached("batch.handled");
        response
    }

    /// True when the message is done with (handled or dead-lettered).
    async fn settle(&self, record: &SqsMessage, sqs_id: &str) -> bool {
        let body = record.body.as_deref().unwrap_or_default();
        let message = match parse::<H::Message>(body) {
            Ok(message) => message,
            Err(reason) => {
                let span =
                    tracing::info_span!("message", function = self.function, message_id = %sqs_id);
                return self.dead_letter(body, &reason).instrument(span).await;
            }
        };
        let request_id = message
            .request_id()
            .map(|id| id.to_string())
            .unwrap_or_default();
        // Every line logged for this message carries the request id: the correlation id.
        let span = tracing::info_span!("message", function = self.function, message_id = %sqs_id, request_id = %request_id);
        async {
            let outcome = self.handler.handle(message, &origin_of(record)).await;
            self.apply(record, body, outcome).await
        }
        .instrument(span)
        .await
    }
}

/// What a function does with a whole batch at once, for work that is cheaper together (a
/// vendor's batch erasure call): the messages that could be read, with who sent each.
pub trait BatchHandler: Send + Sync {
    type Message: QueueMessage;

    /// One outcome per message, in the order given.
    fn handle_all(
        &self,
        messages: Vec<(Self::Message, Origin)>,
    ) -> impl Future<Output = Vec<Outcome>> + Send;
}

impl<H: BatchHandler> QueueDriver<H> {
    /// The Lambda handler of a queue whose messages are handled together.
    pub async fn handle_lambda_together(
        &self,
        event: lambda_runtime::LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let deadline = (event.context.deadline > 0).then(|| event.context.deadline());
        Ok(self.handle_together(event.payload, deadline).await)
    }

    /// One batch, handled as one, answered by `deadline`: what is not settled by then comes
    /// back (every effect is keyed: doing a record again is safe), as a crash would.
    pub async fn handle_together(
        &self,
        event: SqsEvent,
        deadline: Option<SystemTime>,
    ) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        let mut readable = Vec::new();
        let mut messages = Vec::new();
        for record in &event.records {
            let sqs_id = record.message_id.clone().unwrap_or_default();
            let body = record.body.as_deref().unwrap_or_default();
            match parse::<H::Message>(body) {
                Ok(message) => {
                    messages.push((message, origin_of(record)));
                    readable.push(record);
                }
                Err(reason) => {
                    let span = tracing::info_span!("message", function = self.function, message_id = %sqs_id);
                    if !self.dead_letter(body, &reason).instrument(span).await {
                        response.batch_item_failures.push(failure(sqs_id));
                    }
                }
            }
        }
        let span =
            tracing::info_span!("batch", function = self.function, messages = messages.len());
        let work = self.handler.handle_all(messages).instrument(span);
        let outcomes = match deadline {
            Some(d) => {
                let budget = left_until(d).saturating_sub(self.reserve / 2);
                match tokio::time::timeout(budget, work).await {
                    Ok(outcomes) => Some(outcomes),
                    Err(_) => {
                        tracing::warn!(
                            function = self.function,
                            "deadline near: the batch still running was given up; it comes back"
                        );
                        None
                    }
                }
            }
            None => Some(work.await),
        };
        match outcomes {
            Some(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for record in readable {
                    let sqs_id = record.message_id.clone().unwrap_or_default();
                    let body = record.body.as_deref().unwrap_or_default();
                    // A handler that answered for fewer messages: the rest come back.
                    let outcome = outcomes.next().unwrap_or(Outcome::Retry(None));
                    let span = tracing::info_span!("message", function = self.function, message_id = %sqs_id);
                    if !self.apply(record, body, outcome).instrument(span).await {
                        response.batch_item_failures.push(failure(sqs_id));
                    }
                }
            }
            None => response.batch_item_failures.extend(
                readable
                    .into_iter()
                    .map(|r| failure(r.message_id.clone().unwrap_or_default())),
            ),
        }
        dsr_domain::kill_point::reached("batch.handled");
        response
    }
}

/// Who sent a record: the broker user the bridge stamped on it, else the service itself (only
/// its own roles and the bridge may send to its queues).
pub fn origin_of(record: &SqsMessage) -> Origin {
    record
        .message_attributes
        .get(crate::sqs::BROKER_USER_ATTRIBUTE)
        .and_then(|a| a.string_value.clone())
        .map_or(Origin::Internal, Origin::Broker)
}

fn left_until(deadline: SystemTime) -> Duration {
    deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

fn failure(item_identifier: String) -> BatchItemFailure {
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = item_identifier;
    failure
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsr_domain::{RequestId, RequestKind, RequestMessage};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A handler that answers from the message's kind and counts what it saw.
    #[derive(Default)]
    struct ByKind {
        seen: AtomicUsize,
        batches: AtomicUsize,
    }

    impl RecordHandler for ByKind {
        type Message = RequestMessage;
        async fn handle(&self, message: RequestMessage, _: &Origin) -> Outcome {
            self.seen.fetch_add(1, Ordering::SeqCst);
            match message.kind {
                RequestKind::Access => Outcome::Done,
                RequestKind::Erasure => Outcome::Retry(None),
            }
        }
        async fn after_batch(&self) {
            self.batches.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn driver() -> QueueDriver<ByKind> {
        // Never called in these tests: no retry delay, no dead-letter queue.
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .build(),
        );
        QueueDriver::new("test", ByKind::default(), sqs, "queue", None)
    }

    fn record(id: &str, body: String) -> SqsMessage {
        let mut record = SqsMessage::default();
        record.message_id = Some(id.into());
        record.body = Some(body);
        record
    }

    fn message(kind: RequestKind) -> String {
        let now = chrono::Utc::now();
        serde_json::to_string(&RequestMessage::new(RequestId::new_at(now), kind, now)).unwrap()
    }

    fn failed(response: &SqsBatchResponse) -> Vec<&str> {
        response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect()
    }

    #[tokio::test]
    async fn done_retry_and_poison_are_answered_per_record() {
        let d = driver();
        let mut event = SqsEvent::default();
        let mut wrong_version: serde_json::Value =
            serde_json::from_str(&message(RequestKind::Access)).unwrap();
        wrong_version["version"] = 9.into();
        event.records = vec![
            record("a", message(RequestKind::Access)),
            record("b", message(RequestKind::Erasure)),
            record("c", "not json".into()),
            record("d", wrong_version.to_string()),
        ];
        let response = d.handle(event, None).await;
        // Without a dead-letter queue the poison ones are left to the redrive policy.
        assert_eq!(failed(&response), ["b", "c", "d"]);
        assert_eq!(
            d.handler.seen.load(Ordering::SeqCst),
            2,
            "poison never reaches the handler"
        );
        assert_eq!(d.handler.batches.load(Ordering::SeqCst), 1);
    }

    /// Hangs on erasure requests (a vendor that never answers), answers access ones at once.
    #[derive(Default)]
    struct Slow {
        finished: AtomicUsize,
    }

    impl RecordHandler for Slow {
        type Message = RequestMessage;
        async fn handle(&self, message: RequestMessage, _: &Origin) -> Outcome {
            if message.kind == RequestKind::Erasure {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            self.finished.fetch_add(1, Ordering::SeqCst);
            Outcome::Done
        }
    }

    #[tokio::test]
    async fn a_record_that_outruns_the_deadline_is_given_up_and_the_batch_answers_in_time() {
        let sqs = driver().sqs;
        let d = QueueDriver::new("test", Slow::default(), sqs, "queue", None)
            .with_reserve(Duration::from_secs(2));
        let mut event = SqsEvent::default();
        event.records = vec![
            record("a", message(RequestKind::Access)),
            record("slow", message(RequestKind::Erasure)),
            record("c", message(RequestKind::Access)),
        ];
        let deadline = SystemTime::now() + Duration::from_secs(4);
        let response = d.handle(event, Some(deadline)).await;
        assert!(SystemTime::now() < deadline, "answered before the deadline");
        assert_eq!(failed(&response), ["slow", "c"]);
        assert_eq!(d.handler.finished.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn waiting_messages_come_back_sooner_first_then_every_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|n| wait_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(wait_delay(u32::MAX).as_secs(), 300);
    }

    #[tokio::test]
    async fn records_not_reached_before_the_deadline_come_back() {
        let d = driver().with_reserve(Duration::from_secs(5));
        let mut event = SqsEvent::default();
        event.records = (0..3)
            .map(|i| record(&format!("m{i}"), message(RequestKind::Access)))
            .collect();
        let soon = SystemTime::now() + Duration::from_secs(2);
        let response = d.handle(event.clone(), Some(soon)).await;
        assert_eq!(failed(&response), ["m0", "m1", "m2"]);
        assert_eq!(d.handler.seen.load(Ordering::SeqCst), 0);

        let later = SystemTime::now() + Duration::from_secs(600);
        let response = d.handle(event, Some(later)).await;
        assert!(failed(&response).is_empty());
        assert_eq!(d.handler.seen.load(Ordering::SeqCst), 3);
    }
}
