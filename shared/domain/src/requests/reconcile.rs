//! Reconciliation: the numbers that must agree, the requests that are stuck, and the deadlines
//! at risk. Run on a schedule by the sweep function and on demand by the operator CLI.
//!
//! "In sync" means: requests ever accepted (a counter written in the same transaction as each
//! request) = requests counted by state now (done + in progress). A difference means requests
//! vanished or appeared outside the service; it fires an alarm.

use crate::clock::Clock;
use crate::metrics::{self, names, Metric};
use crate::ports::{RequestStore, WorkQueue};
use crate::request::{Request, RequestId, RequestKind, RequestState};
use crate::requests::{RequestError, Requests};
use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone, Copy)]
pub struct ReconcileSettings {
    /// An open request this close to its due date is at risk.
    pub warning: Duration,
    /// A request in a worker's state (`collecting`, `fanning_out`) untouched this long, with
    /// no live lease, lost its message: it is sent again.
    pub working_stuck_after: Duration,
    /// A request waiting on others (`awaiting_confirmations`, `notifying`) untouched this long
    /// is flagged for an operator (the watchdog re-sends commands on its own).
    pub waiting_stuck_after: Duration,
    /// Bound on the requests examined per state in one run.
    pub batch_limit: usize,
    /// Send stuck requests' work messages again (the scheduled run does; `dsr-ops stuck` only
    /// looks).
    pub redrive: bool,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            warning: Duration::days(7),
            working_stuck_after: Duration::hours(1),
            waiting_stuck_after: Duration::days(14),
            batch_limit: 5000,
            redrive: true,
        }
    }
}

/// What one reconciliation found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciliation {
    pub at: Option<DateTime<Utc>>,
    /// Requests per kind and state, now.
    pub counts: Vec<(RequestKind, RequestState, usize)>,
    /// Requests ever accepted, per kind.
    pub submitted: Vec<(RequestKind, u64)>,
    /// Per kind: submitted = Σ counts.
    pub in_sync: Vec<(RequestKind, bool)>,
    pub deadline_at_risk: Vec<RequestId>,
    pub deadline_missed: Vec<RequestId>,
    pub stuck: Vec<(RequestId, RequestState)>,
    pub redriven: Vec<RequestId>,
}

impl Reconciliation {
    pub fn all_in_sync(&self) -> bool {
        self.in_sync.iter().all(|(_, ok)| *ok)
    }

    pub fn count(&self, kind: RequestKind, state: RequestState) -> usize {
        self.counts
            .iter()
            .find(|(k, s, _)| *k == kind && *s == state)
            .map_or(0, |(_, _, n)| *n)
    }
}

/// Open states and whether a worker holds requests in them.
const OPEN: [(RequestState, bool); 5] = [
    (RequestState::Received, false),
    (RequestState::Collecting, true),
    (RequestState::FanningOut, true),
    (RequestState::AwaitingConfirmations, false),
    (RequestState::Notifying, false),
];

impl<S: RequestStore, Q: WorkQueue, C: Clock> Requests<S, Q, C> {
    /// Counts, checks the counts agree, flags deadlines and stuck requests, re-drives the
    /// stuck ones a worker can take over, and emits all of it as metrics.
    pub async fn reconcile(
        &self,
        settings: ReconcileSettings,
    ) -> Result<Reconciliation, RequestError> {
        let now = self.clock.now();
        let mut found = self.tally().await?;
        for &(kind, state, n) in &found.counts {
            metrics::emit(
                Metric::count(names::REQUESTS_IN_STATE, n)
                    .with("Kind", kind.as_str())
                    .with("State", state.as_str()),
            );
        }
        for &(kind, in_sync) in &found.in_sync {
            metrics::emit(
                Metric::count(names::COUNTS_IN_SYNC, usize::from(in_sync))
                    .with("Kind", kind.as_str()),
            );
            if !in_sync {
                let submitted = found
                    .submitted
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or(0, |(_, n)| *n);
                let counted: usize = found
                    .counts
                    .iter()
                    .filter(|(k, _, _)| *k == kind)
                    .map(|(_, _, n)| n)
                    .sum();
                tracing::error!(
                    kind = kind.as_str(),
                    submitted,
                    counted,
                    alert = "counts_out_of_sync",
                    "requests submitted and requests counted by state differ"
                );
            }
        }
        for (state, worked) in OPEN {
            for request in self.store.in_state(state, settings.batch_limit).await? {
                self.check_deadline(&request, now, settings, &mut found);
                let idle = now - request.updated_at;
                let lease_live = request.lease.as_ref().is_some_and(|l| l.expires_at > now);
                if worked && idle >= settings.working_stuck_after && !lease_live {
                    found.stuck.push((request.id, state));
                    if !settings.redrive {
                        continue;
                    }
                    let hash = self.hasher.hash(&request.subject);
                    // The worker's lease expired: whoever gets the message takes over.
                    if self.send_work(&request, &hash, None).await.is_some() {
                        tracing::warn!(request_id = %request.id, state = state.as_str(), idle_seconds = idle.num_seconds(), "stuck request re-driven");
                        metrics::emit(
                            Metric::count(names::REDRIVES, 1).with("Kind", request.kind.as_str()),
                        );
                        found.redriven.push(request.id);
                    }
                } else if !worked
                    && state != RequestState::Received
                    && idle >= settings.waiting_stuck_after
                {
                    tracing::warn!(request_id = %request.id, state = state.as_str(), idle_seconds = idle.num_seconds(), alert = "request_stuck", "request has not moved for a long time");
                    found.stuck.push((request.id, state));
                }
            }
        }
        metrics::emit(Metric::count(
            names::DEADLINE_AT_RISK,
            found.deadline_at_risk.len(),
        ));
        metrics::emit(Metric::count(
            names::DEADLINE_MISSED,
            found.deadline_missed.len(),
        ));
        metrics::emit(Metric::count(names::STUCK_REQUESTS, found.stuck.len()));
        Ok(found)
    }

    /// The counts alone, read-only: per kind and state, and the submitted counter.
    pub async fn tally(&self) -> Result<Reconciliation, RequestError> {
        let mut found = Reconciliation {
            at: Some(self.clock.now()),
            ..Reconciliation::default()
        };
        for kind in RequestKind::ALL {
            let mut total = 0u64;
            for state in RequestState::ALL {
                let n = self.store.count(kind, state).await?;
                total += n as u64;
                found.counts.push((kind, state, n));
            }
            let submitted = self.store.submitted(kind).await?;
            found.submitted.push((kind, submitted));
            found.in_sync.push((kind, submitted == total));
        }
        Ok(found)
    }

    fn check_deadline(
        &self,
        request: &Request,
        now: DateTime<Utc>,
        settings: ReconcileSettings,
        found: &mut Reconciliation,
    ) {
        let left = request.due_at - now;
        if left <= Duration::zero() {
            tracing::error!(request_id = %request.id, kind = request.kind.as_str(), due_at = %request.due_at, alert = "deadline_missed", "request past its legal deadline");
            found.deadline_missed.push(request.id);
        } else if left <= settings.warning {
            tracing::warn!(request_id = %request.id, kind = request.kind.as_str(), due_at = %request.due_at, days_left = left.num_days(), alert = "deadline_at_risk", "request nearing its legal deadline");
            found.deadline_at_risk.push(request.id);
        }
    }
}
