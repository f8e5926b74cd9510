//! The audit trail: what happened to a request, when, and by which function. A fixed
//! vocabulary, never personal data; stored as text (`Display`) and read back as text.

use crate::erasure::ObligationStatus;
use crate::request::RequestState;
use crate::service::ServiceName;
use chrono::{DateTime, Utc};
use std::fmt;

/// Something worth recording about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audited<'a> {
    /// Accepted from the subject.
    Submitted,
    /// Accepted on the subject's behalf: by support (the channel it came by and how the
    /// subject was verified) or from another system.
    SubmittedVia {
        channel: crate::request::Channel,
        by: &'a str,
        reference: Option<&'a str>,
    },
    /// Moved to a new state.
    MovedTo(RequestState),
    /// A worker took the request, with this fencing token.
    LeaseTaken { token: u64, owner: &'a str },
    /// A download link to the report was handed out.
    ReportLinkIssued,
    /// The deadline was extended by this many months (Art. 12(3)).
    DeadlineExtended { months: u32 },
    /// A service answered its erasure command.
    Answered {
        service: &'a ServiceName,
        status: ObligationStatus,
    },
    /// A service stayed silent through every re-send: an operator takes over.
    Escalated { service: &'a ServiceName },
    /// This access request was closed (and its report deleted) by the subject's erasure.
    ClosedByErasure { erasure: crate::RequestId },
    /// Before completing, the erasure found more of the service's own copies and erased them.
    OwnCopiesErased { closed: usize, objects: usize },
    /// The broker confirmed the notice to the subject: the grace period runs from here.
    NoticePublished,
    /// A worker's attempt failed after it had started (commands may have left): the request
    /// stays in its working state for the next delivery to take over, never back to `received`.
    AttemptFailed { attempts: u32 },
    /// A verification found records at a service that had answered: its obligation is open
    /// again and its command sent again.
    Reopened {
        service: &'a ServiceName,
        records: u64,
    },
    /// A verification read every erased holder again (this many) and found nothing.
    VerifiedNothingLeft { holders: usize },
    /// An operator had a service's command sent again.
    OperatorResent {
        service: &'a ServiceName,
        operator: &'a str,
    },
    /// An operator recorded a service's answer obtained by other means (with the evidence,
    /// kept as the obligation's receipt).
    OperatorResolved {
        service: &'a ServiceName,
        status: ObligationStatus,
        operator: &'a str,
    },
    /// The subject's identifiers were looked up for the holders that need them: each kind
    /// with its keyed hash, or `none` (`crate::identity::Identities::audit_line`).
    IdentitiesResolved { found: &'a str },
}

impl fmt::Display for Audited<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Audited::Submitted => f.write_str("submitted"),
            Audited::SubmittedVia {
                channel,
                by,
                reference,
            } => {
                write!(f, "submitted:{}:by:{by}", channel.as_str())?;
                match reference {
                    Some(reference) => write!(f, ":ref:{reference}"),
                    None => Ok(()),
                }
            }
            Audited::MovedTo(state) => f.write_str(state.as_str()),
            Audited::LeaseTaken { token, owner } => write!(f, "lease#{token}#{owner}"),
            Audited::ReportLinkIssued => f.write_str("report_link_issued"),
            Audited::DeadlineExtended { months } => write!(f, "deadline_extended:{months}m"),
            Audited::Answered { service, status } => {
                write!(f, "obligation_{}:{service}", status.as_str())
            }
            Audited::Escalated { service } => write!(f, "escalated:{service}"),
            Audited::ClosedByErasure { erasure } => write!(f, "closed_by_erasure:{erasure}"),
            Audited::OwnCopiesErased { closed, objects } => {
                write!(f, "own_copies_erased:{closed}:{objects}")
            }
            Audited::NoticePublished => f.write_str("notice_published"),
            Audited::AttemptFailed { attempts } => write!(f, "attempt_failed:{attempts}"),
            Audited::Reopened { service, records } => write!(f, "reopened:{service}:{records}"),
            Audited::VerifiedNothingLeft { holders } => {
                write!(f, "verified_nothing_left:{holders}")
            }
            Audited::OperatorResent { service, operator } => {
                write!(f, "operator_resent:{service}:by:{operator}")
            }
            Audited::OperatorResolved {
                service,
                status,
                operator,
            } => write!(
                f,
                "operator_resolved:{service}:{}:by:{operator}",
                status.as_str()
            ),
            Audited::IdentitiesResolved { found } => write!(f, "identities_resolved:{found}"),
        }
    }
}

/// One entry of a request's audit trail, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: DateTime<Utc>,
    pub event: String,
    pub actor: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_vocabulary_is_stable() {
        let billing = ServiceName::parse("billing").unwrap();
        let cases = [
            (Audited::Submitted, "submitted"),
            (
                Audited::SubmittedVia {
                    channel: crate::request::Channel::Email,
                    by: "jane@ops",
                    reference: Some("SUP-1"),
                },
                "submitted:email:by:jane@ops:ref:SUP-1",
            ),
            (Audited::MovedTo(RequestState::Collecting), "collecting"),
            (
                Audited::LeaseTaken {
                    token: 3,
                    owner: "report-1",
                },
                "lease#3#report-1",
            ),
            (Audited::ReportLinkIssued, "report_link_issued"),
            (
                Audited::DeadlineExtended { months: 2 },
                "deadline_extended:2m",
            ),
            (
                Audited::Answered {
                    service: &billing,
                    status: ObligationStatus::NotFound,
                },
                "obligation_not_found:billing",
            ),
            (
                Audited::Escalated { service: &billing },
                "escalated:billing",
            ),
            (
                Audited::Reopened {
                    service: &billing,
                    records: 2,
                },
                "reopened:billing:2",
            ),
            (
                Audited::VerifiedNothingLeft { holders: 5 },
                "verified_nothing_left:5",
            ),
            (Audited::NoticePublished, "notice_published"),
            (Audited::AttemptFailed { attempts: 2 }, "attempt_failed:2"),
            (
                Audited::OperatorResent {
                    service: &billing,
                    operator: "jane@ops",
                },
                "operator_resent:billing:by:jane@ops",
            ),
            (
                Audited::OperatorResolved {
                    service: &billing,
                    status: ObligationStatus::Confirmed,
                    operator: "jane@ops",
                },
                "operator_resolved:billing:confirmed:by:jane@ops",
            ),
        ];
        for (event, text) in cases {
            assert_eq!(event.to_string(), text);
        }
    }
}
