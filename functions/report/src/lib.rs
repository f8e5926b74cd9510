//! The report function: turns a `received` access request into a downloadable report holding
//! everything the registered sources know about the subject (SQS `access-requests`); and, on
//! the same queue, reads every erased holder of an erasure again to verify it.
//!
//! The use case (lease, collect, assemble, commit or hand back, announce) is
//! `dsr_domain::report`; this crate translates queue messages into it and wires the cloud
//! adapters, for Lambda (`main.rs`) and the local stack alike.

use chrono::Duration;
use dsr_adapters::batch::{Outcome, QueueDriver, RecordHandler};
use dsr_adapters::collect::Collectors;
use dsr_adapters::config::{vars, ConfigError, Env};
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_adapters::s3::{self, S3ReportStore};
use dsr_adapters::sqs::{SqsCollectionResumes, SqsOutbox, SqsVerificationResults};
use dsr_domain::lease::Worker;
use dsr_domain::messages::Origin;
use dsr_domain::ports::{EventOutbox, RequestStore};
use dsr_domain::registry::RetryPolicy;
use dsr_domain::report::export::Refusal;
use dsr_domain::report::verify::{
    ErasureVerifications, ReportWork, Verification, VerificationResults,
};
use dsr_domain::report::{
    AccessReports, CollectionResumes, ReportSettings, ReportSources, ReportStore, WorkOutcome,
};
use dsr_domain::report::{Answered, ReportError};
use dsr_domain::{Clock, RequestId, RequestKind, SystemClock};

pub type CloudReports = AccessReports<
    DynamoRequestStore,
    Collectors,
    S3ReportStore,
    SqsOutbox,
    SystemClock,
    SqsCollectionResumes,
>;
pub type CloudVerifications =
    ErasureVerifications<DynamoRequestStore, Collectors, SqsVerificationResults, SystemClock>;

/// The function as Lambda runs it.
pub type Handler = QueueDriver<AccessRequestHandler<CloudReports, CloudVerifications>>;

/// Builds the function from its configuration: the same wiring in Lambda and the local stack.
pub fn build(aws: &aws_config::SdkConfig, env: &Env) -> Result<Handler, ConfigError> {
    let sources = Collectors::new(
        aws_sdk_dynamodb::Client::new(aws),
        s3::client(aws),
        env.clone(),
    )
    .with_rabbit_exports(dsr_adapters::collect_rabbitmq::RabbitExports {
        sqs: aws_sdk_sqs::Client::new(aws),
        s3: s3::client(aws),
        outbound_queue_url: env.required(vars::OUTBOUND_QUEUE_URL)?,
        commands_exchange: env.required(vars::COMMANDS_EXCHANGE)?,
        bucket: env.required(vars::REPORTS_BUCKET)?,
    });
    let settings = settings(env)?;
    let registry = dsr_adapters::registry::load_collectable(env)?;
    let store = dsr_adapters::wiring::request_store(aws, env, "report")?;
    let verifications = ErasureVerifications {
        store: store.clone(),
        sources: sources.clone(),
        results: SqsVerificationResults::new(
            aws_sdk_sqs::Client::new(aws),
            env.required(vars::CONFIRMATIONS_QUEUE_URL)?,
        ),
        clock: SystemClock,
        registry: registry.clone(),
        staging_dir: settings.staging_dir.clone(),
    };
    let reports = AccessReports {
        store,
        sources,
        reports: S3ReportStore::new(s3::client(aws), env.required(vars::REPORTS_BUCKET)?),
        events: SqsOutbox::new(
            aws_sdk_sqs::Client::new(aws),
            env.required(vars::OUTBOUND_QUEUE_URL)?,
            env.required(vars::COMMANDS_EXCHANGE)?,
        ),
        clock: SystemClock,
        resumes: SqsCollectionResumes::new(
            aws_sdk_sqs::Client::new(aws),
            env.required(vars::SCHEDULE_REQUESTS_QUEUE_URL)?,
            env.required(vars::ACCESS_REQUESTS_QUEUE_URL)?,
        ),
        hasher: dsr_adapters::wiring::subject_hasher(env)?,
        identities: std::sync::Arc::new(dsr_adapters::identity::IdentityLookups {
            dynamodb: aws_sdk_dynamodb::Client::new(aws),
            http: dsr_adapters::http::Client::default(),
            secrets: env.clone(),
        }),
        registry,
        settings,
        worker: Worker {
            owner: format!("report-{}", ulid::Ulid::new()),
            lease_ttl: env.seconds(vars::REPORT_LEASE_SECONDS, Duration::seconds(960))?,
        },
    };
    let handler = AccessRequestHandler {
        reports,
        verifications,
    };
    QueueDriver::from_env("report", handler, aws, env, vars::ACCESS_REQUESTS_QUEUE_URL)
}

/// The report settings a function was configured with; defaults for anything unset.
pub fn settings(env: &Env) -> Result<ReportSettings, ConfigError> {
    let defaults = ReportSettings::default();
    let part_size = env.positive(vars::REPORT_PART_SIZE_BYTES, defaults.part_size as u64)?;
    if part_size < 5 * 1024 * 1024 {
        return Err(ConfigError::unusable(
            vars::REPORT_PART_SIZE_BYTES,
            "must be at least 5 MiB (S3's smallest part)",
        ));
    }
    let retry = &defaults.source_retry;
    let max_attempts = env.positive(vars::REPORT_MAX_ATTEMPTS, retry.attempts.into())?;
    let retry_base = env.seconds(vars::REPORT_RETRY_BASE_SECONDS, defaults.retry_base)?;
    let max_backoff = env.positive(vars::REPORT_MAX_BACKOFF_SECONDS, retry.max_backoff_seconds)?;
    let budget = env.positive(
        vars::REPORT_TIME_BUDGET_SECONDS,
        defaults.time_budget.as_secs(),
    )?;
    if budget > 840 {
        return Err(ConfigError::unusable(
            vars::REPORT_TIME_BUDGET_SECONDS,
            "must leave a minute of the function's 15 for staging and assembly (at most 840)",
        ));
    }
    Ok(ReportSettings {
        source_retry: RetryPolicy {
            attempts: u32::try_from(max_attempts)
                .map_err(|e| ConfigError::unusable(vars::REPORT_MAX_ATTEMPTS, e))?,
            backoff_seconds: retry_base.num_seconds().max(1) as u64,
            max_backoff_seconds: max_backoff.max(retry_base.num_seconds().max(1) as u64),
        },
        retention: env.days(vars::REPORT_RETENTION_DAYS, defaults.retention)?,
        part_size: usize::try_from(part_size)
            .map_err(|e| ConfigError::unusable(vars::REPORT_PART_SIZE_BYTES, e))?,
        retry_base,
        time_budget: std::time::Duration::from_secs(budget),
        deadline_margin: defaults.deadline_margin,
        stage_after: env
            .seconds(
                vars::REPORT_STAGE_AFTER_SECONDS,
                Duration::from_std(defaults.stage_after).unwrap_or_default(),
            )?
            .to_std()
            .unwrap_or_default(),
        staging_dir: env
            .optional(vars::REPORT_STAGING_DIR)
            .map_or(defaults.staging_dir, Into::into),
    })
}

/// One message of `access-requests`: one request to make the report of, or one erasure to
/// verify.
pub struct AccessRequestHandler<R, V> {
    pub reports: R,
    pub verifications: V,
}

impl<S, R, T, E, C, W, V> RecordHandler
    for AccessRequestHandler<AccessReports<S, R, T, E, C, W>, ErasureVerifications<S, R, V, C>>
where
    S: RequestStore,
    R: ReportSources,
    T: ReportStore,
    E: EventOutbox,
    C: Clock,
    W: CollectionResumes,
    V: VerificationResults,
{
    type Message = ReportWork;

    async fn handle(&self, message: ReportWork, origin: &Origin) -> Outcome {
        match message {
            ReportWork::Access(message) => {
                if message.kind != RequestKind::Access {
                    return Outcome::Reject(format!(
                        "a request of kind `{}` on the access-requests queue",
                        message.kind
                    ));
                }
                let id = message.request_id;
                let outcome = self.reports.generate(id).await;
                self.report(id, outcome)
            }
            ReportWork::Answer(answer) => {
                let id = answer.request_id;
                match self.reports.answered(&answer, origin).await {
                    Ok(Answered::Refused(Refusal::Invalid(why))) => Outcome::Reject(why),
                    Ok(Answered::Refused(Refusal::Stale(why))) => {
                        tracing::info!(request_id = %id, source = %answer.service, %why, "export answer not needed");
                        Outcome::Done
                    }
                    Ok(Answered::Worked(outcome)) => self.report(id, Ok(outcome)),
                    Err(err) => self.report(id, Err(err)),
                }
            }
            ReportWork::Verify(_) if *origin != Origin::Internal => Outcome::Reject(format!(
                "an erasure verification from {origin}; only the service asks for them"
            )),
            ReportWork::Verify(ask) => {
                let id = ask.request_id;
                // What was read is logged by the use case; a late ask changes nothing.
                match self.verifications.verify(&ask).await {
                    Ok(Verification::NothingToDo(None)) => {
                        Outcome::Reject(format!("unknown request {id}"))
                    }
                    Ok(_) => Outcome::Done,
                    Err(err) => {
                        // A holder that cannot be read now is not a holder found empty.
                        tracing::warn!(request_id = %id, error = %err, "could not verify the erasure; will retry");
                        Outcome::Retry(Some(seconds(self.reports.settings.retry_base)))
                    }
                }
            }
        }
    }
}

impl<S, R, T, E, C, W, V> AccessRequestHandler<AccessReports<S, R, T, E, C, W>, V>
where
    S: RequestStore,
    R: ReportSources,
    T: ReportStore,
    E: EventOutbox,
    C: Clock,
    W: CollectionResumes,
{
    /// What the queue does with the message after the request was worked on.
    fn report(&self, id: RequestId, outcome: Result<WorkOutcome, ReportError>) -> Outcome {
        let reports = &self.reports;
        match outcome {
            Ok(WorkOutcome::Completed(report)) => {
                tracing::info!(request_id = %id, report_size = report.size, "report ready");
                Outcome::Done
            }
            Ok(WorkOutcome::NothingToDo(None)) => {
                // Requests are never deleted (only their subject id, after retention): a work
                // message for one that does not exist was not sent by the intake.
                Outcome::Reject(format!("unknown request {id}"))
            }
            Ok(WorkOutcome::NothingToDo(state)) => {
                tracing::info!(request_id = %id, state = ?state, "nothing to do for this message");
                Outcome::Done
            }
            Ok(WorkOutcome::FencedOut) => {
                tracing::warn!(request_id = %id, "lease lost to another worker; this attempt's work discarded");
                Outcome::Done
            }
            Ok(WorkOutcome::Busy { until }) => Outcome::after_lease(until - reports.clock.now()),
            // Handed on through delayed dispatch: this message is done.
            Ok(WorkOutcome::Waiting { .. }) => Outcome::Done,
            Ok(WorkOutcome::RetryLater { after, error }) => {
                tracing::warn!(request_id = %id, %error, retry_in_seconds = after.num_seconds(), "report attempt failed; will retry");
                Outcome::Retry(Some(seconds(after)))
            }
            Ok(WorkOutcome::Failed { error }) => {
                // A metric filter on `report_failed` drives the alarm.
                tracing::error!(request_id = %id, %error, report_failed = 1, "report failed for good");
                Outcome::Reject(format!("report failed: {error}"))
            }
            Err(err) => {
                tracing::warn!(request_id = %id, error = %err, "could not work on the request; will retry");
                Outcome::Retry(Some(seconds(reports.settings.retry_base)))
            }
        }
    }
}

fn seconds(delay: Duration) -> std::time::Duration {
    delay.to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_the_environment_and_refuse_nonsense() {
        let env = |pairs: &[(&str, &str)]| Env::from_pairs(pairs.iter().copied());
        let settings = settings(&env(&[
            (vars::REPORT_MAX_ATTEMPTS, "5"),
            (vars::REPORT_RETENTION_DAYS, "7"),
        ]))
        .unwrap();
        assert_eq!(
            (settings.source_retry.attempts, settings.retention),
            (5, Duration::days(7))
        );
        assert!(super::settings(&env(&[(vars::REPORT_TIME_BUDGET_SECONDS, "900")])).is_err());
        assert!(super::settings(&env(&[(vars::REPORT_PART_SIZE_BYTES, "1024")])).is_err());
        assert!(super::settings(&env(&[(vars::REPORT_MAX_ATTEMPTS, "0")])).is_err());
        assert!(super::settings(&env(&[(vars::REPORT_RETRY_BASE_SECONDS, "soon")])).is_err());
    }
}

#[cfg(test)]
mod use_cases;
