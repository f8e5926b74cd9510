//! A data subject request and its life cycle.

use crate::subject::SubjectId;
use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use ulid::Ulid;

/// A request's id: a ULID, so ids sort by time of receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(Ulid);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a request id (expected a 26-character ULID)")]
pub struct RequestIdError(pub String);

impl RequestId {
    pub fn new_at(at: DateTime<Utc>) -> Self {
        Self(Ulid::from_datetime(at.into()))
    }

    /// When the id was made (a ULID carries its time, to the millisecond).
    pub fn created_at(self) -> DateTime<Utc> {
        DateTime::<Utc>::from(self.0.datetime())
    }

    /// The id just after this one, to page from "this one and older" (`None` at the end).
    pub fn following(id: RequestId) -> Option<RequestId> {
        id.0.increment().map(Self)
    }
}

impl FromStr for RequestId {
    type Err = RequestIdError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        // Ulid's parser accepts lower case too; ids we hand out are upper case, keep them so.
        Ulid::from_string(raw)
            .ok()
            .filter(|ulid| ulid.to_string() == raw)
            .map(Self)
            .ok_or_else(|| RequestIdError(raw.chars().take(64).collect()))
    }
}

impl TryFrom<String> for RequestId {
    type Error = RequestIdError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        raw.parse()
    }
}

impl From<RequestId> for String {
    fn from(id: RequestId) -> Self {
        id.to_string()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the subject asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Art. 15 access and Art. 20 portability: a downloadable report.
    Access,
    /// Art. 17 erasure: every service deletes, and confirms.
    Erasure,
}

impl RequestKind {
    pub const ALL: [RequestKind; 2] = [RequestKind::Access, RequestKind::Erasure];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Access => "access",
            RequestKind::Erasure => "erasure",
        }
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestKind {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "access" => Ok(RequestKind::Access),
            "erasure" => Ok(RequestKind::Erasure),
            other => Err(format!("unknown request kind `{other}`")),
        }
    }
}

/// Where a request is in its life cycle. Access and erasure share `received` and the terminal
/// states; the working states belong to one kind each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Received,
    // access
    Collecting,
    ReportReady,
    Expired,
    // erasure
    FanningOut,
    AwaitingConfirmations,
    Notifying,
    /// Every holder answered; the service reads every erased holder again and expects nothing.
    Verifying,
    Completed,
    // either
    Cancelled,
    Failed,
}

impl RequestState {
    pub const ALL: [RequestState; 11] = [
        RequestState::Received,
        RequestState::Collecting,
        RequestState::ReportReady,
        RequestState::Expired,
        RequestState::FanningOut,
        RequestState::AwaitingConfirmations,
        RequestState::Notifying,
        RequestState::Verifying,
        RequestState::Completed,
        RequestState::Cancelled,
        RequestState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Received => "received",
            RequestState::Collecting => "collecting",
            RequestState::ReportReady => "report_ready",
            RequestState::Expired => "expired",
            RequestState::FanningOut => "fanning_out",
            RequestState::AwaitingConfirmations => "awaiting_confirmations",
            RequestState::Notifying => "notifying",
            RequestState::Verifying => "verifying",
            RequestState::Completed => "completed",
            RequestState::Cancelled => "cancelled",
            RequestState::Failed => "failed",
        }
    }

    /// Open requests still owe the subject an answer; only one per subject and kind may exist.
    /// A ready report is an answer given, so a new access request may follow it.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            RequestState::Received
                | RequestState::Collecting
                | RequestState::FanningOut
                | RequestState::AwaitingConfirmations
                | RequestState::Notifying
                | RequestState::Verifying
        )
    }

    /// No transition leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RequestState::Expired
                | RequestState::Completed
                | RequestState::Cancelled
                | RequestState::Failed
        )
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestState {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        RequestState::ALL
            .into_iter()
            .find(|state| state.as_str() == raw)
            .ok_or_else(|| format!("unknown request state `{raw}`"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {kind} request cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub kind: RequestKind,
    pub from: RequestState,
    pub to: RequestState,
}

/// The life cycle, as one table. Every state change in the system goes through here.
///
/// A working state may fall back to `received`: that is how a failed attempt hands the request
/// to the next one (self-healing), keeping the error on the request.
pub fn transition(
    kind: RequestKind,
    from: RequestState,
    to: RequestState,
) -> Result<RequestState, IllegalTransition> {
    use RequestKind::*;
    use RequestState::*;
    let legal = match (kind, from, to) {
        // Cancelling is only possible before any work started.
        (_, Received, Cancelled) => true,
        (Access, Received | Collecting, Failed) => true,
        (
            Erasure,
            Received | FanningOut | AwaitingConfirmations | Notifying | Verifying,
            Failed,
        ) => true,

        // The subject's erasure closes an access request being collected: the worker's commit
        // is then refused and its report deleted (users cancel only before work started).
        (Access, Collecting, Cancelled) => true,
        (Access, Received, Collecting) => true,
        (Access, Collecting, ReportReady) => true,
        (Access, Collecting, Received) => true,
        (Access, ReportReady, Expired) => true,

        (Erasure, Received, FanningOut) => true,
        // No way back to `received` (where the subject may cancel): once the fan-out started,
        // commands may have left. A failed fan-out stays `fanning_out` for the next attempt.
        (Erasure, FanningOut, AwaitingConfirmations) => true,
        (Erasure, AwaitingConfirmations, Notifying) => true,
        // Completed once a verification found nothing left (directly when no erased holder
        // can be read); data found reopens those holders, the subject already told.
        (Erasure, Notifying, Verifying) => true,
        (Erasure, Verifying, Completed) => true,
        (Erasure, Verifying, Notifying) => true,
        (Erasure, Notifying, Completed) => true,
        _ => false,
    };
    if legal {
        Ok(to)
    } else {
        Err(IllegalTransition { kind, from, to })
    }
}

/// An `Idempotency-Key` a client sends so that retrying a submission cannot create a second one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(format!(
                "an Idempotency-Key must be 1 to {} characters long",
                Self::MAX_LEN
            ));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("an Idempotency-Key must be printable ASCII without spaces".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One data subject request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    pub kind: RequestKind,
    pub subject: SubjectId,
    pub state: RequestState,
    pub received_at: DateTime<Utc>,
    /// Art. 12(3): one month from receipt.
    pub due_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// When its work message was last handed to the queue; `None` means it never was.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// The worker currently entitled to work on the request, if any.
    pub lease: Option<Lease>,
    /// The token of the latest lease ever granted; grows with every acquisition, so a write
    /// conditioned on it fails for any worker whose lease has since passed to another.
    pub fencing_token: u64,
    /// The finished report of an access request.
    pub report: Option<ReportInfo>,
    /// Art. 12(3): the deadline may be extended once, by up to two further months, with reasons
    /// the subject is told.
    pub deadline_extension: Option<DeadlineExtension>,
    /// An access request's collection, source by source (empty until a worker starts it).
    pub sources: Vec<crate::report::progress::SourceProgress>,
    /// How the request came, when not from the subject through the API: support took it by
    /// e-mail or phone, or another system sent it.
    pub submitted_via: Option<SubmittedVia>,
    /// The subject's other identifiers, once resolved for the holders that need them
    /// (`crate::identity`); `None`: not resolved (yet, or never needed).
    pub identities: Option<crate::identity::Identities>,
}

/// Where a request came from other than the subject's own API call, and who took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedVia {
    pub channel: Channel,
    /// Who submitted it: the operator (support), or the broker user of the system.
    pub by: String,
    /// How the subject was verified, or the system's own reference (a ticket, a case number).
    pub reference: Option<String>,
}

/// The ways a request reaches the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The subject, through the API (the app).
    Api,
    /// Support, from the subject's e-mail.
    Email,
    /// Support, from a phone call.
    Phone,
    /// Support, from a letter.
    Post,
    /// Support, in person.
    InPerson,
    /// Another internal system, over RabbitMQ.
    System,
}

impl Channel {
    pub const ALL: [Channel; 6] = [
        Channel::Api,
        Channel::Email,
        Channel::Phone,
        Channel::Post,
        Channel::InPerson,
        Channel::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Api => "api",
            Channel::Email => "email",
            Channel::Phone => "phone",
            Channel::Post => "post",
            Channel::InPerson => "in_person",
            Channel::System => "system",
        }
    }
}

impl std::str::FromStr for Channel {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == raw)
            .ok_or_else(|| {
                format!(
                    "unknown channel `{raw}` (one of: {})",
                    Channel::ALL.map(Channel::as_str).join(", ")
                )
            })
    }
}

impl SubmittedVia {
    /// The longest reference kept; it is shown in the audit trail, so it is a reference (a
    /// ticket, a case number), not a note.
    pub const MAX_REFERENCE_CHARS: usize = 64;

    /// Checks who and what reference, as the audit trail keeps them: plain names and
    /// references, nothing that could be mistaken for another entry or carry a note.
    pub fn new(channel: Channel, by: &str, reference: Option<&str>) -> Result<Self, String> {
        let plain = |text: &str, most: usize| {
            !text.is_empty()
                && text.chars().count() <= most
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@._:+-/#".contains(c))
        };
        if channel == Channel::Api {
            return Err("a request through the API is the subject's own".into());
        }
        if !plain(by, 128) {
            return Err(format!(
                "`{by}` is not a plain name (letters, digits, @ . _ : + - / #, at most 128)"
            ));
        }
        let reference = reference.map(str::trim).filter(|r| !r.is_empty());
        if let Some(reference) = reference {
            if !plain(reference, Self::MAX_REFERENCE_CHARS) {
                return Err(format!(
                    "the reference must be a plain reference (letters, digits, @ . _ : + - / #, at most {})",
                    Self::MAX_REFERENCE_CHARS
                ));
            }
        }
        if channel != Channel::System && reference.is_none() {
            return Err(
                "a request taken by support needs the reference of how the subject was verified"
                    .into(),
            );
        }
        Ok(Self {
            channel,
            by: by.to_owned(),
            reference: reference.map(str::to_owned),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineExtension {
    pub months: u32,
    pub reason: String,
    pub extended_at: DateTime<Utc>,
}

impl DeadlineExtension {
    pub const MAX_MONTHS: u32 = 2;
    pub const MAX_REASON_CHARS: usize = 500;
}

/// "This worker may work on this request until then." Taken with a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub expires_at: DateTime<Utc>,
}

/// Where the finished report is and what it is: enough to hand out a link and to prove later
/// which bytes were handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportInfo {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    /// After this the report is deleted (bucket lifecycle) and the request is `expired`.
    pub expires_at: DateTime<Utc>,
}

impl Request {
    pub fn receive(kind: RequestKind, subject: SubjectId, at: DateTime<Utc>) -> Self {
        Self {
            id: RequestId::new_at(at),
            kind,
            subject,
            state: RequestState::Received,
            received_at: at,
            due_at: one_month_after(at),
            updated_at: at,
            attempts: 0,
            last_error: None,
            enqueued_at: None,
            lease: None,
            fencing_token: 0,
            report: None,
            deadline_extension: None,
            sources: Vec::new(),
            submitted_via: None,
            identities: None,
        }
    }

    /// The channel it came by (`api` unless support or a system submitted it).
    pub fn channel(&self) -> Channel {
        self.submitted_via
            .as_ref()
            .map_or(Channel::Api, |v| v.channel)
    }

    /// A worker's attempt failed: count it, keep the error, and hand the request back to
    /// `received` for the next attempt, or to `failed` once `max_attempts` are used up.
    pub fn fail_attempt(
        &mut self,
        error: impl Into<String>,
        max_attempts: Option<u32>,
        at: DateTime<Utc>,
    ) -> Result<RequestState, IllegalTransition> {
        let next = if max_attempts.is_some_and(|max| self.attempts + 1 >= max) {
            RequestState::Failed
        } else {
            RequestState::Received
        };
        self.transition_to(next, at)?;
        self.attempts += 1;
        self.last_error = Some(error.into());
        Ok(next)
    }

    /// Checks the move against [`transition`] and applies it.
    pub fn transition_to(
        &mut self,
        to: RequestState,
        at: DateTime<Utc>,
    ) -> Result<(), IllegalTransition> {
        self.state = transition(self.kind, self.state, to)?;
        self.updated_at = at;
        Ok(())
    }
}

/// The same day of the next month; when that month is shorter, its last day (31 Jan → 28/29
/// Feb), as periods in months are counted under Regulation 1182/71.
pub fn one_month_after(at: DateTime<Utc>) -> DateTime<Utc> {
    at.checked_add_months(Months::new(1))
        .expect("one month after any representable receipt time is representable")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use RequestKind::*;
    use RequestState::*;

    #[test]
    fn a_request_taken_on_the_subjects_behalf_names_who_and_how_they_were_verified() {
        let via = SubmittedVia::new(Channel::Phone, "jane@ops", Some(" CASE-7/2 ")).unwrap();
        assert_eq!(via.reference.as_deref(), Some("CASE-7/2"));
        assert!(SubmittedVia::new(Channel::System, "svc-crm", None).is_ok());
        for (channel, by, reference, why) in [
            (Channel::Api, "jane", Some("x"), "the subject's own"),
            (Channel::Email, "jane", None, "needs the reference"),
            (Channel::Email, "jane", Some("  "), "needs the reference"),
            (Channel::Email, "jane doe", Some("x"), "not a plain name"),
            (Channel::Email, "", Some("x"), "not a plain name"),
            (
                Channel::Email,
                "jane",
                Some("a\nsubmitted"),
                "plain reference",
            ),
            (Channel::Email, "jane", Some(&"r".repeat(65)), "at most 64"),
        ] {
            let err = SubmittedVia::new(channel, by, reference).unwrap_err();
            assert!(err.contains(why), "{by} {reference:?}: {err}");
        }
        for channel in Channel::ALL {
            assert_eq!(channel.as_str().parse::<Channel>(), Ok(channel));
        }
        assert!("fax".parse::<Channel>().unwrap_err().contains("in_person"));
        let mut request = Request::receive(
            Erasure,
            SubjectId::parse("erin").unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap(),
        );
        assert_eq!(request.channel(), Channel::Api);
        request.submitted_via = Some(via);
        assert_eq!(request.channel(), Channel::Phone);
    }

    const LEGAL: &[(RequestKind, RequestState, RequestState)] = &[
        (Access, Received, Collecting),
        (Access, Collecting, ReportReady),
        (Access, Collecting, Received),
        (Access, ReportReady, Expired),
        (Access, Received, Cancelled),
        (Access, Collecting, Cancelled),
        (Access, Received, Failed),
        (Access, Collecting, Failed),
        (Erasure, Received, FanningOut),
        (Erasure, FanningOut, AwaitingConfirmations),
        (Erasure, AwaitingConfirmations, Notifying),
        (Erasure, Notifying, Verifying),
        (Erasure, Verifying, Completed),
        (Erasure, Verifying, Notifying),
        (Erasure, Notifying, Completed),
        (Erasure, Received, Cancelled),
        (Erasure, Received, Failed),
        (Erasure, FanningOut, Failed),
        (Erasure, AwaitingConfirmations, Failed),
        (Erasure, Notifying, Failed),
        (Erasure, Verifying, Failed),
    ];

    #[test]
    fn every_pair_of_states_is_legal_exactly_when_listed() {
        let mut checked = 0;
        for kind in RequestKind::ALL {
            for from in RequestState::ALL {
                for to in RequestState::ALL {
                    let expected = LEGAL.contains(&(kind, from, to));
                    let got = transition(kind, from, to);
                    assert_eq!(got.is_ok(), expected, "{kind}: {from} -> {to}");
                    if let Err(err) = got {
                        assert_eq!(err, IllegalTransition { kind, from, to });
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2 * 11 * 11);
    }

    #[test]
    fn terminal_states_have_no_way_out_and_are_never_open() {
        for kind in RequestKind::ALL {
            for from in RequestState::ALL.into_iter().filter(|s| s.is_terminal()) {
                assert!(!from.is_open());
                for to in RequestState::ALL {
                    assert!(
                        transition(kind, from, to).is_err(),
                        "{kind}: {from} -> {to}"
                    );
                }
            }
        }
    }

    #[test]
    fn cancel_is_only_possible_before_work_starts_or_by_the_subjects_erasure() {
        for kind in RequestKind::ALL {
            for from in RequestState::ALL {
                let ok = transition(kind, from, Cancelled).is_ok();
                let expected = from == Received || (kind == Access && from == Collecting);
                assert_eq!(ok, expected, "{kind}: {from} -> cancelled");
            }
        }
    }

    #[test]
    fn transition_to_updates_state_and_time() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 31, 10, 0, 0).unwrap();
        let mut request = Request::receive(Access, SubjectId::parse("alice").unwrap(), t0);
        let t1 = t0 + chrono::Duration::seconds(5);
        request.transition_to(Collecting, t1).unwrap();
        assert_eq!((request.state, request.updated_at), (Collecting, t1));
        let err = request.transition_to(Completed, t1).unwrap_err();
        assert_eq!(err.to, Completed);
        assert_eq!(request.state, Collecting, "an illegal move changes nothing");
    }

    #[test]
    fn a_failed_attempt_goes_back_to_received_until_the_last_one() {
        let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let mut request = Request::receive(Access, SubjectId::parse("a").unwrap(), t0);
        for attempt in 1..=2 {
            request.transition_to(Collecting, t0).unwrap();
            assert_eq!(
                request.fail_attempt("source down", Some(3), t0),
                Ok(Received)
            );
            assert_eq!(request.attempts, attempt);
        }
        request.transition_to(Collecting, t0).unwrap();
        assert_eq!(request.fail_attempt("still down", Some(3), t0), Ok(Failed));
        assert_eq!(
            (request.attempts, request.last_error.as_deref()),
            (3, Some("still down"))
        );
        let mut untouched = Request::receive(Access, SubjectId::parse("a").unwrap(), t0);
        untouched.state = ReportReady;
        assert!(untouched.fail_attempt("x", Some(3), t0).is_err());
        assert_eq!(untouched.attempts, 0, "an illegal failure changes nothing");
    }

    #[test]
    fn due_date_is_one_calendar_month_later() {
        let at = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 12, 30, 0).unwrap();
        assert_eq!(one_month_after(at(2026, 3, 15)), at(2026, 4, 15));
        assert_eq!(one_month_after(at(2026, 1, 31)), at(2026, 2, 28));
        assert_eq!(one_month_after(at(2028, 1, 31)), at(2028, 2, 29));
        assert_eq!(one_month_after(at(2026, 12, 10)), at(2027, 1, 10));
    }

    #[test]
    fn request_ids_round_trip_and_reject_garbage() {
        let id = RequestId::new_at(Utc::now());
        assert_eq!(id.to_string().parse::<RequestId>().unwrap(), id);
        for bad in [
            "",
            "nope",
            "01ARZ3NDEKTSV4RRFFQ69G5FA",
            &id.to_string().to_lowercase(),
        ] {
            assert!(bad.parse::<RequestId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn states_and_kinds_round_trip_through_their_names() {
        for state in RequestState::ALL {
            assert_eq!(state.as_str().parse::<RequestState>(), Ok(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        for kind in RequestKind::ALL {
            assert_eq!(kind.as_str().parse::<RequestKind>(), Ok(kind));
        }
    }

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        assert!(IdempotencyKey::parse("retry-123").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
    }
}
