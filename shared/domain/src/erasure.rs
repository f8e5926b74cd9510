//! Erasure (Art. 17): one obligation per holder in the registry, each proven by a confirmation.
//!
//! The life of an erasure request:
//! 1. `fan_out` (erasure function, under the lease): writes the obligations, sends every holder
//!    but the erase-last ones its command, and moves the request to `awaiting_confirmations`.
//! 2. `confirm` (confirm function): a holder's confirmation marks its obligation; when all but
//!    the erase-last holders are done, the subject is told (an `erasure_notice` event) and the
//!    erase-last holders' commands are scheduled after a grace period (`notifying`); when those
//!    confirm too the request is `completed` and `erasure_completed` is emitted.
//! 3. `check` (confirm function, woken by delayed dispatch): an obligation still unconfirmed
//!    when its holder's timeout passes is sent again, and after `max_sends` escalated.
//!
//! Every effect is keyed so that a duplicate delivery changes nothing: commands carry
//! `erase:<request>:<service>` as idempotency key (and the attempt in their message id),
//! events carry `<type>:<request>`, checks carry `check:<request>:<service>:<attempt>` and
//! only act while the obligation is still at that attempt.

use crate::clock::Clock;
use crate::messages::DomainEvent;
use crate::metrics::{self, names, Metric};
pub use crate::ports::{ChannelError, EventOutbox};
use crate::ports::{LeaseOutcome, RequestStore, StoreError, TransitionOutcome};
use crate::registry::{EraseIn, ServiceRegistry};
use crate::request::{Request, RequestId, RequestState};
use crate::subject::{SubjectHasher, SubjectId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;

/// Where one holder's erasure stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObligationStatus {
    /// Written, no command sent yet (erase-last holders wait here until the notice is out).
    Pending,
    /// A command was sent; no answer yet.
    Sent,
    /// The holder confirmed the erasure.
    Confirmed,
    /// The holder confirmed it held nothing about the subject.
    NotFound,
    /// The holder answered that it could not erase (or its API failed); it is sent again.
    Failed,
}

impl ObligationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ObligationStatus::Pending => "pending",
            ObligationStatus::Sent => "sent",
            ObligationStatus::Confirmed => "confirmed",
            ObligationStatus::NotFound => "not_found",
            ObligationStatus::Failed => "failed",
        }
    }

    /// The holder's part is done: nothing of the subject is left there.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            ObligationStatus::Confirmed | ObligationStatus::NotFound
        )
    }
}

impl std::str::FromStr for ObligationStatus {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        [
            ObligationStatus::Pending,
            ObligationStatus::Sent,
            ObligationStatus::Confirmed,
            ObligationStatus::NotFound,
            ObligationStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
        .ok_or_else(|| format!("unknown obligation status `{raw}`"))
    }
}

/// One holder's part of one erasure request: the proof of erasure, kept with its receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obligation {
    pub request_id: RequestId,
    pub service: String,
    pub status: ObligationStatus,
    /// Erased after the notice and the grace period.
    pub last: bool,
    /// Commands sent so far.
    pub attempts: u32,
    pub sent_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    /// What the holder answered (JSON), kept as proof.
    pub receipt: Option<String>,
    /// Why the last attempt failed, if it did. Never personal data.
    pub last_error: Option<String>,
    /// Set once the holder stayed silent through `max_sends` commands.
    pub escalated_at: Option<DateTime<Utc>>,
}

impl Obligation {
    pub fn planned(request_id: RequestId, service: &str, last: bool) -> Self {
        Self {
            request_id,
            service: service.to_owned(),
            status: ObligationStatus::Pending,
            last,
            attempts: 0,
            sent_at: None,
            confirmed_at: None,
            receipt: None,
            last_error: None,
            escalated_at: None,
        }
    }
}

/// What happened to one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Handed over (to RabbitMQ): a confirmation will follow.
    Sent,
    /// A third party's API erased synchronously: its answer is the confirmation.
    Answered {
        status: ObligationStatus,
        receipt: String,
    },
    /// The holder could not be reached or refused; the watchdog sends again.
    Failed(String),
}

/// `erase_subject`, sent to one holder. Contract: `docs/messages.schema.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureCommand {
    pub version: u32,
    #[serde(rename = "type")]
    pub command_type: String,
    /// `erase:<request>:<service>:<attempt>`: unique per send.
    pub message_id: String,
    /// `erase:<request>:<service>`: the same for every send of this obligation; a holder that
    /// sees it again confirms again without erasing again.
    pub idempotency_key: String,
    pub request_id: RequestId,
    pub service: String,
    /// Whom to erase: holders need the id they know the person by.
    pub subject: SubjectId,
    pub attempt: u32,
    pub sent_at: DateTime<Utc>,
}

impl ErasureCommand {
    pub const VERSION: u32 = 1;

    pub fn new(
        request: &Request,
        service: &str,
        attempt: u32,
        sent_at: DateTime<Utc>,
    ) -> ErasureCommand {
        let idempotency_key = format!("erase:{}:{service}", request.id);
        ErasureCommand {
            version: Self::VERSION,
            command_type: "erase_subject".into(),
            message_id: format!("{idempotency_key}:{attempt}"),
            idempotency_key,
            request_id: request.id,
            service: service.to_owned(),
            subject: request.subject.clone(),
            attempt,
            sent_at,
        }
    }
}

/// A holder's answer to `erase_subject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmationOutcome {
    Erased,
    NotFound,
    Failed,
}

/// What arrives on the `confirmations` queue. Contract: `docs/messages.schema.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConfirmationsMessage {
    /// A holder's answer, from RabbitMQ through the bridge.
    ErasureConfirmation(Confirmation),
    /// The watchdog: delivered by delayed dispatch when an obligation's time is up.
    ObligationDue(ObligationDue),
}

impl crate::messages::QueueMessage for ConfirmationsMessage {
    const VERSION: u32 = 1;
    const NAME: &'static str = "a confirmation or check";
    fn version(&self) -> u32 {
        match self {
            ConfirmationsMessage::ErasureConfirmation(c) => c.version,
            ConfirmationsMessage::ObligationDue(d) => d.version,
        }
    }
    fn request_id(&self) -> Option<RequestId> {
        Some(match self {
            ConfirmationsMessage::ErasureConfirmation(c) => c.request_id,
            ConfirmationsMessage::ObligationDue(d) => d.request_id,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    pub version: u32,
    pub message_id: String,
    pub request_id: RequestId,
    pub service: String,
    pub outcome: ConfirmationOutcome,
    /// The holder's proof (what it deleted, its own reference); kept with the obligation.
    #[serde(default)]
    pub receipt: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObligationDue {
    pub version: u32,
    pub message_id: String,
    pub request_id: RequestId,
    pub service: String,
    /// The attempt this check was scheduled after (0: the erase-last release).
    pub attempt: u32,
}

impl ObligationDue {
    pub fn new(request_id: RequestId, service: &str, attempt: u32) -> Self {
        Self {
            version: 1,
            message_id: format!("check:{request_id}:{service}:{attempt}"),
            request_id,
            service: service.to_owned(),
            attempt,
        }
    }
}

/// The obligations of erasure requests. Kept with the request (`OBL#<service>` items).
pub trait ObligationStore: Send + Sync {
    /// Writes the obligations that do not exist yet, only while `fencing_token` is still the
    /// request's (the caller holds the lease). Existing ones are left as they are. Returns all
    /// of the request's obligations as they now stand.
    fn plan(
        &self,
        request_id: RequestId,
        obligations: &[Obligation],
        fencing_token: u64,
    ) -> impl Future<Output = Result<Vec<Obligation>, StoreError>> + Send;

    /// The request's obligations, read consistently, in no particular order.
    fn obligations(
        &self,
        request_id: RequestId,
    ) -> impl Future<Output = Result<Vec<Obligation>, StoreError>> + Send;

    /// Records send number `attempt` (sent or failed) only if the obligation is not done and
    /// still at `attempt - 1` sends. Returns whether it was written.
    fn record_send(
        &self,
        request_id: RequestId,
        service: &str,
        attempt: u32,
        status: ObligationStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records the holder's answer only if the obligation exists and is not done yet.
    fn record_answer(
        &self,
        request_id: RequestId,
        service: &str,
        status: ObligationStatus,
        receipt: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Marks the obligation escalated, once. Returns whether this call did it.
    fn escalate(
        &self,
        request_id: RequestId,
        service: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Sends `erase_subject` the way the registry says: RabbitMQ (through the outbound queue) or a
/// third party's HTTP API.
pub trait ErasureChannel: Send + Sync {
    fn send(
        &self,
        command: &ErasureCommand,
        how: &EraseIn,
    ) -> impl Future<Output = Result<Delivery, ChannelError>> + Send;
}

/// Delayed dispatch, as the erasure uses it: "deliver this check then".
pub trait CheckScheduler: Send + Sync {
    fn schedule(
        &self,
        check: &ObligationDue,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), ChannelError>> + Send;
}

impl<T: ObligationStore> ObligationStore for Arc<T> {
    async fn plan(
        &self,
        id: RequestId,
        o: &[Obligation],
        token: u64,
    ) -> Result<Vec<Obligation>, StoreError> {
        (**self).plan(id, o, token).await
    }
    async fn obligations(&self, id: RequestId) -> Result<Vec<Obligation>, StoreError> {
        (**self).obligations(id).await
    }
    async fn record_send(
        &self,
        id: RequestId,
        service: &str,
        attempt: u32,
        status: ObligationStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        (**self)
            .record_send(id, service, attempt, status, error, at)
            .await
    }
    async fn record_answer(
        &self,
        id: RequestId,
        service: &str,
        status: ObligationStatus,
        receipt: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        (**self)
            .record_answer(id, service, status, receipt, at)
            .await
    }
    async fn escalate(
        &self,
        id: RequestId,
        service: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        (**self).escalate(id, service, at).await
    }
}

impl<T: ErasureChannel> ErasureChannel for Arc<T> {
    async fn send(
        &self,
        command: &ErasureCommand,
        how: &EraseIn,
    ) -> Result<Delivery, ChannelError> {
        (**self).send(command, how).await
    }
}

impl<T: CheckScheduler> CheckScheduler for Arc<T> {
    async fn schedule(&self, check: &ObligationDue, at: DateTime<Utc>) -> Result<(), ChannelError> {
        (**self).schedule(check, at).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// Worth retrying later (the message goes back to its queue).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Channel(#[from] ChannelError),
    /// Another worker holds the request.
    #[error("request {0} is being fanned out by another worker")]
    Busy(RequestId),
    /// The message can never succeed (unknown request or service): dead-letter it.
    #[error("rejected: {0}")]
    Rejected(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErasureSettings {
    /// How long after the notice the erase-last holders are erased (default 72 h).
    pub grace: chrono::Duration,
    pub lease_ttl: chrono::Duration,
}

impl Default for ErasureSettings {
    fn default() -> Self {
        Self {
            grace: chrono::Duration::hours(72),
            lease_ttl: chrono::Duration::seconds(120),
        }
    }
}

/// What one message did, for the log and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    FannedOut {
        commands: usize,
    },
    /// Nothing to do: a duplicate, a stale check, or a request no longer waiting.
    Nothing(&'static str),
    Recorded,
    Resent {
        attempt: u32,
    },
    Escalated,
}

/// The erasure use cases, shared by the erasure and confirm functions.
pub struct ErasureDesk<S, X, D, E, C> {
    pub store: S,
    pub channel: X,
    pub checks: D,
    pub events: E,
    pub clock: C,
    pub registry: ServiceRegistry,
    pub hasher: SubjectHasher,
    pub settings: ErasureSettings,
    /// Lease owner name of this worker.
    pub owner: String,
}

impl<S, X, D, E, C> ErasureDesk<S, X, D, E, C>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
{
    /// The erasure function: plan, send, and wait for confirmations. A duplicate message finds
    /// the request past `received` and does nothing.
    pub async fn fan_out(&self, id: RequestId) -> Result<Handled, ErasureError> {
        let now = self.clock.now();
        let request = match self
            .store
            .acquire_lease(
                id,
                &self.owner,
                RequestState::FanningOut,
                now,
                self.settings.lease_ttl,
            )
            .await?
        {
            LeaseOutcome::Acquired(request) => {
                if request.fencing_token == 1 {
                    // The first time a worker takes it: "received by the manager".
                    metrics::emit(
                        Metric::count(names::REQUESTS_RECEIVED, 1).with("Kind", "erasure"),
                    );
                }
                *request
            }
            LeaseOutcome::Held { .. } => return Err(ErasureError::Busy(id)),
            LeaseOutcome::NotWorkable(_) => return Ok(Handled::Nothing("not waiting for fan-out")),
        };
        let token = request.fencing_token;
        match self.send_all(&request, token).await {
            Ok(commands) => {
                let mut done = request.clone();
                done.transition_to(RequestState::AwaitingConfirmations, self.clock.now())
                    .map_err(|e| ErasureError::Rejected(e.to_string()))?;
                done.last_error = None;
                if self
                    .store
                    .commit_fenced(&done, &self.subject_hash(&done), token)
                    .await?
                    != TransitionOutcome::Applied
                {
                    return Ok(Handled::Nothing("fenced out by a newer worker"));
                }
                self.advance(id).await?;
                Ok(Handled::FannedOut { commands })
            }
            Err(err) => {
                // Hand the request back for the next delivery of the message; sends already
                // recorded are not repeated, and the error stays on the request.
                let mut back = request.clone();
                if back
                    .transition_to(RequestState::Received, self.clock.now())
                    .is_ok()
                {
                    back.last_error = Some(err.to_string());
                    let _ = self
                        .store
                        .commit_fenced(&back, &self.subject_hash(&back), token)
                        .await;
                }
                Err(err)
            }
        }
    }

    async fn send_all(&self, request: &Request, token: u64) -> Result<usize, ErasureError> {
        let planned: Vec<Obligation> = self
            .registry
            .erasable()
            .map(|(holder, how)| Obligation::planned(request.id, &holder.name, how.last))
            .collect();
        let mut commands = 0;
        for obligation in self.store.plan(request.id, &planned, token).await? {
            // A retry after a crash: what was sent is not sent again; the watchdog covers it.
            if obligation.last || obligation.attempts > 0 || obligation.status.is_done() {
                continue;
            }
            let how = self.eraser(&obligation.service)?;
            self.send(request, &obligation.service, how, 1).await?;
            commands += 1;
        }
        Ok(commands)
    }

    /// Send number `attempt` of one obligation. The check is scheduled before the command
    /// leaves, so a crash after sending can never leave an obligation without a watchdog.
    async fn send(
        &self,
        request: &Request,
        service: &str,
        how: &EraseIn,
        attempt: u32,
    ) -> Result<(), ErasureError> {
        let now = self.clock.now();
        let timeout = chrono::Duration::seconds(
            i64::try_from(how.confirm_within_seconds).unwrap_or(i64::MAX / 1000),
        );
        self.checks
            .schedule(
                &ObligationDue::new(request.id, service, attempt),
                now + timeout,
            )
            .await?;
        let command = ErasureCommand::new(request, service, attempt, now);
        let delivery = self.channel.send(&command, how).await?;
        let (status, error) = match &delivery {
            Delivery::Sent | Delivery::Answered { .. } => (ObligationStatus::Sent, None),
            Delivery::Failed(reason) => (ObligationStatus::Failed, Some(reason.as_str())),
        };
        self.store
            .record_send(request.id, service, attempt, status, error, now)
            .await?;
        tracing::info!(
            request_id = %request.id,
            subject = %self.hasher.hash(&request.subject),
            service,
            attempt,
            outcome = match &delivery {
                Delivery::Sent => "sent",
                Delivery::Answered { .. } => "answered",
                Delivery::Failed(_) => "failed",
            },
            error = error.unwrap_or_default(),
            "erasure command"
        );
        if let Delivery::Answered { status, receipt } = delivery {
            self.answer(request.id, service, status, &receipt).await?;
        }
        Ok(())
    }

    /// A holder's confirmation. Duplicates change nothing; an unknown request or service is
    /// rejected.
    pub async fn confirm(&self, confirmation: &Confirmation) -> Result<Handled, ErasureError> {
        let request = self.erasure(confirmation.request_id).await?;
        let Some(obligation) = self
            .store
            .obligations(request.id)
            .await?
            .into_iter()
            .find(|o| o.service == confirmation.service)
        else {
            return Err(ErasureError::Rejected(format!(
                "request {} has no obligation for service `{}`",
                request.id,
                truncated(&confirmation.service)
            )));
        };
        if let (Some(sent_at), false) = (obligation.sent_at, obligation.status.is_done()) {
            let latency = (self.clock.now() - sent_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::emit(
                Metric::seconds(names::CONFIRMATION_LATENCY, latency)
                    .with("Holder", obligation.service.clone()),
            );
        }
        let status = match confirmation.outcome {
            ConfirmationOutcome::Erased => ObligationStatus::Confirmed,
            ConfirmationOutcome::NotFound => ObligationStatus::NotFound,
            ConfirmationOutcome::Failed => ObligationStatus::Failed,
        };
        let receipt = confirmation.receipt.to_string();
        self.answer(request.id, &confirmation.service, status, &receipt)
            .await
    }

    async fn answer(
        &self,
        id: RequestId,
        service: &str,
        status: ObligationStatus,
        receipt: &str,
    ) -> Result<Handled, ErasureError> {
        let now = self.clock.now();
        let receipt: String = receipt.chars().take(4096).collect();
        if !self
            .store
            .record_answer(id, service, status, &receipt, now)
            .await?
        {
            return Ok(Handled::Nothing("already answered"));
        }
        self.store
            .record_event(
                id,
                &format!("obligation_{}:{service}", status.as_str()),
                now,
            )
            .await?;
        tracing::info!(request_id = %id, service, status = status.as_str(), "erasure answer recorded");
        self.advance(id).await?;
        Ok(Handled::Recorded)
    }

    /// The watchdog, and the release of the erase-last holders.
    pub async fn check(&self, due: &ObligationDue) -> Result<Handled, ErasureError> {
        let request = self.erasure(due.request_id).await?;
        if request.state.is_terminal() {
            return Ok(Handled::Nothing("request finished"));
        }
        let Some(obligation) = self
            .store
            .obligations(request.id)
            .await?
            .into_iter()
            .find(|o| o.service == due.service)
        else {
            return Err(ErasureError::Rejected(format!(
                "request {} has no obligation for service `{}`",
                request.id,
                truncated(&due.service)
            )));
        };
        if obligation.status.is_done() {
            // The watchdog is also the safety net for moving on: if the last confirmation
            // arrived while the fan-out was still committing, nothing else would advance it.
            self.advance(request.id).await?;
            return Ok(Handled::Nothing("already confirmed"));
        }
        if obligation.attempts != due.attempt {
            return Ok(Handled::Nothing("a newer send has its own check"));
        }
        if obligation.last && request.state != RequestState::Notifying {
            return Ok(Handled::Nothing("erase-last holder waits for the notice"));
        }
        let how = self.eraser(&obligation.service)?;
        if obligation.attempts >= how.max_sends {
            let now = self.clock.now();
            if self
                .store
                .escalate(request.id, &obligation.service, now)
                .await?
            {
                self.store
                    .record_event(
                        request.id,
                        &format!("escalated:{}", obligation.service),
                        now,
                    )
                    .await?;
                // The line operators alert on (see README, "Operating it").
                tracing::warn!(
                    request_id = %request.id,
                    service = %obligation.service,
                    attempts = obligation.attempts,
                    status = obligation.status.as_str(),
                    alert = "erasure_obligation_escalated",
                    "holder did not confirm the erasure: escalated"
                );
                metrics::emit(
                    Metric::count(names::ESCALATIONS, 1).with("Holder", obligation.service.clone()),
                );
                return Ok(Handled::Escalated);
            }
            return Ok(Handled::Nothing("already escalated"));
        }
        let attempt = due.attempt + 1;
        self.send(&request, &obligation.service, how, attempt)
            .await?;
        if attempt > 1 {
            metrics::emit(Metric::count(names::RETRIES, 1).with("Kind", "erasure"));
        }
        Ok(Handled::Resent { attempt })
    }

    /// Moves the request on when its obligations allow: notice and erase-last release once all
    /// others are done, completion once every one is.
    async fn advance(&self, id: RequestId) -> Result<(), ErasureError> {
        let Some(mut request) = self.store.get(id).await? else {
            return Ok(());
        };
        let obligations = self.store.obligations(id).await?;
        let hash = self.subject_hash(&request);
        if request.state == RequestState::AwaitingConfirmations {
            if !obligations
                .iter()
                .filter(|o| !o.last)
                .all(|o| o.status.is_done())
            {
                return Ok(());
            }
            let now = self.clock.now();
            // Keyed effects first, state last: a crash in between repeats them under the same
            // keys, and the transition is what makes the next delivery skip them.
            self.events
                .publish(&DomainEvent::erasure_notice(
                    id,
                    request.subject.clone(),
                    now + self.settings.grace,
                    now,
                ))
                .await?;
            for last in obligations.iter().filter(|o| o.last && o.attempts == 0) {
                self.checks
                    .schedule(
                        &ObligationDue::new(id, &last.service, 0),
                        now + self.settings.grace,
                    )
                    .await?;
            }
            let from = request.state;
            request
                .transition_to(RequestState::Notifying, now)
                .map_err(|e| ErasureError::Rejected(e.to_string()))?;
            if self.store.save_transition(&request, &hash, from).await?
                != TransitionOutcome::Applied
            {
                return Ok(());
            }
            tracing::info!(request_id = %id, subject = %hash, "erasure notice sent; erase-last holders scheduled");
        }
        if request.state == RequestState::Notifying
            && obligations.iter().all(|o| o.status.is_done())
        {
            let now = self.clock.now();
            self.events
                .publish(&DomainEvent::erasure_completed(
                    id,
                    request.subject.clone(),
                    obligations.len(),
                    now,
                ))
                .await?;
            let from = request.state;
            request
                .transition_to(RequestState::Completed, now)
                .map_err(|e| ErasureError::Rejected(e.to_string()))?;
            if self.store.save_transition(&request, &hash, from).await?
                == TransitionOutcome::Applied
            {
                tracing::info!(request_id = %id, subject = %hash, holders = obligations.len(), "erasure completed");
                metrics::emit(Metric::count(names::REQUESTS_COMPLETED, 1).with("Kind", "erasure"));
            }
        }
        Ok(())
    }

    async fn erasure(&self, id: RequestId) -> Result<Request, ErasureError> {
        match self.store.get(id).await? {
            Some(request) if request.kind == crate::RequestKind::Erasure => Ok(request),
            Some(_) => Err(ErasureError::Rejected(format!(
                "request {id} is not an erasure request"
            ))),
            None => Err(ErasureError::Rejected(format!("unknown request {id}"))),
        }
    }

    fn eraser(&self, service: &str) -> Result<&EraseIn, ErasureError> {
        self.registry.eraser(service).ok_or_else(|| {
            ErasureError::Rejected(format!(
                "service `{}` is not in the registry (any more)",
                truncated(service)
            ))
        })
    }

    fn subject_hash(&self, request: &Request) -> crate::SubjectHash {
        self.hasher.hash(&request.subject)
    }
}

/// Names from messages go into errors and logs: keep them short.
fn truncated(raw: &str) -> String {
    raw.chars().take(64).collect()
}
