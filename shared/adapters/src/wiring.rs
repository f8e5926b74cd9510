//! Builds the request desk from configuration. Every function that serves requests (intake,
//! sweep, the local runner) wires it here, so they read the same environment variables, the
//! ones `template.yaml` sets.

use crate::dynamodb::DynamoRequestStore;
use crate::sqs::SqsWorkQueue;
use dsr_domain::{RequestDesk, SubjectHasher, SystemClock};

pub const REQUESTS_TABLE: &str = "REQUESTS_TABLE";
pub const ACCESS_REQUESTS_QUEUE_URL: &str = "ACCESS_REQUESTS_QUEUE_URL";
pub const ERASURE_REQUESTS_QUEUE_URL: &str = "ERASURE_REQUESTS_QUEUE_URL";
pub const SUBJECT_HASH_KEY: &str = "SUBJECT_HASH_KEY";
pub const REPORTS_BUCKET: &str = "REPORTS_BUCKET";
pub const OUTBOUND_QUEUE_URL: &str = "OUTBOUND_QUEUE_URL";
pub const ACCESS_REQUESTS_DLQ_URL: &str = "ACCESS_REQUESTS_DLQ_URL";

/// The variables the desk reads that name a table, queue or bucket; each must be declared in
/// the template (a test holds the template to this list).
pub const DESK_RESOURCE_VARIABLES: [&str; 3] = [
    REQUESTS_TABLE,
    ACCESS_REQUESTS_QUEUE_URL,
    ERASURE_REQUESTS_QUEUE_URL,
];

pub type CloudDesk = RequestDesk<DynamoRequestStore, SqsWorkQueue, SystemClock>;

#[derive(Debug, thiserror::Error)]
#[error("configuration variable {name} is {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: &'static str,
}

#[derive(Clone, Debug)]
pub struct DeskConfig {
    pub requests_table: String,
    pub access_queue_url: String,
    pub erasure_queue_url: String,
    pub subject_hash_key: String,
    /// `request_submitted` events go here when set.
    pub outbound_queue_url: Option<String>,
}

impl DeskConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup`, so the local runner can hand each function the
    /// environment the template gives it without touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str| -> Result<String, ConfigError> {
            match lookup(name) {
                Some(value) if !value.trim().is_empty() => Ok(value),
                Some(_) => Err(ConfigError {
                    name,
                    problem: "empty",
                }),
                None => Err(ConfigError {
                    name,
                    problem: "not set",
                }),
            }
        };
        let config = Self {
            requests_table: get(REQUESTS_TABLE)?,
            access_queue_url: get(ACCESS_REQUESTS_QUEUE_URL)?,
            erasure_queue_url: get(ERASURE_REQUESTS_QUEUE_URL)?,
            subject_hash_key: get(SUBJECT_HASH_KEY)?,
            outbound_queue_url: lookup(OUTBOUND_QUEUE_URL).filter(|u| !u.trim().is_empty()),
        };
        if config.subject_hash_key.len() < 16 {
            return Err(ConfigError {
                name: SUBJECT_HASH_KEY,
                problem: "shorter than 16 bytes",
            });
        }
        Ok(config)
    }

    /// `actor` names the function in the audit trail.
    pub fn desk(&self, aws: &aws_config::SdkConfig, actor: &str) -> CloudDesk {
        RequestDesk::new(
            DynamoRequestStore::new(
                aws_sdk_dynamodb::Client::new(aws),
                &self.requests_table,
                actor,
            ),
            SqsWorkQueue::new(
                aws_sdk_sqs::Client::new(aws),
                &self.access_queue_url,
                &self.erasure_queue_url,
            )
            .announcing_to(self.outbound_queue_url.clone()),
            SystemClock,
            SubjectHasher::new(&self.subject_hash_key),
        )
    }
}

/// Loads the AWS configuration the standard way: region, credentials and `AWS_ENDPOINT_URL`
/// from the environment, so the same binary talks to AWS, LocalStack or moto.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}
