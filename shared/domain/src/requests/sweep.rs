//! The sweep: work messages that never left or were lost are sent again, and reports past
//! their retention expire.

use super::{RequestError, Requests};
use crate::clock::Clock;
use crate::metrics::{self, names, Metric};
use crate::ports::{RequestStore, TransitionOutcome, WorkQueue};
use crate::request::RequestState;
use chrono::Duration;

/// When the sweep considers a `received` request's message lost.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// A request never enqueued is left alone this long, so the sweep does not race an intake
    /// call that is still sending.
    pub unqueued_grace: Duration,
    /// A request enqueued this long ago and still `received` lost its message (expired, purged,
    /// or dead-lettered and discarded): send it again. Consumers drop duplicates by request id.
    pub stale_after: Duration,
    /// Bound on one run's work; the next run picks up the rest.
    pub batch_limit: usize,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            unqueued_grace: Duration::minutes(2),
            stale_after: Duration::minutes(30),
            batch_limit: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub examined: usize,
    pub reenqueued: usize,
    pub failed: usize,
    /// Reports past their retention whose requests moved to `expired`.
    pub expired: usize,
}

impl<S: RequestStore, Q: WorkQueue, C: Clock> Requests<S, Q, C> {
    /// Re-sends the work message of every `received` request whose message never left or was
    /// lost. Safe to run concurrently with itself: a duplicate message is dropped by consumers.
    pub async fn sweep_lost_messages(
        &self,
        settings: SweepSettings,
    ) -> Result<SweepReport, RequestError> {
        let now = self.clock.now();
        let waiting = self
            .store
            .in_state(RequestState::Received, settings.batch_limit)
            .await?;
        let mut report = SweepReport {
            examined: waiting.len(),
            ..SweepReport::default()
        };
        for request in waiting {
            let lost = match request.enqueued_at {
                None => request.received_at + settings.unqueued_grace <= now,
                Some(sent) => sent + settings.stale_after <= now,
            };
            if !lost {
                continue;
            }
            let subject_hash = self.hasher.hash(&request.subject);
            if self.enqueue(&request, &subject_hash).await.is_some() {
                tracing::info!(request_id = %request.id, subject = %subject_hash, "lost request message sent again");
                metrics::emit(
                    Metric::count(names::REDRIVES, 1).with("Kind", request.kind.as_str()),
                );
                report.reenqueued += 1;
            } else {
                report.failed += 1;
            }
        }
        Ok(report)
    }

    /// Deletes reports past their retention (every object of every attempt; the bucket's
    /// lifecycle rule is only the backstop) and moves their requests to `expired`, so that
    /// what users and operators see matches what exists.
    pub async fn expire_reports<R: crate::report::ReportStore>(
        &self,
        reports: &R,
        limit: usize,
    ) -> Result<usize, RequestError> {
        let now = self.clock.now();
        let mut expired = 0;
        for mut request in self
            .store
            .in_state(RequestState::ReportReady, limit)
            .await?
        {
            if request.report.as_ref().is_none_or(|r| r.expires_at > now) {
                continue;
            }
            if request.transition_to(RequestState::Expired, now).is_err() {
                continue;
            }
            let prefix = format!("reports/{}/", request.id);
            let deleted = async {
                reports.abort_unfinished(&prefix).await?;
                for key in reports.list(&prefix).await? {
                    reports.delete(&key).await?;
                }
                Ok::<_, crate::report::StorageError>(())
            }
            .await;
            if let Err(err) = deleted {
                // Left in `report_ready` (no link is handed out past expiry): the next sweep
                // tries again.
                tracing::warn!(request_id = %request.id, error = %err, "expired report not deleted yet");
                continue;
            }
            let subject_hash = self.hasher.hash(&request.subject);
            if self
                .store
                .save_transition(&request, &subject_hash, RequestState::ReportReady)
                .await?
                == TransitionOutcome::Applied
            {
                tracing::info!(request_id = %request.id, subject = %subject_hash, "report expired and deleted");
                expired += 1;
            }
        }
        Ok(expired)
    }
}
