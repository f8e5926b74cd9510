//! The report function: turns a `received` access request into a downloadable report holding
//! everything the registered sources know about the subject (SQS `access-requests`).
//!
//! One worker per request: a lease taken with a conditional write, every later write fenced by
//! its token. Self-healing: a failed attempt leaves nothing behind (the multipart upload is
//! aborted, so no object ever appears), the request goes back to `received` with the error, and
//! the message returns after a growing delay; a dead worker's leftovers are cleaned by the next.

pub mod archive;
mod html;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use dsr_adapters::collect::Collectors;
use dsr_adapters::s3::S3ReportStore;
use dsr_adapters::sqs::SqsOutbox;
use dsr_domain::messages::DomainEvent;
use dsr_domain::metrics::{self, names, Metric};
use dsr_domain::ports::{LeaseOutcome, TransitionOutcome};
use dsr_domain::registry::ServiceRegistry;
use dsr_domain::{
    Clock, ReportInfo, Request, RequestId, RequestKind, RequestMessage, RequestState, RequestStore,
    StoreError, SubjectHasher,
};
use std::path::PathBuf;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// Attempts before the request is `failed` and its message dead-lettered.
    pub max_attempts: u32,
    /// Longer than the function's timeout, so a live worker never outlives its lease.
    pub lease_ttl: Duration,
    /// How long a report stays downloadable (the bucket's lifecycle rule matches it).
    pub retention: Duration,
    /// Multipart part size; S3 needs at least 5 MiB.
    pub part_size: usize,
    /// First retry delay; doubles with every failed attempt.
    pub retry_base: Duration,
    pub staging_dir: PathBuf,
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            lease_ttl: Duration::seconds(960),
            retention: Duration::days(30),
            part_size: 8 * 1024 * 1024,
            retry_base: Duration::seconds(60),
            staging_dir: std::env::temp_dir(),
        }
    }
}

pub const REPORT_MAX_ATTEMPTS: &str = "REPORT_MAX_ATTEMPTS";
pub const REPORT_LEASE_SECONDS: &str = "REPORT_LEASE_SECONDS";
pub const REPORT_RETENTION_DAYS: &str = "REPORT_RETENTION_DAYS";
pub const REPORT_PART_SIZE_BYTES: &str = "REPORT_PART_SIZE_BYTES";
pub const REPORT_RETRY_BASE_SECONDS: &str = "REPORT_RETRY_BASE_SECONDS";
pub use dsr_domain::registry::{load_registry, SERVICE_REGISTRY, SERVICE_REGISTRY_FILE};

impl ReportSettings {
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let number = |name: &str| -> Result<Option<i64>, String> {
            lookup(name)
                .map(|raw| {
                    raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("{name} must be a positive whole number, not `{raw}`")
                    })
                })
                .transpose()
        };
        let mut settings = Self::default();
        if let Some(n) = number(REPORT_MAX_ATTEMPTS)? {
            settings.max_attempts = u32::try_from(n).map_err(|e| e.to_string())?;
        }
        if let Some(n) = number(REPORT_LEASE_SECONDS)? {
            settings.lease_ttl = Duration::seconds(n);
        }
        if let Some(n) = number(REPORT_RETENTION_DAYS)? {
            settings.retention = Duration::days(n);
        }
        if let Some(n) = number(REPORT_PART_SIZE_BYTES)? {
            if n < 5 * 1024 * 1024 {
                return Err(format!("{REPORT_PART_SIZE_BYTES} must be at least 5 MiB"));
            }
            settings.part_size = usize::try_from(n).map_err(|e| e.to_string())?;
        }
        if let Some(n) = number(REPORT_RETRY_BASE_SECONDS)? {
            settings.retry_base = Duration::seconds(n);
        }
        Ok(settings)
    }
}

/// The delay before attempt `attempts + 1`: `base`, doubling per failed attempt, capped below
/// SQS's 12-hour visibility limit.
pub fn retry_delay(base: Duration, attempts: u32) -> Duration {
    let factor = 2i32.saturating_pow(attempts.saturating_sub(1).min(20));
    base.checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(Duration::hours(12) - Duration::seconds(1))
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkOutcome {
    Completed(ReportInfo),
    /// Done, cancelled, failed, or gone: a duplicate or late message.
    NothingToDo(Option<RequestState>),
    /// Another worker holds the lease.
    Busy {
        until: DateTime<Utc>,
    },
    /// This attempt failed; the request is back in `received`.
    RetryLater {
        after: Duration,
        error: String,
    },
    /// The last attempt failed; the request is `failed`.
    Failed {
        error: String,
    },
    /// Another worker took the request over; this one's work was discarded.
    FencedOut,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

pub struct ReportWorker<S, C> {
    pub store: S,
    pub clock: C,
    pub hasher: SubjectHasher,
    pub registry: ServiceRegistry,
    pub collectors: Collectors,
    pub reports: S3ReportStore,
    pub outbox: SqsOutbox,
    pub sqs: aws_sdk_sqs::Client,
    /// The access-requests queue (to delay a retry) and its dead-letter queue.
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    pub settings: ReportSettings,
    /// Names this worker in leases and the audit trail.
    pub owner: String,
}

impl<S: RequestStore, C: Clock> ReportWorker<S, C> {
    /// The Lambda handler: each message is one request; failures are reported per message.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        // One at a time: each report holds a lease and staging space on local disk.
        for record in event.records {
            let message_id = record.message_id.clone().unwrap_or_default();
            let span = tracing::info_span!("access_request_message", %message_id);
            if let Some(delay) = self.handle_message(&record).instrument(span).await {
                self.delay(&record, delay).await;
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message_id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }

    /// `Some(delay)` when the message must come back later.
    async fn handle_message(&self, record: &SqsMessage) -> Option<Duration> {
        let body = record.body.as_deref().unwrap_or_default();
        let message = match serde_json::from_str::<RequestMessage>(body) {
            Ok(m) if m.kind == RequestKind::Access && m.version == RequestMessage::VERSION => m,
            Ok(m) => {
                self.dead_letter(
                    body,
                    &format!(
                        "not an access request message (kind {}, version {})",
                        m.kind, m.version
                    ),
                )
                .await;
                return None;
            }
            Err(err) => {
                self.dead_letter(body, &format!("malformed message: {err}"))
                    .await;
                return None;
            }
        };
        let id = message.request_id;
        match self
            .work(id)
            .instrument(tracing::info_span!("report", request_id = %id))
            .await
        {
            Ok(WorkOutcome::Completed(report)) => {
                tracing::info!(request_id = %id, report_size = report.size, "report ready");
                None
            }
            Ok(WorkOutcome::NothingToDo(state)) => {
                tracing::info!(request_id = %id, state = ?state, "nothing to do for this message");
                None
            }
            Ok(WorkOutcome::FencedOut) => {
                tracing::warn!(request_id = %id, "lease lost to another worker; this attempt's work discarded");
                None
            }
            Ok(WorkOutcome::Busy { until }) => {
                Some((until - self.clock.now()).max(Duration::seconds(1)) + Duration::seconds(1))
            }
            Ok(WorkOutcome::RetryLater { after, error }) => {
                tracing::warn!(request_id = %id, %error, retry_in_seconds = after.num_seconds(), "report attempt failed; will retry");
                Some(after)
            }
            Ok(WorkOutcome::Failed { error }) => {
                // A metric filter on `report_failed` drives the alarm.
                tracing::error!(request_id = %id, %error, report_failed = 1, "report failed for good");
                self.dead_letter(
                    body,
                    &format!(
                        "report failed after {} attempts: {error}",
                        self.settings.max_attempts
                    ),
                )
                .await;
                None
            }
            Err(err) => {
                tracing::warn!(request_id = %id, error = %err, "could not work on the request; will retry");
                Some(self.settings.retry_base)
            }
        }
    }

    /// Generates the report of request `id`, if it is this worker's to make.
    pub async fn work(&self, id: RequestId) -> Result<WorkOutcome, WorkError> {
        let started = self.clock.now();
        let lease = self
            .store
            .acquire_lease(
                id,
                &self.owner,
                RequestState::Collecting,
                started,
                self.settings.lease_ttl,
            )
            .await?;
        let mut request = match lease {
            LeaseOutcome::Acquired(request) => {
                if request.fencing_token == 1 {
                    // The first time a worker takes it: "received by the manager".
                    metrics::emit(
                        Metric::count(names::REQUESTS_RECEIVED, 1).with("Kind", "access"),
                    );
                }
                *request
            }
            LeaseOutcome::Held { until } => return Ok(WorkOutcome::Busy { until }),
            LeaseOutcome::NotWorkable(Some(RequestState::ReportReady)) => {
                // The report was committed but the event may not have gone out: send it
                // (again); it carries the same message id, so receivers drop duplicates.
                if let Some(request) = self.store.get(id).await? {
                    self.announce(&request).await?;
                }
                return Ok(WorkOutcome::NothingToDo(Some(RequestState::ReportReady)));
            }
            LeaseOutcome::NotWorkable(state) => return Ok(WorkOutcome::NothingToDo(state)),
        };
        let token = request.fencing_token;
        let subject_hash = self.hasher.hash(&request.subject);
        tracing::info!(request_id = %id, subject = %subject_hash, token, attempt = request.attempts + 1, "collecting");

        // Whatever earlier attempts left (they died, or lost their lease) goes first.
        let prefix = format!("reports/{id}/");
        let cleaned = self.clean(&prefix).await.map_err(WorkError::Other)?;
        if cleaned > 0 {
            tracing::info!(request_id = %id, cleaned, "removed what an earlier attempt left");
        }

        let key = format!("{prefix}{token}/report.zip");
        let generated = self
            .generate(&request, &key, &subject_hash.to_string())
            .await;
        let now = self.clock.now();
        match generated {
            Ok(summary) => {
                request.report = Some(ReportInfo {
                    key: key.clone(),
                    size: summary.size,
                    sha256: summary.sha256,
                    // Stored with millisecond precision; keep the value identical.
                    expires_at: DateTime::from_timestamp_millis(
                        (now + self.settings.retention).timestamp_millis(),
                    )
                    .unwrap_or(now),
                });
                request.last_error = None;
                request
                    .transition_to(RequestState::ReportReady, now)
                    .map_err(|e| WorkError::Other(e.to_string()))?;
                match self
                    .store
                    .commit_fenced(&request, &subject_hash, token)
                    .await?
                {
                    TransitionOutcome::Applied => {
                        tracing::info!(
                            request_id = %id,
                            report_bytes = request.report.as_ref().map_or(0, |r| r.size),
                            duration_ms = (now - started).num_milliseconds(),
                            "report committed"
                        );
                        metrics::emit(
                            Metric::count(names::REQUESTS_COMPLETED, 1).with("Kind", "access"),
                        );
                        metrics::emit(Metric::bytes(
                            names::REPORT_BYTES,
                            request.report.as_ref().map_or(0, |r| r.size),
                        ));
                        metrics::emit(Metric::seconds(
                            names::REPORT_DURATION,
                            (now - started).num_milliseconds() as f64 / 1000.0,
                        ));
                        self.announce(&request).await?;
                        Ok(WorkOutcome::Completed(
                            request.report.unwrap_or_else(|| unreachable!("set above")),
                        ))
                    }
                    _ => {
                        let _ = self.reports.delete(&key).await;
                        Ok(WorkOutcome::FencedOut)
                    }
                }
            }
            Err(error) => {
                let next = request
                    .fail_attempt(&error, self.settings.max_attempts, now)
                    .map_err(|e| WorkError::Other(e.to_string()))?;
                match self
                    .store
                    .commit_fenced(&request, &subject_hash, token)
                    .await?
                {
                    TransitionOutcome::Applied if next == RequestState::Failed => {
                        metrics::emit(
                            Metric::count(names::REQUESTS_FAILED, 1).with("Kind", "access"),
                        );
                        Ok(WorkOutcome::Failed { error })
                    }
                    TransitionOutcome::Applied => {
                        metrics::emit(Metric::count(names::RETRIES, 1).with("Kind", "access"));
                        Ok(WorkOutcome::RetryLater {
                            after: self.backoff(request.attempts),
                            error,
                        })
                    }
                    _ => Ok(WorkOutcome::FencedOut),
                }
            }
        }
    }

    /// Collects every source, then streams the zip into a multipart upload that only becomes
    /// an object on completion. On any error the upload is aborted: nothing is left.
    async fn generate(
        &self,
        request: &Request,
        key: &str,
        subject_hash: &str,
    ) -> Result<archive::ArchiveSummary, String> {
        std::fs::create_dir_all(&self.settings.staging_dir).map_err(|e| e.to_string())?;
        let staging =
            tempfile::tempdir_in(&self.settings.staging_dir).map_err(|e| e.to_string())?;
        let sources =
            futures::future::try_join_all(self.registry.collectable().map(|(holder, how)| {
                self.collectors
                    .collect(holder, how, &request.subject, staging.path())
            }))
            .await
            .map_err(|e| e.to_string())?;

        let mut upload = self.reports.begin(key).await.map_err(|e| e.to_string())?;
        let generated_at = self
            .clock
            .now()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let header = archive::ReportHeader {
            request_id: &request.id.to_string(),
            subject_hash,
            generated_at: &generated_at,
        };
        match archive::write_report(&mut upload, self.settings.part_size, &header, &sources).await {
            Ok(summary) => match upload.complete().await {
                Ok(()) => Ok(summary),
                Err(err) => {
                    self.clean(&format!("reports/{}/", request.id)).await?;
                    Err(err.to_string())
                }
            },
            Err(err) => {
                let _ = upload.abort().await;
                Err(err.to_string())
            }
        }
    }

    /// Aborts unfinished uploads and deletes objects under `prefix`. Only called while this
    /// worker holds the request's lease, when no committed report can be there.
    async fn clean(&self, prefix: &str) -> Result<usize, String> {
        let mut cleaned = self
            .reports
            .abort_unfinished(prefix)
            .await
            .map_err(|e| e.to_string())?;
        for key in self.reports.list(prefix).await.map_err(|e| e.to_string())? {
            self.reports.delete(&key).await.map_err(|e| e.to_string())?;
            cleaned += 1;
        }
        Ok(cleaned)
    }

    async fn announce(&self, request: &Request) -> Result<(), WorkError> {
        let Some(report) = &request.report else {
            return Ok(());
        };
        let event = DomainEvent::report_ready(
            request.id,
            request.subject.clone(),
            report.expires_at,
            self.clock.now(),
        );
        self.outbox.publish(&event).await.map_err(WorkError::Other)
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2i64.saturating_pow(attempts.saturating_sub(1).min(16));
        // SQS takes visibility timeouts up to 12 hours.
        (self.settings.retry_base * i32::try_from(factor).unwrap_or(i32::MAX))
            .min(Duration::hours(12) - Duration::seconds(1))
    }

    /// Makes a failed message come back after `delay` instead of the queue's default.
    async fn delay(&self, record: &SqsMessage, delay: Duration) {
        let Some(receipt) = record.receipt_handle.as_deref() else {
            return;
        };
        let seconds = i32::try_from(delay.num_seconds().clamp(0, 43_199)).unwrap_or(43_199);
        if let Err(err) = self
            .sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds)
            .send()
            .await
        {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(err), "could not delay the retry; the queue's timeout applies");
        }
    }

    /// Moves a message that can never succeed to the dead-letter queue, with the reason, instead
    /// of letting it be retried `maxReceiveCount` times.
    async fn dead_letter(&self, body: &str, reason: &str) {
        tracing::error!(%reason, "message dead-lettered");
        let sent = self
            .sqs
            .send_message()
            .queue_url(&self.dead_letter_queue_url)
            .message_body(body)
            .message_attributes(
                "reason",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(reason.chars().take(1024).collect::<String>())
                    .build()
                    .expect("data type is set"),
            )
            .send()
            .await;
        if let Err(err) = sent {
            // Not acknowledged then: SQS's redrive moves it after maxReceiveCount tries.
            tracing::error!(error = %aws_sdk_sqs::error::DisplayErrorContext(err), "could not dead-letter the message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_sqs_limit() {
        let base = Duration::seconds(60);
        let delays: Vec<i64> = (1..=4)
            .map(|a| retry_delay(base, a).num_seconds())
            .collect();
        assert_eq!(delays, [60, 120, 240, 480]);
        assert_eq!(retry_delay(base, 40).num_seconds(), 12 * 3600 - 1);
    }

    #[test]
    fn settings_read_the_environment_and_refuse_nonsense() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let settings = ReportSettings::from_lookup(env(&[
            (REPORT_MAX_ATTEMPTS, "5"),
            (REPORT_RETENTION_DAYS, "7"),
        ]))
        .unwrap();
        assert_eq!(
            (settings.max_attempts, settings.retention),
            (5, Duration::days(7))
        );
        assert!(ReportSettings::from_lookup(env(&[(REPORT_PART_SIZE_BYTES, "1024")])).is_err());
        assert!(ReportSettings::from_lookup(env(&[(REPORT_MAX_ATTEMPTS, "0")])).is_err());
        assert!(ReportSettings::from_lookup(env(&[(REPORT_LEASE_SECONDS, "soon")])).is_err());
    }

    #[test]
    fn the_registry_comes_inline_from_a_file_or_bundled() {
        let bundled = load_registry(|_| None).unwrap();
        assert!(bundled.services.is_empty());
        let inline = load_registry(|name| {
            (name == SERVICE_REGISTRY).then(|| "services: [{name: a}]".to_owned())
        })
        .unwrap();
        assert_eq!(inline.services[0].name, "a");
        let missing = load_registry(|name| {
            (name == SERVICE_REGISTRY_FILE).then(|| "/nonexistent/registry.yaml".to_owned())
        });
        assert!(missing.unwrap_err().contains("/nonexistent/registry.yaml"));
        assert!(load_registry(
            |name| (name == SERVICE_REGISTRY).then(|| "services: [{name: A}]".to_owned())
        )
        .is_err());
    }
}
