//! Erasure (Art. 17): one obligation per service in the registry, each proven by a confirmation.
//!
//! The life of an erasure request:
//! 1. `fan_out` (erasure function, under the lease): writes the obligations, sends every service
//!    but the erase-last ones its command, and moves the request to `awaiting_confirmations`.
//!    The service is a holder too: its own obligation ([`OWN_COPIES`]) deletes the subject's
//!    access reports and closes their open access requests, there and then; it is repeated
//!    just before completion for anything that appeared meanwhile.
//! 2. `confirm` (confirm function): a service's confirmation marks its obligation; when all but
//!    the erase-last services are done, the subject is told (an `erasure_notice` event and the
//!    notice to the notifying service) and the request is `notifying`. Once the bridge reports
//!    the broker confirmed the notice (`published`), the erase-last services' commands are
//!    scheduled after the grace period: never counted from a notice that only sat in a queue.
//!    When those confirm too the request is `completed` and `erasure_completed` is emitted.
//!    Every delivery, a duplicate included, re-runs this moving on: it is keyed, so a delivery
//!    whose first run failed half-way finishes the job instead of waiting for a watchdog.
//! 3. `check` (confirm function, woken by delayed dispatch): an obligation still unconfirmed
//!    when its service's timeout passes is sent again, and after `max_sends` escalated.
//!
//! Every effect is keyed so that a duplicate delivery changes nothing: commands carry
//! `erase:<request>:<service>` as idempotency key (and the attempt in their message id),
//! events carry `<type>:<request>`, checks carry `check:<request>:<service>:<attempt>` and
//! only act while the obligation is still at that attempt.

pub mod certificate;
mod confirmation;
mod fan_out;
mod messages;
mod obligation;
mod operator;
mod own_copies;
mod ports;
mod vendor_batch;

pub use crate::ports::{ChannelError, EventOutbox};
pub use messages::{
    Confirmation, ConfirmationOutcome, ConfirmationsMessage, ErasureCommand, ErasureVerified,
    ObligationDue, OperatorAction, OperatorDecision, Published, StillHeld, VerifyErasure,
};
pub use obligation::{reopen_note, Delivery, Obligation, ObligationStatus};
pub use operator::{actionable, settled_by_hand, NotActionable};
pub use own_copies::OWN_COPIES;
pub use ports::{
    AnswerRecorded, CheckScheduler, ErasureChannel, ObligationStore, OperatorDecisions,
};

use crate::clock::Clock;
use crate::lease::Worker;
use crate::ports::{RequestStore, StoreError};
use crate::registry::{HowToErase, ServiceRegistry};
use crate::report::ReportStore;
use crate::request::{Request, RequestId, RequestKind, RequestState};
use crate::service::ServiceName;
use crate::subject::SubjectHasher;

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// Worth retrying later (the message goes back to its queue).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Channel(#[from] ChannelError),
    /// Another worker holds the request, for `lease_left` at most (what is left of its lease;
    /// `None`: not known). A delivery that finds it so comes back when the lease runs out, not sooner: a
    /// worker that died holding it (or whose take's answer was lost) keeps it that long, and
    /// deliveries spent meanwhile would use up the message's receives towards the dead-letter
    /// queue.
    #[error("request {id} is being worked on by another worker")]
    Busy {
        id: RequestId,
        lease_left: Option<chrono::Duration>,
    },
    /// The message can never succeed (unknown request or service): dead-letter it.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The subject's identifiers could not be looked up (an identity source did not answer):
    /// worth retrying.
    #[error("{0}")]
    Identities(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErasureSettings {
    /// How long after the notice the erase-last services are erased (default 72 h).
    pub grace: chrono::Duration,
}

impl Default for ErasureSettings {
    fn default() -> Self {
        Self {
            grace: chrono::Duration::hours(72),
        }
    }
}

/// The fan-out's lease: long enough to send every command, short enough that a dead worker's
/// request is taken over soon.
pub const DEFAULT_FAN_OUT_LEASE: chrono::Duration = chrono::Duration::seconds(120);

/// What one message did, for the log and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    FannedOut {
        commands: usize,
    },
    /// Nothing to do: a duplicate, a stale check, or a request no longer waiting.
    Nothing(Skipped),
    Recorded,
    Resent {
        attempt: u32,
    },
    /// A vendor said "not now": the obligation's check is moved to when it said.
    Deferred,
    Escalated,
    /// The broker confirmed the notice: the erase-last services are released at `release_at`.
    NoticePublished {
        release_at: chrono::DateTime<chrono::Utc>,
    },
    /// A verification found nothing left: the erasure is completed.
    Verified,
    /// A verification found data at these many services: opened again and sent again (or
    /// escalated, for a service that keeps returning data).
    Reopened {
        services: usize,
    },
}

/// Why a message changed nothing; each is what a duplicate or late delivery looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The request is past fan-out (or gone).
    NotWaitingForFanOut,
    /// A newer worker took the request over.
    FencedOut,
    /// The obligation already had its answer.
    AlreadyAnswered,
    /// The request is completed, cancelled or failed.
    RequestFinished,
    /// The service confirmed before the watchdog's check came.
    AlreadyConfirmed,
    /// The command was sent again since; that send has its own check.
    NewerSendHasItsOwnCheck,
    /// An erase-last service waits for the notice to the subject (its publication confirmed
    /// by the broker) and the grace period after it.
    WaitsForTheNotice,
    /// A receipt for a message that moves nothing (only the notice's does).
    NothingWaitsForIt,
    AlreadyEscalated,
    /// A verification's result for a request no longer verifying, or for an earlier round.
    NotThisVerification,
}

/// Why a holder cannot be sent a command.
pub(crate) enum Unaskable {
    /// It keys its data by an identifier the subject does not have: recorded as its answer.
    NotApplicable(String),
    /// Its identifiers were never looked up for this request: a failed send.
    Unresolved(String),
}

/// Why a pass moves a request on: it decides whether the pass may tell the subject again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// A pass that recorded something new (an answer, the fan-out's commit, the notice's
    /// receipt): it tells the subject only if it makes the transition to `notifying`.
    First,
    /// A redelivery, or the watchdog's safety net: it also tells the subject when the notice
    /// was never confirmed by the broker (the first pass failed or died after its transition).
    Again,
}

/// The erasure use cases, shared by the erasure and confirm functions.
pub struct Erasures<S, X, D, E, C, R> {
    pub store: S,
    pub channel: X,
    pub checks: D,
    pub events: E,
    /// Where this service keeps its own copies of the subject's data: the access reports.
    pub reports: R,
    pub clock: C,
    pub registry: ServiceRegistry,
    pub hasher: SubjectHasher,
    pub settings: ErasureSettings,
    /// Who takes requests for fan-out (the erasure function).
    pub worker: Worker,
    /// Where the subject's other identifiers are looked up, once, at fan-out.
    pub identities: std::sync::Arc<dyn crate::identity::IdentityDirectory>,
}

impl<S, X, D, E, C, R> Erasures<S, X, D, E, C, R>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
    R: ReportStore,
{
    async fn erasure(&self, id: RequestId) -> Result<Request, ErasureError> {
        match self.store.get(id).await? {
            Some(request) if request.kind == crate::RequestKind::Erasure => Ok(request),
            Some(_) => Err(ErasureError::Rejected(format!(
                "request {id} is not an erasure request"
            ))),
            None => Err(ErasureError::Rejected(format!("unknown request {id}"))),
        }
    }

    /// The request's obligation for `service`; a message naming another is rejected.
    async fn obligation(
        &self,
        request: &Request,
        service: &ServiceName,
    ) -> Result<Obligation, ErasureError> {
        self.store
            .obligations(request.id)
            .await?
            .into_iter()
            .find(|o| &o.service == service)
            .ok_or_else(|| {
                ErasureError::Rejected(format!(
                    "request {} has no obligation for service `{service}`",
                    request.id
                ))
            })
    }

    fn eraser(&self, service: &ServiceName) -> Result<&HowToErase, ErasureError> {
        self.registry.eraser(service).ok_or_else(|| {
            ErasureError::Rejected(format!(
                "service `{}` is not in the registry (any more)",
                service
            ))
        })
    }

    fn subject_hash(&self, request: &Request) -> crate::SubjectHash {
        self.hasher.hash(&request.subject)
    }
}
