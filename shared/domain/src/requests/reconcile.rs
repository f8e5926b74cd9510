//! Reconciliation: the numbers that must agree, the requests that are stuck, and the deadlines
//! at risk. Run on a schedule by the sweep function and on demand by the operator CLI.
//!
//! "In sync" means: at every hop, the requests that should have taken it by now did (see
//! [`crate::hops`]): each component counted its hop itself, so a message lost between two of
//! them shows as a request missing at the next hop, named with the hop. A mismatch fires an
//! alarm (`HopMismatches`, `CountsInSync`) and a log line listing the request ids.

use crate::clock::Clock;
use crate::hops::{self, Allowances, Hop, Window};
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
    /// A request waiting on others (`awaiting_confirmations`, `notifying`, `verifying`) untouched this long
    /// is flagged for an operator (the watchdog re-sends commands on its own).
    pub waiting_stuck_after: Duration,
    /// Bound on the requests examined per state in one run.
    pub batch_limit: usize,
    /// Send stuck requests' work messages again (the scheduled run does; `dsr-ops stuck` only
    /// looks).
    pub redrive: bool,
    /// How long each hop may take before it counts as missing.
    pub allowances: Allowances,
    /// How many hourly windows back the hops are compared (the current one included).
    pub windows: u32,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            warning: Duration::days(7),
            working_stuck_after: Duration::hours(1),
            waiting_stuck_after: Duration::days(14),
            batch_limit: 5000,
            redrive: true,
            allowances: Allowances::default(),
            windows: 72,
        }
    }
}

/// What one reconciliation found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciliation {
    pub at: Option<DateTime<Utc>>,
    /// Requests per kind and state, now.
    pub counts: Vec<(RequestKind, RequestState, usize)>,
    /// Per kind: every hop of every window agrees.
    pub in_sync: Vec<(RequestKind, bool)>,
    /// The hops compared, per kind and hourly window, newest first.
    pub windows: Vec<Window>,
    pub deadline_at_risk: Vec<RequestId>,
    pub deadline_missed: Vec<RequestId>,
    pub stuck: Vec<(RequestId, RequestState)>,
    pub redriven: Vec<RequestId>,
}

impl Reconciliation {
    pub fn all_in_sync(&self) -> bool {
        self.in_sync.iter().all(|(_, ok)| *ok)
    }

    /// Every hop missing in any window, oldest first.
    pub fn missing(&self) -> impl Iterator<Item = (&Window, &hops::Missing)> {
        self.windows
            .iter()
            .rev()
            .flat_map(|w| w.missing.iter().map(move |m| (w, m)))
    }

    pub fn count(&self, kind: RequestKind, state: RequestState) -> usize {
        self.counts
            .iter()
            .find(|(k, s, _)| *k == kind && *s == state)
            .map_or(0, |(_, _, n)| *n)
    }
}

/// Whether an open request has stopped moving: in a worker's state, untouched for
/// `working_stuck_after` with no live lease (its message was lost: the scheduled run sends it
/// again); waiting on others, untouched for `waiting_stuck_after` (an operator's case).
/// `received` is the sweep's (it re-sends messages that never left).
pub fn stuck(request: &Request, now: DateTime<Utc>, settings: &ReconcileSettings) -> bool {
    let idle = now - request.updated_at;
    match OPEN.iter().find(|(state, _)| *state == request.state) {
        Some((_, true)) => {
            let lease_live = request.lease.as_ref().is_some_and(|l| l.expires_at > now);
            // A collection handed on waits for its next source by design (a backoff, an
            // export's next poll): it is stuck only once that time passed unanswered.
            let waits_until = request
                .sources
                .iter()
                .filter(|s| s.status != crate::report::progress::SourceStatus::Collected)
                .filter_map(|s| s.next_at)
                .min();
            let idle = match waits_until {
                Some(at) if at > request.updated_at => now - at,
                _ => idle,
            };
            idle >= settings.working_stuck_after && !lease_live
        }
        Some((RequestState::Received, false)) | None => false,
        Some((_, false)) => idle >= settings.waiting_stuck_after,
    }
}

/// Open states and whether a worker holds requests in them.
pub const OPEN: [(RequestState, bool); 6] = [
    (RequestState::Received, false),
    (RequestState::Collecting, true),
    (RequestState::FanningOut, true),
    (RequestState::AwaitingConfirmations, false),
    (RequestState::Notifying, false),
    (RequestState::Verifying, false),
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
        self.compare_hops(settings, &mut found).await?;
        for (state, worked) in OPEN {
            for request in self.store.in_state(state, settings.batch_limit).await? {
                self.check_deadline(&request, now, settings, &mut found);
                let idle = now - request.updated_at;
                if worked && stuck(&request, now, &settings) {
                    found.stuck.push((request.id, state));
                    if !settings.redrive {
                        continue;
                    }
                    let hash = self.hasher.hash(&request.subject);
                    // The worker's lease expired: whoever gets the message takes over.
                    if self.send_work(&request, &hash).await.is_some() {
                        tracing::warn!(request_id = %request.id, state = state.as_str(), idle_seconds = idle.num_seconds(), "stuck request re-driven");
                        metrics::emit(
                            Metric::count(names::REDRIVES, 1).with("Kind", request.kind.as_str()),
                        );
                        found.redriven.push(request.id);
                    }
                } else if !worked && stuck(&request, now, &settings) {
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

    /// The counts by state, read-only.
    pub async fn tally(&self) -> Result<Reconciliation, RequestError> {
        let mut found = Reconciliation {
            at: Some(self.clock.now()),
            ..Reconciliation::default()
        };
        for kind in RequestKind::ALL {
            for state in RequestState::ALL {
                let n = self.store.count(kind, state).await?;
                found.counts.push((kind, state, n));
            }
        }
        Ok(found)
    }

    /// The hops of the last `settings.windows` hours, compared; read-only.
    pub async fn hop_windows(
        &self,
        settings: &ReconcileSettings,
    ) -> Result<Vec<Window>, RequestError> {
        let now = self.clock.now();
        let newest = hops::truncate_to_hour(now);
        let mut windows = Vec::new();
        for back in 0..settings.windows.max(1) {
            let hour = newest - Duration::hours(i64::from(back));
            for kind in RequestKind::ALL {
                let marks = self.store.window(kind, hour).await?;
                windows.push(hops::reconcile(
                    kind,
                    hour,
                    &marks,
                    now,
                    &settings.allowances,
                ));
            }
        }
        Ok(windows)
    }

    /// Compares the hops, and says what it found: per kind `CountsInSync`, per kind and hop
    /// `HopMismatches`, and one alarm line per hop naming the requests missing there.
    async fn compare_hops(
        &self,
        settings: ReconcileSettings,
        found: &mut Reconciliation,
    ) -> Result<(), RequestError> {
        found.windows = self.hop_windows(&settings).await?;
        for kind in RequestKind::ALL {
            let windows = found.windows.iter().filter(|w| w.kind == kind);
            let mut in_sync = true;
            for hop in Hop::ALL {
                let missing: Vec<String> = windows
                    .clone()
                    .flat_map(|w| w.missing_at(hop))
                    .map(|m| match &m.service {
                        Some(service) => format!("{}/{service}", m.request),
                        None => m.request.to_string(),
                    })
                    .collect();
                metrics::emit(
                    Metric::count(names::HOP_MISMATCHES, missing.len())
                        .with("Kind", kind.as_str())
                        .with("Hop", hop.as_str()),
                );
                if !missing.is_empty() {
                    in_sync = false;
                    tracing::error!(
                        kind = kind.as_str(),
                        hop = hop.as_str(),
                        missing = missing.len(),
                        request_ids = %missing.join(","),
                        alert = "hop_mismatch",
                        "requests that should have taken this hop by now did not: lost on the way to it"
                    );
                }
            }
            metrics::emit(
                Metric::count(names::COUNTS_IN_SYNC, usize::from(in_sync))
                    .with("Kind", kind.as_str()),
            );
            found.in_sync.push((kind, in_sync));
        }
        Ok(())
    }

    fn check_deadline(
        &self,
        request: &Request,
        now: DateTime<Utc>,
        settings: ReconcileSettings,
        found: &mut Reconciliation,
    ) {
        match deadline(request, now, &settings) {
            Some(Deadline::Missed) => {
                tracing::error!(request_id = %request.id, kind = request.kind.as_str(), due_at = %request.due_at, alert = "deadline_missed", "request past its legal deadline");
                found.deadline_missed.push(request.id);
            }
            Some(Deadline::AtRisk) => {
                tracing::warn!(request_id = %request.id, kind = request.kind.as_str(), due_at = %request.due_at, days_left = (request.due_at - now).num_days(), alert = "deadline_at_risk", "request nearing its legal deadline");
                found.deadline_at_risk.push(request.id);
            }
            None => {}
        }
    }
}

/// Where an open request stands against its legal deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Within `settings.warning` of it.
    AtRisk,
    /// Past it.
    Missed,
}

/// `None` while the deadline is further away than `settings.warning`.
pub fn deadline(
    request: &Request,
    now: DateTime<Utc>,
    settings: &ReconcileSettings,
) -> Option<Deadline> {
    let left = request.due_at - now;
    if left <= Duration::zero() {
        Some(Deadline::Missed)
    } else if left <= settings.warning {
        Some(Deadline::AtRisk)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::progress::SourceProgress;
    use crate::subject::SubjectId;
    use chrono::TimeZone;

    #[test]
    fn a_collection_waiting_for_its_next_source_is_stuck_only_once_that_time_passed() {
        let at = Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap();
        let mut request = Request::receive(
            RequestKind::Access,
            SubjectId::parse("rita@example.com").unwrap(),
            at,
        );
        request.state = RequestState::Collecting;
        let mut export = SourceProgress::pending(crate::ServiceName::parse("crm").unwrap());
        export.exporting("job-1".into(), at + Duration::hours(6));
        request.sources = vec![export];
        let settings = ReconcileSettings::default();
        assert!(
            !stuck(&request, at + Duration::hours(5), &settings),
            "its export is polled in six hours"
        );
        assert!(!stuck(
            &request,
            at + Duration::minutes(6 * 60 + 30),
            &settings
        ));
        assert!(
            stuck(&request, at + Duration::hours(7), &settings),
            "an hour past the poll that never came"
        );
        request.sources.clear();
        assert!(stuck(&request, at + Duration::hours(1), &settings));
    }
}
