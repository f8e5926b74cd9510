//! Delayed dispatch: "deliver this message to that destination at time T, once", with cancel
//! by key. A general service: erasure uses it for the email service's postponed erasure and
//! for re-sending commands; any service can use it for retries instead of RabbitMQ's
//! delayed-message plugin.
//!
//! Delivery is at least once, with the key as the message id: a message is claimed (a
//! conditional write with a short lease), sent, then marked dispatched (another conditional
//! write). Two sweeps cannot both claim it; a crash between send and mark lets the claim
//! expire, and the next sweep sends the same message id again, never a different one.

use crate::clock::Clock;
use crate::messages::Origin;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// The caller's name for a delayed message; scheduling the same key again is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DelayKey(String);

impl DelayKey {
    /// The longest key a caller may choose; the stored key adds the caller's namespace.
    pub const MAX_LEN: usize = 200;
    const MAX_STORED_LEN: usize = Self::MAX_LEN + 80;

    pub fn parse(raw: impl Into<String>) -> Result<Self, String> {
        Self::checked(raw.into(), Self::MAX_LEN)
    }

    /// A key as the store keeps it: the caller's namespace and the caller's key.
    pub fn stored(raw: impl Into<String>) -> Result<Self, String> {
        Self::checked(raw.into(), Self::MAX_STORED_LEN)
    }

    /// `key` in `caller`'s own namespace: `dsr/<key>` for the service itself, `svc/<name>/<key>`
    /// for a platform service. A caller cannot write `/` into its name (configuration) and its
    /// key is always prefixed, so no caller can reach another's keys, or the service's.
    pub fn scoped(caller: &Caller, key: &DelayKey) -> DelayKey {
        match caller {
            Caller::Service(name) => DelayKey(format!("svc/{name}/{}", key.0)),
            Caller::Internal => DelayKey(format!("dsr/{}", key.0)),
        }
    }

    fn checked(raw: String, max: usize) -> Result<Self, String> {
        let fine = !raw.is_empty()
            && raw.len() <= max
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/#@".contains(&b));
        if fine {
            Ok(Self(raw))
        } else {
            Err(format!(
                "a delay key is 1-{max} characters of A-Z a-z 0-9 - _ . : / # @, not `{}`",
                raw.chars().take(64).collect::<String>()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DelayKey {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<DelayKey> for String {
    fn from(key: DelayKey) -> Self {
        key.0
    }
}

/// Where a delayed message goes when its time comes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Destination {
    Sqs {
        queue_url: String,
    },
    /// Published by the RabbitMQ bridge (through the outbound queue).
    Rabbitmq {
        exchange: String,
        routing_key: String,
    },
}

/// What other services send to `schedule-requests`. Contract: `docs/messages.schema.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleRequest {
    Schedule {
        version: u32,
        key: DelayKey,
        deliver_at: DateTime<Utc>,
        destination: Destination,
        payload: serde_json::Value,
    },
    Cancel {
        version: u32,
        key: DelayKey,
    },
}

impl crate::messages::QueueMessage for ScheduleRequest {
    const VERSION: u32 = 1;
    const NAME: &'static str = "a schedule request";
    fn version(&self) -> u32 {
        match self {
            ScheduleRequest::Schedule { version, .. } | ScheduleRequest::Cancel { version, .. } => {
                *version
            }
        }
    }
}

/// Who scheduled a message, once admitted: the service itself, or a platform service by the
/// name its configuration gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Internal,
    Service(String),
}

/// One platform service allowed to use delayed dispatch through the broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedCaller {
    /// Names the caller's key namespace (`svc/<name>/...`): a-z, 0-9, `-` and `_`.
    pub name: String,
    /// The RabbitMQ user it publishes as (checked by RabbitMQ, carried by the bridge).
    pub broker_user: String,
    /// Where its messages may go: RabbitMQ exchanges, each with a routing-key pattern.
    pub destinations: Vec<AllowedDestination>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedDestination {
    pub exchange: String,
    /// A topic pattern: words separated by `.`, `*` one word, `#` any number (default `#`).
    #[serde(default = "any_routing_key")]
    pub routing_key: String,
}

fn any_routing_key() -> String {
    "#".into()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallersFile {
    #[serde(default)]
    callers: Vec<AllowedCaller>,
}

/// Who may schedule what. The service itself may deliver to its own queues (`internal_queues`:
/// the watchdog's checks go to the confirmations queue) and to RabbitMQ; a platform service
/// only to the exchanges its entry allows, never to the service's own exchanges (everything
/// under the namespace: commands, confirmations, schedule, events) nor to any SQS queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchPolicy {
    pub internal_queues: Vec<String>,
    pub callers: Vec<AllowedCaller>,
    /// The service's RabbitMQ namespace: `<namespace>.` exchanges are its own.
    pub namespace: String,
}

/// What an admitted schedule request does, in its caller's key namespace.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    Schedule(DelayedMessage),
    Cancel(DelayKey),
}

impl DispatchPolicy {
    /// Reads the callers (YAML or JSON: `callers: [{name, broker_user, destinations}]`) and
    /// checks that none may reach the service's own exchanges.
    pub fn new(
        callers_yaml: Option<&str>,
        namespace: impl Into<String>,
        internal_queues: Vec<String>,
    ) -> Result<Self, String> {
        let namespace = namespace.into();
        let file: CallersFile = match callers_yaml.map(str::trim).filter(|t| !t.is_empty()) {
            Some(text) => serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?,
            None => CallersFile::default(),
        };
        let mut names = std::collections::HashSet::new();
        let mut users = std::collections::HashSet::new();
        for caller in &file.callers {
            let fine_name = !caller.name.is_empty()
                && caller.name.len() <= 64
                && caller
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
            if !fine_name {
                return Err(format!(
                    "caller name `{}`: 1-64 characters of a-z 0-9 - _",
                    caller.name
                ));
            }
            if !names.insert(caller.name.as_str()) || !users.insert(caller.broker_user.as_str()) {
                return Err(format!(
                    "caller `{}` or its broker user is listed twice",
                    caller.name
                ));
            }
            for allowed in &caller.destinations {
                if allowed.exchange.is_empty() || is_own_exchange(&namespace, &allowed.exchange) {
                    return Err(format!(
                        "caller `{}` may not be given exchange `{}`: the service's own exchanges (`{namespace}.*`) are not destinations",
                        caller.name, allowed.exchange
                    ));
                }
            }
        }
        Ok(Self {
            internal_queues,
            callers: file.callers,
            namespace,
        })
    }

    /// Every exchange a caller may have messages published to (the bridge declares them).
    pub fn destination_exchanges(&self) -> impl Iterator<Item = &str> {
        self.callers
            .iter()
            .flat_map(|c| c.destinations.iter().map(|d| d.exchange.as_str()))
    }

    /// Checks a request against who sent it, and puts its key in the sender's namespace; or
    /// says why it is refused (the reason goes to the dead-letter queue with the message).
    pub fn admit(&self, origin: &Origin, request: ScheduleRequest) -> Result<Admitted, String> {
        let caller = match origin {
            Origin::Internal => Caller::Internal,
            Origin::Broker(user) => {
                let Some(allowed) = self.callers.iter().find(|c| &c.broker_user == user) else {
                    return Err(format!(
                        "{origin} is not allowed to use delayed dispatch (no caller entry)"
                    ));
                };
                Caller::Service(allowed.name.clone())
            }
        };
        match request {
            ScheduleRequest::Cancel { key, .. } => {
                Ok(Admitted::Cancel(DelayKey::scoped(&caller, &key)))
            }
            ScheduleRequest::Schedule {
                key,
                deliver_at,
                destination,
                payload,
                ..
            } => {
                self.check_destination(&caller, origin, &destination)?;
                Ok(Admitted::Schedule(DelayedMessage {
                    key: DelayKey::scoped(&caller, &key),
                    deliver_at,
                    destination,
                    payload,
                }))
            }
        }
    }

    fn check_destination(
        &self,
        caller: &Caller,
        origin: &Origin,
        destination: &Destination,
    ) -> Result<(), String> {
        match (caller, destination) {
            (Caller::Internal, Destination::Sqs { queue_url }) => {
                if self.internal_queues.iter().any(|q| q == queue_url) {
                    Ok(())
                } else {
                    Err(
                        "the SQS queue is not one of the service's delayed-dispatch destinations"
                            .into(),
                    )
                }
            }
            (Caller::Internal, Destination::Rabbitmq { .. }) => Ok(()),
            (Caller::Service(_), Destination::Sqs { .. }) => Err(format!(
                "{origin} may not deliver to SQS queues; only to its allowed exchanges"
            )),
            (
                Caller::Service(name),
                Destination::Rabbitmq {
                    exchange,
                    routing_key,
                },
            ) => {
                let allowed = self
                    .callers
                    .iter()
                    .find(|c| &c.name == name)
                    .is_some_and(|c| {
                        c.destinations.iter().any(|d| {
                            &d.exchange == exchange && topic_matches(&d.routing_key, routing_key)
                        })
                    });
                if allowed && !is_own_exchange(&self.namespace, exchange) {
                    Ok(())
                } else {
                    Err(format!(
                        "{origin} may not deliver to exchange `{exchange}` with routing key `{routing_key}`"
                    ))
                }
            }
        }
    }
}

fn is_own_exchange(namespace: &str, exchange: &str) -> bool {
    exchange
        .strip_prefix(namespace)
        .is_some_and(|rest| rest.starts_with('.'))
        || exchange.is_empty()
        || exchange.starts_with("amq.")
}

/// RabbitMQ's topic matching: `*` is one word, `#` zero or more.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(word), Some(key)) if word == key => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = if routing_key.is_empty() {
        Vec::new()
    } else {
        routing_key.split('.').collect()
    };
    go(&p, &k)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayedMessage {
    pub key: DelayKey,
    pub deliver_at: DateTime<Utc>,
    pub destination: Destination,
    pub payload: serde_json::Value,
}

impl DelayedMessage {
    /// Times are kept to the millisecond, as stored; so a repeat compares equal.
    pub fn normalized(mut self) -> Self {
        self.deliver_at = DateTime::from_timestamp_millis(self.deliver_at.timestamp_millis())
            .unwrap_or(self.deliver_at);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleOutcome {
    Created,
    /// The same message under the same key was already scheduled: nothing changed.
    Unchanged,
    /// The key was scheduled with another time or content: it now holds this one.
    Moved,
    /// The key's message was already sent (this is a duplicate of it); it is not sent again.
    AlreadyDispatched,
    /// The key's message was already sent, and this is another message under the same key:
    /// keys are used once (and remembered [`DispatchSettings::keep_dispatched`] after their
    /// delivery), so it is refused rather than silently dropped.
    KeySpent,
}

/// How far ahead a message may be scheduled. Further is refused: a time past year 9999 would
/// sort before today as stored and be sent at once, and nothing here should wait a decade.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::days(3653);

/// Why `deliver_at` cannot be scheduled at `now`, if it cannot. A time in the past is fine:
/// the message is sent at once.
pub fn unschedulable(deliver_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<String> {
    (deliver_at - now > MAX_SCHEDULE_AHEAD).then(|| {
        format!(
            "deliver_at {} is more than {} days ahead; schedule it nearer (and again from there)",
            deliver_at.to_rfc3339(),
            MAX_SCHEDULE_AHEAD.num_days()
        )
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    NotFound,
    AlreadyDispatched,
}

#[derive(Debug, thiserror::Error)]
#[error("delayed dispatch: {}", crate::ports::chain(.0.as_ref()))]
pub struct DispatchError(#[source] pub crate::ports::Cause);

pub trait DelayedStore: Send + Sync {
    fn upsert(
        &self,
        message: &DelayedMessage,
    ) -> impl Future<Output = Result<ScheduleOutcome, DispatchError>> + Send;
    fn cancel(
        &self,
        key: &DelayKey,
    ) -> impl Future<Output = Result<CancelOutcome, DispatchError>> + Send;
    /// Messages due at `now` that nobody holds a live claim on, earliest first.
    fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DelayedMessage>, DispatchError>> + Send;
    /// Claims the message for sending until `until`, if it is still due as read (same
    /// `deliver_at`, not cancelled, not dispatched, no live claim). False: someone else has it.
    fn claim(
        &self,
        message: &DelayedMessage,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, DispatchError>> + Send;
    /// Ends a claim held until `held_until` early (its send failed), so the next sweep sends
    /// the message again at once instead of after the claim. The message stays spent for
    /// re-scheduling: the failed send may have arrived. False: the claim is no longer this one.
    fn release_claim(
        &self,
        message: &DelayedMessage,
        held_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, DispatchError>> + Send;
    /// Marks a claimed message sent; kept until `forget_at` (TTL), then removed.
    fn mark_dispatched(
        &self,
        message: &DelayedMessage,
        forget_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, DispatchError>> + Send;
}

/// Wakes the dispatcher at a given time (EventBridge Scheduler's one-time schedules).
pub trait WakeUps: Send + Sync {
    fn wake_at(
        &self,
        key: &DelayKey,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), DispatchError>> + Send;
    fn forget(&self, key: &DelayKey) -> impl Future<Output = Result<(), DispatchError>> + Send;
}

/// Sends a message to its destination with `message_id`.
pub trait Sender: Send + Sync {
    fn send(
        &self,
        destination: &Destination,
        message_id: &str,
        payload: &serde_json::Value,
    ) -> impl Future<Output = Result<(), DispatchError>> + Send;
}

#[derive(Debug, Clone, Copy)]
pub struct DispatchSettings {
    /// Messages due sooner than this are left to the recurring sweep (late by at most one
    /// sweep interval); later ones get their own one-time wake-up.
    pub wake_after: Duration,
    /// How long a claim holds before another sweep may send the message again.
    pub claim_for: Duration,
    /// How long a dispatched message's record is kept (then the table's TTL removes it).
    pub keep_dispatched: Duration,
    /// Bound on one sweep's work.
    pub batch_limit: usize,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            wake_after: Duration::minutes(15),
            claim_for: Duration::minutes(2),
            keep_dispatched: Duration::days(7),
            batch_limit: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchReport {
    pub due: usize,
    pub sent: usize,
    /// Claimed by another sweep meanwhile.
    pub skipped: usize,
    pub failed: usize,
}

pub struct Dispatcher<S, W, X, C> {
    pub store: S,
    pub wake_ups: W,
    pub sender: X,
    pub clock: C,
    pub settings: DispatchSettings,
}

impl<S: DelayedStore, W: WakeUps, X: Sender, C: Clock> Dispatcher<S, W, X, C> {
    pub async fn schedule(
        &self,
        message: &DelayedMessage,
    ) -> Result<ScheduleOutcome, DispatchError> {
        let message = &message.clone().normalized();
        let outcome = self.store.upsert(message).await?;
        if matches!(outcome, ScheduleOutcome::Created | ScheduleOutcome::Moved) {
            if message.deliver_at - self.clock.now() > self.settings.wake_after {
                self.wake_ups
                    .wake_at(&message.key, message.deliver_at)
                    .await?;
            } else if outcome == ScheduleOutcome::Moved {
                // Moved into the sweep's range: an earlier wake-up would only find nothing.
                self.wake_ups.forget(&message.key).await?;
            }
        }
        tracing::info!(key = message.key.as_str(), deliver_at = %message.deliver_at, outcome = ?outcome, "delayed message scheduled");
        Ok(outcome)
    }

    pub async fn cancel(&self, key: &DelayKey) -> Result<CancelOutcome, DispatchError> {
        let outcome = self.store.cancel(key).await?;
        if outcome == CancelOutcome::Cancelled {
            self.wake_ups.forget(key).await?;
        }
        tracing::info!(key = key.as_str(), outcome = ?outcome, "delayed message cancel");
        Ok(outcome)
    }

    /// Sends everything due. Safe to run concurrently with itself.
    pub async fn dispatch_due(&self) -> Result<DispatchReport, DispatchError> {
        let now = self.clock.now();
        let due = self.store.due(now, self.settings.batch_limit).await?;
        let mut report = DispatchReport {
            due: due.len(),
            ..DispatchReport::default()
        };
        // Bounded concurrency: fast enough for thousands due at once, gentle on the targets.
        use futures::StreamExt;
        let results: Vec<Result<bool, DispatchError>> = futures::stream::iter(due)
            .map(|message| async move { self.dispatch_one(&message).await })
            .buffer_unordered(32)
            .collect()
            .await;
        for result in results {
            match result {
                Ok(true) => report.sent += 1,
                Ok(false) => report.skipped += 1,
                Err(err) => {
                    tracing::warn!(error = %err, "delayed message not sent; the next sweep retries");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    async fn dispatch_one(&self, message: &DelayedMessage) -> Result<bool, DispatchError> {
        let now = self.clock.now();
        let until = now + self.settings.claim_for;
        if !self.store.claim(message, now, until).await? {
            return Ok(false);
        }
        if let Err(err) = self
            .sender
            .send(&message.destination, message.key.as_str(), &message.payload)
            .await
        {
            // Without this, a failed send waited out its claim (two minutes) before the next
            // try; a chain of delayed steps under flaky AWS grew late by minutes per failure.
            if let Err(release) = self
                .store
                .release_claim(message, until, self.clock.now())
                .await
            {
                tracing::warn!(error = %release, "claim not released; it runs out by itself");
            }
            return Err(err);
        }
        crate::kill_point::reached("dispatch.delivered");
        self.store
            .mark_dispatched(message, now + self.settings.keep_dispatched)
            .await?;
        Ok(true)
    }
}

/// Shared adapters (one instance serving several roles or handlers) are ports too.
impl<T: WakeUps> WakeUps for std::sync::Arc<T> {
    async fn wake_at(&self, key: &DelayKey, at: DateTime<Utc>) -> Result<(), DispatchError> {
        (**self).wake_at(key, at).await
    }
    async fn forget(&self, key: &DelayKey) -> Result<(), DispatchError> {
        (**self).forget(key).await
    }
}

impl<T: Sender> Sender for std::sync::Arc<T> {
    async fn send(
        &self,
        destination: &Destination,
        message_id: &str,
        payload: &serde_json::Value,
    ) -> Result<(), DispatchError> {
        (**self).send(destination, message_id, payload).await
    }
}

impl<T: DelayedStore> DelayedStore for std::sync::Arc<T> {
    async fn upsert(&self, message: &DelayedMessage) -> Result<ScheduleOutcome, DispatchError> {
        (**self).upsert(message).await
    }
    async fn cancel(&self, key: &DelayKey) -> Result<CancelOutcome, DispatchError> {
        (**self).cancel(key).await
    }
    async fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DelayedMessage>, DispatchError> {
        (**self).due(now, limit).await
    }
    async fn claim(
        &self,
        message: &DelayedMessage,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, DispatchError> {
        (**self).claim(message, now, until).await
    }
    async fn release_claim(
        &self,
        message: &DelayedMessage,
        held_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, DispatchError> {
        (**self).release_claim(message, held_until, now).await
    }
    async fn mark_dispatched(
        &self,
        message: &DelayedMessage,
        forget_at: DateTime<Utc>,
    ) -> Result<bool, DispatchError> {
        (**self).mark_dispatched(message, forget_at).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLERS: &str = r#"
callers:
  - name: billing
    broker_user: svc-billing
    destinations:
      - { exchange: billing.retries, routing_key: "invoice.*" }
"#;

    fn policy() -> DispatchPolicy {
        DispatchPolicy::new(
            Some(CALLERS),
            "gdpr",
            vec!["https://sqs/confirmations".into()],
        )
        .unwrap()
    }

    fn schedule(key: &str, destination: Destination) -> ScheduleRequest {
        ScheduleRequest::Schedule {
            version: 1,
            key: DelayKey::parse(key).unwrap(),
            deliver_at: Utc::now(),
            destination,
            payload: serde_json::json!({"subject": "alice"}),
        }
    }

    fn rabbit(exchange: &str, routing_key: &str) -> Destination {
        Destination::Rabbitmq {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        }
    }

    #[test]
    fn a_platform_service_reaches_only_its_allowed_exchanges_in_its_own_namespace() {
        let billing = Origin::Broker("svc-billing".into());
        match policy().admit(
            &billing,
            schedule("check:01J:email:1", rabbit("billing.retries", "invoice.42")),
        ) {
            Ok(Admitted::Schedule(m)) => {
                assert_eq!(m.key.as_str(), "svc/billing/check:01J:email:1")
            }
            other => panic!("{other:?}"),
        }
        for (destination, why) in [
            (
                rabbit("gdpr.commands", "erasure.profile"),
                "may not deliver to exchange `gdpr.commands`",
            ),
            (
                rabbit("billing.retries", "refund.1"),
                "routing key `refund.1`",
            ),
            (rabbit("other.exchange", "invoice.1"), "other.exchange"),
            (
                Destination::Sqs {
                    queue_url: "https://sqs/confirmations".into(),
                },
                "may not deliver to SQS",
            ),
        ] {
            let refused = policy()
                .admit(&billing, schedule("k", destination))
                .unwrap_err();
            assert!(refused.contains(why), "{refused}");
        }
        // Cancelling `check:*` reaches only the caller's own key of that name.
        match policy().admit(
            &billing,
            ScheduleRequest::Cancel {
                version: 1,
                key: DelayKey::parse("check:01J:email:1").unwrap(),
            },
        ) {
            Ok(Admitted::Cancel(key)) => assert_eq!(key.as_str(), "svc/billing/check:01J:email:1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn strangers_are_refused_and_the_service_keeps_its_own_keys_and_queues() {
        let stranger = Origin::Broker("mallory".into());
        let refused = policy()
            .admit(
                &stranger,
                schedule("k", rabbit("billing.retries", "invoice.1")),
            )
            .unwrap_err();
        assert!(
            refused.contains("broker user `mallory` is not allowed"),
            "{refused}"
        );

        let confirmations = Destination::Sqs {
            queue_url: "https://sqs/confirmations".into(),
        };
        match policy().admit(
            &Origin::Internal,
            schedule("check:01J:email:1", confirmations),
        ) {
            Ok(Admitted::Schedule(m)) => assert_eq!(m.key.as_str(), "dsr/check:01J:email:1"),
            other => panic!("{other:?}"),
        }
        let elsewhere = Destination::Sqs {
            queue_url: "https://sqs/work".into(),
        };
        assert!(policy()
            .admit(&Origin::Internal, schedule("k", elsewhere))
            .is_err());
    }

    #[test]
    fn no_caller_may_be_given_the_services_own_exchanges() {
        for exchange in ["gdpr.commands", "gdpr.events", "amq.topic", ""] {
            let yaml = format!(
                "callers: [{{name: x, broker_user: x, destinations: [{{exchange: \"{exchange}\"}}]}}]"
            );
            assert!(
                DispatchPolicy::new(Some(&yaml), "gdpr", vec![]).is_err(),
                "{exchange}"
            );
        }
        assert!(DispatchPolicy::new(
            Some("callers: [{name: A/b, broker_user: x, destinations: []}]"),
            "gdpr",
            vec![]
        )
        .is_err());
        assert!(DispatchPolicy::new(None, "gdpr", vec![])
            .unwrap()
            .callers
            .is_empty());
    }

    #[test]
    fn topic_patterns_match_as_rabbitmq_does() {
        for (pattern, key, expected) in [
            ("#", "", true),
            ("#", "a.b", true),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.#", "a", true),
            ("a.#.c", "a.x.y.c", true),
            ("a.b", "a.c", false),
            ("*", "", false),
        ] {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} {key}");
        }
    }
}
