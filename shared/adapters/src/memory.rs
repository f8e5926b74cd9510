//! In-memory adapters with the same semantics as the cloud ones (conditional writes included),
//! for unit tests of handlers and use cases. Not for production: nothing survives a restart.

use chrono::{DateTime, Utc};
use dsr_domain::ports::{LeaseOutcome, TransitionOutcome};
use dsr_domain::{
    CreateOutcome, IdempotencyKey, Lease, QueueError, Request, RequestId, RequestMessage,
    RequestState, RequestStore, StoreError, SubjectHash, WorkQueue,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A lock that survives a panicking holder: test doubles should not cascade failures.
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Tables {
    requests: HashMap<RequestId, (Request, SubjectHash)>,
    open_guards: HashMap<(SubjectHash, dsr_domain::RequestKind), RequestId>,
    idempotency: HashMap<(SubjectHash, String), RequestId>,
    events: Vec<(RequestId, String)>,
    submitted: HashMap<dsr_domain::RequestKind, u64>,
    obligations: HashMap<(RequestId, String), dsr_domain::erasure::Obligation>,
}

#[derive(Default)]
pub struct InMemoryRequestStore {
    tables: Mutex<Tables>,
}

impl InMemoryRequestStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        locked(&self.tables)
    }

    /// The audit events recorded for a request, oldest first.
    pub fn events(&self, id: RequestId) -> Vec<String> {
        self.lock()
            .events
            .iter()
            .filter(|(r, _)| *r == id)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

impl dsr_domain::erasure::ObligationStore for InMemoryRequestStore {
    async fn plan(
        &self,
        request_id: RequestId,
        obligations: &[dsr_domain::erasure::Obligation],
        fencing_token: u64,
    ) -> Result<Vec<dsr_domain::erasure::Obligation>, StoreError> {
        let mut tables = self.lock();
        let fenced = tables
            .requests
            .get(&request_id)
            .is_none_or(|(r, _)| r.fencing_token != fencing_token);
        if fenced {
            return Err(StoreError::Unavailable("fenced out".into()));
        }
        for obligation in obligations {
            tables
                .obligations
                .entry((request_id, obligation.service.clone()))
                .or_insert_with(|| obligation.clone());
        }
        Ok(tables
            .obligations
            .values()
            .filter(|o| o.request_id == request_id)
            .cloned()
            .collect())
    }

    async fn obligations(
        &self,
        request_id: RequestId,
    ) -> Result<Vec<dsr_domain::erasure::Obligation>, StoreError> {
        Ok(self
            .lock()
            .obligations
            .values()
            .filter(|o| o.request_id == request_id)
            .cloned()
            .collect())
    }

    async fn record_send(
        &self,
        request_id: RequestId,
        service: &str,
        attempt: u32,
        status: dsr_domain::erasure::ObligationStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tables = self.lock();
        match tables
            .obligations
            .get_mut(&(request_id, service.to_owned()))
        {
            Some(o) if o.attempts + 1 == attempt && !o.status.is_done() => {
                o.attempts = attempt;
                o.status = status;
                o.sent_at = Some(at);
                o.last_error = error.map(str::to_owned);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_answer(
        &self,
        request_id: RequestId,
        service: &str,
        status: dsr_domain::erasure::ObligationStatus,
        receipt: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        use dsr_domain::erasure::ObligationStatus::{Failed, Pending, Sent};
        let mut tables = self.lock();
        match tables
            .obligations
            .get_mut(&(request_id, service.to_owned()))
        {
            Some(o)
                if !o.status.is_done()
                    && (status != Failed || matches!(o.status, Pending | Sent)) =>
            {
                o.status = status;
                o.receipt = Some(receipt.to_owned());
                if status != Failed {
                    o.confirmed_at = Some(at);
                    o.last_error = None;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn escalate(
        &self,
        request_id: RequestId,
        service: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tables = self.lock();
        match tables
            .obligations
            .get_mut(&(request_id, service.to_owned()))
        {
            Some(o) if o.escalated_at.is_none() => {
                o.escalated_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl RequestStore for InMemoryRequestStore {
    async fn create(
        &self,
        request: &Request,
        subject: &SubjectHash,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<CreateOutcome, StoreError> {
        let mut tables = self.lock();
        let idem = idempotency_key.map(|k| (subject.clone(), k.as_str().to_owned()));
        if let Some(earlier) = idem.as_ref().and_then(|k| tables.idempotency.get(k)) {
            return Ok(CreateOutcome::IdempotentReplay(*earlier));
        }
        let guard = (subject.clone(), request.kind);
        if let Some(open) = tables.open_guards.get(&guard) {
            return Ok(CreateOutcome::OpenRequestExists(*open));
        }
        tables.open_guards.insert(guard, request.id);
        if let Some(key) = idem {
            tables.idempotency.insert(key, request.id);
        }
        tables
            .requests
            .insert(request.id, (request.clone(), subject.clone()));
        *tables.submitted.entry(request.kind).or_insert(0) += 1;
        Ok(CreateOutcome::Created)
    }

    async fn get(&self, id: RequestId) -> Result<Option<Request>, StoreError> {
        Ok(self.lock().requests.get(&id).map(|(r, _)| r.clone()))
    }

    async fn list_for_subject(&self, subject: &SubjectHash) -> Result<Vec<Request>, StoreError> {
        let mut mine: Vec<Request> = self
            .lock()
            .requests
            .values()
            .filter(|(_, owner)| owner == subject)
            .map(|(r, _)| r.clone())
            .collect();
        mine.sort_by_key(|r| std::cmp::Reverse(r.id));
        Ok(mine)
    }

    async fn save_transition(
        &self,
        request: &Request,
        subject: &SubjectHash,
        from: RequestState,
    ) -> Result<TransitionOutcome, StoreError> {
        let mut tables = self.lock();
        let Some((stored, _)) = tables.requests.get_mut(&request.id) else {
            return Ok(TransitionOutcome::StateChanged);
        };
        if stored.state != from {
            return Ok(TransitionOutcome::StateChanged);
        }
        stored.state = request.state;
        stored.updated_at = request.updated_at;
        stored.attempts = request.attempts;
        stored.last_error.clone_from(&request.last_error);
        if from.is_open() && !request.state.is_open() {
            tables.open_guards.remove(&(subject.clone(), request.kind));
        }
        Ok(TransitionOutcome::Applied)
    }

    async fn acquire_lease(
        &self,
        id: RequestId,
        owner: &str,
        working: RequestState,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let mut tables = self.lock();
        let Some((stored, _)) = tables.requests.get_mut(&id) else {
            return Ok(LeaseOutcome::NotWorkable(None));
        };
        let expired = stored.lease.as_ref().is_none_or(|l| l.expires_at < now);
        let takeable =
            stored.state == RequestState::Received || (stored.state == working && expired);
        if !takeable {
            return Ok(match (&stored.lease, stored.state == working) {
                (Some(lease), true) => LeaseOutcome::Held {
                    until: lease.expires_at,
                },
                _ => LeaseOutcome::NotWorkable(Some(stored.state)),
            });
        }
        stored.state = working;
        stored.updated_at = now;
        stored.fencing_token += 1;
        stored.lease = Some(Lease {
            owner: owner.to_owned(),
            expires_at: now + ttl,
        });
        let acquired = stored.clone();
        tables
            .events
            .push((id, format!("lease:{}", acquired.fencing_token)));
        Ok(LeaseOutcome::Acquired(Box::new(acquired)))
    }

    async fn commit_fenced(
        &self,
        request: &Request,
        subject: &SubjectHash,
        token: u64,
    ) -> Result<TransitionOutcome, StoreError> {
        let mut tables = self.lock();
        let Some((stored, _)) = tables.requests.get_mut(&request.id) else {
            return Ok(TransitionOutcome::Fenced);
        };
        if stored.fencing_token != token {
            return Ok(TransitionOutcome::Fenced);
        }
        let was_open = stored.state.is_open();
        stored.state = request.state;
        stored.updated_at = request.updated_at;
        stored.attempts = request.attempts;
        stored.last_error.clone_from(&request.last_error);
        stored.report.clone_from(&request.report);
        stored.lease = None;
        if was_open && !request.state.is_open() {
            tables.open_guards.remove(&(subject.clone(), request.kind));
        }
        tables
            .events
            .push((request.id, request.state.as_str().to_owned()));
        Ok(TransitionOutcome::Applied)
    }

    async fn record_event(
        &self,
        id: RequestId,
        event: &str,
        _at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.lock().events.push((id, event.to_owned()));
        Ok(())
    }

    async fn mark_enqueued(&self, id: RequestId, at: DateTime<Utc>) -> Result<(), StoreError> {
        if let Some((stored, _)) = self.lock().requests.get_mut(&id) {
            stored.enqueued_at = Some(at);
        }
        Ok(())
    }

    async fn in_state(
        &self,
        state: RequestState,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        let mut found: Vec<Request> = self
            .lock()
            .requests
            .values()
            .map(|(r, _)| r)
            .filter(|r| r.state == state)
            .cloned()
            .collect();
        found.sort_by_key(|r| (r.due_at, r.id));
        found.truncate(limit);
        Ok(found)
    }

    async fn count(
        &self,
        kind: dsr_domain::RequestKind,
        state: RequestState,
    ) -> Result<usize, StoreError> {
        Ok(self
            .lock()
            .requests
            .values()
            .filter(|(r, _)| r.kind == kind && r.state == state)
            .count())
    }

    async fn submitted(&self, kind: dsr_domain::RequestKind) -> Result<u64, StoreError> {
        Ok(self.lock().submitted.get(&kind).copied().unwrap_or(0))
    }

    async fn extend_deadline(
        &self,
        id: RequestId,
        due_at: DateTime<Utc>,
        extension: &dsr_domain::DeadlineExtension,
    ) -> Result<bool, StoreError> {
        let mut tables = self.lock();
        let Some((request, _)) = tables.requests.get_mut(&id) else {
            return Ok(false);
        };
        if request.deadline_extension.is_some() || !request.state.is_open() {
            return Ok(false);
        }
        request.due_at = due_at;
        request.deadline_extension = Some(extension.clone());
        tables
            .events
            .push((id, format!("deadline_extended:{}m", extension.months)));
        Ok(true)
    }

    /// In memory the trail keeps no times: every entry carries the time of the call.
    async fn audit_trail(&self, id: RequestId) -> Result<Vec<dsr_domain::AuditEvent>, StoreError> {
        let now = Utc::now();
        Ok(self
            .events(id)
            .into_iter()
            .map(|event| dsr_domain::AuditEvent {
                at: now,
                event,
                actor: "memory".into(),
            })
            .collect())
    }
}

/// Records every message; can be switched to fail, to test what happens when SQS is down.
#[derive(Default)]
pub struct InMemoryWorkQueue {
    sent: Mutex<Vec<RequestMessage>>,
    announced: Mutex<Vec<dsr_domain::messages::DomainEvent>>,
    unavailable: AtomicBool,
}

impl InMemoryWorkQueue {
    pub fn sent(&self) -> Vec<RequestMessage> {
        locked(&self.sent).clone()
    }

    /// The `request_submitted` events announced with the messages.
    pub fn announced(&self) -> Vec<dsr_domain::messages::DomainEvent> {
        locked(&self.announced).clone()
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }
}

impl WorkQueue for InMemoryWorkQueue {
    async fn enqueue(
        &self,
        message: &RequestMessage,
        announcement: Option<&dsr_domain::messages::DomainEvent>,
    ) -> Result<(), QueueError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(QueueError {
                request_id: message.request_id,
                kind: message.kind,
                reason: "queue unavailable (simulated)".into(),
            });
        }
        locked(&self.sent).push(message.clone());
        if let Some(announcement) = announcement {
            locked(&self.announced).push(announcement.clone());
        }
        Ok(())
    }
}

/// Links of the form `memory://<key>?ttl=<seconds>`, for handler tests.
#[derive(Default)]
pub struct InMemoryReportLinks;

impl dsr_domain::ReportLinks for InMemoryReportLinks {
    async fn link(&self, key: &str, ttl: std::time::Duration) -> Result<String, StoreError> {
        Ok(format!("memory://{key}?ttl={}", ttl.as_secs()))
    }
}

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
            Some(stored) if stored.status == "dispatched" => O::AlreadyDispatched,
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

impl dsr_domain::delayed::Waker for RecordingDispatchPorts {
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

/// Records erasure commands, scheduled checks and events; a holder can be set to answer like a
/// third-party API (`Answered`) or to fail.
#[derive(Default)]
pub struct RecordingErasurePorts {
    pub commands: Mutex<Vec<dsr_domain::erasure::ErasureCommand>>,
    pub checks: Mutex<Vec<(dsr_domain::erasure::ObligationDue, DateTime<Utc>)>>,
    pub events: Mutex<Vec<dsr_domain::messages::DomainEvent>>,
    /// Per service: what `send` answers instead of `Sent`.
    pub answers: Mutex<HashMap<String, dsr_domain::erasure::Delivery>>,
}

impl RecordingErasurePorts {
    pub fn commands(&self) -> Vec<dsr_domain::erasure::ErasureCommand> {
        locked(&self.commands).clone()
    }
    pub fn checks(&self) -> Vec<(dsr_domain::erasure::ObligationDue, DateTime<Utc>)> {
        locked(&self.checks).clone()
    }
    pub fn events(&self) -> Vec<dsr_domain::messages::DomainEvent> {
        locked(&self.events).clone()
    }
}

impl dsr_domain::erasure::ErasureChannel for RecordingErasurePorts {
    async fn send(
        &self,
        command: &dsr_domain::erasure::ErasureCommand,
        _how: &dsr_domain::registry::EraseIn,
    ) -> Result<dsr_domain::erasure::Delivery, dsr_domain::erasure::ChannelError> {
        locked(&self.commands).push(command.clone());
        Ok(self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&command.service)
            .cloned()
            .unwrap_or(dsr_domain::erasure::Delivery::Sent))
    }
}

impl dsr_domain::erasure::CheckScheduler for RecordingErasurePorts {
    async fn schedule(
        &self,
        check: &dsr_domain::erasure::ObligationDue,
        at: DateTime<Utc>,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        locked(&self.checks).push((check.clone(), at));
        Ok(())
    }
}

impl dsr_domain::erasure::EventOutbox for RecordingErasurePorts {
    async fn publish(
        &self,
        event: &dsr_domain::messages::DomainEvent,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        locked(&self.events).push(event.clone());
        Ok(())
    }
}
