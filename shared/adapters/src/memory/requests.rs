//! The requests table in memory, with the DynamoDB store's conditions (guards, leases,
//! fencing, obligations).

use super::locked;
use chrono::{DateTime, Utc};
use dsr_domain::hops::{ClickOutcome, HopLog, HopMark};
use dsr_domain::ports::{LeaseOutcome, Quota, TransitionOutcome};
use dsr_domain::{
    CreateOutcome, IdempotencyKey, Lease, Request, RequestId, RequestState, RequestStore,
    StoreError, SubjectHash,
};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
struct Tables {
    requests: HashMap<RequestId, (Request, SubjectHash)>,
    open_guards: HashMap<(SubjectHash, dsr_domain::RequestKind), RequestId>,
    idempotency: HashMap<(SubjectHash, String), RequestId>,
    events: Vec<(RequestId, String)>,
    hops: HashMap<(dsr_domain::RequestKind, DateTime<Utc>, String), HopMark>,
    obligations: HashMap<(RequestId, dsr_domain::ServiceName), dsr_domain::erasure::Obligation>,
}

#[derive(Default)]
pub struct InMemoryRequestStore {
    tables: Mutex<Tables>,
    /// Hop counts fail while set (the hops table unavailable).
    failing_hops: std::sync::atomic::AtomicBool,
    /// The next lease taken answers an error after it was written (its answer lost).
    lose_next_lease_answer: std::sync::atomic::AtomicBool,
    /// The next this many reads of a request and fenced writes fail (the store unavailable).
    failing_calls: std::sync::atomic::AtomicU32,
}

impl InMemoryRequestStore {
    pub fn lose_next_lease_answer(&self) {
        self.lose_next_lease_answer
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next `calls` reads of a request (`get`) and fenced writes fail.
    pub fn fail_next_calls(&self, calls: u32) {
        self.failing_calls
            .store(calls, std::sync::atomic::Ordering::SeqCst);
    }

    fn a_call_fails(&self) -> bool {
        self.failing_calls
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
    }

    pub fn set_failing_hops(&self, failing: bool) {
        self.failing_hops
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

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
        service: &dsr_domain::ServiceName,
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

    async fn replace_receipt(
        &self,
        request_id: RequestId,
        service: &dsr_domain::ServiceName,
        receipt: &str,
    ) -> Result<(), StoreError> {
        if let Some(o) = self
            .lock()
            .obligations
            .get_mut(&(request_id, service.to_owned()))
        {
            o.receipt = Some(receipt.to_owned());
        }
        Ok(())
    }

    async fn record_answer(
        &self,
        request_id: RequestId,
        service: &dsr_domain::ServiceName,
        status: dsr_domain::erasure::ObligationStatus,
        receipt: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<dsr_domain::erasure::AnswerRecorded>, StoreError> {
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
                Ok(Some(dsr_domain::erasure::AnswerRecorded {
                    sent_at: o.sent_at,
                }))
            }
            _ => Ok(None),
        }
    }

    async fn escalate(
        &self,
        request_id: RequestId,
        service: &dsr_domain::ServiceName,
        attempts: u32,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tables = self.lock();
        match tables
            .obligations
            .get_mut(&(request_id, service.to_owned()))
        {
            Some(o)
                if o.escalated_at.is_none() && !o.status.is_done() && o.attempts == attempts =>
            {
                o.escalated_at = Some(at);
                tables.events.push((
                    request_id,
                    dsr_domain::Audited::Escalated { service }.to_string(),
                ));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn reopen(
        &self,
        request_id: RequestId,
        service: &dsr_domain::ServiceName,
        records: u64,
        _at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tables = self.lock();
        match tables
            .obligations
            .get_mut(&(request_id, service.to_owned()))
        {
            Some(o) if o.status.is_done() => {
                o.status = dsr_domain::erasure::ObligationStatus::Failed;
                o.last_error = Some(dsr_domain::erasure::reopen_note(records));
                o.reopened += 1;
                tables.events.push((
                    request_id,
                    dsr_domain::Audited::Reopened { service, records }.to_string(),
                ));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn set_release(
        &self,
        request_id: RequestId,
        service: &dsr_domain::ServiceName,
        at: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let mut tables = self.lock();
        match tables
            .obligations
            .get_mut(&(request_id, service.to_owned()))
        {
            Some(o) => Ok(*o.release_at.get_or_insert(at)),
            None => Err(StoreError::Unavailable(
                format!("request {request_id} has no obligation for `{service}`").into(),
            )),
        }
    }
}

/// Hops like the DynamoDB log: one mark per window and key, a repeat bumps `times`.
impl HopLog for InMemoryRequestStore {
    async fn mark(&self, mark: &HopMark) -> Result<(), StoreError> {
        if self.failing_hops.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "hops table unavailable (simulated)".into(),
            ));
        }
        let mut tables = self.lock();
        tables
            .hops
            .entry((mark.kind, mark.hour(), mark.key()))
            .and_modify(|m| {
                m.times += 1;
                m.last_at = mark.last_at;
            })
            .or_insert_with(|| mark.clone());
        Ok(())
    }

    async fn window(
        &self,
        kind: dsr_domain::RequestKind,
        hour: DateTime<Utc>,
    ) -> Result<Vec<HopMark>, StoreError> {
        Ok(self
            .lock()
            .hops
            .iter()
            .filter(|((k, h, _), _)| *k == kind && *h == hour)
            .map(|(_, m)| m.clone())
            .collect())
    }
}

impl RequestStore for InMemoryRequestStore {
    async fn create(
        &self,
        request: &Request,
        subject: &SubjectHash,
        idempotency_key: Option<&IdempotencyKey>,
        quota: Option<Quota>,
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
        if let Some(quota) = quota {
            let since = request.received_at - quota.window;
            let used: Vec<_> = tables
                .requests
                .values()
                .filter(|(r, hash)| {
                    hash == subject && r.kind == request.kind && r.received_at > since
                })
                .map(|(r, _)| r.received_at)
                .collect();
            if used.len() >= quota.max as usize {
                let oldest = used.into_iter().min().unwrap_or(request.received_at);
                return Ok(CreateOutcome::QuotaUsed {
                    lifts_at: oldest + quota.window,
                });
            }
        }
        tables.open_guards.insert(guard, request.id);
        if let Some(key) = idem {
            tables.idempotency.insert(key, request.id);
        }
        tables
            .requests
            .insert(request.id, (request.clone(), subject.clone()));
        let click = HopMark::click(
            request.kind,
            request.id,
            request.id,
            ClickOutcome::Created,
            request.received_at,
        );
        tables
            .hops
            .insert((click.kind, click.hour(), click.key()), click);
        Ok(CreateOutcome::Created)
    }

    async fn get(&self, id: RequestId) -> Result<Option<Request>, StoreError> {
        if self.a_call_fails() {
            return Err(StoreError::Unavailable("the store is unavailable".into()));
        }
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

    async fn forget_subject(
        &self,
        id: RequestId,
        state: RequestState,
        _at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        match self.lock().requests.get_mut(&id) {
            Some((request, _)) if request.state == state && !request.subject.is_redacted() => {
                request.subject = dsr_domain::SubjectId::redacted();
                request.identities = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn page_for_subject(
        &self,
        subject: &SubjectHash,
        before: Option<RequestId>,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        let mut mine = self.list_for_subject(subject).await?;
        mine.retain(|r| before.is_none_or(|b| r.id < b));
        mine.truncate(limit);
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
        // Expired, given up, or this owner's own (see the DynamoDB store).
        let expired = stored
            .lease
            .as_ref()
            .is_none_or(|l| l.expires_at < now || l.owner == owner);
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
        tables.events.push((
            id,
            dsr_domain::Audited::LeaseTaken {
                token: acquired.fencing_token,
                owner,
            }
            .to_string(),
        ));
        if self
            .lose_next_lease_answer
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Unavailable(
                "the lease was written; its answer was lost (simulated)".into(),
            ));
        }
        Ok(LeaseOutcome::Acquired(Box::new(acquired)))
    }

    async fn commit_fenced(
        &self,
        request: &Request,
        subject: &SubjectHash,
        token: u64,
    ) -> Result<TransitionOutcome, StoreError> {
        if self.a_call_fails() {
            return Err(StoreError::Unavailable("the store is unavailable".into()));
        }
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
        tables.events.push((
            request.id,
            dsr_domain::Audited::MovedTo(request.state).to_string(),
        ));
        Ok(TransitionOutcome::Applied)
    }

    async fn save_sources(
        &self,
        id: RequestId,
        token: u64,
        sources: &[dsr_domain::report::progress::SourceProgress],
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tables = self.lock();
        match tables.requests.get_mut(&id) {
            Some((stored, _)) if stored.fencing_token == token => {
                stored.sources = sources.to_vec();
                stored.updated_at = at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_identities(
        &self,
        id: RequestId,
        token: u64,
        identities: &dsr_domain::identity::Identities,
        audit: &dsr_domain::Audited<'_>,
        _at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tables = self.lock();
        match tables.requests.get_mut(&id) {
            Some((stored, _)) if stored.fencing_token == token && stored.identities.is_none() => {
                stored.identities = Some(identities.clone());
                tables.events.push((id, audit.to_string()));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_event(
        &self,
        id: RequestId,
        event: &dsr_domain::Audited<'_>,
        _at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.lock().events.push((id, event.to_string()));
        Ok(())
    }

    async fn mark_enqueued(
        &self,
        id: RequestId,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        if let Some((stored, _)) = self.lock().requests.get_mut(&id) {
            stored.enqueued_at = at;
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
        if request.deadline_extension.is_some()
            || !request.state.is_open()
            || request.due_at <= extension.extended_at
        {
            return Ok(false);
        }
        request.due_at = due_at;
        request.deadline_extension = Some(extension.clone());
        tables.events.push((
            id,
            dsr_domain::Audited::DeadlineExtended {
                months: extension.months,
            }
            .to_string(),
        ));
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
