//! Hops: the steps a request takes from one component to the next, each counted by the
//! component that took it, at the moment it took it, in a log of its own (never derived from
//! the request item). Adjacent hops must agree: a request that passed one hop and not the next
//! within that hop's allowance was lost there, and the reconciliation names the hop and the
//! request.
//!
//! A hop is one mark per request (and per service, for the erasure's per-service hops), written
//! idempotently: a redelivered message bumps the mark's `times`, not the count. Marks are kept
//! per kind and per hour of the request's submission (a request id is a ULID: its hour is in
//! it), so the hops of one window count the same requests and a window's marks are one read.
//! Submissions are the exception: every click is its own mark, in the hour of the click.

use crate::ports::StoreError;
use crate::request::{RequestId, RequestKind};
use crate::service::ServiceName;
use chrono::{DateTime, Duration, DurationRound, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

/// The steps, in the order a request takes them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    /// A user asked (every click: new, already open, replayed, refused). Intake.
    Submitted,
    /// A worker took the request's work message. Report and erasure functions.
    Received,
    /// Access: the report was written and committed. Report function.
    Generated,
    /// Erasure: an obligation was planned for a service. Erasure function.
    FannedOut,
    /// Erasure: the broker confirmed a service's erase command (a vendor's API took it).
    Commanded,
    /// Erasure: the service's answer was recorded. Confirm function.
    Answered,
    /// Erasure: the service did not answer after every re-send. Confirm function.
    Escalated,
    /// The broker confirmed the notice to the subject (to the email service): "your report
    /// is ready", "your data will be erased". Bridge.
    Notified,
    /// Erasure: an erase-last service's command left after the grace period. Confirm function.
    Released,
    /// Erasure: every service answered. Confirm function.
    Completed,
    /// The broker confirmed the platform event: `report_ready`, `erasure_completed`. Bridge.
    Announced,
    /// The request failed for good.
    Failed,
    /// The subject cancelled it. Intake.
    Cancelled,
}

impl Hop {
    pub const ALL: [Hop; 13] = [
        Hop::Submitted,
        Hop::Received,
        Hop::Generated,
        Hop::FannedOut,
        Hop::Commanded,
        Hop::Answered,
        Hop::Escalated,
        Hop::Notified,
        Hop::Released,
        Hop::Completed,
        Hop::Announced,
        Hop::Failed,
        Hop::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Submitted => "submitted",
            Hop::Received => "received",
            Hop::Generated => "generated",
            Hop::FannedOut => "fanned_out",
            Hop::Commanded => "commanded",
            Hop::Answered => "answered",
            Hop::Escalated => "escalated",
            Hop::Notified => "notified",
            Hop::Released => "released",
            Hop::Completed => "completed",
            Hop::Announced => "announced",
            Hop::Failed => "failed",
            Hop::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Hop> {
        Hop::ALL.into_iter().find(|h| h.as_str() == raw)
    }

    /// The hops a request of `kind` takes, in order (the funnel), without the terminal ones.
    pub fn path(kind: RequestKind) -> &'static [Hop] {
        match kind {
            RequestKind::Access => &[
                Hop::Submitted,
                Hop::Received,
                Hop::Generated,
                Hop::Notified,
                Hop::Announced,
            ],
            RequestKind::Erasure => &[
                Hop::Submitted,
                Hop::Received,
                Hop::FannedOut,
                Hop::Commanded,
                Hop::Answered,
                Hop::Notified,
                Hop::Released,
                Hop::Completed,
                Hop::Announced,
            ],
        }
    }

    /// Counted per service (erasure obligations) rather than once per request.
    pub fn per_service(self) -> bool {
        matches!(
            self,
            Hop::FannedOut | Hop::Commanded | Hop::Answered | Hop::Escalated | Hop::Released
        )
    }
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hop another component takes for this one: an outbound message carries it, and the
/// bridge counts it once the broker confirmed the message (`count` in an outbound envelope,
/// docs/messages.schema.json).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountAs {
    pub kind: RequestKind,
    pub hop: Hop,
    pub request_id: RequestId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceName>,
}

impl CountAs {
    pub fn new(kind: RequestKind, hop: Hop, request_id: RequestId) -> Self {
        Self {
            kind,
            hop,
            request_id,
            service: None,
        }
    }

    pub fn for_service(mut self, service: &ServiceName) -> Self {
        self.service = Some(service.clone());
        self
    }

    /// The mark, taken at `at`.
    pub fn mark(&self, at: DateTime<Utc>) -> HopMark {
        HopMark {
            service: self.service.clone(),
            ..HopMark::new(self.kind, self.hop, self.request_id, at)
        }
    }
}

/// What a click on "submit" led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClickOutcome {
    /// A new request.
    Created,
    /// The subject's open request of this kind was returned.
    AlreadyOpen,
    /// A retry under the same idempotency key.
    Replayed,
    /// Over the per-subject limit (429).
    Refused,
}

impl ClickOutcome {
    pub const ALL: [ClickOutcome; 4] = [
        ClickOutcome::Created,
        ClickOutcome::AlreadyOpen,
        ClickOutcome::Replayed,
        ClickOutcome::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClickOutcome::Created => "created",
            ClickOutcome::AlreadyOpen => "already_open",
            ClickOutcome::Replayed => "replayed",
            ClickOutcome::Refused => "refused",
        }
    }

    pub fn parse(raw: &str) -> Option<ClickOutcome> {
        ClickOutcome::ALL.into_iter().find(|o| o.as_str() == raw)
    }
}

/// One click: its own id (for a new request, the request's id) and what it led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Click {
    pub id: RequestId,
    pub outcome: ClickOutcome,
}

/// One hop of one request (and service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopMark {
    pub kind: RequestKind,
    pub hop: Hop,
    /// The request (for a click that was refused, none: the click's own id stands in).
    pub request: RequestId,
    pub service: Option<ServiceName>,
    /// Clicks only.
    pub click: Option<Click>,
    /// Fan-out only: the service is erased last (after the subject was told).
    pub erase_last: bool,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// How often the hop happened (redeliveries, re-sends).
    pub times: u32,
}

impl HopMark {
    pub fn new(kind: RequestKind, hop: Hop, request: RequestId, at: DateTime<Utc>) -> Self {
        Self {
            kind,
            hop,
            request,
            service: None,
            click: None,
            erase_last: false,
            first_at: at,
            last_at: at,
            times: 1,
        }
    }

    /// A click on "submit" that led to `request` (a new request: the click's id is its id).
    pub fn click(
        kind: RequestKind,
        click: RequestId,
        request: RequestId,
        outcome: ClickOutcome,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            click: Some(Click { id: click, outcome }),
            ..Self::new(kind, Hop::Submitted, request, at)
        }
    }

    pub fn for_service(mut self, service: &ServiceName) -> Self {
        self.service = Some(service.clone());
        self
    }

    pub fn erased_last(mut self, last: bool) -> Self {
        self.erase_last = last;
        self
    }

    /// The window the mark is counted in: the hour of its click, or of its request.
    pub fn hour(&self) -> DateTime<Utc> {
        hour_of(self.click.map_or(self.request, |c| c.id))
    }

    /// Unique within its window: the same hop of the same request (and service) is one mark.
    pub fn key(&self) -> String {
        match (&self.click, &self.service) {
            (Some(click), _) => format!("{}#{}", self.hop, click.id),
            (None, Some(service)) => format!("{}#{}#{}", self.hop, self.request, service),
            (None, None) => format!("{}#{}", self.hop, self.request),
        }
    }
}

/// The hour a request (or click) id was made in.
pub fn hour_of(id: RequestId) -> DateTime<Utc> {
    truncate_to_hour(id.created_at())
}

pub fn truncate_to_hour(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(Duration::hours(1)).unwrap_or(at)
}

/// Where hops are counted.
pub trait HopLog: Send + Sync {
    /// Counts `mark`: idempotent by its window and [`HopMark::key`] (a repeat bumps `times`).
    fn mark(&self, mark: &HopMark) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every mark of `kind` in the window starting at `hour`.
    fn window(
        &self,
        kind: RequestKind,
        hour: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<HopMark>, StoreError>> + Send;
}

impl<T: HopLog> HopLog for Arc<T> {
    async fn mark(&self, mark: &HopMark) -> Result<(), StoreError> {
        (**self).mark(mark).await
    }
    async fn window(
        &self,
        kind: RequestKind,
        hour: DateTime<Utc>,
    ) -> Result<Vec<HopMark>, StoreError> {
        (**self).window(kind, hour).await
    }
}

/// Counts `mark` in `log` and as a metric (`Hops`, by kind and hop: the dashboard's funnel).
/// A repeated hop is one mark but another data point: the metric counts activity, the log
/// counts requests.
pub async fn take<L: HopLog>(log: &L, mark: HopMark) -> Result<(), StoreError> {
    log.mark(&mark).await?;
    crate::metrics::emit(
        crate::metrics::Metric::count(crate::metrics::names::HOPS, 1)
            .with("Kind", mark.kind.as_str())
            .with("Hop", mark.hop.as_str()),
    );
    Ok(())
}

/// How long each hop may take before its absence is a loss rather than work in flight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allowances {
    /// A message between two components (a queue, the broker, the bridge).
    pub in_flight: Duration,
    /// From receipt to a committed report (every attempt included).
    pub report: Duration,
    /// From a service's command to its answer or its escalation (the watchdog's whole
    /// schedule): a slow service is escalated, not lost.
    pub answer: Duration,
    /// The grace period between the notice and the erase-last services' commands.
    pub grace: Duration,
}

impl Default for Allowances {
    fn default() -> Self {
        Self {
            in_flight: Duration::minutes(15),
            report: Duration::hours(1),
            answer: Duration::days(7),
            grace: Duration::hours(72),
        }
    }
}

/// A hop a request should have taken by now and did not.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Missing {
    pub hop: Hop,
    pub request: RequestId,
    pub service: Option<ServiceName>,
    /// Since when it is late.
    pub due_at: DateTime<Utc>,
}

/// One window of one kind: what each hop counted, and what is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub kind: RequestKind,
    pub hour: DateTime<Utc>,
    /// Clicks per outcome (every click on "submit").
    pub clicks: BTreeMap<ClickOutcome, usize>,
    /// Requests that took each hop (for per-service hops, requests with at least one).
    pub requests: BTreeMap<Hop, usize>,
    /// Per-service hops: (hop, service) → requests.
    pub services: BTreeMap<(Hop, ServiceName), usize>,
    /// Hops a request should have taken by now and did not, oldest first.
    pub missing: Vec<Missing>,
    /// Hops still within their allowance.
    pub in_flight: BTreeMap<Hop, usize>,
}

impl Window {
    pub fn count(&self, hop: Hop) -> usize {
        if hop == Hop::Submitted {
            self.clicks.values().sum()
        } else {
            self.requests.get(&hop).copied().unwrap_or(0)
        }
    }

    /// Requests accepted in the window (clicks that created one).
    pub fn accepted(&self) -> usize {
        self.clicks
            .get(&ClickOutcome::Created)
            .copied()
            .unwrap_or(0)
    }

    pub fn missing_at(&self, hop: Hop) -> impl Iterator<Item = &Missing> {
        self.missing.iter().filter(move |m| m.hop == hop)
    }

    pub fn in_sync(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Compares one window's hops: every request accepted in it must have taken each hop its
/// previous hops call for, within that hop's allowance; a hop taken by a request that was never
/// submitted is missing its submission.
pub fn reconcile(
    kind: RequestKind,
    hour: DateTime<Utc>,
    marks: &[HopMark],
    now: DateTime<Utc>,
    allowances: &Allowances,
) -> Window {
    let mut window = Window {
        kind,
        hour,
        clicks: BTreeMap::new(),
        requests: BTreeMap::new(),
        services: BTreeMap::new(),
        missing: Vec::new(),
        in_flight: BTreeMap::new(),
    };
    let mut accepted: BTreeMap<RequestId, DateTime<Utc>> = BTreeMap::new();
    let mut by_request: BTreeMap<RequestId, Vec<&HopMark>> = BTreeMap::new();
    for mark in marks.iter().filter(|m| m.kind == kind) {
        match mark.click {
            Some(click) => {
                *window.clicks.entry(click.outcome).or_default() += 1;
                if click.outcome == ClickOutcome::Created {
                    accepted.insert(mark.request, mark.first_at);
                }
            }
            None => by_request.entry(mark.request).or_default().push(mark),
        }
    }
    for (request, marks) in &by_request {
        let hops: BTreeSet<Hop> = marks.iter().map(|m| m.hop).collect();
        for hop in hops {
            *window.requests.entry(hop).or_default() += 1;
        }
        for mark in marks {
            if let Some(service) = &mark.service {
                *window
                    .services
                    .entry((mark.hop, service.clone()))
                    .or_default() += 1;
            }
        }
        if !accepted.contains_key(request) {
            let first = marks.iter().map(|m| m.first_at).min().unwrap_or(now);
            window.missing.push(Missing {
                hop: Hop::Submitted,
                request: *request,
                service: None,
                due_at: first,
            });
        }
    }
    for (request, submitted_at) in &accepted {
        let marks = by_request.get(request).map_or(&[][..], Vec::as_slice);
        for (hop, service, due_at) in expected(kind, *submitted_at, marks, allowances) {
            if due_at <= now {
                window.missing.push(Missing {
                    hop,
                    request: *request,
                    service,
                    due_at,
                });
            } else {
                *window.in_flight.entry(hop).or_default() += 1;
            }
        }
    }
    window.missing.sort_by(|a, b| {
        (a.due_at, a.hop, a.request, &a.service).cmp(&(b.due_at, b.hop, b.request, &b.service))
    });
    window
}

/// The hops a request has not taken yet and should, each with the time it becomes late.
struct Expected<'a> {
    marks: &'a [&'a HopMark],
    allow: &'a Allowances,
    due: Vec<(Hop, Option<ServiceName>, DateTime<Utc>)>,
}

impl Expected<'_> {
    fn at(&self, hop: Hop, service: Option<&ServiceName>) -> Option<DateTime<Utc>> {
        self.marks
            .iter()
            .find(|m| m.hop == hop && m.service.as_ref() == service)
            .map(|m| m.first_at)
    }

    /// When `hop` was taken; if it was not, it is due `by`.
    fn hop(
        &mut self,
        hop: Hop,
        service: Option<&ServiceName>,
        by: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let taken = self.at(hop, service);
        if taken.is_none() {
            self.due.push((hop, service.cloned(), by));
        }
        taken
    }

    /// One service's command and answer, from `from`: when it answered, or `None` while it
    /// has not (an escalated service is an operator's case, shown as such, not a loss).
    fn service(&mut self, service: &ServiceName, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.at(Hop::Escalated, Some(service)).is_some() {
            return None;
        }
        let commanded = self.hop(Hop::Commanded, Some(service), from + self.allow.in_flight)?;
        self.hop(Hop::Answered, Some(service), commanded + self.allow.answer)
    }

    fn access(&mut self, received: DateTime<Utc>) {
        if let Some(generated) = self.hop(Hop::Generated, None, received + self.allow.report) {
            self.hop(Hop::Notified, None, generated + self.allow.in_flight);
            self.hop(Hop::Announced, None, generated + self.allow.in_flight);
        }
    }

    fn erasure(&mut self, received: DateTime<Utc>) -> Option<()> {
        let planned: Vec<(ServiceName, bool, DateTime<Utc>)> = self
            .marks
            .iter()
            .filter(|m| m.hop == Hop::FannedOut)
            .filter_map(|m| Some((m.service.clone()?, m.erase_last, m.first_at)))
            .collect();
        if planned.is_empty() {
            self.hop(Hop::FannedOut, None, received + self.allow.in_flight);
            return None;
        }
        // Every service first, then the notice; the erase-last ones after the grace period.
        let mut answered = Vec::new();
        let mut all = true;
        for (service, _, planned_at) in planned.iter().filter(|(_, last, _)| !last) {
            match self.service(service, *planned_at) {
                Some(at) => answered.push(at),
                None => all = false,
            }
        }
        if !all {
            return None;
        }
        let first = answered.iter().max().copied().unwrap_or(received);
        let notified = self.hop(Hop::Notified, None, first + self.allow.in_flight)?;
        let release = notified + self.allow.grace + self.allow.in_flight;
        for (service, _, _) in planned.iter().filter(|(_, last, _)| *last) {
            match self
                .hop(Hop::Released, Some(service), release)
                .and_then(|released| self.service(service, released))
            {
                Some(at) => answered.push(at),
                None => all = false,
            }
        }
        if !all {
            return None;
        }
        let last = answered.iter().max().copied().unwrap_or(notified);
        let completed = self.hop(Hop::Completed, None, last + self.allow.in_flight)?;
        self.hop(Hop::Announced, None, completed + self.allow.in_flight);
        Some(())
    }
}

fn expected(
    kind: RequestKind,
    submitted_at: DateTime<Utc>,
    marks: &[&HopMark],
    allow: &Allowances,
) -> Vec<(Hop, Option<ServiceName>, DateTime<Utc>)> {
    let mut expected = Expected {
        marks,
        allow,
        due: Vec::new(),
    };
    // A request that ended early owes nothing more.
    if marks
        .iter()
        .any(|m| matches!(m.hop, Hop::Cancelled | Hop::Failed))
    {
        return expected.due;
    }
    if let Some(received) = expected.hop(Hop::Received, None, submitted_at + allow.in_flight) {
        match kind {
            RequestKind::Access => expected.access(received),
            RequestKind::Erasure => {
                expected.erasure(received);
            }
        }
    }
    expected.due
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap() + Duration::minutes(minutes)
    }

    fn svc(name: &str) -> ServiceName {
        ServiceName::parse(name).unwrap()
    }

    struct Story {
        kind: RequestKind,
        id: RequestId,
        marks: Vec<HopMark>,
    }

    impl Story {
        fn submitted(kind: RequestKind, at: i64) -> Self {
            let id = RequestId::new_at(t(at));
            Self {
                kind,
                id,
                marks: vec![HopMark::click(kind, id, id, ClickOutcome::Created, t(at))],
            }
        }
        fn then(mut self, hop: Hop, at: i64) -> Self {
            self.marks
                .push(HopMark::new(self.kind, hop, self.id, t(at)));
            self
        }
        fn then_for(mut self, hop: Hop, service: &str, at: i64) -> Self {
            self.marks
                .push(HopMark::new(self.kind, hop, self.id, t(at)).for_service(&svc(service)));
            self
        }
        fn planned(mut self, service: &str, last: bool, at: i64) -> Self {
            self.marks.push(
                HopMark::new(self.kind, Hop::FannedOut, self.id, t(at))
                    .for_service(&svc(service))
                    .erased_last(last),
            );
            self
        }
    }

    fn allow() -> Allowances {
        Allowances {
            in_flight: Duration::minutes(5),
            report: Duration::minutes(20),
            answer: Duration::minutes(30),
            grace: Duration::minutes(10),
        }
    }

    fn missing(window: &Window) -> Vec<(Hop, Option<String>)> {
        window
            .missing
            .iter()
            .map(|m| (m.hop, m.service.as_ref().map(|s| s.as_str().to_owned())))
            .collect()
    }

    #[test]
    fn an_access_request_that_took_every_hop_is_in_sync_and_counted_once_per_hop() {
        let story = Story::submitted(RequestKind::Access, 1)
            .then(Hop::Received, 2)
            .then(Hop::Generated, 3)
            .then(Hop::Notified, 4)
            .then(Hop::Announced, 4);
        let mut marks = story.marks.clone();
        // A redelivered work message is the same mark seen again, not a second request.
        marks.push(HopMark {
            times: 2,
            ..HopMark::new(RequestKind::Access, Hop::Received, story.id, t(2))
        });
        let window = reconcile(RequestKind::Access, t(0), &marks, t(600), &allow());
        assert!(window.in_sync(), "{:?}", window.missing);
        for hop in Hop::path(RequestKind::Access) {
            assert_eq!(window.count(*hop), 1, "{hop}");
        }
        assert_eq!(window.accepted(), 1);
    }

    #[test]
    fn a_lost_work_message_is_in_flight_until_its_allowance_then_missing_at_received() {
        let story = Story::submitted(RequestKind::Access, 1);
        let window = reconcile(RequestKind::Access, t(0), &story.marks, t(5), &allow());
        assert!(window.in_sync());
        assert_eq!(window.in_flight.get(&Hop::Received), Some(&1));
        let window = reconcile(RequestKind::Access, t(0), &story.marks, t(6), &allow());
        assert_eq!(missing(&window), [(Hop::Received, None)]);
        assert_eq!(window.missing[0].request, story.id);
        assert_eq!(window.missing[0].due_at, t(6));
    }

    #[test]
    fn each_access_hop_is_named_when_it_is_the_one_missing() {
        let story = Story::submitted(RequestKind::Access, 1).then(Hop::Received, 2);
        let w = reconcile(RequestKind::Access, t(0), &story.marks, t(30), &allow());
        assert_eq!(missing(&w), [(Hop::Generated, None)]);
        let story = story.then(Hop::Generated, 10);
        let w = reconcile(RequestKind::Access, t(0), &story.marks, t(30), &allow());
        assert_eq!(missing(&w), [(Hop::Notified, None), (Hop::Announced, None)]);
        let story = story.then(Hop::Notified, 11);
        let w = reconcile(RequestKind::Access, t(0), &story.marks, t(30), &allow());
        assert_eq!(missing(&w), [(Hop::Announced, None)]);
        let w = reconcile(RequestKind::Access, t(0), &story.marks, t(14), &allow());
        assert!(w.in_sync(), "announcing is still in flight");
    }

    #[test]
    fn cancelled_and_failed_requests_owe_nothing_more() {
        let cancelled = Story::submitted(RequestKind::Access, 1).then(Hop::Cancelled, 2);
        let failed = Story::submitted(RequestKind::Access, 3)
            .then(Hop::Received, 4)
            .then(Hop::Failed, 50);
        let marks = [cancelled.marks, failed.marks].concat();
        let w = reconcile(RequestKind::Access, t(0), &marks, t(600), &allow());
        assert!(w.in_sync(), "{:?}", w.missing);
        assert_eq!(w.count(Hop::Failed), 1);
        assert_eq!(w.count(Hop::Cancelled), 1);
    }

    #[test]
    fn a_hop_of_a_request_never_submitted_is_missing_its_submission() {
        let id = RequestId::new_at(t(1));
        let marks = [HopMark::new(RequestKind::Access, Hop::Received, id, t(2))];
        let w = reconcile(RequestKind::Access, t(0), &marks, t(3), &allow());
        assert_eq!(missing(&w), [(Hop::Submitted, None)]);
    }

    #[test]
    fn every_click_counts_as_a_submission_but_only_new_requests_are_expected_downstream() {
        let story = Story::submitted(RequestKind::Erasure, 1);
        let mut marks = story.marks.clone();
        for (minute, outcome) in [
            (2, ClickOutcome::AlreadyOpen),
            (3, ClickOutcome::Replayed),
            (4, ClickOutcome::Refused),
        ] {
            let click = RequestId::new_at(t(minute));
            marks.push(HopMark::click(
                RequestKind::Erasure,
                click,
                story.id,
                outcome,
                t(minute),
            ));
        }
        let w = reconcile(RequestKind::Erasure, t(0), &marks, t(4), &allow());
        assert_eq!(w.count(Hop::Submitted), 4);
        assert_eq!(w.accepted(), 1);
        assert_eq!(
            w.in_flight.get(&Hop::Received),
            Some(&1),
            "one request, not four"
        );
    }

    fn erased_up_to_the_notice() -> Story {
        Story::submitted(RequestKind::Erasure, 1)
            .then(Hop::Received, 2)
            .planned("billing", false, 3)
            .planned("email", true, 3)
            .then_for(Hop::Commanded, "billing", 4)
            .then_for(Hop::Answered, "billing", 20)
    }

    #[test]
    fn an_erasure_that_took_every_hop_is_in_sync() {
        let story = erased_up_to_the_notice()
            .then(Hop::Notified, 21)
            .then_for(Hop::Released, "email", 31)
            .then_for(Hop::Commanded, "email", 32)
            .then_for(Hop::Answered, "email", 33)
            .then(Hop::Completed, 34)
            .then(Hop::Announced, 35);
        let w = reconcile(RequestKind::Erasure, t(0), &story.marks, t(6000), &allow());
        assert!(w.in_sync(), "{:?}", w.missing);
        for hop in Hop::path(RequestKind::Erasure) {
            assert_eq!(w.count(*hop), 1, "{hop}");
        }
        assert_eq!(w.services.get(&(Hop::Answered, svc("email"))), Some(&1));
    }

    #[test]
    fn each_erasure_hop_is_named_with_its_service_when_it_is_the_one_missing() {
        let base = Story::submitted(RequestKind::Erasure, 1).then(Hop::Received, 2);
        let w = reconcile(RequestKind::Erasure, t(0), &base.marks, t(100), &allow());
        assert_eq!(missing(&w), [(Hop::FannedOut, None)]);

        let planned = base.planned("billing", false, 3).planned("email", true, 3);
        let w = reconcile(RequestKind::Erasure, t(0), &planned.marks, t(100), &allow());
        assert_eq!(
            missing(&w),
            [(Hop::Commanded, Some("billing".into()))],
            "the erase-last service is not commanded before the notice"
        );

        let commanded = planned.then_for(Hop::Commanded, "billing", 4);
        let w = reconcile(
            RequestKind::Erasure,
            t(0),
            &commanded.marks,
            t(33),
            &allow(),
        );
        assert!(w.in_sync(), "the service has its allowance to answer");
        let w = reconcile(
            RequestKind::Erasure,
            t(0),
            &commanded.marks,
            t(35),
            &allow(),
        );
        assert_eq!(missing(&w), [(Hop::Answered, Some("billing".into()))]);

        let answered = erased_up_to_the_notice();
        let w = reconcile(
            RequestKind::Erasure,
            t(0),
            &answered.marks,
            t(100),
            &allow(),
        );
        assert_eq!(missing(&w), [(Hop::Notified, None)]);

        let notified = answered.then(Hop::Notified, 21);
        let w = reconcile(RequestKind::Erasure, t(0), &notified.marks, t(35), &allow());
        assert!(w.in_sync(), "the grace period is not over");
        let w = reconcile(RequestKind::Erasure, t(0), &notified.marks, t(37), &allow());
        assert_eq!(missing(&w), [(Hop::Released, Some("email".into()))]);

        let released = notified.then_for(Hop::Released, "email", 31);
        let w = reconcile(
            RequestKind::Erasure,
            t(0),
            &released.marks,
            t(100),
            &allow(),
        );
        assert_eq!(missing(&w), [(Hop::Commanded, Some("email".into()))]);

        let done =
            released
                .then_for(Hop::Commanded, "email", 32)
                .then_for(Hop::Answered, "email", 33);
        let w = reconcile(RequestKind::Erasure, t(0), &done.marks, t(100), &allow());
        assert_eq!(missing(&w), [(Hop::Completed, None)]);

        let completed = done.then(Hop::Completed, 34);
        let w = reconcile(
            RequestKind::Erasure,
            t(0),
            &completed.marks,
            t(100),
            &allow(),
        );
        assert_eq!(missing(&w), [(Hop::Announced, None)]);
    }

    #[test]
    fn an_escalated_service_is_an_operators_case_not_a_loss() {
        let story = Story::submitted(RequestKind::Erasure, 1)
            .then(Hop::Received, 2)
            .planned("billing", false, 3)
            .planned("email", true, 3)
            .then_for(Hop::Commanded, "billing", 4)
            .then_for(Hop::Escalated, "billing", 30);
        let w = reconcile(RequestKind::Erasure, t(0), &story.marks, t(6000), &allow());
        assert!(w.in_sync(), "{:?}", w.missing);
        assert_eq!(w.count(Hop::Escalated), 1);
    }

    #[test]
    fn a_hop_counted_by_the_bridge_travels_as_json_and_unknown_fields_are_refused() {
        let id = RequestId::new_at(t(1));
        let count = CountAs::new(RequestKind::Erasure, Hop::Commanded, id).for_service(&svc("crm"));
        let json = serde_json::to_value(&count).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "erasure", "hop": "commanded", "request_id": id.to_string(), "service": "crm"})
        );
        assert_eq!(serde_json::from_value::<CountAs>(json).unwrap(), count);
        let mark = count.mark(t(2));
        assert_eq!(
            (mark.hop, mark.service, mark.first_at),
            (Hop::Commanded, Some(svc("crm")), t(2))
        );
        assert!(serde_json::from_value::<CountAs>(serde_json::json!({"kind": "erasure", "hop": "teleported", "request_id": id.to_string()})).is_err());
    }

    #[test]
    fn marks_are_windowed_by_their_request_and_keyed_per_service() {
        let id = RequestId::new_at(t(59));
        let mark = HopMark::new(RequestKind::Erasure, Hop::Answered, id, t(200))
            .for_service(&svc("billing"));
        assert_eq!(mark.hour(), t(0), "the request's hour, not the answer's");
        assert_eq!(mark.key(), format!("answered#{id}#billing"));
        let click = RequestId::new_at(t(61));
        let replay = HopMark::click(
            RequestKind::Access,
            click,
            id,
            ClickOutcome::Replayed,
            t(61),
        );
        assert_eq!(replay.hour(), t(60), "a click is counted when it happened");
        assert_eq!(replay.key(), format!("submitted#{click}"));
    }
}
