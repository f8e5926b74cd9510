//! The cloud adapters every function shares, built from its configuration. Each function's
//! `build` (used by its `main.rs` and by the local stack) starts here, so all of them read the
//! same variables, the ones `template.yaml` sets.

use crate::config::{vars, ConfigError, Env};
use crate::dynamodb::DynamoRequestStore;
use crate::sqs::SqsWorkQueue;
use dsr_domain::hops::Allowances;
use dsr_domain::requests::reconcile::ReconcileSettings;
use dsr_domain::{Requests, SubjectHasher, SystemClock};

/// The variables naming a table, queue or bucket that every request-serving function reads;
/// each must be declared in the template (a test holds the template to this list).
pub const REQUEST_RESOURCE_VARIABLES: [&str; 4] = [
    vars::REQUESTS_TABLE,
    vars::HOPS_TABLE,
    vars::ACCESS_REQUESTS_QUEUE_URL,
    vars::ERASURE_REQUESTS_QUEUE_URL,
];

pub type CloudRequests = Requests<DynamoRequestStore, SqsWorkQueue, SystemClock>;

/// The keyed hash that stands for the subject in logs and keys: a secret of at least 16 bytes.
pub fn subject_hasher(env: &Env) -> Result<SubjectHasher, ConfigError> {
    let key = env.secret(vars::SUBJECT_HASH_KEY)?;
    if key.expose().len() < 16 {
        return Err(ConfigError::unusable(
            vars::SUBJECT_HASH_KEY,
            "shorter than 16 bytes",
        ));
    }
    Ok(SubjectHasher::new(key.expose()))
}

/// The requests table, and the hop log the function counts its hops in; `actor` names the
/// function in the audit trail.
pub fn request_store(
    aws: &aws_config::SdkConfig,
    env: &Env,
    actor: &str,
) -> Result<DynamoRequestStore, ConfigError> {
    let client = aws_sdk_dynamodb::Client::new(aws);
    Ok(
        DynamoRequestStore::new(client.clone(), &env.required(vars::REQUESTS_TABLE)?, actor)
            .counting_hops(crate::dynamodb::DynamoHopLog::new(
                client,
                env.required(vars::HOPS_TABLE)?,
            )),
    )
}

/// The work queues.
pub fn work_queue(aws: &aws_config::SdkConfig, env: &Env) -> Result<SqsWorkQueue, ConfigError> {
    Ok(SqsWorkQueue::new(
        aws_sdk_sqs::Client::new(aws),
        env.required(vars::ACCESS_REQUESTS_QUEUE_URL)?,
        env.required(vars::ERASURE_REQUESTS_QUEUE_URL)?,
    ))
}

/// The request use cases (intake, sweep, operators).
pub fn requests(
    aws: &aws_config::SdkConfig,
    env: &Env,
    actor: &str,
) -> Result<CloudRequests, ConfigError> {
    let mut requests = Requests::new(
        request_store(aws, env, actor)?,
        work_queue(aws, env)?,
        SystemClock,
        subject_hasher(env)?,
    );
    let per_day = env.positive(
        vars::ACCESS_REQUESTS_PER_DAY,
        u64::from(requests.limits.access_requests),
    )?;
    requests.limits.access_requests = u32::try_from(per_day)
        .map_err(|_| ConfigError::unusable(vars::ACCESS_REQUESTS_PER_DAY, "too large"))?;
    Ok(requests)
}

/// The erasure use cases as the erasure and confirm functions run them.
#[cfg(feature = "erase")]
pub type CloudErasures = dsr_domain::erasure::Erasures<
    DynamoRequestStore,
    crate::erase::ErasureChannels,
    crate::sqs::SqsCheckScheduler,
    crate::sqs::SqsOutbox,
    SystemClock,
    crate::s3::S3ReportStore,
>;

/// The erasure use cases; `actor` names the function in leases and the audit trail. Third
/// parties' API tokens are read as secrets.
#[cfg(feature = "erase")]
pub fn erasures(
    aws: &aws_config::SdkConfig,
    env: &Env,
    actor: &str,
) -> Result<CloudErasures, ConfigError> {
    use dsr_domain::erasure::ErasureSettings;
    let sqs = aws_sdk_sqs::Client::new(aws);
    let outbound = env.required(vars::OUTBOUND_QUEUE_URL)?;
    let commands = env.required(vars::COMMANDS_EXCHANGE)?;
    let defaults = ErasureSettings::default();
    let registry = crate::registry::load_erasable(env)?;
    let mut channel = crate::erase::ErasureChannels::new(
        sqs.clone(),
        outbound.clone(),
        commands.clone(),
        env.clone(),
    )
    // Third parties' rate limits hold across every instance of both functions.
    .with_shared_pace(crate::dynamodb::DynamoVendorPace::new(
        aws_sdk_dynamodb::Client::new(aws),
        env.required(vars::REQUESTS_TABLE)?,
    ));
    let batches = registry.erasable().any(|(_, how)| {
        matches!(
            how.via,
            dsr_domain::registry::ErasureRoute::Http { batch: Some(_), .. }
        )
    });
    if batches {
        channel = channel.with_vendor_queue(env.required(vars::VENDOR_ERASURES_QUEUE_URL)?);
    }
    Ok(dsr_domain::erasure::Erasures {
        store: request_store(aws, env, actor)?,
        channel,
        checks: crate::sqs::SqsCheckScheduler::new(
            sqs.clone(),
            env.required(vars::SCHEDULE_REQUESTS_QUEUE_URL)?,
            env.required(vars::CONFIRMATIONS_QUEUE_URL)?,
            env.required(vars::ACCESS_REQUESTS_QUEUE_URL)?,
        ),
        events: crate::sqs::SqsOutbox::new(sqs, outbound, commands),
        reports: crate::s3::S3ReportStore::new(
            crate::s3::client(aws),
            env.required(vars::REPORTS_BUCKET)?,
        ),
        clock: SystemClock,
        registry,
        hasher: subject_hasher(env)?,
        settings: ErasureSettings {
            grace: env.seconds(vars::ERASURE_GRACE_SECONDS, defaults.grace)?,
        },
        identities: std::sync::Arc::new(crate::identity::IdentityLookups {
            dynamodb: aws_sdk_dynamodb::Client::new(aws),
            http: crate::http::Client::default(),
            secrets: env.clone(),
        }),
        worker: dsr_domain::lease::Worker {
            owner: format!("{actor}-{}", ulid::Ulid::new()),
            lease_ttl: env
                .seconds(
                    vars::ERASURE_LEASE_SECONDS,
                    dsr_domain::erasure::DEFAULT_FAN_OUT_LEASE,
                )?
                .max(chrono::Duration::seconds(1)),
        },
    })
}

/// The reconciliation's settings (the sweep's schedule and `dsr-ops`), defaults for anything
/// unset.
pub fn reconcile_settings(env: &Env) -> Result<ReconcileSettings, ConfigError> {
    let defaults = ReconcileSettings::default();
    let allow = defaults.allowances;
    Ok(ReconcileSettings {
        warning: env.days(vars::DEADLINE_WARNING_DAYS, defaults.warning)?,
        working_stuck_after: env
            .seconds(vars::STUCK_AFTER_SECONDS, defaults.working_stuck_after)?,
        allowances: Allowances {
            in_flight: env.seconds(vars::HOP_IN_FLIGHT_SECONDS, allow.in_flight)?,
            report: env.seconds(vars::HOP_REPORT_SECONDS, allow.report)?,
            answer: env.seconds(vars::HOP_ANSWER_SECONDS, allow.answer)?,
            grace: env.seconds(vars::ERASURE_GRACE_SECONDS, allow.grace)?,
        },
        windows: u32::try_from(env.positive(vars::HOP_WINDOWS, u64::from(defaults.windows))?)
            .map_err(|e| ConfigError::unusable(vars::HOP_WINDOWS, e))?,
        ..defaults
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_hash_key_is_a_secret_of_16_bytes_at_least() {
        let short = Env::from_pairs([(vars::SUBJECT_HASH_KEY, "short")]);
        assert!(subject_hasher(&short)
            .unwrap_err()
            .to_string()
            .contains("SUBJECT_HASH_KEY: shorter than 16 bytes"));
        assert!(matches!(
            subject_hasher(&Env::default()),
            Err(ConfigError::Missing { .. })
        ));
        let ok = Env::from_pairs([(vars::SUBJECT_HASH_KEY, "sixteen-byte-key")]);
        assert!(subject_hasher(&ok).is_ok());
    }

    #[cfg(feature = "erase")]
    #[tokio::test]
    async fn erasure_settings_default_to_72_hours_of_grace_and_refuse_nonsense() {
        let aws = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let env = Env::from_pairs([
            (vars::REQUESTS_TABLE, "t"),
            (vars::HOPS_TABLE, "h"),
            (vars::OUTBOUND_QUEUE_URL, "o"),
            (vars::COMMANDS_EXCHANGE, "c"),
            (vars::SCHEDULE_REQUESTS_QUEUE_URL, "s"),
            (vars::CONFIRMATIONS_QUEUE_URL, "q"),
            (vars::ACCESS_REQUESTS_QUEUE_URL, "q"),
            (vars::SUBJECT_HASH_KEY, "sixteen-byte-key"),
            (vars::REPORTS_BUCKET, "reports"),
            (
                vars::SERVICE_REGISTRY,
                "services: [{name: p, broker_user: p, erase: {via: {kind: rabbitmq, routing_key: k}}}]",
            ),
        ]);
        let erasures = super::erasures(&aws, &env, "test").unwrap();
        assert_eq!(erasures.settings.grace, chrono::Duration::hours(72));
        let two = super::erasures(&aws, &env.with(vars::ERASURE_GRACE_SECONDS, "2"), "t").unwrap();
        assert_eq!(two.settings.grace, chrono::Duration::seconds(2));
        let Err(bad) = super::erasures(&aws, &env.with(vars::ERASURE_GRACE_SECONDS, "soon"), "t")
        else {
            panic!("a grace of `soon` was taken");
        };
        assert!(bad.to_string().contains("ERASURE_GRACE_SECONDS"));
    }
}
