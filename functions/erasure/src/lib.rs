//! The erasure function: an erasure request's message (SQS `erasure-requests`) becomes one
//! obligation per holder in the registry and one `erase_subject` command to each (see
//! `dsr_domain::erasure`). Also builds the erasure desk the confirm function uses.

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_adapters::erase::ErasureChannels;
use dsr_adapters::sqs::{dead_letter, SqsCheckScheduler, SqsOutbox};
use dsr_adapters::wiring::{DeskConfig, OUTBOUND_QUEUE_URL};
use dsr_domain::erasure::{
    CheckScheduler, ErasureChannel, ErasureDesk, ErasureError, ErasureSettings, EventOutbox,
    ObligationStore,
};
use dsr_domain::registry::load_registry;
use dsr_domain::{Clock, RequestKind, RequestMessage, RequestStore, SubjectHasher, SystemClock};
use tracing::Instrument;

pub const COMMANDS_EXCHANGE: &str = "COMMANDS_EXCHANGE";
pub const CONFIRMATIONS_QUEUE_URL: &str = "CONFIRMATIONS_QUEUE_URL";
pub const SCHEDULE_REQUESTS_QUEUE_URL: &str = "SCHEDULE_REQUESTS_QUEUE_URL";
pub const DEAD_LETTER_QUEUE_URL: &str = "DEAD_LETTER_QUEUE_URL";
pub const ERASURE_GRACE_SECONDS: &str = "ERASURE_GRACE_SECONDS";
pub const ERASURE_LEASE_SECONDS: &str = "ERASURE_LEASE_SECONDS";

pub type CloudErasureDesk =
    ErasureDesk<DynamoRequestStore, ErasureChannels, SqsCheckScheduler, SqsOutbox, SystemClock>;

/// A function's erasure desk and where its poison messages go.
pub struct ErasureFunction<D> {
    pub desk: D,
    pub sqs: aws_sdk_sqs::Client,
    pub dead_letter_queue_url: String,
}

pub fn settings_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ErasureSettings, String> {
    let seconds = |name: &str| -> Result<Option<i64>, String> {
        lookup(name)
            .map(|raw| {
                raw.parse::<i64>()
                    .ok()
                    .filter(|s| *s >= 0)
                    .ok_or_else(|| format!("{name} must be a number of seconds, not `{raw}`"))
            })
            .transpose()
    };
    let mut settings = ErasureSettings::default();
    if let Some(grace) = seconds(ERASURE_GRACE_SECONDS)? {
        settings.grace = chrono::Duration::seconds(grace);
    }
    if let Some(lease) = seconds(ERASURE_LEASE_SECONDS)? {
        settings.lease_ttl = chrono::Duration::seconds(lease.max(1));
    }
    Ok(settings)
}

/// The desk as a function deployed from template.yaml builds it; `actor` names it in the audit
/// trail. Secrets for third-party APIs are read from the process environment.
pub fn desk_from_lookup(
    aws: &aws_config::SdkConfig,
    lookup: impl Fn(&str) -> Option<String>,
    actor: &str,
) -> Result<ErasureFunction<CloudErasureDesk>, String> {
    let config = DeskConfig::from_lookup(&lookup).map_err(|e| e.to_string())?;
    let required = |name: &str| lookup(name).ok_or_else(|| format!("{name} is not set"));
    let sqs = aws_sdk_sqs::Client::new(aws);
    let desk = ErasureDesk {
        store: DynamoRequestStore::new(
            aws_sdk_dynamodb::Client::new(aws),
            &config.requests_table,
            actor,
        ),
        channel: ErasureChannels::new(
            sqs.clone(),
            required(OUTBOUND_QUEUE_URL)?,
            required(COMMANDS_EXCHANGE)?,
            |name| std::env::var(name).ok(),
        ),
        checks: SqsCheckScheduler::new(
            sqs.clone(),
            required(SCHEDULE_REQUESTS_QUEUE_URL)?,
            required(CONFIRMATIONS_QUEUE_URL)?,
        ),
        events: SqsOutbox::new(sqs.clone(), required(OUTBOUND_QUEUE_URL)?),
        clock: SystemClock,
        registry: load_registry(&lookup)?,
        hasher: SubjectHasher::new(&config.subject_hash_key),
        settings: settings_from_lookup(&lookup)?,
        owner: format!("{actor}-{}", ulid::Ulid::new()),
    };
    Ok(ErasureFunction {
        desk,
        sqs,
        dead_letter_queue_url: required(DEAD_LETTER_QUEUE_URL)?,
    })
}

impl<S, X, D, E, C> ErasureFunction<ErasureDesk<S, X, D, E, C>>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
{
    /// One SQS batch of `erasure-requests`. A message that can never succeed is dead-lettered
    /// with its reason; one that may later (store down, another worker busy) is returned.
    pub async fn handle_requests(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let body = record.body.as_deref().unwrap_or_default();
            let outcome = match serde_json::from_str::<RequestMessage>(body) {
                Err(err) => Err(ErasureError::Rejected(format!("not a request message: {err}"))),
                Ok(m) if m.version != RequestMessage::VERSION => Err(ErasureError::Rejected(
                    format!("unknown request message version {}", m.version),
                )),
                Ok(m) if m.kind != RequestKind::Erasure => Err(ErasureError::Rejected(format!(
                    "a {} request on the erasure queue",
                    m.kind
                ))),
                Ok(m) => self
                    .desk
                    .fan_out(m.request_id)
                    // Every line logged for this request carries its id: the correlation id.
                    .instrument(tracing::info_span!("erasure", request_id = %m.request_id))
                    .await
                    .map(|handled| {
                    tracing::info!(request_id = %m.request_id, outcome = ?handled, "erasure request handled");
                }),
            };
            if !self.settled(body, outcome).await {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }

    /// True when the message is done with (handled or dead-lettered).
    pub async fn settled(&self, body: &str, outcome: Result<(), ErasureError>) -> bool {
        match outcome {
            Ok(()) => true,
            Err(ErasureError::Rejected(reason)) => {
                dead_letter(&self.sqs, &self.dead_letter_queue_url, body, &reason)
                    .await
                    .is_ok()
            }
            Err(err) => {
                tracing::warn!(error = %err, "message returned to its queue for a later attempt");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_to_72_hours_of_grace_and_refuse_nonsense() {
        let none = settings_from_lookup(|_| None).unwrap();
        assert_eq!(none.grace, chrono::Duration::hours(72));
        let two =
            settings_from_lookup(|n| (n == ERASURE_GRACE_SECONDS).then(|| "2".into())).unwrap();
        assert_eq!(two.grace, chrono::Duration::seconds(2));
        let bad = settings_from_lookup(|n| (n == ERASURE_GRACE_SECONDS).then(|| "soon".into()));
        assert!(bad.unwrap_err().contains(ERASURE_GRACE_SECONDS));
    }
}

#[cfg(test)]
mod use_cases;
