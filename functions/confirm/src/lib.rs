//! The confirm function: services' confirmations, the watchdog's checks, the bridge's
//! publication receipts and the report function's verification results (SQS `confirmations`)
//! move obligations on, and with them the erasure request (see `dsr_domain::erasure`).

use dsr_adapters::batch::{Outcome, QueueDriver, RecordHandler};
use dsr_adapters::config::{vars, ConfigError, Env};
use dsr_adapters::wiring::{self, CloudErasures};
use dsr_domain::erasure::{
    CheckScheduler, ConfirmationsMessage, ErasureChannel, Erasures, EventOutbox, ObligationStore,
};
use dsr_domain::messages::Origin;
use dsr_domain::report::ReportStore;
use dsr_domain::{Clock, RequestStore};

/// The function as Lambda runs it.
pub type Handler = QueueDriver<ConfirmationHandler<CloudErasures>>;

/// Builds the function from its configuration: the same wiring in Lambda and the local stack.
pub fn build(aws: &aws_config::SdkConfig, env: &Env) -> Result<Handler, ConfigError> {
    let handler = ConfirmationHandler {
        erasures: wiring::erasures(aws, env, "confirm")?,
    };
    QueueDriver::from_env("confirm", handler, aws, env, vars::CONFIRMATIONS_QUEUE_URL)
}

/// One message of `confirmations`: a service's answer, or the watchdog's check. Unknown
/// requests or services are rejected with the reason; duplicates change nothing.
pub struct ConfirmationHandler<E> {
    pub erasures: E,
}

impl<S, X, D, E, C, R> RecordHandler for ConfirmationHandler<Erasures<S, X, D, E, C, R>>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
    R: ReportStore,
{
    type Message = ConfirmationsMessage;

    async fn handle(&self, message: ConfirmationsMessage, origin: &Origin) -> Outcome {
        let handled = match &message {
            ConfirmationsMessage::ErasureConfirmation(c) => {
                let handled = self.erasures.confirm(c, origin).await;
                if let Ok(handled) = &handled {
                    tracing::info!(request_id = %c.request_id, service = %c.service, message_id = %c.message_id, outcome = ?handled, "confirmation handled");
                }
                handled
            }
            ConfirmationsMessage::ObligationDue(_) if *origin != Origin::Internal => {
                // The watchdog's checks are the service's own: from outside, one could stop a
                // re-send or escalate an obligation at will.
                return Outcome::Reject(format!(
                    "an obligation check from {origin}; only the service schedules its checks"
                ));
            }
            ConfirmationsMessage::ObligationDue(due) => {
                let handled = self.erasures.check(due).await;
                if let Ok(handled) = &handled {
                    tracing::info!(request_id = %due.request_id, service = %due.service, attempt = due.attempt, outcome = ?handled, "obligation check handled");
                }
                handled
            }
            ConfirmationsMessage::Published(receipt) => {
                let handled = self.erasures.published(receipt, origin).await;
                if let Ok(handled) = &handled {
                    tracing::info!(request_id = %receipt.request_id, message_id = %receipt.message_id, outcome = ?handled, "publication receipt handled");
                }
                handled
            }
            ConfirmationsMessage::OperatorAction(action) => {
                let handled = self.erasures.operator_action(action, origin).await;
                if let Ok(handled) = &handled {
                    tracing::info!(request_id = %action.request_id, service = %action.service, decision = ?action.decision, operator = %action.operator, outcome = ?handled, "operator action handled");
                }
                handled
            }
            ConfirmationsMessage::ErasureVerified(result) => {
                let handled = self.erasures.verified(result, origin).await;
                if let Ok(handled) = &handled {
                    tracing::info!(request_id = %result.request_id, checked = result.checked.len(), found = result.found.len(), outcome = ?handled, "verification result handled");
                }
                handled
            }
        };
        handled.map_or_else(Outcome::from, |_| Outcome::Done)
    }
}
