//! The erasure function: an erasure request's message (SQS `erasure-requests`) becomes one
//! obligation per service in the registry and one `erase_subject` command to each (see
//! `dsr_domain::erasure`).

use dsr_adapters::batch::{Outcome, QueueDriver, RecordHandler};
use dsr_adapters::config::{vars, ConfigError, Env};
use dsr_adapters::wiring::{self, CloudErasures};
use dsr_domain::erasure::{CheckScheduler, ErasureChannel, Erasures, EventOutbox, ObligationStore};
use dsr_domain::messages::Origin;
use dsr_domain::report::ReportStore;
use dsr_domain::{Clock, RequestKind, RequestMessage, RequestStore};

/// The function as Lambda runs it.
pub type Handler = QueueDriver<ErasureRequestHandler<CloudErasures>>;

/// Builds the function from its configuration: the same wiring in Lambda and the local stack.
pub fn build(aws: &aws_config::SdkConfig, env: &Env) -> Result<Handler, ConfigError> {
    let handler = ErasureRequestHandler {
        erasures: wiring::erasures(aws, env, "erasure")?,
    };
    QueueDriver::from_env(
        "erasure",
        handler,
        aws,
        env,
        vars::ERASURE_REQUESTS_QUEUE_URL,
    )
}

/// One message of `erasure-requests`: one request to fan out.
pub struct ErasureRequestHandler<E> {
    pub erasures: E,
}

impl<S, X, D, E, C, R> RecordHandler for ErasureRequestHandler<Erasures<S, X, D, E, C, R>>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
    R: ReportStore,
{
    type Message = RequestMessage;

    async fn handle(&self, message: RequestMessage, _: &Origin) -> Outcome {
        if message.kind != RequestKind::Erasure {
            return Outcome::Reject(format!(
                "a request of kind `{}` on the erasure-requests queue",
                message.kind
            ));
        }
        let id = message.request_id;
        let handled = self.erasures.fan_out(id).await;
        if let Ok(handled) = &handled {
            tracing::info!(request_id = %id, outcome = ?handled, "erasure request handled");
        }
        handled.map_or_else(Outcome::from, |_| Outcome::Done)
    }
}

#[cfg(test)]
mod use_cases;
