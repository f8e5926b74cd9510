//! Requests: the use cases behind the user API (submit, list, show, cancel, download), the
//! sweep, the reconciliation and the operators' commands, written once over the ports so that
//! the intake and sweep functions, the operator CLI and the local stack share them.

mod operator;
pub mod reconcile;
mod sweep;

pub use sweep::{SweepReport, SweepSettings};

use crate::clock::Clock;
use crate::hops::{self, ClickOutcome, Hop, HopMark};
use crate::messages::RequestMessage;
use crate::metrics::{self, names, Metric};
use crate::ports::{
    CreateOutcome, Quota, ReportLinks, RequestStore, StoreError, TransitionOutcome, WorkQueue,
};
use crate::request::{IdempotencyKey, Request, RequestId, RequestKind, RequestState};
use crate::subject::{SubjectHash, SubjectHasher, SubjectId};
use chrono::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Unknown id, or somebody else's request: the two are indistinguishable on purpose.
    #[error("no such request")]
    NotFound,
    #[error("the request is {state} and can no longer be cancelled")]
    NotCancellable { state: RequestState },
    #[error("this Idempotency-Key was already used for a different submission")]
    IdempotencyKeyReused,
    #[error("the report is not ready: the request is {state}")]
    ReportNotReady { state: RequestState },
    #[error("the report has expired and was deleted; submit a new access request")]
    ReportExpired,
    #[error("the deadline cannot be extended: {0}")]
    CannotExtend(String),
    /// The extension is recorded but the subject was not told yet: the same command again
    /// tells them (an extension is told under one message id, however often).
    #[error("the deadline was extended to {due_at}, but the subject could not be told yet ({cause}); run the same command again to tell them")]
    ExtensionNotTold {
        due_at: chrono::DateTime<chrono::Utc>,
        cause: String,
    },
    #[error("the request cannot be retried: {0}")]
    CannotRetry(String),
    #[error("the cursor is not one this list gave out")]
    InvalidCursor,
    #[error("at most {max} access requests per {window_hours} hours; the next one is possible in {} seconds", .retry_after.num_seconds().max(1))]
    TooManyAccessRequests {
        max: u32,
        window_hours: i64,
        retry_after: Duration,
    },
    #[error(transparent)]
    NotCertifiable(#[from] crate::erasure::certificate::NotCertifiable),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a submission led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// A new request was accepted.
    Created(Request),
    /// The subject already had an open request of this kind; that one is returned.
    AlreadyOpen(Request),
    /// A retry of an earlier submission with the same `Idempotency-Key`.
    Replayed(Request),
}

impl Submission {
    pub fn request(&self) -> &Request {
        match self {
            Submission::Created(r) | Submission::AlreadyOpen(r) | Submission::Replayed(r) => r,
        }
    }
}

/// A time-limited download link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportLink {
    pub url: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

pub struct Requests<S, Q, C> {
    pub(crate) store: S,
    pub(crate) queue: Q,
    pub(crate) clock: C,
    pub(crate) hasher: SubjectHasher,
    pub limits: SubmitLimits,
}

/// How often one subject may start a full access collection: each one reads every source of
/// the platform, so a loop of them would be a load on everyone's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitLimits {
    pub access_requests: u32,
    pub window: Duration,
}

impl Default for SubmitLimits {
    fn default() -> Self {
        Self {
            access_requests: 5,
            window: Duration::hours(24),
        }
    }
}

/// One page of a subject's requests, newest first, and the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPage {
    pub requests: Vec<Request>,
    pub next: Option<String>,
}

/// Page sizes of the user's list.
pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;

impl<S: RequestStore + crate::erasure::ObligationStore, Q, C: Clock> Requests<S, Q, C> {
    /// Once a finished request's retention has passed, the raw subject id leaves it: the
    /// request keeps the keyed hash (its owner still finds it in their list) and the proof
    /// (who confirmed what, when), with the subject id scrubbed out of any receipt that
    /// quoted it. Returns how many requests it did this to.
    pub async fn forget_finished_subjects(
        &self,
        retention: Duration,
        limit: usize,
    ) -> Result<usize, RequestError> {
        let now = self.clock.now();
        let mut forgotten = 0;
        for state in RequestState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for request in self.store.in_state(state, limit).await? {
                if request.subject.is_redacted() || request.updated_at > now - retention {
                    continue;
                }
                let subject = request.subject.as_str();
                for obligation in self.store.obligations(request.id).await? {
                    if let Some(receipt) = obligation.receipt.as_deref() {
                        if receipt.contains(subject) {
                            let scrubbed = receipt.replace(subject, "[subject]");
                            self.store
                                .replace_receipt(request.id, &obligation.service, &scrubbed)
                                .await?;
                        }
                    }
                }
                if self.store.forget_subject(request.id, state, now).await? {
                    tracing::info!(request_id = %request.id, subject = %self.hasher.hash(&request.subject), "subject id removed after retention");
                    forgotten += 1;
                }
            }
        }
        Ok(forgotten)
    }
}

impl<S: RequestStore + crate::erasure::ObligationStore, Q, C> Requests<S, Q, C> {
    /// Where each service's erasure stands (empty for access requests), by service name.
    pub async fn progress(
        &self,
        request: &Request,
    ) -> Result<Vec<crate::erasure::Obligation>, RequestError> {
        if request.kind != RequestKind::Erasure {
            return Ok(Vec::new());
        }
        let mut obligations = self.store.obligations(request.id).await?;
        obligations.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(obligations)
    }

    /// The subject's signed certificate of their completed erasure (theirs only: anyone
    /// else's request is not found).
    pub async fn certificate(
        &self,
        subject: &SubjectId,
        id: RequestId,
        signer: &dyn crate::erasure::certificate::CertificateSigner,
    ) -> Result<crate::erasure::certificate::SignedCertificate, RequestError>
    where
        Q: WorkQueue,
        C: Clock,
    {
        let request = self.show(subject, id).await?;
        let obligations = self.progress(&request).await?;
        let verified =
            crate::erasure::certificate::NothingLeft::in_trail(&self.store.audit_trail(id).await?);
        let certificate = crate::erasure::certificate::Certificate::of(
            &request,
            &obligations,
            verified,
            self.clock.now(),
        )?;
        Ok(certificate.sign(signer))
    }
}

impl<S: RequestStore, Q: WorkQueue, C: Clock> Requests<S, Q, C> {
    pub fn new(store: S, queue: Q, clock: C, hasher: SubjectHasher) -> Self {
        Self {
            store,
            queue,
            clock,
            hasher,
            limits: SubmitLimits::default(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn hasher(&self) -> &SubjectHasher {
        &self.hasher
    }

    pub fn subject_hash(&self, subject: &SubjectId) -> SubjectHash {
        self.hasher.hash(subject)
    }

    pub async fn submit(
        &self,
        subject: &SubjectId,
        kind: RequestKind,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Submission, RequestError> {
        self.submit_via(subject, kind, idempotency_key, None).await
    }

    /// A request submitted on the subject's behalf (support, another system): the same rules
    /// as the subject's own (one open request per kind, the limit on access requests, the
    /// idempotency key), with the channel, who took it and the reference kept on the request
    /// and in its audit trail. The subject sees it in their own list.
    pub async fn submit_via(
        &self,
        subject: &SubjectId,
        kind: RequestKind,
        idempotency_key: Option<&IdempotencyKey>,
        via: Option<crate::request::SubmittedVia>,
    ) -> Result<Submission, RequestError> {
        let subject_hash = self.hasher.hash(subject);
        // The per-subject limit on access requests is held by the submission's own write.
        let quota = (kind == RequestKind::Access).then_some(Quota {
            max: self.limits.access_requests,
            window: self.limits.window,
        });
        let mut request = Request::receive(kind, subject.clone(), self.clock.now());
        request.submitted_via = via;
        // Recorded as sent in the same write that stores it (see `send_first`).
        request.enqueued_at = Some(request.received_at);
        match self
            .store
            .create(&request, &subject_hash, idempotency_key, quota)
            .await?
        {
            CreateOutcome::Created => {
                tracing::info!(request_id = %request.id, %kind, subject = %subject_hash, "request received");
                metrics::emit(
                    Metric::count(names::REQUESTS_SUBMITTED, 1).with("Kind", kind.as_str()),
                );
                crate::kill_point::reached("intake.stored");
                request.enqueued_at = self.send_first(&request, &subject_hash).await;
                Ok(Submission::Created(request))
            }
            CreateOutcome::OpenRequestExists(id) => {
                let mut open = self.stored(id).await?;
                tracing::info!(request_id = %id, %kind, subject = %subject_hash, "open request returned instead of a new one");
                self.enqueue_if_never_sent(&mut open, &subject_hash).await;
                self.count_click(kind, id, ClickOutcome::AlreadyOpen).await;
                Ok(Submission::AlreadyOpen(open))
            }
            CreateOutcome::IdempotentReplay(id) => {
                let mut earlier = self.stored(id).await?;
                if earlier.kind != kind || &earlier.subject != subject {
                    return Err(RequestError::IdempotencyKeyReused);
                }
                self.enqueue_if_never_sent(&mut earlier, &subject_hash)
                    .await;
                self.count_click(kind, id, ClickOutcome::Replayed).await;
                Ok(Submission::Replayed(earlier))
            }
            CreateOutcome::QuotaUsed { lifts_at } => {
                let now = self.clock.now();
                tracing::info!(subject = %subject_hash, %kind, "request refused: per-subject limit");
                let click = RequestId::new_at(now);
                self.count_click(kind, click, ClickOutcome::Refused).await;
                Err(RequestError::TooManyAccessRequests {
                    max: self.limits.access_requests,
                    window_hours: self.limits.window.num_hours(),
                    retry_after: (lifts_at - now).max(Duration::seconds(1)),
                })
            }
        }
    }

    async fn count_cancelled(&self, request: &Request) -> Result<(), RequestError> {
        let mark = HopMark::new(request.kind, Hop::Cancelled, request.id, request.updated_at);
        Ok(hops::take(&self.store, mark).await?)
    }

    /// Counts a click that created nothing (a new request's click is counted with it). The
    /// user has their answer either way: a click that could not be counted is logged, not
    /// refused.
    async fn count_click(&self, kind: RequestKind, request: RequestId, outcome: ClickOutcome) {
        let now = self.clock.now();
        let click = RequestId::new_at(now);
        let mark = HopMark::click(kind, click, request, outcome, now);
        if let Err(err) = hops::take(&self.store, mark).await {
            tracing::error!(request_id = %request, outcome = outcome.as_str(), error = %err, alert = "hop_not_counted", "a submission could not be counted");
        }
    }

    /// One page of the subject's requests. `cursor`: the `next` of the previous page; it only
    /// works for the subject it was made for.
    pub async fn list_page(
        &self,
        subject: &SubjectId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RequestPage, RequestError> {
        let hash = self.hasher.hash(subject);
        let before = match cursor {
            None => None,
            Some(cursor) => {
                let (id, tag) = cursor.split_once('.').ok_or(RequestError::InvalidCursor)?;
                let id: RequestId = id.parse().map_err(|_| RequestError::InvalidCursor)?;
                if tag != self.cursor_tag(&hash, id) {
                    return Err(RequestError::InvalidCursor);
                }
                Some(id)
            }
        };
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        let mut requests = self
            .store
            .page_for_subject(&hash, before, limit + 1)
            .await?;
        let next = if requests.len() > limit {
            requests.truncate(limit);
            requests
                .last()
                .map(|last| format!("{}.{}", last.id, self.cursor_tag(&hash, last.id)))
        } else {
            None
        };
        Ok(RequestPage { requests, next })
    }

    fn cursor_tag(&self, subject: &SubjectHash, after: RequestId) -> String {
        self.hasher.tag(&format!("page:{subject}:{after}"))
    }

    pub async fn list(&self, subject: &SubjectId) -> Result<Vec<Request>, RequestError> {
        Ok(self
            .store
            .list_for_subject(&self.hasher.hash(subject))
            .await?)
    }

    /// The request, if it exists and belongs to `subject`.
    pub async fn show(&self, subject: &SubjectId, id: RequestId) -> Result<Request, RequestError> {
        match self.store.get(id).await? {
            Some(request) if &request.subject == subject => Ok(request),
            // Past retention only the hash tells whose it is: it is theirs if it is in their list.
            Some(request) if request.subject.is_redacted() => {
                let hash = self.hasher.hash(subject);
                let theirs = self
                    .store
                    .page_for_subject(&hash, RequestId::following(id), 1)
                    .await?
                    .iter()
                    .any(|r| r.id == id);
                if theirs {
                    Ok(request)
                } else {
                    Err(RequestError::NotFound)
                }
            }
            _ => Err(RequestError::NotFound),
        }
    }

    /// Cancels a request that no work has started on. Cancelling twice is not an error.
    pub async fn cancel(
        &self,
        subject: &SubjectId,
        id: RequestId,
    ) -> Result<Request, RequestError> {
        let mut request = self.show(subject, id).await?;
        if request.state == RequestState::Cancelled {
            // A retry after the hop could not be counted counts it now.
            self.count_cancelled(&request).await?;
            return Ok(request);
        }
        // Once work started, the user cannot stop it (an erasure may have reached services).
        if request.state != RequestState::Received {
            return Err(RequestError::NotCancellable {
                state: request.state,
            });
        }
        let from = request.state;
        request
            .transition_to(RequestState::Cancelled, self.clock.now())
            .map_err(|illegal| RequestError::NotCancellable {
                state: illegal.from,
            })?;
        let subject_hash = self.hasher.hash(subject);
        match self
            .store
            .save_transition(&request, &subject_hash, from)
            .await?
        {
            TransitionOutcome::Applied => {
                tracing::info!(request_id = %id, subject = %subject_hash, "request cancelled");
                metrics::emit(
                    Metric::count(names::REQUESTS_CANCELLED, 1).with("Kind", request.kind.as_str()),
                );
                self.count_cancelled(&request).await?;
                Ok(request)
            }
            // A worker picked it up between our read and our write.
            TransitionOutcome::StateChanged | TransitionOutcome::Fenced => {
                let now = self.show(subject, id).await?;
                if now.state == RequestState::Cancelled {
                    Ok(now)
                } else {
                    Err(RequestError::NotCancellable { state: now.state })
                }
            }
        }
    }

    /// A download link for the subject's finished report, valid for `ttl` (never beyond the
    /// report's own expiry). Every link handed out is recorded in the audit trail. A report
    /// past its expiry gives none.
    pub async fn report_link<L: ReportLinks>(
        &self,
        subject: &SubjectId,
        id: RequestId,
        links: &L,
        ttl: std::time::Duration,
    ) -> Result<ReportLink, RequestError> {
        let request = self.show(subject, id).await?;
        let now = self.clock.now();
        let report = match (&request.report, request.state) {
            (Some(report), RequestState::ReportReady) => report.clone(),
            (_, RequestState::Expired) => return Err(RequestError::ReportExpired),
            (_, state) => return Err(RequestError::ReportNotReady { state }),
        };
        if report.expires_at <= now {
            // Past its retention: no link. The sweep deletes the report and moves the request
            // to `expired` (within its minute), so the deletion has one place.
            return Err(RequestError::ReportExpired);
        }
        let expires_at = Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .map_or(report.expires_at, |end| end.min(report.expires_at));
        let valid_for = (expires_at - now).to_std().unwrap_or_default();
        let url = links.link(&report.key, valid_for).await?;
        self.store
            .record_event(id, &crate::audit::Audited::ReportLinkIssued, now)
            .await?;
        Ok(ReportLink { url, expires_at })
    }

    /// A client's retry is the first chance to send a work message that the first try stored
    /// the request for but never sent (its answer was lost, the queue failed, or the intake
    /// died in between): sooner than the sweep. The send recorded with the request when it was
    /// stored is an intent, not a proof; one confirmed later (by a re-send) is. So a retry
    /// while the request still waits sends its work message again unless a re-send was
    /// confirmed; the worker drops a duplicate. Errors are logged, not returned: the sweep
    /// sends what this could not.
    async fn enqueue_if_never_sent(&self, request: &mut Request, subject_hash: &SubjectHash) {
        if request.state == RequestState::Received
            && request
                .enqueued_at
                .is_none_or(|sent| sent <= request.received_at)
        {
            request.enqueued_at = self.enqueue(request, subject_hash).await;
        }
    }

    async fn enqueue(
        &self,
        request: &Request,
        subject_hash: &SubjectHash,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.send_work(request, subject_hash).await
    }

    /// A new request's work message. Its send was recorded with the request (`enqueued_at`,
    /// in the submission's transaction), so the submit path is that transaction and this
    /// send; only a failed send writes again, taking the record back so that the sweep sends
    /// it soon. A crash between the two leaves the record: the sweep then sends it once the
    /// message is overdue (`stale_after`).
    async fn send_first(
        &self,
        request: &Request,
        subject_hash: &SubjectHash,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let message = RequestMessage::new(request.id, request.kind, request.received_at);
        match self.queue.enqueue(&message).await {
            Ok(()) => request.enqueued_at,
            Err(err) => {
                tracing::warn!(request_id = %request.id, subject = %subject_hash, error = %err, "work message not sent; the sweep will retry");
                if let Err(err) = self.store.mark_enqueued(request.id, None).await {
                    tracing::warn!(request_id = %request.id, error = %err, "work message not sent, and not recorded as unsent: the sweep sends it when overdue");
                }
                None
            }
        }
    }

    /// Sends the request's work message and records it.
    pub(crate) async fn send_work(
        &self,
        request: &Request,
        subject_hash: &SubjectHash,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let now = self.clock.now();
        let message = RequestMessage::new(request.id, request.kind, now);
        if let Err(err) = self.queue.enqueue(&message).await {
            tracing::warn!(request_id = %request.id, subject = %subject_hash, error = %err, "work message not sent; the sweep will retry");
            return None;
        }
        // Always after the send recorded with the request when it was stored, which is how a
        // confirmed send is told from that one (`enqueue_if_never_sent`).
        let now = now.max(request.received_at + Duration::milliseconds(1));
        if let Err(err) = self.store.mark_enqueued(request.id, Some(now)).await {
            // The message is out; at worst the sweep sends a duplicate, which consumers drop.
            tracing::warn!(request_id = %request.id, error = %err, "work message sent but not recorded");
        }
        Some(now)
    }

    async fn stored(&self, id: RequestId) -> Result<Request, RequestError> {
        self.store.get(id).await?.ok_or_else(|| {
            RequestError::Store(StoreError::Corrupt {
                id: id.to_string(),
                reason: "referenced by a guard or idempotency key but missing".into(),
            })
        })
    }
}
