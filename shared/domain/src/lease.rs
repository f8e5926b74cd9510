//! Lease, work, commit or hand back: how every worker takes a request (report generation,
//! erasure fan-out), written once.
//!
//! A worker takes the request with a conditional write that hands it a lease and a fencing
//! token (one more than the last worker's). Everything it then writes is conditioned on that
//! token, so a worker whose lease expired and passed to another can no longer write: its
//! commit comes back [`Committed::FencedOut`]. On failure the worker hands the request back to
//! `received` with the error (or to `failed` after its last attempt) for the next delivery of
//! its message.

use crate::clock::Clock;
use crate::hops::{self, Hop, HopMark};
use crate::metrics::{self, names, Metric};
use crate::ports::{LeaseOutcome, RequestStore, StoreError, TransitionOutcome};
use crate::request::{IllegalTransition, Request, RequestId, RequestKind, RequestState};
use crate::subject::{SubjectHash, SubjectHasher};
use chrono::{DateTime, Duration, Utc};

/// Who takes requests, and for how long.
#[derive(Debug, Clone)]
pub struct Worker {
    /// Names this worker in leases and the audit trail.
    pub owner: String,
    /// Longer than the function's timeout, so a live worker never outlives its lease.
    pub lease_ttl: Duration,
}

/// What taking a request gave.
pub enum Taken<'a, S> {
    /// The request is ours until the lease expires.
    Ours(OurLease<'a, S>),
    /// Another worker holds it until then.
    Busy { until: DateTime<Utc> },
    /// Done, cancelled, failed, past this worker's part, or gone: a duplicate or late message.
    NotWorkable(Option<RequestState>),
}

/// A request this worker holds, and the token its writes are fenced with.
pub struct OurLease<'a, S> {
    store: &'a S,
    request: Box<Request>,
    subject: SubjectHash,
}

/// Whether a fenced write landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Written; the request as it now is.
    Applied(Box<Request>),
    /// Another worker took the request over: this one's write was refused.
    FencedOut,
    /// The transition table does not allow the move (a bug, not a race): nothing written.
    Illegal(IllegalTransition),
}

/// What handing a request back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandedBack {
    /// Back in `received` for another attempt, after `attempts` failed ones.
    ForRetry {
        attempts: u32,
    },
    /// That was the last attempt: the request is `failed`.
    Failed,
    FencedOut,
}

impl Worker {
    /// Takes request `id` into `working` (from `received`, or from `working` when the previous
    /// worker's lease expired). The first time any worker takes it is the moment it was
    /// "received by a worker", counted per kind.
    pub async fn take<'a, S: RequestStore, C: Clock>(
        &self,
        store: &'a S,
        clock: &C,
        hasher: &SubjectHasher,
        id: RequestId,
        working: RequestState,
    ) -> Result<Taken<'a, S>, StoreError> {
        let now = clock.now();
        let outcome = match store
            .acquire_lease(id, &self.owner, working, now, self.lease_ttl)
            .await
        {
            Ok(outcome) => outcome,
            Err(err) => {
                // The lease may have been written before its answer was lost. Held by this
                // worker without knowing, it would keep every other worker off for its whole
                // time (the next delivery may go to another): give it up if it is ours.
                self.let_go_if_ours(store, hasher, id, working, now).await;
                return Err(err);
            }
        };
        // Received by a worker: counted on every delivery (one mark per request), whatever the
        // request's state, except for ids that name no request.
        if !matches!(outcome, LeaseOutcome::NotWorkable(None)) {
            let kind = match working {
                RequestState::FanningOut => RequestKind::Erasure,
                _ => RequestKind::Access,
            };
            if let Err(err) = hops::take(store, HopMark::new(kind, Hop::Received, id, now)).await {
                // Nothing of the work began: give the lease up at once (no attempt counted),
                // or the next delivery would find it held for the lease's whole time.
                if let LeaseOutcome::Acquired(request) = outcome {
                    let subject = hasher.hash(&request.subject);
                    let lease = OurLease {
                        store,
                        request,
                        subject,
                    };
                    lease.let_go_or_say(now).await;
                }
                return Err(err);
            }
        }
        Ok(match outcome {
            LeaseOutcome::Acquired(request) => {
                if request.fencing_token == 1 {
                    metrics::emit(
                        Metric::count(names::REQUESTS_RECEIVED, 1)
                            .with("Kind", request.kind.as_str()),
                    );
                }
                let subject = hasher.hash(&request.subject);
                Taken::Ours(OurLease {
                    store,
                    request,
                    subject,
                })
            }
            LeaseOutcome::Held { until } => Taken::Busy { until },
            LeaseOutcome::NotWorkable(state) => Taken::NotWorkable(state),
        })
    }
}

impl Worker {
    async fn let_go_if_ours<S: RequestStore>(
        &self,
        store: &S,
        hasher: &SubjectHasher,
        id: RequestId,
        working: RequestState,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        // A store that just failed may fail the read too: a lease kept by mistake holds every
        // delivery off for its whole time (a report's is 16 minutes), so try a few times.
        let mut read = store.get(id).await;
        for _ in 0..2 {
            if read.is_ok() {
                break;
            }
            read = store.get(id).await;
        }
        let Ok(Some(request)) = read else {
            return;
        };
        if request.state != working || request.lease.as_ref().is_none_or(|l| l.owner != self.owner)
        {
            return;
        }
        let subject = hasher.hash(&request.subject);
        let lease = OurLease {
            store,
            request: Box::new(request),
            subject,
        };
        if lease.let_go_or_say(now).await {
            tracing::info!(request_id = %id, "gave up a lease whose taking answered an error");
        }
    }
}

impl<S: RequestStore> OurLease<'_, S> {
    /// Gives up a lease nothing was done under, trying three times (the store may have just
    /// failed); says so when it could not. True when it was given up.
    async fn let_go_or_say(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        let mut last = None;
        for _ in 0..3 {
            match self.let_go(now).await {
                Ok(given_up) => return given_up,
                Err(err) => last = Some(err),
            }
        }
        if let Some(err) = last {
            tracing::warn!(request_id = %self.request.id, error = %err, "could not give up the lease; it runs out by itself");
        }
        false
    }
}

impl<S: RequestStore> OurLease<'_, S> {
    pub fn request(&self) -> &Request {
        &self.request
    }

    pub fn token(&self) -> u64 {
        self.request.fencing_token
    }

    /// The keyed hash of the subject: what logs carry instead of the id.
    pub fn subject(&self) -> &SubjectHash {
        &self.subject
    }

    /// Moves the request to `to` with `change` applied (a report, say), clears its error and
    /// releases the lease, if the request is still ours.
    pub async fn commit(
        &self,
        to: RequestState,
        at: DateTime<Utc>,
        change: impl FnOnce(&mut Request),
    ) -> Result<Committed, StoreError> {
        let mut request = (*self.request).clone();
        if let Err(illegal) = request.transition_to(to, at) {
            return Ok(Committed::Illegal(illegal));
        }
        request.last_error = None;
        change(&mut request);
        Ok(if self.write(&request).await? {
            Committed::Applied(Box::new(request))
        } else {
            Committed::FencedOut
        })
    }

    /// Hands the request back after a failed attempt, with the error: to `received` for the
    /// next delivery of its message, or to `failed` once `max_attempts` have failed (`None`:
    /// never).
    pub async fn hand_back(
        &self,
        error: &str,
        max_attempts: Option<u32>,
        at: DateTime<Utc>,
    ) -> Result<HandedBack, StoreError> {
        let mut request = (*self.request).clone();
        let Ok(next) = request.fail_attempt(error, max_attempts, at) else {
            // Nothing to hand back from this state; the lease simply expires.
            return Ok(HandedBack::FencedOut);
        };
        Ok(match self.write(&request).await? {
            false => HandedBack::FencedOut,
            true if next == RequestState::Failed => HandedBack::Failed,
            true => HandedBack::ForRetry {
                attempts: request.attempts,
            },
        })
    }

    /// Gives the lease up after a failed attempt that already had effects: the request stays
    /// in its working state, counted and with the error, for the next delivery of its message
    /// to take at once (a released lease is as good as an expired one).
    pub async fn release(&self, error: &str, at: DateTime<Utc>) -> Result<HandedBack, StoreError> {
        let mut request = (*self.request).clone();
        request.attempts += 1;
        request.last_error = Some(error.to_owned());
        request.updated_at = at;
        request.lease = None;
        Ok(match self.write(&request).await? {
            false => HandedBack::FencedOut,
            true => {
                self.store
                    .record_event(
                        request.id,
                        &crate::Audited::AttemptFailed {
                            attempts: request.attempts,
                        },
                        at,
                    )
                    .await?;
                HandedBack::ForRetry {
                    attempts: request.attempts,
                }
            }
        })
    }

    /// Gives the lease up without counting an attempt or leaving an error: nothing of the
    /// work began. False when the request was no longer ours.
    pub async fn let_go(&self, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut request = (*self.request).clone();
        request.updated_at = at;
        request.lease = None;
        self.write(&request).await
    }

    /// True when the write landed: the request was still ours.
    async fn write(&self, request: &Request) -> Result<bool, StoreError> {
        Ok(self
            .store
            .commit_fenced(request, &self.subject, self.token())
            .await?
            == TransitionOutcome::Applied)
    }
}

/// A fenced write tried up to three times: repeating it is harmless (it is conditional on the
/// lease's token), giving up would leave the lease to hold every other worker off.
pub(crate) async fn thrice<T, F: std::future::Future<Output = Result<T, StoreError>>>(
    write: impl Fn() -> F,
) -> Result<T, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match write().await {
            Err(error) if tries < 3 => {
                tracing::warn!(error = %error, "a fenced write failed; trying again")
            }
            done => return done,
        }
    }
}

/// The delay before attempt `attempts + 1`: `base`, doubling with every failed attempt, kept
/// under SQS's 12-hour visibility limit (the retry rides on it).
pub fn retry_delay(base: Duration, attempts: u32) -> Duration {
    let factor = 2i32.saturating_pow(attempts.saturating_sub(1).min(20));
    base.checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(Duration::hours(12) - Duration::seconds(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_sqs_limit() {
        let base = Duration::seconds(60);
        let delays: Vec<i64> = (1..=4)
            .map(|a| retry_delay(base, a).num_seconds())
            .collect();
        assert_eq!(delays, [60, 120, 240, 480]);
        assert_eq!(retry_delay(base, 0).num_seconds(), 60);
        assert_eq!(retry_delay(base, 40).num_seconds(), 12 * 3600 - 1);
    }
}
