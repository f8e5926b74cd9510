//! Where an access request's collection stands, source by source: a report may take a minute
//! or a week (a slow, rate-limited source; a third party's asynchronous export), so each source
//! is collected, retried and waited for on its own, and its result staged durably as soon as it
//! is in. The progress lives on the request (shown on `GET`), written only by the worker holding
//! the request's lease.

use crate::registry::RetryPolicy;
use crate::service::ServiceName;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// One source of one access request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    pub service: ServiceName,
    pub status: SourceStatus,
    /// Failed attempts so far (an export still running is not a failure).
    #[serde(default)]
    pub attempts: u32,
    /// Records collected, once collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Not worked on before this (a retry's backoff, an export's next poll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    /// The third party's export job, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Where the result is staged: the fencing token of the lease it was staged under (a worker
    /// fenced out meanwhile stages under its own token, never over this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<u64>,
    /// Why the last attempt failed (never personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it is not applicable (never personal data: names the identifier kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceStatus {
    /// Not collected yet (never tried, or waiting for its next attempt).
    Pending,
    /// A third party is preparing an export; it is polled at `next_at`.
    Exporting,
    /// Staged; it goes into the report as it is.
    Collected,
    /// Failed its last allowed attempt: the request fails with it.
    Failed,
    /// It keys its data by an identifier the subject does not have: nothing to ask it, shown
    /// in the report with the reason (`crate::identity`).
    NotApplicable,
}

impl SourceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceStatus::Pending => "pending",
            SourceStatus::Exporting => "exporting",
            SourceStatus::Collected => "collected",
            SourceStatus::Failed => "failed",
            SourceStatus::NotApplicable => "not_applicable",
        }
    }
}

impl SourceProgress {
    pub fn pending(service: ServiceName) -> Self {
        Self {
            service,
            status: SourceStatus::Pending,
            attempts: 0,
            records: None,
            next_at: None,
            job: None,
            staged: None,
            error: None,
            reason: None,
        }
    }

    pub fn not_applicable(&mut self, reason: String) {
        self.status = SourceStatus::NotApplicable;
        self.reason = Some(reason);
        self.next_at = None;
        self.job = None;
    }

    /// Done with: collected, or nothing to collect.
    pub fn settled(&self) -> bool {
        matches!(
            self.status,
            SourceStatus::Collected | SourceStatus::NotApplicable
        )
    }

    /// Whether this invocation should work on it.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        matches!(self.status, SourceStatus::Pending | SourceStatus::Exporting)
            && self.next_at.is_none_or(|at| at <= now)
    }

    pub fn collected(&mut self, records: u64, token: u64) {
        self.status = SourceStatus::Collected;
        self.records = Some(records);
        self.staged = Some(token);
        self.next_at = None;
        self.job = None;
        self.error = None;
    }

    /// The export was started or is still running: polled again at `at`.
    pub fn exporting(&mut self, job: String, at: DateTime<Utc>) {
        self.status = SourceStatus::Exporting;
        self.job = Some(job);
        self.next_at = Some(at);
    }

    /// One failed attempt: tried again after the source's backoff (never after `latest`, so
    /// that retries keep coming before the deadline), or failed for good after its last
    /// allowed attempt. Returns whether it failed for good.
    pub fn failed_attempt(
        &mut self,
        reason: String,
        policy: &RetryPolicy,
        now: DateTime<Utc>,
        latest: DateTime<Utc>,
    ) -> bool {
        self.attempts += 1;
        self.error = Some(reason);
        // An export that failed starts again from the beginning.
        self.job = None;
        if self.attempts >= policy.attempts {
            self.status = SourceStatus::Failed;
            self.next_at = None;
            return true;
        }
        self.status = SourceStatus::Pending;
        let wait = policy.delay(self.attempts);
        self.next_at = Some((now + wait).min(latest.max(now)));
        false
    }
}

impl RetryPolicy {
    /// The wait after `attempts` failures: the base, doubling, capped.
    pub fn delay(&self, attempts: u32) -> Duration {
        let base = Duration::seconds(self.backoff_seconds.min(i64::MAX as u64 / 4) as i64);
        let factor = 2i32.saturating_pow(attempts.saturating_sub(1).min(20));
        base.checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(Duration::seconds(self.max_backoff_seconds as i64))
    }
}

/// Where a whole collection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectionState {
    /// Every source is staged: the report can be assembled.
    Complete,
    /// A source failed for good.
    Failed(Vec<ServiceName>),
    /// Sources are still pending; the earliest is due then.
    Waiting { next: DateTime<Utc> },
}

pub fn collection_state(sources: &[SourceProgress], now: DateTime<Utc>) -> CollectionState {
    let failed: Vec<_> = sources
        .iter()
        .filter(|s| s.status == SourceStatus::Failed)
        .map(|s| s.service.clone())
        .collect();
    if !failed.is_empty() {
        return CollectionState::Failed(failed);
    }
    match sources
        .iter()
        .filter(|s| !s.settled())
        .map(|s| s.next_at.unwrap_or(now))
        .min()
    {
        None => CollectionState::Complete,
        Some(next) => CollectionState::Waiting { next },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn name(raw: &str) -> ServiceName {
        ServiceName::parse(raw).unwrap()
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            backoff_seconds: 60,
            max_backoff_seconds: 150,
        }
    }

    #[test]
    fn a_source_backs_off_on_its_own_and_fails_after_its_last_attempt() {
        let now = Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap();
        let latest = now + Duration::days(20);
        let mut source = SourceProgress::pending(name("orders"));
        assert!(source.due(now));
        let mut waits = Vec::new();
        for _ in 0..3 {
            assert!(!source.failed_attempt("HTTP 503".into(), &policy(), now, latest));
            waits.push((source.next_at.unwrap() - now).num_seconds());
            assert!(!source.due(now));
        }
        assert_eq!(waits, [60, 120, 150], "doubling, capped");
        assert!(source.failed_attempt("HTTP 503".into(), &policy(), now, latest));
        assert_eq!(source.status, SourceStatus::Failed);
        assert_eq!(
            collection_state(&[source], now),
            CollectionState::Failed(vec![name("orders")])
        );
    }

    #[test]
    fn a_retry_is_never_put_off_past_the_latest_moment() {
        let now = Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap();
        let mut source = SourceProgress::pending(name("orders"));
        source.failed_attempt("x".into(), &policy(), now, now + Duration::seconds(10));
        assert_eq!(source.next_at, Some(now + Duration::seconds(10)));
    }

    #[test]
    fn a_collection_is_complete_when_every_source_is_staged_and_waits_for_the_earliest() {
        let now = Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap();
        let mut a = SourceProgress::pending(name("a"));
        let mut b = SourceProgress::pending(name("b"));
        a.collected(3, 1);
        b.exporting("job-1".into(), now + Duration::minutes(5));
        assert_eq!(
            collection_state(&[a.clone(), b.clone()], now),
            CollectionState::Waiting {
                next: now + Duration::minutes(5)
            }
        );
        b.collected(0, 2);
        assert_eq!(collection_state(&[a, b], now), CollectionState::Complete);
    }
}
