//! The service's own copies of a subject's data. An access report is personal data this
//! service holds, so erasing the subject erases them too: every object of every attempt at
//! every report of theirs, and the access requests that would make new ones. It is an
//! obligation like any service's, so its receipt is in the proof of erasure.

use super::*;
use crate::audit::Audited;
use crate::ports::TransitionOutcome;
use crate::RequestKind;

/// The name of the service's own obligation in every erasure.
pub const OWN_COPIES: &str = "dsr-reports";

/// What erasing the service's own copies did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct OwnCopiesErased {
    /// Access requests closed: open ones cancelled, finished ones' reports gone (`expired`).
    pub closed: Vec<RequestId>,
    /// Report objects deleted and unfinished uploads aborted.
    pub objects_deleted: usize,
    pub uploads_aborted: usize,
}

impl OwnCopiesErased {
    pub fn found_anything(&self) -> bool {
        !self.closed.is_empty() || self.objects_deleted > 0 || self.uploads_aborted > 0
    }

    /// The proof: ids and counts, no personal data.
    pub fn receipt(&self) -> String {
        serde_json::json!({
            "access_requests_closed": self.closed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "report_objects_deleted": self.objects_deleted,
            "unfinished_uploads_aborted": self.uploads_aborted,
        })
        .to_string()
    }
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
    pub(super) fn own_copies() -> ServiceName {
        ServiceName::parse(OWN_COPIES).expect("a valid service name")
    }

    /// Closes the subject's access requests and deletes their reports. Idempotent: a second
    /// run finds nothing left. The request is closed before its objects go, so a report worker
    /// still collecting can no longer commit (its commit is refused and it deletes its upload).
    pub(super) async fn erase_own_copies(
        &self,
        erasure: &Request,
    ) -> Result<OwnCopiesErased, ErasureError> {
        let hash = self.subject_hash(erasure);
        let mut erased = OwnCopiesErased::default();
        let access_requests: Vec<Request> = self
            .store
            .list_for_subject(&hash)
            .await?
            .into_iter()
            .filter(|r| r.kind == RequestKind::Access && r.subject == erasure.subject)
            .collect();
        for access in access_requests {
            let id = access.id;
            if self.close(access, erasure.id).await? {
                erased.closed.push(id);
            }
            // Every attempt's objects and every staged source, whatever state the request is
            // in now.
            for prefix in [format!("reports/{id}/"), crate::report::staging_prefix(id)] {
                erased.uploads_aborted += self
                    .reports
                    .abort_unfinished(&prefix)
                    .await
                    .map_err(storage)?;
                for key in self.reports.list(&prefix).await.map_err(storage)? {
                    self.reports.delete(&key).await.map_err(storage)?;
                    erased.objects_deleted += 1;
                }
            }
        }
        Ok(erased)
    }

    /// Moves one access request out of reach: open → `cancelled`, report ready → `expired`.
    /// True if it moved. A request that changed meanwhile is read again.
    async fn close(&self, mut access: Request, erasure: RequestId) -> Result<bool, ErasureError> {
        let hash = self.hasher.hash(&access.subject);
        for _ in 0..5 {
            let to = match access.state {
                RequestState::Received | RequestState::Collecting => RequestState::Cancelled,
                RequestState::ReportReady => RequestState::Expired,
                _ => return Ok(false),
            };
            let from = access.state;
            let now = self.clock.now();
            let mut closed = access.clone();
            closed
                .transition_to(to, now)
                .map_err(|e| ErasureError::Rejected(e.to_string()))?;
            if self.store.save_transition(&closed, &hash, from).await? == TransitionOutcome::Applied
            {
                self.store
                    .record_event(access.id, &Audited::ClosedByErasure { erasure }, now)
                    .await?;
                tracing::info!(request_id = %access.id, erasure_id = %erasure, subject = %hash, state = to.as_str(), "access request closed by the subject's erasure");
                return Ok(true);
            }
            match self.store.get(access.id).await? {
                Some(now) => access = now,
                None => return Ok(false),
            }
        }
        Err(ErasureError::Busy {
            id: access.id,
            lease_left: None,
        })
    }
}

fn storage(err: crate::report::StorageError) -> ErasureError {
    ErasureError::Channel(ChannelError(Box::new(err)))
}
