//! What erasure sends and receives on the wire. Contract: `docs/messages.schema.json`.

use crate::identity::{HolderIdentity, IdentifierKind};
use crate::request::{Request, RequestId};
use crate::service::ServiceName;
use crate::subject::SubjectId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `erase_subject`, sent to one service. Contract: `docs/messages.schema.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureCommand {
    pub version: u32,
    #[serde(rename = "type")]
    pub command_type: String,
    /// `erase:<request>:<service>:<attempt>`: unique per send.
    pub message_id: String,
    /// `erase:<request>:<service>`: the same for every send of this obligation; a service that
    /// sees it again confirms again without erasing again. After a verification found data
    /// the service had said it erased, `erase:<request>:<service>:r<n>`: a new erasure.
    pub idempotency_key: String,
    pub request_id: RequestId,
    pub service: ServiceName,
    /// Whom to erase, as this service knows them: the first identifier its registry entry
    /// asks for (the user id unless it says otherwise).
    pub subject: SubjectId,
    /// Every identifier the service asked for, by kind (`user_id`, `email`, `phone`, its own),
    /// and no other.
    #[serde(default)]
    pub identifiers: BTreeMap<IdentifierKind, SubjectId>,
    pub attempt: u32,
    pub sent_at: DateTime<Utc>,
}

impl ErasureCommand {
    pub const VERSION: u32 = 1;

    pub fn new(
        request: &Request,
        service: &ServiceName,
        identity: HolderIdentity,
        attempt: u32,
        reopened: u32,
        sent_at: DateTime<Utc>,
    ) -> ErasureCommand {
        let idempotency_key = match reopened {
            0 => format!("erase:{}:{service}", request.id),
            n => format!("erase:{}:{service}:r{n}", request.id),
        };
        ErasureCommand {
            version: Self::VERSION,
            command_type: "erase_subject".into(),
            message_id: format!("{idempotency_key}:{attempt}"),
            idempotency_key,
            request_id: request.id,
            service: service.clone(),
            subject: identity.subject,
            identifiers: identity.identifiers,
            attempt,
            sent_at,
        }
    }
}

/// A command waiting on the vendor-erasures queue for its vendor's next batch call.
impl crate::messages::QueueMessage for ErasureCommand {
    const VERSION: u32 = ErasureCommand::VERSION;
    const NAME: &'static str = "an erase_subject command";
    fn version(&self) -> u32 {
        self.version
    }
    fn request_id(&self) -> Option<RequestId> {
        Some(self.request_id)
    }
}

/// A service's answer to `erase_subject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmationOutcome {
    Erased,
    NotFound,
    Failed,
}

/// What arrives on the `confirmations` queue. Contract: `docs/messages.schema.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConfirmationsMessage {
    /// A service's answer, from RabbitMQ through the bridge.
    ErasureConfirmation(Confirmation),
    /// The watchdog: delivered by delayed dispatch when an obligation's time is up.
    ObligationDue(ObligationDue),
    /// The bridge: the broker confirmed and routed a message that asked for a receipt (the
    /// notice to the subject: the grace period runs from here).
    Published(Published),
    /// The report function: what reading every erased holder again found.
    ErasureVerified(ErasureVerified),
    /// An operator (the CLI, the operations page): send an obligation's command again, or
    /// record the answer obtained by other means.
    OperatorAction(OperatorAction),
}

impl crate::messages::QueueMessage for ConfirmationsMessage {
    const VERSION: u32 = 1;
    const NAME: &'static str = "a confirmation or check";
    fn version(&self) -> u32 {
        match self {
            ConfirmationsMessage::ErasureConfirmation(c) => c.version,
            ConfirmationsMessage::ObligationDue(d) => d.version,
            ConfirmationsMessage::Published(p) => p.version,
            ConfirmationsMessage::ErasureVerified(v) => v.version,
            ConfirmationsMessage::OperatorAction(a) => a.version,
        }
    }
    fn request_id(&self) -> Option<RequestId> {
        Some(match self {
            ConfirmationsMessage::ErasureConfirmation(c) => c.request_id,
            ConfirmationsMessage::ObligationDue(d) => d.request_id,
            ConfirmationsMessage::Published(p) => p.request_id,
            ConfirmationsMessage::ErasureVerified(v) => v.request_id,
            ConfirmationsMessage::OperatorAction(a) => a.request_id,
        })
    }
}

/// What an operator does with one obligation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorDecision {
    /// Send the command again: a new attempt under the same idempotency key, with its own
    /// watchdog check.
    Resend,
    /// Record the holder's answer, obtained by other means (a vendor's support ticket, a
    /// deletion done by hand), with the evidence.
    Resolve,
}

/// An operator's hand on an obligation, with who and why. Only the service's own roles put it
/// on the confirmations queue (the operator's CLI credentials, the operations page's role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorAction {
    pub version: u32,
    /// `operator:<decision>:<request>:<service>:<unique>`.
    pub message_id: String,
    pub request_id: RequestId,
    pub service: ServiceName,
    pub decision: OperatorDecision,
    /// For `resolve`: `erased` or `not_found`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ConfirmationOutcome>,
    /// For `resolve`: what shows it (a ticket, a reference, what was done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Who: the operator's identity (their token's subject, or their CLI user).
    pub operator: String,
    pub at: DateTime<Utc>,
}

impl OperatorAction {
    pub fn new(
        request_id: RequestId,
        service: &ServiceName,
        decision: OperatorDecision,
        operator: &str,
        at: DateTime<Utc>,
        unique: &str,
    ) -> Self {
        let name = match decision {
            OperatorDecision::Resend => "resend",
            OperatorDecision::Resolve => "resolve",
        };
        Self {
            version: 1,
            message_id: format!("operator:{name}:{request_id}:{service}:{unique}"),
            request_id,
            service: service.clone(),
            decision,
            outcome: None,
            evidence: None,
            operator: operator.to_owned(),
            at,
        }
    }

    /// A resolution: the holder's answer and what shows it.
    pub fn resolved(mut self, outcome: ConfirmationOutcome, evidence: &str) -> Self {
        self.outcome = Some(outcome);
        self.evidence = Some(evidence.to_owned());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    pub version: u32,
    pub message_id: String,
    pub request_id: RequestId,
    pub service: ServiceName,
    pub outcome: ConfirmationOutcome,
    /// The service's proof (what it deleted, its own reference); kept with the obligation.
    #[serde(default)]
    pub receipt: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObligationDue {
    pub version: u32,
    pub message_id: String,
    pub request_id: RequestId,
    pub service: ServiceName,
    /// The attempt this check was scheduled after (0: the erase-last release).
    pub attempt: u32,
}

impl ObligationDue {
    pub fn new(request_id: RequestId, service: &ServiceName, attempt: u32) -> Self {
        Self {
            version: 1,
            message_id: format!("check:{request_id}:{service}:{attempt}"),
            request_id,
            service: service.clone(),
            attempt,
        }
    }
}

/// The bridge's receipt for a message the broker confirmed and routed to at least one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub version: u32,
    /// The published message's id (`notice:erasure_notice:<request>` for the notice).
    pub message_id: String,
    pub request_id: RequestId,
    /// When the broker confirmed it.
    pub published_at: DateTime<Utc>,
}

impl Published {
    pub fn new(message_id: impl Into<String>, request_id: RequestId, at: DateTime<Utc>) -> Self {
        Self {
            version: 1,
            message_id: message_id.into(),
            request_id,
            published_at: at,
        }
    }
}

/// "Read every erased holder again": put on the `access-requests` queue (the report function
/// has the sources) by the confirm function once every holder answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyErasure {
    pub version: u32,
    /// Always `verify_erasure`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `verify:<request>:<requested_at in ms>`: a repeated ask is the same message.
    pub message_id: String,
    pub request_id: RequestId,
    /// When the request entered `verifying`: a result is for this round only.
    pub requested_at: DateTime<Utc>,
}

impl VerifyErasure {
    pub const KIND: &'static str = "verify_erasure";

    pub fn new(request_id: RequestId, requested_at: DateTime<Utc>) -> Self {
        Self {
            version: 1,
            kind: Self::KIND.into(),
            message_id: format!("verify:{request_id}:{}", requested_at.timestamp_millis()),
            request_id,
            requested_at,
        }
    }
}

/// What a verification found: the erased holders it read, and those still holding records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureVerified {
    pub version: u32,
    /// `verified:<request>:<requested_at in ms>`.
    pub message_id: String,
    pub request_id: RequestId,
    /// The round this answers ([`VerifyErasure::requested_at`]).
    pub requested_at: DateTime<Utc>,
    pub checked_at: DateTime<Utc>,
    /// Every holder read.
    pub checked: Vec<ServiceName>,
    /// Holders that still hold records about the subject (never the records).
    pub found: Vec<StillHeld>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StillHeld {
    pub service: ServiceName,
    pub records: u64,
}

impl ErasureVerified {
    pub fn new(
        asked: &VerifyErasure,
        checked_at: DateTime<Utc>,
        checked: Vec<ServiceName>,
        found: Vec<StillHeld>,
    ) -> Self {
        Self {
            version: 1,
            message_id: format!(
                "verified:{}:{}",
                asked.request_id,
                asked.requested_at.timestamp_millis()
            ),
            request_id: asked.request_id,
            requested_at: asked.requested_at,
            checked_at,
            checked,
            found,
        }
    }
}
