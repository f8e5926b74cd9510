//! What erasure needs from the outside world: the obligations' storage, the channels commands
//! leave by, and delayed dispatch for the watchdog.

use super::{Delivery, ErasureCommand, Obligation, ObligationDue, ObligationStatus, VerifyErasure};
use crate::ports::{ChannelError, StoreError};
use crate::registry::HowToErase;
use crate::request::RequestId;
use crate::service::ServiceName;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;

/// An answer the store took, and when the command it answers was sent (the obligation as it
/// stood before, returned by the same write: no read before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerRecorded {
    pub sent_at: Option<DateTime<Utc>>,
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
        service: &ServiceName,
        attempt: u32,
        status: ObligationStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records the service's answer only if the obligation exists and is not done yet;
    /// `None` when it was not written (no such obligation, or already answered).
    fn record_answer(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        status: ObligationStatus,
        receipt: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<AnswerRecorded>, StoreError>> + Send;

    /// Replaces a recorded receipt (to take personal data out of it once retention passed).
    fn replace_receipt(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        receipt: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks the obligation escalated, once, only while it is still unanswered at `attempts`
    /// sends: a confirmation that lands between the watchdog's read and this write wins.
    /// The `escalated:<service>` audit line is written with the mark, atomically.
    /// Returns whether this call did it.
    fn escalate(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        attempts: u32,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Sets when an erase-last obligation is released, unless it already is; returns the time
    /// that holds (the first one set: a repeated notice does not push the erasure back).
    fn set_release(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<DateTime<Utc>, StoreError>> + Send;

    /// A verification found `records` of the subject's at a service that had answered: its
    /// obligation is open again (`failed`, [`super::reopen_note`] as its error, `reopened` one
    /// more), only if it was done. The `reopened:<service>:<records>` audit line is written
    /// with it, atomically. Returns whether this call did it.
    fn reopen(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        records: u64,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Sends `erase_subject` the way the registry says: RabbitMQ (through the outbound queue), a
/// third party's HTTP API, or the vendor-erasures queue for a vendor that takes batches.
pub trait ErasureChannel: Send + Sync {
    fn send(
        &self,
        command: &ErasureCommand,
        how: &HowToErase,
    ) -> impl Future<Output = Result<Delivery, ChannelError>> + Send;

    /// One call to a vendor's batch endpoint for all of `commands` (one vendor's, at most its
    /// `max_subjects`): what it said of each, in the order of `commands`. `Err` when the call
    /// itself failed (nothing is known of any of them).
    fn send_batch(
        &self,
        commands: &[ErasureCommand],
        how: &HowToErase,
    ) -> impl Future<Output = Result<Vec<Delivery>, ChannelError>> + Send;
}

/// Where an operator's decision goes to be carried out: the confirm function, which holds the
/// registry and the channels (the CLI and the operations page only ask).
pub trait OperatorDecisions: Send + Sync {
    fn ask(
        &self,
        action: &super::OperatorAction,
    ) -> impl Future<Output = Result<(), ChannelError>> + Send;
}

impl<T: OperatorDecisions> OperatorDecisions for Arc<T> {
    async fn ask(&self, action: &super::OperatorAction) -> Result<(), ChannelError> {
        (**self).ask(action).await
    }
}

/// Delayed dispatch, as the erasure uses it: "deliver this check then"; and the ask to read
/// every erased holder again (the report function's queue).
pub trait CheckScheduler: Send + Sync {
    fn schedule(
        &self,
        check: &ObligationDue,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), ChannelError>> + Send;

    fn verify(&self, ask: &VerifyErasure) -> impl Future<Output = Result<(), ChannelError>> + Send;
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
        service: &ServiceName,
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
        service: &ServiceName,
        status: ObligationStatus,
        receipt: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<AnswerRecorded>, StoreError> {
        (**self)
            .record_answer(id, service, status, receipt, at)
            .await
    }
    async fn replace_receipt(
        &self,
        id: RequestId,
        service: &ServiceName,
        receipt: &str,
    ) -> Result<(), StoreError> {
        (**self).replace_receipt(id, service, receipt).await
    }
    async fn escalate(
        &self,
        id: RequestId,
        service: &ServiceName,
        attempts: u32,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        (**self).escalate(id, service, attempts, at).await
    }
    async fn set_release(
        &self,
        id: RequestId,
        service: &ServiceName,
        at: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        (**self).set_release(id, service, at).await
    }
    async fn reopen(
        &self,
        id: RequestId,
        service: &ServiceName,
        records: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        (**self).reopen(id, service, records, at).await
    }
}

impl<T: ErasureChannel> ErasureChannel for Arc<T> {
    async fn send(
        &self,
        command: &ErasureCommand,
        how: &HowToErase,
    ) -> Result<Delivery, ChannelError> {
        (**self).send(command, how).await
    }
    async fn send_batch(
        &self,
        commands: &[ErasureCommand],
        how: &HowToErase,
    ) -> Result<Vec<Delivery>, ChannelError> {
        (**self).send_batch(commands, how).await
    }
}

impl<T: CheckScheduler> CheckScheduler for Arc<T> {
    async fn schedule(&self, check: &ObligationDue, at: DateTime<Utc>) -> Result<(), ChannelError> {
        (**self).schedule(check, at).await
    }
    async fn verify(&self, ask: &VerifyErasure) -> Result<(), ChannelError> {
        (**self).verify(ask).await
    }
}
