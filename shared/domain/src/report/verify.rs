//! Erasure verified: once every holder of an erasure answered, each erased holder that can be
//! read (its registry entry has both `collect` and `erase`) is read again for the subject, the
//! way an access report reads it, and is expected to hold nothing. The report function does
//! it (it has the sources); what it found goes back to the confirm function, which completes
//! the erasure or opens the holders that still hold data again. Only counts leave this
//! module, never records: what was read is dropped with the staging directory.

use super::ports::{Collected, ReportSources, SourceError};
use crate::clock::Clock;
use crate::erasure::{ErasureVerified, StillHeld, VerifyErasure};
use crate::ports::{ChannelError, RequestStore, StoreError};
use crate::registry::{CollectFrom, ServiceRegistry};
use crate::request::{RequestKind, RequestState};
use std::future::Future;
use std::path::PathBuf;

/// How long reading every erased holder again may take (the function runs 15 minutes).
const READ_BUDGET: std::time::Duration = std::time::Duration::from_secs(600);

/// Where a verification's result goes (the confirmations queue).
pub trait VerificationResults: Send + Sync {
    fn send(
        &self,
        result: &ErasureVerified,
    ) -> impl Future<Output = Result<(), ChannelError>> + Send;
}

/// Reading the erased holders again, over the report function's ports.
pub struct ErasureVerifications<S, R, V, C> {
    pub store: S,
    pub sources: R,
    pub results: V,
    pub clock: C,
    pub registry: ServiceRegistry,
    pub staging_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Read `checked` holders; `found` of them still hold records. The result was sent.
    Sent { checked: usize, found: usize },
    /// The request is not verifying (a late or repeated ask), or does not exist (`None`).
    NothingToDo(Option<RequestState>),
}

/// Nothing was sent: the ask comes back later (a holder that cannot be read now is not a
/// holder found empty).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading a holder again: {0}")]
    Source(#[from] SourceError),
    #[error("staging: {0}")]
    Staging(#[source] std::io::Error),
    #[error("sending the result: {0}")]
    Send(#[from] ChannelError),
}

impl<S, R, V, C> ErasureVerifications<S, R, V, C>
where
    S: RequestStore,
    R: ReportSources,
    V: VerificationResults,
    C: Clock,
{
    pub async fn verify(&self, ask: &VerifyErasure) -> Result<Verification, VerifyError> {
        let Some(request) = self.store.get(ask.request_id).await? else {
            return Ok(Verification::NothingToDo(None));
        };
        if request.kind != RequestKind::Erasure || request.state != RequestState::Verifying {
            return Ok(Verification::NothingToDo(Some(request.state)));
        }
        std::fs::create_dir_all(&self.staging_dir).map_err(VerifyError::Staging)?;
        let staging = tempfile::tempdir_in(&self.staging_dir).map_err(VerifyError::Staging)?;
        let holders: Vec<_> = self
            .registry
            .collectable()
            // An asynchronous export takes minutes to days: it is not read again here.
            .filter(|(service, how)| {
                service.erase.is_some()
                    && !matches!(
                        how,
                        CollectFrom::Export { .. } | CollectFrom::Rabbitmq { .. }
                    )
            })
            .collect();
        // Each holder is read as it knows the subject; one keyed by an identifier the subject
        // does not have was never asked, and has nothing to find.
        let holders: Vec<_> = holders
            .into_iter()
            .filter_map(|(service, how)| {
                crate::identity::Identities::for_holder(
                    request.identities.as_ref(),
                    &request.subject,
                    service,
                )
                .ok()
                .map(|who| (service, how, who))
            })
            .collect();
        let read = futures::future::try_join_all(holders.iter().map(|(service, how, who)| {
            let query = crate::report::SourceQuery {
                request: request.id,
                subject: &who.subject,
                identifiers: &who.identifiers,
                job: None,
            };
            self.sources
                .collect(service, how, query, staging.path(), READ_BUDGET)
        }))
        .await?;
        let read: Vec<_> = read
            .into_iter()
            .filter_map(|collected| match collected {
                Collected::Staged(source) => Some(source),
                Collected::Exporting { .. } => None,
            })
            .collect();
        let checked: Vec<_> = read.iter().map(|s| s.name.clone()).collect();
        let found: Vec<StillHeld> = read
            .iter()
            .filter(|s| s.record_count > 0)
            .map(|s| StillHeld {
                service: s.name.clone(),
                records: s.record_count,
            })
            .collect();
        drop(read);
        drop(staging);
        let result = ErasureVerified::new(ask, self.clock.now(), checked, found);
        self.results.send(&result).await?;
        tracing::info!(
            request_id = %ask.request_id,
            checked = result.checked.len(),
            found = result.found.len(),
            "erasure verification read every erased holder again"
        );
        Ok(Verification::Sent {
            checked: result.checked.len(),
            found: result.found.len(),
        })
    }
}

impl<T: VerificationResults> VerificationResults for std::sync::Arc<T> {
    async fn send(&self, result: &ErasureVerified) -> Result<(), ChannelError> {
        (**self).send(result).await
    }
}

/// What arrives on the `access-requests` queue: an access request to report on, or an
/// erasure to verify (a message with `"type": "verify_erasure"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportWork {
    Access(crate::RequestMessage),
    Verify(VerifyErasure),
    /// A holder's answer to an export over RabbitMQ (`"type": "export_answer"`).
    Answer(crate::report::export::ExportAnswer),
}

impl<'de> serde::Deserialize<'de> for ReportWork {
    /// One flat reading of both shapes, told apart by `type` (only the verification has it):
    /// unknown fields are refused and a missing one is named, and no second parse of the body
    /// is linked into the report function (whose size is budgeted).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            version: u32,
            message_id: String,
            request_id: crate::RequestId,
            #[serde(rename = "type", default)]
            verify: Option<String>,
            #[serde(default)]
            kind: Option<RequestKind>,
            #[serde(default)]
            sent_at: Option<chrono::DateTime<chrono::Utc>>,
            #[serde(default)]
            requested_at: Option<chrono::DateTime<chrono::Utc>>,
            #[serde(default)]
            service: Option<crate::ServiceName>,
            #[serde(default)]
            job: Option<String>,
            #[serde(default)]
            outcome: Option<crate::report::export::ExportOutcome>,
            #[serde(default)]
            records: Option<Vec<serde_json::Value>>,
            #[serde(default)]
            reason: Option<String>,
        }
        use crate::report::export::ExportAnswer;
        let wire = Wire::deserialize(deserializer)?;
        let answer_fields = [
            ("service", wire.service.is_some()),
            ("job", wire.job.is_some()),
            ("outcome", wire.outcome.is_some()),
            ("records", wire.records.is_some()),
            ("reason", wire.reason.is_some()),
        ];
        if wire.verify.as_deref() != Some(ExportAnswer::KIND) {
            if let Some((field, _)) = answer_fields.iter().find(|(_, present)| *present) {
                return Err(D::Error::unknown_field(field, &["type", "request_id"]));
            }
        }
        match wire.verify {
            Some(kind) if kind == ExportAnswer::KIND => {
                if let Some(field) = [
                    ("kind", wire.kind.is_some()),
                    ("sent_at", wire.sent_at.is_some()),
                    ("requested_at", wire.requested_at.is_some()),
                ]
                .iter()
                .find_map(|(field, present)| present.then_some(*field))
                {
                    return Err(D::Error::unknown_field(
                        field,
                        &["service", "job", "outcome", "records", "reason"],
                    ));
                }
                Ok(ReportWork::Answer(ExportAnswer {
                    version: wire.version,
                    answer_type: kind,
                    message_id: wire.message_id,
                    request_id: wire.request_id,
                    service: wire
                        .service
                        .ok_or_else(|| D::Error::missing_field("service"))?,
                    job: wire.job.ok_or_else(|| D::Error::missing_field("job"))?,
                    outcome: wire
                        .outcome
                        .ok_or_else(|| D::Error::missing_field("outcome"))?,
                    records: wire.records.unwrap_or_default(),
                    reason: wire.reason,
                }))
            }
            Some(kind) if kind == VerifyErasure::KIND => {
                if wire.kind.is_some() || wire.sent_at.is_some() {
                    return Err(D::Error::custom(
                        "a verify_erasure has no `kind` or `sent_at`",
                    ));
                }
                Ok(ReportWork::Verify(VerifyErasure {
                    version: wire.version,
                    kind,
                    message_id: wire.message_id,
                    request_id: wire.request_id,
                    requested_at: wire
                        .requested_at
                        .ok_or_else(|| D::Error::missing_field("requested_at"))?,
                }))
            }
            Some(kind) => Err(D::Error::custom(format!(
                "unknown message type `{kind}`; this queue takes request messages, `{}` and `{}`",
                VerifyErasure::KIND,
                ExportAnswer::KIND
            ))),
            None => {
                if wire.requested_at.is_some() {
                    return Err(D::Error::unknown_field("requested_at", &["sent_at"]));
                }
                Ok(ReportWork::Access(crate::RequestMessage {
                    version: wire.version,
                    message_id: wire.message_id,
                    request_id: wire.request_id,
                    kind: wire.kind.ok_or_else(|| D::Error::missing_field("kind"))?,
                    sent_at: wire
                        .sent_at
                        .ok_or_else(|| D::Error::missing_field("sent_at"))?,
                }))
            }
        }
    }
}

impl crate::messages::QueueMessage for ReportWork {
    const VERSION: u32 = 1;
    const NAME: &'static str = "a request message, an erasure verification or an export answer";
    fn version(&self) -> u32 {
        match self {
            ReportWork::Access(m) => m.version,
            ReportWork::Verify(v) => v.version,
            ReportWork::Answer(a) => a.version,
        }
    }
    fn request_id(&self) -> Option<crate::RequestId> {
        Some(match self {
            ReportWork::Access(m) => m.request_id,
            ReportWork::Verify(v) => v.request_id,
            ReportWork::Answer(a) => a.request_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::parse;

    #[test]
    fn the_queue_tells_a_verification_from_an_access_request_and_names_what_is_wrong() {
        let id = crate::RequestId::new_at(chrono::Utc::now());
        let ask = VerifyErasure::new(id, chrono::Utc::now());
        let body = serde_json::to_string(&ask).unwrap();
        assert_eq!(parse::<ReportWork>(&body), Ok(ReportWork::Verify(ask)));
        let access = crate::RequestMessage::new(id, RequestKind::Access, chrono::Utc::now());
        let body = serde_json::to_string(&access).unwrap();
        assert_eq!(parse::<ReportWork>(&body), Ok(ReportWork::Access(access)));
        let wrong = format!(r#"{{"type":"verify_erasure","version":1,"request_id":"{id}"}}"#);
        let reason = parse::<ReportWork>(&wrong).unwrap_err();
        assert!(reason.contains("message_id"), "{reason}");
        let unknown = format!(
            r#"{{"type":"verify_erasure","version":1,"message_id":"m","request_id":"{id}","requested_at":"2026-12-01T00:00:00Z","extra":1}}"#
        );
        assert!(parse::<ReportWork>(&unknown).unwrap_err().contains("extra"));
    }
}
