//! Delayed dispatch's store, wake-ups and sender in memory.

use super::locked;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone)]
struct StoredDelayed {
    message: dsr_domain::delayed::DelayedMessage,
    status: &'static str,
    claimed_until: Option<DateTime<Utc>>,
}

/// Delayed messages with the DynamoDB store's conditions, for unit tests.
#[derive(Default)]
pub struct InMemoryDelayedStore {
    messages: Mutex<HashMap<String, StoredDelayed>>,
}

impl InMemoryDelayedStore {
    pub fn status(&self, key: &str) -> Option<&'static str> {
        locked(&self.messages).get(key).map(|m| m.status)
    }
}

impl dsr_domain::delayed::DelayedStore for InMemoryDelayedStore {
    async fn upsert(
        &self,
        message: &dsr_domain::delayed::DelayedMessage,
    ) -> Result<dsr_domain::delayed::ScheduleOutcome, dsr_domain::delayed::DispatchError> {
        use dsr_domain::delayed::ScheduleOutcome as O;
        let mut messages = locked(&self.messages);
        let fresh = StoredDelayed {
            message: message.clone(),
            status: "scheduled",
            claimed_until: None,
        };
        Ok(match messages.get(message.key.as_str()) {
            None => {
                messages.insert(message.key.as_str().to_owned(), fresh);
                O::Created
            }
            // Being sent counts as sent (as in the DynamoDB store): the send may have arrived.
            Some(stored)
                if matches!(stored.status, "dispatched" | "dispatching")
                    && stored.message == *message =>
            {
                O::AlreadyDispatched
            }
            Some(stored) if matches!(stored.status, "dispatched" | "dispatching") => O::KeySpent,
            Some(stored) if stored.status == "scheduled" && stored.message == *message => {
                O::Unchanged
            }
            Some(_) => {
                messages.insert(message.key.as_str().to_owned(), fresh);
                O::Moved
            }
        })
    }

    async fn cancel(
        &self,
        key: &dsr_domain::delayed::DelayKey,
    ) -> Result<dsr_domain::delayed::CancelOutcome, dsr_domain::delayed::DispatchError> {
        use dsr_domain::delayed::CancelOutcome as O;
        let mut messages = locked(&self.messages);
        Ok(match messages.get_mut(key.as_str()) {
            None => O::NotFound,
            Some(stored) if stored.status == "dispatched" => O::AlreadyDispatched,
            Some(stored) => {
                stored.status = "cancelled";
                O::Cancelled
            }
        })
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<dsr_domain::delayed::DelayedMessage>, dsr_domain::delayed::DispatchError> {
        let messages = locked(&self.messages);
        let mut due: Vec<_> = messages
            .values()
            .filter(|m| m.message.deliver_at <= now)
            .filter(|m| {
                m.status == "scheduled"
                    || (m.status == "dispatching" && m.claimed_until.is_some_and(|c| c < now))
            })
            .map(|m| m.message.clone())
            .collect();
        due.sort_by_key(|m| m.deliver_at);
        due.truncate(limit);
        Ok(due)
    }

    async fn claim(
        &self,
        message: &dsr_domain::delayed::DelayedMessage,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, dsr_domain::delayed::DispatchError> {
        let mut messages = locked(&self.messages);
        let Some(stored) = messages.get_mut(message.key.as_str()) else {
            return Ok(false);
        };
        let claimable = stored.message.deliver_at == message.deliver_at
            && (stored.status == "scheduled"
                || (stored.status == "dispatching"
                    && stored.claimed_until.is_some_and(|c| c < now)));
        if claimable {
            stored.status = "dispatching";
            stored.claimed_until = Some(until);
        }
        Ok(claimable)
    }

    async fn release_claim(
        &self,
        message: &dsr_domain::delayed::DelayedMessage,
        held_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, dsr_domain::delayed::DispatchError> {
        let mut messages = locked(&self.messages);
        let Some(stored) = messages.get_mut(message.key.as_str()) else {
            return Ok(false);
        };
        let ours = stored.status == "dispatching"
            && stored.claimed_until == Some(held_until)
            && stored.message.deliver_at == message.deliver_at;
        if ours {
            stored.claimed_until = Some(now - chrono::Duration::milliseconds(1));
        }
        Ok(ours)
    }

    async fn mark_dispatched(
        &self,
        message: &dsr_domain::delayed::DelayedMessage,
        _forget_at: DateTime<Utc>,
    ) -> Result<bool, dsr_domain::delayed::DispatchError> {
        let mut messages = locked(&self.messages);
        match messages.get_mut(message.key.as_str()) {
            Some(stored) if stored.status == "dispatching" => {
                stored.status = "dispatched";
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Records wake-ups and sends; can be told to fail sends.
#[derive(Default)]
pub struct RecordingDispatchPorts {
    pub wakes: Mutex<HashMap<String, DateTime<Utc>>>,
    pub sent: Mutex<Vec<(String, serde_json::Value)>>,
    pub failing_sends: AtomicBool,
}

impl dsr_domain::delayed::WakeUps for RecordingDispatchPorts {
    async fn wake_at(
        &self,
        key: &dsr_domain::delayed::DelayKey,
        at: DateTime<Utc>,
    ) -> Result<(), dsr_domain::delayed::DispatchError> {
        locked(&self.wakes).insert(key.as_str().to_owned(), at);
        Ok(())
    }

    async fn forget(
        &self,
        key: &dsr_domain::delayed::DelayKey,
    ) -> Result<(), dsr_domain::delayed::DispatchError> {
        locked(&self.wakes).remove(key.as_str());
        Ok(())
    }
}

impl dsr_domain::delayed::Sender for RecordingDispatchPorts {
    async fn send(
        &self,
        _destination: &dsr_domain::delayed::Destination,
        message_id: &str,
        payload: &serde_json::Value,
    ) -> Result<(), dsr_domain::delayed::DispatchError> {
        if self.failing_sends.load(Ordering::SeqCst) {
            return Err(dsr_domain::delayed::DispatchError(
                "destination down (simulated)".into(),
            ));
        }
        locked(&self.sent).push((message_id.to_owned(), payload.clone()));
        Ok(())
    }
}
