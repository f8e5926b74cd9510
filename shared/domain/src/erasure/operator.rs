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
        action.check().map_err(ErasureError::Rejected)?;
        let operator = action.operator.as_str();
        let (id, service) = (action.request_id, &action.service);
        // The rules the CLI and the page checked when it was asked, again: things moved since.
        let (request, obligation) = match actionable(
            id,
            self.store.get(id).await?,
            service,
            action.decision,
            self.store.obligations(id).await?,
        ) {
            Ok(found) => found,
            Err(NotActionable::Answered(..)) => {
                return Ok(Handled::Nothing(Skipped::AlreadyAnswered))
            }
            Err(refused) => return Err(ErasureError::Rejected(refused.to_string())),
        };
        match action.decision {
            OperatorDecision::Resend => {
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
                // `check` saw the outcome is one of these two and the evidence is there.
                let status = match action.outcome {
                    Some(ConfirmationOutcome::Erased) => ObligationStatus::Confirmed,
                    _ => ObligationStatus::NotFound,
                };
                let evidence = action.evidence.as_deref().map(str::trim).unwrap_or("");
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

impl OperatorAction {
    /// What the decision itself must say, whoever asks: a named operator (a login or an
    /// e-mail-like id, nothing else: it goes into the audit trail), and for a resolution the
    /// holder's answer (`erased` or `not_found`) and its evidence; a resend carries neither.
    pub fn check(&self) -> Result<(), String> {
        let named = !self.operator.is_empty()
            && self.operator.chars().count() <= MOST_OPERATOR_CHARS
            && self
                .operator
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "@._:+-".contains(c));
        if !named {
            return Err(format!(
                "the operator must be named (letters, digits, @ . _ : + -, at most {MOST_OPERATOR_CHARS})"
            ));
        }
        let evidence = self.evidence.as_deref().map(str::trim);
        match self.decision {
            OperatorDecision::Resend if self.outcome.is_some() || evidence.is_some() => {
                Err("a resend carries no outcome or evidence".into())
            }
            OperatorDecision::Resend => Ok(()),
            OperatorDecision::Resolve
                if !matches!(
                    self.outcome,
                    Some(ConfirmationOutcome::Erased | ConfirmationOutcome::NotFound)
                ) =>
            {
                Err("a resolution says `erased` or `not_found`".into())
            }
            OperatorDecision::Resolve if evidence.is_none_or(str::is_empty) => {
                Err("a resolution needs its evidence".into())
            }
            OperatorDecision::Resolve
                if evidence.is_some_and(|e| e.chars().count() > MOST_EVIDENCE_CHARS) =>
            {
                Err(format!(
                    "the evidence is at most {MOST_EVIDENCE_CHARS} characters (a ticket, a reference, what was done)"
                ))
            }
            OperatorDecision::Resolve => Ok(()),
        }
    }
}

/// Whether a receipt records an answer an operator obtained by other means.
pub fn settled_by_hand(receipt: Option<&str>) -> bool {
    receipt
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .is_some_and(|r| r["manual"] == true)
}

/// Why an operator's decision on an obligation cannot be asked for: checked where it is asked
/// (the CLI, the operations page) so the operator hears at once, and again by the confirm
/// function, which carries it out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotActionable {
    #[error("no request {0}")]
    NoRequest(RequestId),
    #[error("{0} is an access request; obligations are an erasure's")]
    AccessRequest(RequestId),
    #[error("{0} is {1}: nothing left to act on")]
    Finished(RequestId, RequestState),
    #[error("`{OWN_COPIES}` is the service's own copies, erased by the service itself")]
    OwnCopies,
    #[error("{0} has no obligation for {1}")]
    NoObligation(RequestId, ServiceName),
    #[error("{0}: already answered ({status}); nothing to do", status = .1.as_str())]
    Answered(ServiceName, ObligationStatus),
    #[error("`{0}` is erased last: its command waits for the notice to the subject")]
    WaitsForNotice(ServiceName),
}

/// The request and its obligation an operator may act on: an open erasure's, to `service`,
/// not yet answered; one erased last is sent again only once released (after the notice).
pub fn actionable(
    id: RequestId,
    request: Option<Request>,
    service: &ServiceName,
    decision: OperatorDecision,
    obligations: Vec<Obligation>,
) -> Result<(Request, Obligation), NotActionable> {
    let request = request.ok_or(NotActionable::NoRequest(id))?;
    if request.kind != RequestKind::Erasure {
        return Err(NotActionable::AccessRequest(id));
    }
    if request.state.is_terminal() {
        return Err(NotActionable::Finished(id, request.state));
    }
    if service.as_str() == OWN_COPIES {
        return Err(NotActionable::OwnCopies);
    }
    let obligation = obligations
        .into_iter()
        .find(|o| &o.service == service)
        .ok_or_else(|| NotActionable::NoObligation(id, service.clone()))?;
    if obligation.status.is_done() {
        return Err(NotActionable::Answered(service.clone(), obligation.status));
    }
    if decision == OperatorDecision::Resend && obligation.last && obligation.release_at.is_none() {
        return Err(NotActionable::WaitsForNotice(service.clone()));
    }
    Ok((request, obligation))
}
