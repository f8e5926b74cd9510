//! A holder's data export over RabbitMQ, for services that speak only AMQP: the report function
//! sends an `export_subject` command (routing key from the registry) carrying a job id and a
//! presigned URL to upload to; the holder answers with an `export_answer` on the confirmations
//! exchange, carrying the records (small data) or saying it uploaded them (large data), that it
//! holds nothing, or that it failed. Contract: `docs/messages.schema.json`, `docs/holders.md`.
//!
//! The answer is kept in the report store at [`answer_key`] (the holder's upload goes straight
//! there); the source is collected from it like any staged result. The job id is a ULID made
//! when the command is sent: unique per attempt, and it tells when that was (an answer not in
//! by then fails the attempt, and the next one sends a new command).

use crate::messages::{Origin, QueueMessage};
use crate::registry::{CollectFrom, ServiceRegistry};
use crate::request::{Request, RequestId, RequestKind, RequestState};
use crate::service::ServiceName;
use crate::subject::SubjectId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `export_subject`: tell one service to export what it holds about `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportCommand {
    pub version: u32,
    #[serde(rename = "type")]
    pub command_type: String,
    /// `export:<request>:<service>:<job>`: unique per command.
    pub message_id: String,
    pub request_id: RequestId,
    pub service: ServiceName,
    /// The subject as this service knows them: the first identifier its registry entry asks
    /// for (the user id unless it says otherwise).
    pub subject: SubjectId,
    /// Every identifier the service asked for, by kind, and no other.
    #[serde(default)]
    pub identifiers: std::collections::BTreeMap<crate::identity::IdentifierKind, SubjectId>,
    /// Goes back in the answer.
    pub job: String,
    /// Where to `PUT` the records (NDJSON) when they are too many for the answer message.
    pub upload_url: String,
    /// Neither the upload URL nor the command is good after this.
    pub answer_by: DateTime<Utc>,
    pub sent_at: DateTime<Utc>,
}

impl ExportCommand {
    pub const VERSION: u32 = 1;
    pub const KIND: &'static str = "export_subject";
}

/// What a holder says of its export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportOutcome {
    /// The records are in the answer's `records`.
    Records,
    /// The records were `PUT` to the command's `upload_url`, one JSON value per line.
    Uploaded,
    /// It holds nothing about the subject.
    NotFound,
    /// It could not export; `reason` says why (the attempt fails and is retried).
    Failed,
}

/// `export_answer`, from a holder (through the bridge, with its broker user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportAnswer {
    pub version: u32,
    #[serde(rename = "type")]
    pub answer_type: String,
    pub message_id: String,
    pub request_id: RequestId,
    pub service: ServiceName,
    pub job: String,
    pub outcome: ExportOutcome,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ExportAnswer {
    pub const VERSION: u32 = 1;
    pub const KIND: &'static str = "export_answer";

    /// What the message itself must hold, whoever sent it.
    pub fn check_shape(&self) -> Result<(), String> {
        if !is_job(&self.job) {
            return Err("`job` is not the job id of an export_subject command".into());
        }
        match self.outcome {
            ExportOutcome::Records => Ok(()),
            _ if !self.records.is_empty() => Err(format!(
                "an answer with outcome `{}` carries no records",
                self.outcome_name()
            )),
            ExportOutcome::Failed if self.reason.as_deref().is_none_or(str::is_empty) => {
                Err("an answer with outcome `failed` needs a `reason`".into())
            }
            _ => Ok(()),
        }
    }

    fn outcome_name(&self) -> String {
        serde_json::to_value(self.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl QueueMessage for ExportAnswer {
    const VERSION: u32 = 1;
    const NAME: &'static str = "an export_answer";
    fn version(&self) -> u32 {
        self.version
    }
    fn request_id(&self) -> Option<RequestId> {
        Some(self.request_id)
    }
}

/// Whether `job` is one this service made: a ULID (and so safe in an object key).
pub fn is_job(job: &str) -> bool {
    job.len() == 26 && ulid::Ulid::from_string(job).is_ok()
}

/// When the command of `job` was sent (its ULID's time).
pub fn sent_at(job: &str) -> Option<DateTime<Utc>> {
    let ulid = ulid::Ulid::from_string(job).ok()?;
    DateTime::from_timestamp_millis(i64::try_from(ulid.timestamp_ms()).ok()?)
}

/// Where the records of `job` are kept (an answer's records, or the holder's upload).
pub fn answer_key(id: RequestId, service: &ServiceName, job: &str) -> String {
    format!(
        "{}{service}/answers/{job}.ndjson",
        super::staging_prefix(id)
    )
}

/// Where a holder's `failed` answer is kept, with its reason.
pub fn failure_key(id: RequestId, service: &ServiceName, job: &str) -> String {
    format!(
        "{}{service}/answers/{job}.failed",
        super::staging_prefix(id)
    )
}

/// Why an answer is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It can never be taken (the message goes to the dead-letter queue with this reason).
    Invalid(String),
    /// It came late, or for an attempt given up: nothing to do.
    Stale(String),
}

/// Checks an answer against the registry (the sender must be the service's broker user) and
/// against the request (it must be collecting, waiting on this very job).
pub fn check_answer(
    registry: &ServiceRegistry,
    answer: &ExportAnswer,
    origin: &Origin,
    request: Option<&Request>,
) -> Result<(), Refusal> {
    answer.check_shape().map_err(Refusal::Invalid)?;
    let service = registry
        .service(&answer.service)
        .filter(|s| matches!(s.collect, Some(CollectFrom::Rabbitmq { .. })))
        .ok_or_else(|| {
            Refusal::Invalid(format!(
                "`{}` is not registered as a service collected over RabbitMQ",
                answer.service
            ))
        })?;
    match origin {
        Origin::Broker(user) if service.broker_user.as_deref() == Some(user.as_str()) => {}
        other => {
            return Err(Refusal::Invalid(format!(
                "an answer for `{}` from {other}; only its broker user may send it",
                answer.service
            )))
        }
    }
    let request = request
        .ok_or_else(|| Refusal::Invalid(format!("unknown request {}", answer.request_id)))?;
    if request.kind != RequestKind::Access {
        return Err(Refusal::Invalid(format!(
            "request {} is not an access request",
            request.id
        )));
    }
    if request.state != RequestState::Collecting {
        return Err(Refusal::Stale(format!(
            "request {} is {:?}, no longer collecting",
            request.id, request.state
        )));
    }
    let waiting = request
        .sources
        .iter()
        .any(|s| s.service == answer.service && s.job.as_deref() == Some(answer.job.as_str()));
    if !waiting {
        return Err(Refusal::Stale(format!(
            "request {} is not waiting on job {} of `{}` (an attempt given up, or answered before)",
            request.id, answer.job, answer.service
        )));
    }
    Ok(())
}
