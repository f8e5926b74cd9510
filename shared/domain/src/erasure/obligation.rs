//! An obligation: one service's part of one erasure request, and the proof of it.

use crate::request::RequestId;
use crate::service::ServiceName;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where one service's erasure stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObligationStatus {
    /// Written, no command sent yet (erase-last services wait here until the notice is out).
    Pending,
    /// A command was sent; no answer yet.
    Sent,
    /// The service confirmed the erasure.
    Confirmed,
    /// The service confirmed it held nothing about the subject.
    NotFound,
    /// The service answered that it could not erase (or its API failed); it is sent again.
    Failed,
    /// The service keys its data by an identifier the subject does not have (a phone number
    /// they never gave): there is nothing it could be asked, and so nothing of theirs there.
    /// Decided by this service, with the reason as the receipt (`crate::identity`).
    NotApplicable,
}

impl ObligationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ObligationStatus::Pending => "pending",
            ObligationStatus::Sent => "sent",
            ObligationStatus::Confirmed => "confirmed",
            ObligationStatus::NotFound => "not_found",
            ObligationStatus::Failed => "failed",
            ObligationStatus::NotApplicable => "not_applicable",
        }
    }

    /// The service's part is done: nothing of the subject is left there.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            ObligationStatus::Confirmed
                | ObligationStatus::NotFound
                | ObligationStatus::NotApplicable
        )
    }
}

impl std::str::FromStr for ObligationStatus {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        [
            ObligationStatus::Pending,
            ObligationStatus::Sent,
            ObligationStatus::Confirmed,
            ObligationStatus::NotFound,
            ObligationStatus::Failed,
            ObligationStatus::NotApplicable,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
        .ok_or_else(|| format!("unknown obligation status `{raw}`"))
    }
}

/// One service's part of one erasure request: the proof of erasure, kept with its receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obligation {
    pub request_id: RequestId,
    pub service: ServiceName,
    pub status: ObligationStatus,
    /// Erased after the notice and the grace period.
    pub last: bool,
    /// Commands sent so far.
    pub attempts: u32,
    pub sent_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    /// What the service answered (JSON), kept as proof.
    pub receipt: Option<String>,
    /// Why the last attempt failed, if it did. Never personal data.
    pub last_error: Option<String>,
    /// Set once the service stayed silent through `max_sends` commands.
    pub escalated_at: Option<DateTime<Utc>>,
    /// Erase-last services only: when their command may leave, set once the broker confirmed
    /// the notice to the subject (that moment plus the grace period), never before.
    pub release_at: Option<DateTime<Utc>>,
    /// How often a verification found the subject's data here after the service answered:
    /// each time the obligation is open again under a new idempotency key.
    pub reopened: u32,
}

/// The error an obligation carries once a verification opened it again.
pub fn reopen_note(records: u64) -> String {
    format!("{REOPEN_NOTE} ({records} record(s)); sent again")
}

const REOPEN_NOTE: &str = "a verification found the subject's data after the service answered";

impl Obligation {
    /// Opened again by a verification, and not sent since (a send records its own outcome).
    pub fn reopened_unsent(&self) -> bool {
        self.status == ObligationStatus::Failed
            && self
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with(REOPEN_NOTE))
    }

    pub fn planned(request_id: RequestId, service: &ServiceName, last: bool) -> Self {
        Self {
            request_id,
            service: service.clone(),
            status: ObligationStatus::Pending,
            last,
            attempts: 0,
            sent_at: None,
            confirmed_at: None,
            receipt: None,
            last_error: None,
            escalated_at: None,
            release_at: None,
            reopened: 0,
        }
    }
}

/// What happened to one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Handed over (to RabbitMQ): a confirmation will follow.
    Sent,
    /// A third party's API erased synchronously: its answer is the confirmation.
    Answered {
        status: ObligationStatus,
        receipt: String,
    },
    /// The service could not be reached or refused; the watchdog sends again.
    Failed(String),
    /// Not now: the third party said so (429, or 503 with `Retry-After`), or its rate limit is
    /// taken for longer than a call may wait. The watchdog sends again after `after` (through
    /// delayed dispatch) instead of after the whole confirmation time.
    Deferred {
        reason: String,
        after: std::time::Duration,
    },
}
