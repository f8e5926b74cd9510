//! Messages this service puts on queues. Contract: `docs/messages.schema.json`.

use crate::request::{RequestId, RequestKind};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A message this service reads from a queue. Each type says once which contract version it
/// reads; [`parse`] refuses any other, so no handler checks versions by hand.
pub trait QueueMessage: DeserializeOwned + Send {
    /// The contract version this code reads.
    const VERSION: u32;
    /// What the message is called in rejection reasons.
    const NAME: &'static str;
    fn version(&self) -> u32;
    /// The request it is about, for the logs' correlation id.
    fn request_id(&self) -> Option<RequestId> {
        None
    }
}

/// Who put a message on a queue, as far as its transport vouches for it. Only the service's
/// own roles may write its queues (IAM); the RabbitMQ bridge is the one door for the platform's
/// services, and it stamps every message it forwards with the publisher's broker user, which
/// RabbitMQ itself checked against the connection (the `user_id` property).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// One of the service's own functions (the watchdog's checks, the fan-out's schedules).
    Internal,
    /// A platform service, through the broker, authenticated as this broker user.
    Broker(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Internal => f.write_str("the service itself"),
            Origin::Broker(user) => write!(f, "broker user `{user}`"),
        }
    }
}

/// Reads a queue body as `M`, or says why it never can be (the reason goes with the message
/// to the dead-letter queue).
pub fn parse<M: QueueMessage>(body: &str) -> Result<M, String> {
    let message: M = serde_json::from_str(body).map_err(|err| format!("not {}: {err}", M::NAME))?;
    if message.version() != M::VERSION {
        return Err(format!(
            "{} of version {}; this service reads version {}",
            M::NAME,
            message.version(),
            M::VERSION
        ));
    }
    Ok(message)
}

impl QueueMessage for RequestMessage {
    const VERSION: u32 = 1;
    const NAME: &'static str = "a request message";
    fn version(&self) -> u32 {
        self.version
    }
    fn request_id(&self) -> Option<RequestId> {
        Some(self.request_id)
    }
}

/// "Work on this request": put on the queue of its kind (`access-requests` /
/// `erasure-requests`) when a request is accepted, and again by the sweep if it was lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMessage {
    /// Contract version; consumers reject versions they do not know.
    pub version: u32,
    /// Stable per request: a re-sent message carries the same id, so consumers drop duplicates.
    pub message_id: String,
    pub request_id: RequestId,
    pub kind: RequestKind,
    pub sent_at: DateTime<Utc>,
}

impl RequestMessage {
    pub fn new(request_id: RequestId, kind: RequestKind, sent_at: DateTime<Utc>) -> Self {
        Self {
            version: <Self as QueueMessage>::VERSION,
            message_id: format!("request:{request_id}"),
            request_id,
            kind,
            sent_at,
        }
    }
}

/// Something that happened, for whoever listens (the email service, audit). Put on the
/// `outbound` queue; the RabbitMQ bridge publishes it to the platform's event exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEvent {
    pub version: u32,
    /// `<type>:<request id>`: the same event sent twice carries the same id.
    pub message_id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub request_id: RequestId,
    /// The keyed hash of the subject, to correlate events: never the subject id itself, as
    /// anyone allowed to bind to the events exchange reads them. Whoever must tell the
    /// subject gets a [`SubjectNotice`].
    pub subject_hash: crate::SubjectHash,
    pub occurred_at: DateTime<Utc>,
    /// Event-specific details.
    pub detail: serde_json::Value,
}

/// Something the subject must be told ("your report is ready", "your data was erased"), for
/// the service that tells them (the email service). Besides erasure commands it is the one
/// message that carries the subject id, so it is sent like a command: to the commands exchange
/// under `notice.<event type>`, which only the notifying service may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectNotice {
    /// Always `subject_notice`.
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    /// `notice:<type>:<request id>`.
    pub message_id: String,
    /// Which event the subject is told about.
    pub notice: EventType,
    pub request_id: RequestId,
    pub subject: crate::SubjectId,
    pub occurred_at: DateTime<Utc>,
    pub detail: serde_json::Value,
}

impl SubjectNotice {
    pub const KIND: &'static str = "subject_notice";

    /// The notice of `event`, for `subject`.
    pub fn of(event: &DomainEvent, subject: crate::SubjectId) -> Self {
        Self {
            kind: Self::KIND.into(),
            version: 1,
            message_id: format!("notice:{}", event.message_id),
            notice: event.event_type,
            request_id: event.request_id,
            subject,
            occurred_at: event.occurred_at,
            detail: event.detail.clone(),
        }
    }

    /// The routing key on the commands exchange.
    pub fn routing_key(&self) -> String {
        format!("notice.{}", self.notice)
    }

    /// The hop the bridge counts once the broker confirmed the notice: the subject was told.
    pub fn hop(&self) -> Option<crate::hops::CountAs> {
        let kind = match self.notice {
            EventType::ReportReady => crate::RequestKind::Access,
            EventType::ErasureNotice | EventType::ErasureCompleted => crate::RequestKind::Erasure,
            // Not a hop of the request's way: an extension is told on the side.
            EventType::RequestSubmitted | EventType::DeadlineExtended => return None,
        };
        Some(crate::hops::CountAs::new(
            kind,
            crate::hops::Hop::Notified,
            self.request_id,
        ))
    }
}

/// What happened, as the platform's consumers bind to it (the routing key on the events
/// exchange).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    RequestSubmitted,
    ReportReady,
    ErasureNotice,
    ErasureCompleted,
    /// Art. 12(3): the deadline was extended; the subject must be told, with the reason.
    DeadlineExtended,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RequestSubmitted => "request_submitted",
            EventType::ReportReady => "report_ready",
            EventType::ErasureNotice => "erasure_notice",
            EventType::ErasureCompleted => "erasure_completed",
            EventType::DeadlineExtended => "deadline_extended",
        }
    }
}

impl EventType {
    pub fn parse(raw: &str) -> Option<EventType> {
        [
            EventType::RequestSubmitted,
            EventType::ReportReady,
            EventType::ErasureNotice,
            EventType::ErasureCompleted,
            EventType::DeadlineExtended,
        ]
        .into_iter()
        .find(|t| t.as_str() == raw)
    }

    /// The hop an event of this type stands for once the broker confirmed it: the platform
    /// was told the request's outcome.
    pub fn hop(self, request_id: RequestId) -> Option<crate::hops::CountAs> {
        let kind = match self {
            EventType::ReportReady => crate::RequestKind::Access,
            EventType::ErasureCompleted => crate::RequestKind::Erasure,
            EventType::RequestSubmitted
            | EventType::ErasureNotice
            | EventType::DeadlineExtended => return None,
        };
        Some(crate::hops::CountAs::new(
            kind,
            crate::hops::Hop::Announced,
            request_id,
        ))
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DomainEvent {
    pub const VERSION: u32 = 1;

    /// The one constructor: the message id is `<type>:<request id>`, so the same event sent
    /// twice carries the same id and receivers drop the duplicate.
    fn new(
        event_type: EventType,
        request_id: RequestId,
        subject_hash: crate::SubjectHash,
        occurred_at: DateTime<Utc>,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            version: Self::VERSION,
            message_id: format!("{event_type}:{request_id}"),
            event_type,
            request_id,
            subject_hash,
            occurred_at,
            detail,
        }
    }

    /// The report of an access request can be downloaded until `expires_at`.
    pub fn report_ready(
        request_id: RequestId,
        subject_hash: crate::SubjectHash,
        expires_at: DateTime<Utc>,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            EventType::ReportReady,
            request_id,
            subject_hash,
            occurred_at,
            serde_json::json!({ "expires_at": expires_at }),
        )
    }

    /// A request was accepted: the email service can acknowledge it to the subject, audit can
    /// count it.
    pub fn request_submitted(
        request: &crate::Request,
        subject_hash: crate::SubjectHash,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            EventType::RequestSubmitted,
            request.id,
            subject_hash,
            occurred_at,
            serde_json::json!({ "kind": request.kind, "due_at": request.due_at }),
        )
    }

    /// "Your data was erased": every service but the erase-last ones confirmed. The email
    /// service tells the subject; its own erasure follows at `erase_last_at`.
    pub fn erasure_notice(
        request_id: RequestId,
        subject_hash: crate::SubjectHash,
        erase_last_at: DateTime<Utc>,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            EventType::ErasureNotice,
            request_id,
            subject_hash,
            occurred_at,
            serde_json::json!({ "erase_last_at": erase_last_at }),
        )
    }

    /// Art. 12(3): the request's deadline moved to `due_at`, by `months`, for `reason`; the
    /// email service tells the subject. An extension happens once, so the id is stable.
    pub fn deadline_extended(
        request_id: RequestId,
        subject_hash: crate::SubjectHash,
        extension: &crate::request::DeadlineExtension,
        due_at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            EventType::DeadlineExtended,
            request_id,
            subject_hash,
            extension.extended_at,
            serde_json::json!({
                "due_at": due_at,
                "months": extension.months,
                "reason": extension.reason,
            }),
        )
    }

    /// Every service confirmed: the erasure is complete.
    pub fn erasure_completed(
        request_id: RequestId,
        subject_hash: crate::SubjectHash,
        services: usize,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            EventType::ErasureCompleted,
            request_id,
            subject_hash,
            occurred_at,
            serde_json::json!({ "services": services }),
        )
    }
}

/// `submit_request`: another internal system asks, over RabbitMQ (`<ns>.requests`, through the
/// bridge), for a request on a subject's behalf: a CRM closing an account asks for its erasure.
/// Taken only from the broker users the deployment allows (`REQUEST_SUBMITTERS`), with the
/// same rules as the subject's own (one open request per kind, the access limit) and this
/// message's key for idempotency. Contract: `docs/messages.schema.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub version: u32,
    #[serde(rename = "type")]
    pub message_type: SubmitRequestType,
    /// Unique per message; a message published again under the same id (or the same
    /// `idempotency_key`) is the same submission.
    pub message_id: String,
    /// The subject's user id (the platform's account id). Personal data: never logged.
    pub subject: crate::SubjectId,
    /// `access` or `erasure`.
    pub request: RequestKind,
    /// The system's own reference (its ticket or case), kept in the audit trail.
    #[serde(default)]
    pub reference: Option<String>,
    /// Defaults to `message_id`.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmitRequestType {
    SubmitRequest,
}

impl QueueMessage for SubmitRequest {
    const VERSION: u32 = 1;
    const NAME: &'static str = "a submit_request";
    fn version(&self) -> u32 {
        self.version
    }
}
