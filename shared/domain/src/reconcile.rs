//! Reconciliation: the numbers that must agree, the requests that are stuck, and the deadlines
//! at risk. Run on a schedule by the sweep function and on demand by the operator CLI.
//!
//! "In sync" means: requests ever accepted (a counter written in the same transaction as each
//! request) = requests counted by state now (done + in progress). A difference means requests
//! vanished or appeared outside the service; it fires an alarm.

use crate::clock::Clock;
use crate::desk::{DeskError, RequestDesk};
use crate::metrics::{self, names, Metric};
use crate::ports::{RequestStore, WorkQueue};
use crate::request::{DeadlineExtension, Request, RequestId, RequestKind, RequestState};
use chrono::{DateTime, Duration, Months, Utc};

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

impl<S: RequestStore, Q: WorkQueue, C: Clock> RequestDesk<S, Q, C> {
    /// Counts, checks the counts agree, flags deadlines and stuck requests, re-drives the
    /// stuck ones a worker can take over, and emits all of it as metrics.
    pub async fn reconcile(
        &self,
        settings: ReconcileSettings,
    ) -> Result<Reconciliation, DeskError> {
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
    pub async fn tally(&self) -> Result<Reconciliation, DeskError> {
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

    /// Sends the work message of a request a worker should pick up (received, or in a worker's
    /// state whose lease ran out) again. Anything else is refused with what to do instead.
    pub async fn retry(&self, id: RequestId) -> Result<Request, DeskError> {
        let request = self.store.get(id).await?.ok_or(DeskError::NotFound)?;
        let now = self.clock.now();
        let takeable = match request.state {
            RequestState::Received => true,
            RequestState::Collecting | RequestState::FanningOut => {
                request.lease.as_ref().is_none_or(|l| l.expires_at <= now)
            }
            _ => false,
        };
        if !takeable {
            return Err(DeskError::CannotRetry(match request.state {
                RequestState::Collecting | RequestState::FanningOut => {
                    "a worker holds it right now".to_owned()
                }
                RequestState::AwaitingConfirmations | RequestState::Notifying => {
                    "it waits on holders; the watchdog re-sends their commands".to_owned()
                }
                state => format!("it is {state}; the subject can submit a new request"),
            }));
        }
        let hash = self.hasher.hash(&request.subject);
        self.send_work(&request, &hash, None)
            .await
            .ok_or_else(|| DeskError::CannotRetry("the work queue refused the message".into()))?;
        tracing::info!(request_id = %id, state = request.state.as_str(), "work message sent again by an operator");
        Ok(request)
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

    /// Art. 12(3): extends an open request's deadline once, by one or two further months, with
    /// the reason the subject is told (it shows on their request).
    pub async fn extend_deadline(
        &self,
        id: RequestId,
        months: u32,
        reason: &str,
    ) -> Result<Request, DeskError> {
        if !(1..=DeadlineExtension::MAX_MONTHS).contains(&months) {
            return Err(DeskError::CannotExtend(format!(
                "by 1 or {} months, not {months}",
                DeadlineExtension::MAX_MONTHS
            )));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > DeadlineExtension::MAX_REASON_CHARS {
            return Err(DeskError::CannotExtend(format!(
                "a reason of 1 to {} characters is required",
                DeadlineExtension::MAX_REASON_CHARS
            )));
        }
        let request = self.store.get(id).await?.ok_or(DeskError::NotFound)?;
        let due_at = crate::request::one_month_after(request.received_at)
            .checked_add_months(Months::new(months))
            .ok_or_else(|| DeskError::CannotExtend("the new date is out of range".into()))?;
        let extension = DeadlineExtension {
            months,
            reason: reason.to_owned(),
            extended_at: self.clock.now(),
        };
        if !self.store.extend_deadline(id, due_at, &extension).await? {
            return Err(DeskError::CannotExtend(match &request.deadline_extension {
                Some(_) => "it was extended before (once is all the law allows)".to_owned(),
                None => format!("the request is {}", request.state),
            }));
        }
        tracing::info!(request_id = %id, months, due_at = %due_at, "deadline extended");
        self.store.get(id).await?.ok_or(DeskError::NotFound)
    }
}
