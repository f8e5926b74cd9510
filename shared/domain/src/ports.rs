//! What the domain needs from the outside world. Adapters live in `dsr-adapters`.
//!
//! Methods return `impl Future + Send` rather than `async fn` so that handlers built on them can
//! be spawned on a multi-threaded runtime (the local runner does).

pub use crate::audit::{AuditEvent, Audited};
use crate::messages::RequestMessage;
use crate::request::{IdempotencyKey, Request, RequestId, RequestKind, RequestState};
use crate::subject::SubjectHash;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;

/// The underlying failure of an adapter (an SDK error, an I/O error), kept whole rather than
/// flattened to text so that its chain of causes is still there to read.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error and every cause under it, on one line: SDK errors say little at the top ("service
/// error"), the detail is below.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let line = next.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = next.source();
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the call; worth retrying later.
    #[error("request store unavailable: {}", chain(.0.as_ref()))]
    Unavailable(#[source] Cause),
    /// A stored item could not be read back as a request: a bug or a manual edit.
    #[error("corrupt stored request {id}: {reason}")]
    Corrupt { id: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// The subject already has an open request of this kind; nothing was written.
    OpenRequestExists(RequestId),
    /// The idempotency key was used before, for this request; nothing was written.
    IdempotentReplay(RequestId),
    /// The subject made its quota of requests of this kind within the window; nothing was
    /// written. The next one is possible at `lifts_at`.
    QuotaUsed {
        lifts_at: DateTime<Utc>,
    },
}

/// At most `max` requests of a kind per subject in any `window`: held by the submission's own
/// write (no read before it), so that concurrent submissions cannot both slip under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max: u32,
    pub window: chrono::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionOutcome {
    Applied,
    /// The stored request was no longer in the expected state (someone else moved it).
    StateChanged,
    /// The caller's lease was taken over by another worker: its write is refused.
    Fenced,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds the lease: the request is in its working state and its
    /// `fencing_token` is the caller's token.
    Acquired(Box<Request>),
    /// Another worker holds the lease until then.
    Held { until: DateTime<Utc> },
    /// The request is in no state a worker takes (done, cancelled, failed), or does not exist.
    NotWorkable(Option<RequestState>),
}

/// Every store of requests is also where its component counts its hops (see [`crate::hops`]):
/// a new request's click is counted in the same write as the request.
pub trait RequestStore: crate::hops::HopLog + Send + Sync {
    /// Stores a new request, atomically with its guard ("one open request per subject and
    /// kind"), if given its idempotency key, and if given the use of one of its subject's
    /// `quota`. An open request or a replayed key wins over a used-up quota.
    fn create(
        &self,
        request: &Request,
        subject: &SubjectHash,
        idempotency_key: Option<&IdempotencyKey>,
        quota: Option<Quota>,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send;

    fn get(
        &self,
        id: RequestId,
    ) -> impl Future<Output = Result<Option<Request>, StoreError>> + Send;

    /// The subject's requests, newest first.
    fn list_for_subject(
        &self,
        subject: &SubjectHash,
    ) -> impl Future<Output = Result<Vec<Request>, StoreError>> + Send;

    /// Removes the raw subject id from a request in terminal state `state` (its keyed hash
    /// stays, and so it stays in its owner's list). False: not in that state any more.
    fn forget_subject(
        &self,
        id: RequestId,
        state: RequestState,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// At most `limit` of the subject's requests older than `before` (all, without it),
    /// newest first: one page of the user's list.
    fn page_for_subject(
        &self,
        subject: &SubjectHash,
        before: Option<RequestId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Request>, StoreError>> + Send;

    /// Moves a request from `from` to `request.state` only if it is still in `from`; releases
    /// the subject's open-request guard when the request stops being open.
    fn save_transition(
        &self,
        request: &Request,
        subject: &SubjectHash,
        from: RequestState,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send;

    /// Takes the request for a worker: from `received`, or from `working` when the previous
    /// worker's lease has expired (it died). Every acquisition increments the fencing token.
    fn acquire_lease(
        &self,
        id: RequestId,
        owner: &str,
        working: RequestState,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> impl Future<Output = Result<LeaseOutcome, StoreError>> + Send;

    /// Writes the request's new state (with attempts, last error and report) and releases the
    /// lease, only if `token` is still the request's fencing token.
    fn commit_fenced(
        &self,
        request: &Request,
        subject: &SubjectHash,
        token: u64,
    ) -> impl Future<Output = Result<TransitionOutcome, StoreError>> + Send;

    /// Writes an access request's collection progress (see [`crate::report::progress`]), only
    /// if `token` is still the request's fencing token: false if another worker took it over.
    fn save_sources(
        &self,
        id: RequestId,
        token: u64,
        sources: &[crate::report::progress::SourceProgress],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Keeps the subject's resolved identifiers on the request with their audit line, once:
    /// only if `token` is still the request's fencing token and none were kept before. False
    /// otherwise (read the request again: another worker's are the request's).
    fn record_identities(
        &self,
        id: RequestId,
        token: u64,
        identities: &crate::identity::Identities,
        audit: &Audited<'_>,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Appends an event to the request's audit trail.
    fn record_event(
        &self,
        id: RequestId,
        event: &Audited<'_>,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records when the request's work message was handed to its queue, or (`None`) that the
    /// send recorded with the request failed, so the sweep sends it soon.
    fn mark_enqueued(
        &self,
        id: RequestId,
        at: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Requests in `state`, oldest due date first, at most `limit`.
    fn in_state(
        &self,
        state: RequestState,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Request>, StoreError>> + Send;

    /// How many requests of `kind` are in `state` now.
    fn count(
        &self,
        kind: RequestKind,
        state: RequestState,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Moves an open request's deadline to `due_at`, once: refused (false) if it was extended
    /// before, is no longer open, or its deadline passed before `extension.extended_at`.
    /// Recorded in the audit trail.
    fn extend_deadline(
        &self,
        id: RequestId,
        due_at: DateTime<Utc>,
        extension: &crate::request::DeadlineExtension,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The request's audit trail, oldest first.
    fn audit_trail(
        &self,
        id: RequestId,
    ) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;
}

#[derive(Debug, thiserror::Error)]
#[error("could not enqueue the {kind} request {request_id}: {}", chain(.cause.as_ref()))]
pub struct QueueError {
    pub request_id: RequestId,
    pub kind: RequestKind,
    #[source]
    pub cause: Cause,
}

/// Hands out time-limited download links to finished reports.
pub trait ReportLinks: Send + Sync {
    fn link(
        &self,
        key: &str,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
}

/// The queues that feed the report and erasure workers.
pub trait WorkQueue: Send + Sync {
    /// Sends the work message. The platform hears of the request (`request_submitted`) from
    /// the worker that takes it: the submit path is the transaction and this send, nothing
    /// else.
    fn enqueue(
        &self,
        message: &RequestMessage,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// Events for the platform (the email service, audit), through the outbound queue.
pub trait EventOutbox: Send + Sync {
    fn publish(
        &self,
        event: &crate::messages::DomainEvent,
    ) -> impl Future<Output = Result<(), ChannelError>> + Send;

    /// Sends the notifying service (the email service) what to tell the subject.
    fn tell(
        &self,
        notice: &crate::messages::SubjectNotice,
    ) -> impl Future<Output = Result<(), ChannelError>> + Send;
}

/// A message could not be handed to its channel (queue, broker, third-party API); worth
/// another attempt.
#[derive(Debug, thiserror::Error)]
#[error("{}", chain(.0.as_ref()))]
pub struct ChannelError(#[source] pub Cause);

impl<T: EventOutbox> EventOutbox for Arc<T> {
    async fn publish(&self, event: &crate::messages::DomainEvent) -> Result<(), ChannelError> {
        (**self).publish(event).await
    }
    async fn tell(&self, notice: &crate::messages::SubjectNotice) -> Result<(), ChannelError> {
        (**self).tell(notice).await
    }
}

/// Shared adapters (one client, many handlers) are ports too.
impl<T: WorkQueue> WorkQueue for Arc<T> {
    async fn enqueue(&self, message: &RequestMessage) -> Result<(), QueueError> {
        (**self).enqueue(message).await
    }
}

impl<T: RequestStore> RequestStore for Arc<T> {
    async fn create(
        &self,
        request: &Request,
        subject: &SubjectHash,
        idempotency_key: Option<&IdempotencyKey>,
        quota: Option<Quota>,
    ) -> Result<CreateOutcome, StoreError> {
        (**self)
            .create(request, subject, idempotency_key, quota)
            .await
    }
    async fn get(&self, id: RequestId) -> Result<Option<Request>, StoreError> {
        (**self).get(id).await
    }
    async fn list_for_subject(&self, subject: &SubjectHash) -> Result<Vec<Request>, StoreError> {
        (**self).list_for_subject(subject).await
    }
    async fn page_for_subject(
        &self,
        subject: &SubjectHash,
        before: Option<RequestId>,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        (**self).page_for_subject(subject, before, limit).await
    }
    async fn forget_subject(
        &self,
        id: RequestId,
        state: RequestState,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        (**self).forget_subject(id, state, at).await
    }
    async fn save_transition(
        &self,
        request: &Request,
        subject: &SubjectHash,
        from: RequestState,
    ) -> Result<TransitionOutcome, StoreError> {
        (**self).save_transition(request, subject, from).await
    }
    async fn acquire_lease(
        &self,
        id: RequestId,
        owner: &str,
        working: RequestState,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        (**self).acquire_lease(id, owner, working, now, ttl).await
    }
    async fn commit_fenced(
        &self,
        request: &Request,
        subject: &SubjectHash,
        token: u64,
    ) -> Result<TransitionOutcome, StoreError> {
        (**self).commit_fenced(request, subject, token).await
    }
    async fn save_sources(
        &self,
        id: RequestId,
        token: u64,
        sources: &[crate::report::progress::SourceProgress],
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        (**self).save_sources(id, token, sources, at).await
    }
    async fn record_identities(
        &self,
        id: RequestId,
        token: u64,
        identities: &crate::identity::Identities,
        audit: &Audited<'_>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        (**self)
            .record_identities(id, token, identities, audit, at)
            .await
    }
    async fn record_event(
        &self,
        id: RequestId,
        event: &Audited<'_>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        (**self).record_event(id, event, at).await
    }
    async fn mark_enqueued(
        &self,
        id: RequestId,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        (**self).mark_enqueued(id, at).await
    }
    async fn in_state(
        &self,
        state: RequestState,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        (**self).in_state(state, limit).await
    }
    async fn count(&self, kind: RequestKind, state: RequestState) -> Result<usize, StoreError> {
        (**self).count(kind, state).await
    }
    async fn extend_deadline(
        &self,
        id: RequestId,
        due_at: DateTime<Utc>,
        extension: &crate::request::DeadlineExtension,
    ) -> Result<bool, StoreError> {
        (**self).extend_deadline(id, due_at, extension).await
    }
    async fn audit_trail(&self, id: RequestId) -> Result<Vec<AuditEvent>, StoreError> {
        (**self).audit_trail(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("service error")]
    struct Terse(#[source] std::io::Error);

    #[test]
    fn an_unavailable_store_keeps_its_cause_and_says_it_in_one_line() {
        let err = StoreError::Unavailable(Box::new(Terse(std::io::Error::other(
            "ResourceNotFoundException: no table t",
        ))));
        assert_eq!(
            err.to_string(),
            "request store unavailable: service error: ResourceNotFoundException: no table t"
        );
        let cause = std::error::Error::source(&err).expect("the cause is kept");
        assert_eq!(cause.to_string(), "service error");
    }
}
