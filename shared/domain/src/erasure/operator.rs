//! An operator's hand on an obligation: an escalation is not a dead end. The operator has the
//! command sent again (a new attempt, the same idempotency key), or records the answer they
//! obtained by other means, with the evidence; the request then moves on as if the holder had
//! answered. Who did it and why is in the audit trail and the obligation's receipt.

use super::*;
use crate::audit::Audited;
use crate::messages::Origin;

/// The longest operator name and evidence kept.
const MOST_OPERATOR_CHARS: usize = 128;
const MOST_EVIDENCE_CHARS: usize = 2000;

impl<S, X, D, E, C, R> Erasures<S, X, D, E, C, R>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
    R: ReportStore,
{
    /// Carries out an operator's decision on one obligation. A decision on an obligation that
    /// is already answered changes nothing (an answer that came meanwhile wins).
    pub async fn operator_action(
        &self,
        action: &OperatorAction,
        origin: &Origin,
    ) -> Result<Handled, ErasureError> {
        if *origin != Origin::Internal {
            return Err(ErasureError::Rejected(format!(
                "an operator action from {origin}; only operators (through the service) act on obligations"
            )));
        }
        let operator = operator_name(&action.operator)?;
        let request = self.erasure(action.request_id).await?;
        if request.state.is_terminal() {
            return Err(ErasureError::Rejected(format!(
                "request {} is {}: nothing left to act on",
                request.id,
                request.state.as_str()
            )));
        }
        let service = &action.service;
        if service.as_str() == OWN_COPIES {
            return Err(ErasureError::Rejected(format!(
                "`{OWN_COPIES}` is the service's own copies, erased by the service itself"
            )));
        }
        let obligation = self.obligation(&request, service).await?;
        if obligation.status.is_done() {
            return Ok(Handled::Nothing(Skipped::AlreadyAnswered));
        }
        match action.decision {
            OperatorDecision::Resend => {
                if obligation.last && obligation.release_at.is_none() {
                    return Err(ErasureError::Rejected(format!(
                        "`{service}` is erased last: its command waits for the notice to the subject"
                    )));
                }
                let how = self.eraser(service)?;
                let attempt = obligation.attempts + 1;
                self.send(&request, service, how, attempt, obligation.reopened)
                    .await?;
                self.store
                    .record_event(
                        request.id,
                        &Audited::OperatorResent { service, operator },
                        self.clock.now(),
                    )
                    .await?;
                tracing::info!(request_id = %request.id, service = %service, attempt, operator, "operator had the command sent again");
                Ok(Handled::Resent { attempt })
            }
            OperatorDecision::Resolve => {
                let status = match action.outcome {
                    Some(ConfirmationOutcome::Erased) => ObligationStatus::Confirmed,
                    Some(ConfirmationOutcome::NotFound) => ObligationStatus::NotFound,
                    _ => {
                        return Err(ErasureError::Rejected(
                            "a resolution says `erased` or `not_found`".into(),
                        ))
                    }
                };
                let evidence = action
                    .evidence
                    .as_deref()
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .ok_or_else(|| {
                        ErasureError::Rejected("a resolution needs its evidence".into())
                    })?;
                // The receipt says it was settled by hand, by whom, and on what evidence: the
                // proof of erasure and the certificate show it as such.
                let receipt = serde_json::json!({
                    "manual": true,
                    "operator": operator,
                    "evidence": evidence.chars().take(MOST_EVIDENCE_CHARS).collect::<String>(),
                    "resolved_at": action.at,
                })
                .to_string();
                let handled = self.answer(&request, service, status, &receipt).await?;
                self.store
                    .record_event(
                        request.id,
                        &Audited::OperatorResolved {
                            service,
                            status,
                            operator,
                        },
                        self.clock.now(),
                    )
                    .await?;
                tracing::info!(request_id = %request.id, service = %service, status = status.as_str(), operator, "operator resolved the obligation");
                Ok(handled)
            }
        }
    }
}

/// An operator's name as the audit trail keeps it: a login or an e-mail-like id, nothing else.
fn operator_name(raw: &str) -> Result<&str, ErasureError> {
    let ok = !raw.is_empty()
        && raw.chars().count() <= MOST_OPERATOR_CHARS
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._:+-".contains(c));
    if ok {
        Ok(raw)
    } else {
        Err(ErasureError::Rejected(format!(
            "the operator must be named (letters, digits, @ . _ : + -, at most {MOST_OPERATOR_CHARS})"
        )))
    }
}

/// Whether a receipt records an answer an operator obtained by other means.
pub fn settled_by_hand(receipt: Option<&str>) -> bool {
    receipt
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .is_some_and(|r| r["manual"] == true)
}
