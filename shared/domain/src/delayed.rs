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
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// The caller's name for a delayed message; scheduling the same key again is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DelayKey(String);

impl DelayKey {
    pub fn parse(raw: impl Into<String>) -> Result<Self, String> {
        let raw = raw.into();
        let fine = !raw.is_empty()
            && raw.len() <= 200
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/#@".contains(&b));
        if fine {
            Ok(Self(raw))
        } else {
            Err(format!(
                "a delay key is 1-200 characters of A-Z a-z 0-9 - _ . : / # @, not `{}`",
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
    /// The key's message was already sent; it is not sent again.
    AlreadyDispatched,
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
        if !self
            .store
            .claim(message, now, now + self.settings.claim_for)
            .await?
        {
            return Ok(false);
        }
        self.sender
            .send(&message.destination, message.key.as_str(), &message.payload)
            .await?;
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
    async fn mark_dispatched(
        &self,
        message: &DelayedMessage,
        forget_at: DateTime<Utc>,
    ) -> Result<bool, DispatchError> {
        (**self).mark_dispatched(message, forget_at).await
    }
}
