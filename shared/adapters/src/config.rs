//! Configuration: the names of every environment variable the functions read ([`vars`]), and
//! one typed reader over them ([`Env`]) with one error type ([`ConfigError`]).
//!
//! Every function reads its settings through an [`Env`] built once at cold start: in Lambda
//! from the process environment, in the local stack from the environment `template.yaml` gives
//! that function. Secrets go through [`Env::secret`] only, so moving them to a secret store is a
//! change in this one file.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Every environment variable a function reads. `template.yaml` sets them; a test holds the
/// template to the ones that name resources.
pub mod vars {
    // Requests: the table, the work queues and the subject hash.
    pub const REQUESTS_TABLE: &str = "REQUESTS_TABLE";
    pub const ACCESS_REQUESTS_QUEUE_URL: &str = "ACCESS_REQUESTS_QUEUE_URL";
    pub const ERASURE_REQUESTS_QUEUE_URL: &str = "ERASURE_REQUESTS_QUEUE_URL";
    pub const SUBJECT_HASH_KEY: &str = "SUBJECT_HASH_KEY";
    /// The Ed25519 key (PKCS#8 PEM) certificates of erasure are signed with; a secret.
    pub const CERTIFICATE_SIGNING_KEY: &str = "CERTIFICATE_SIGNING_KEY";
    pub const OUTBOUND_QUEUE_URL: &str = "OUTBOUND_QUEUE_URL";
    /// The hop log: where each function counts the hops it takes (docs/operations.md).
    pub const HOPS_TABLE: &str = "HOPS_TABLE";
    /// The dead-letter queue of the queue a function consumes: poison messages go there with
    /// their reason.
    pub const DEAD_LETTER_QUEUE_URL: &str = "DEAD_LETTER_QUEUE_URL";

    // Intake.
    pub const REPORTS_BUCKET: &str = "REPORTS_BUCKET";
    /// Access requests one subject may start per 24 hours (default 5).
    pub const ACCESS_REQUESTS_PER_DAY: &str = "ACCESS_REQUESTS_PER_DAY";
    pub const REPORT_URL_TTL_SECONDS: &str = "REPORT_URL_TTL_SECONDS";

    // Sweep and reconciliation.
    pub const SWEEP_STALE_AFTER_SECONDS: &str = "SWEEP_STALE_AFTER_SECONDS";
    pub const SWEEP_UNQUEUED_GRACE_SECONDS: &str = "SWEEP_UNQUEUED_GRACE_SECONDS";
    pub const DEADLINE_WARNING_DAYS: &str = "DEADLINE_WARNING_DAYS";
    pub const STUCK_AFTER_SECONDS: &str = "STUCK_AFTER_SECONDS";
    /// How long a message between two components may take before its absence is a loss
    /// (default 900 seconds); the reconciliation's other allowances follow.
    pub const HOP_IN_FLIGHT_SECONDS: &str = "HOP_IN_FLIGHT_SECONDS";
    /// From receipt to a committed report (default 3600 seconds).
    pub const HOP_REPORT_SECONDS: &str = "HOP_REPORT_SECONDS";
    /// From a command to the service's answer or escalation (default 7 days).
    pub const HOP_ANSWER_SECONDS: &str = "HOP_ANSWER_SECONDS";
    /// Hourly windows the reconciliation compares (default 72).
    pub const HOP_WINDOWS: &str = "HOP_WINDOWS";

    // Reports.
    pub const REPORT_MAX_ATTEMPTS: &str = "REPORT_MAX_ATTEMPTS";
    pub const REPORT_LEASE_SECONDS: &str = "REPORT_LEASE_SECONDS";
    pub const REPORT_RETENTION_DAYS: &str = "REPORT_RETENTION_DAYS";
    /// Days a finished request keeps the raw subject id; then only its keyed hash (default 90).
    pub const REQUEST_RETENTION_DAYS: &str = "REQUEST_RETENTION_DAYS";
    pub const REPORT_PART_SIZE_BYTES: &str = "REPORT_PART_SIZE_BYTES";
    /// A source's first retry (default 60 s; doubling up to REPORT_MAX_BACKOFF_SECONDS), and
    /// the first retry after a failure of the service's own storage.
    pub const REPORT_RETRY_BASE_SECONDS: &str = "REPORT_RETRY_BASE_SECONDS";
    /// The longest wait between a source's attempts (default 6 hours).
    pub const REPORT_MAX_BACKOFF_SECONDS: &str = "REPORT_MAX_BACKOFF_SECONDS";
    /// How long one invocation collects before it hands the rest on (default 600 seconds).
    pub const REPORT_TIME_BUDGET_SECONDS: &str = "REPORT_TIME_BUDGET_SECONDS";
    /// Sources collected in an invocation's first this long stay on local disk; a report whose
    /// sources all answer within it is made without staging them (default 5 seconds).
    pub const REPORT_STAGE_AFTER_SECONDS: &str = "REPORT_STAGE_AFTER_SECONDS";
    /// Where sources are staged before the zip is written (defaults to the temp dir).
    pub const REPORT_STAGING_DIR: &str = "REPORT_STAGING_DIR";

    // The service registry: inline (YAML or JSON), or a file; else the bundled one.
    pub const SERVICE_REGISTRY: &str = "SERVICE_REGISTRY";
    pub const SERVICE_REGISTRY_FILE: &str = "SERVICE_REGISTRY_FILE";

    // Erasure and confirmation.
    pub const COMMANDS_EXCHANGE: &str = "COMMANDS_EXCHANGE";
    pub const CONFIRMATIONS_QUEUE_URL: &str = "CONFIRMATIONS_QUEUE_URL";
    pub const SCHEDULE_REQUESTS_QUEUE_URL: &str = "SCHEDULE_REQUESTS_QUEUE_URL";
    pub const ERASURE_GRACE_SECONDS: &str = "ERASURE_GRACE_SECONDS";
    pub const ERASURE_LEASE_SECONDS: &str = "ERASURE_LEASE_SECONDS";
    /// Where commands to vendors that take batches wait for their call (required when the
    /// registry has one).
    pub const VENDOR_ERASURES_QUEUE_URL: &str = "VENDOR_ERASURES_QUEUE_URL";
    /// Where the erasure function dead-letters a vendor command that can never be sent.
    pub const VENDOR_ERASURES_DEAD_LETTER_QUEUE_URL: &str = "VENDOR_ERASURES_DEAD_LETTER_QUEUE_URL";

    // Delayed dispatch.
    pub const DELAYED_MESSAGES_TABLE: &str = "DELAYED_MESSAGES_TABLE";
    pub const SCHEDULE_GROUP: &str = "SCHEDULE_GROUP";
    pub const DISPATCH_TARGET_ARN: &str = "DISPATCH_TARGET_ARN";
    pub const SCHEDULER_ROLE_ARN: &str = "SCHEDULER_ROLE_ARN";
    pub const SCHEDULER_DLQ_ARN: &str = "SCHEDULER_DLQ_ARN";
    /// Platform services allowed to use delayed dispatch (YAML, see the template's parameter).
    pub const DELAYED_DISPATCH_CALLERS: &str = "DELAYED_DISPATCH_CALLERS";

    // Requests from other internal systems (`submit_request` over RabbitMQ).
    /// Where the bridge forwards them, and the submissions function takes them from.
    pub const SUBMISSIONS_QUEUE_URL: &str = "SUBMISSIONS_QUEUE_URL";
    /// The broker users whose `submit_request`s are taken (comma separated; empty: none).
    pub const REQUEST_SUBMITTERS: &str = "REQUEST_SUBMITTERS";

    // The RabbitMQ bridge.
    pub const RABBITMQ_URL: &str = "RABBITMQ_URL";
    pub const RABBITMQ_NAMESPACE: &str = "RABBITMQ_NAMESPACE";
    pub const EVENTS_EXCHANGE: &str = "EVENTS_EXCHANGE";

    // Operations.
    pub const METRICS_NAMESPACE: &str = "METRICS_NAMESPACE";
    pub const DSR_LOG_FORMAT: &str = "DSR_LOG_FORMAT";
}

/// Why a function cannot start with the configuration it was given. It names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration variable {name} is not set")]
    Missing { name: String },
    #[error("configuration variable {name} is empty")]
    Empty { name: String },
    #[error("configuration variable {name} must be {expected}, not `{value}`")]
    Invalid {
        name: String,
        value: String,
        expected: &'static str,
    },
    /// Read, but unusable (a key too short, a registry that does not validate).
    #[error("configuration variable {name}: {reason}")]
    Unusable { name: String, reason: String },
}

impl ConfigError {
    pub fn unusable(name: &str, reason: impl fmt::Display) -> Self {
        ConfigError::Unusable {
            name: name.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A secret read from configuration: never printed by `Debug`, so it cannot reach a log line
/// by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The variables a function was given, read once.
#[derive(Clone, Default)]
pub struct Env {
    values: Arc<BTreeMap<String, String>>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be secrets: only the names.
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl Env {
    /// The process environment: what Lambda gives a function.
    pub fn from_process() -> Self {
        Self::from_pairs(std::env::vars())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            values: Arc::new(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// This environment with `name` set to `value` (the local stack's overrides).
    pub fn with(&self, name: &str, value: impl Into<String>) -> Self {
        let mut values = (*self.values).clone();
        values.insert(name.to_owned(), value.into());
        Self {
            values: Arc::new(values),
        }
    }

    /// This environment with `other`'s values on top.
    pub fn overlaid_with(&self, other: &Env) -> Self {
        let mut values = (*self.values).clone();
        values.extend(other.values.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self {
            values: Arc::new(values),
        }
    }

    /// The value, if set and not blank.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.values
            .get(name)
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }

    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        match self.values.get(name) {
            Some(value) if !value.trim().is_empty() => Ok(value.clone()),
            Some(_) => Err(ConfigError::Empty {
                name: name.to_owned(),
            }),
            None => Err(ConfigError::Missing {
                name: name.to_owned(),
            }),
        }
    }

    /// A whole number of seconds (0 allowed), or `default` when unset.
    pub fn seconds(
        &self,
        name: &str,
        default: chrono::Duration,
    ) -> Result<chrono::Duration, ConfigError> {
        self.parsed(name, "a whole number of seconds", |raw| {
            raw.parse::<u32>()
                .ok()
                .map(|s| chrono::Duration::seconds(s.into()))
        })
        .map(|v| v.unwrap_or(default))
    }

    /// A whole number of days (0 allowed), or `default` when unset.
    pub fn days(
        &self,
        name: &str,
        default: chrono::Duration,
    ) -> Result<chrono::Duration, ConfigError> {
        self.parsed(name, "a whole number of days", |raw| {
            raw.parse::<u16>()
                .ok()
                .map(|d| chrono::Duration::days(d.into()))
        })
        .map(|v| v.unwrap_or(default))
    }

    /// A whole number of at least 1, or `default` when unset.
    pub fn positive(&self, name: &str, default: u64) -> Result<u64, ConfigError> {
        self.parsed(name, "a positive whole number", |raw| {
            raw.parse::<u64>().ok().filter(|n| *n > 0)
        })
        .map(|v| v.unwrap_or(default))
    }

    /// A secret. Today from the environment; the one place to change for a secret store.
    pub fn secret(&self, name: &str) -> Result<Secret, ConfigError> {
        self.required(name).map(Secret)
    }

    /// A secret that may be absent (a vendor's API key that is not configured here).
    pub fn optional_secret(&self, name: &str) -> Option<Secret> {
        self.optional(name).map(Secret)
    }

    fn parsed<T>(
        &self,
        name: &str,
        expected: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(raw) = self.optional(name) else {
            return Ok(None);
        };
        parse(raw.trim())
            .map(Some)
            .ok_or_else(|| ConfigError::Invalid {
                name: name.to_owned(),
                value: raw.chars().take(64).collect(),
                expected,
            })
    }
}

#[cfg(feature = "aws")]
pub use sdk::{
    aws, aws_endpoints_client, aws_in_lambda, https_client, AWS_ROOTS_PEM, CONNECT_TIMEOUT,
    JSON_ATTEMPT_TIMEOUT,
};

/// How the AWS SDK's clients are configured: only with one of the SDK features.
#[cfg(feature = "aws")]
mod sdk {
    /// Loads the AWS configuration the standard way: region, credentials and `AWS_ENDPOINT_URL`
    /// from the environment, so the same binary talks to AWS, LocalStack or moto.
    pub async fn aws() -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(https_client())
            .load()
            .await
    }

    /// The SDK's HTTP client (hyper, rustls) with ring as rustls's crypto: the one TLS stack of
    /// every binary (see the workspace's Cargo.toml), trusting the system's roots.
    #[cfg(not(feature = "reqwest-client"))]
    pub fn https_client() -> aws_types::sdk_config::SharedHttpClient {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https()
    }

    /// The SDK's calls over reqwest (rustls, ring), trusting the system's roots.
    #[cfg(feature = "reqwest-client")]
    pub fn https_client() -> aws_types::sdk_config::SharedHttpClient {
        crate::sdk_http::sdk_client(
            sdk_reqwest()
                .build()
                .expect("an HTTP client with the system's trust roots"),
        )
    }

    /// How the SDK's calls go over reqwest: never redirected (the SDK handles what AWS answers),
    /// connecting within the SDK's own connect timeout, and no read waiting longer than
    /// [`READ_TIMEOUT`]: a connection that stops answering fails the attempt (the SDK tries
    /// again) instead of holding a worker, and its lease, for good. Bodies of any size stream.
    #[cfg(feature = "reqwest-client")]
    fn sdk_reqwest() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
    }

    /// The longest one read of an answer may wait (SQS's long polls wait 20 s).
    #[cfg(feature = "reqwest-client")]
    pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

    /// The roots AWS's endpoints chain to (Amazon Root CA 1–4, and Starfield Services Root G2
    /// that cross-signs them), built into the binary.
    pub const AWS_ROOTS_PEM: &str = include_str!("../certs/aws-roots.pem");

    /// The SDK's HTTP client for AWS's own endpoints: it trusts only [`AWS_ROOTS_PEM`]. The
    /// system's store is a file and a directory of a few hundred certificates, read and parsed
    /// when the first client is built, at every cold start: half of a function's init CPU (a
    /// profile of the intake's); five roots built in are read from memory, and the SDK's
    /// traffic trusts no one else.
    #[cfg(feature = "reqwest-client")]
    pub fn aws_endpoints_client() -> aws_types::sdk_config::SharedHttpClient {
        let mut builder = sdk_reqwest().tls_built_in_root_certs(false);
        for root in reqwest::Certificate::from_pem_bundle(AWS_ROOTS_PEM.as_bytes())
            .expect("the built-in roots are valid PEM (a unit test parses them)")
        {
            builder = builder.add_root_certificate(root);
        }
        crate::sdk_http::sdk_client(
            builder
                .build()
                .expect("an HTTP client trusting the built-in roots"),
        )
    }

    /// The SDK's HTTP client for AWS's own endpoints: it trusts only [`AWS_ROOTS_PEM`].
    #[cfg(not(feature = "reqwest-client"))]
    pub fn aws_endpoints_client() -> aws_types::sdk_config::SharedHttpClient {
        use aws_smithy_http_client::tls::{
            rustls_provider::CryptoMode, Provider, TlsContext, TrustStore,
        };
        let context = TlsContext::builder()
            .with_trust_store(
                TrustStore::empty()
                    .with_native_roots(false)
                    .with_pem_certificate(AWS_ROOTS_PEM.as_bytes()),
            )
            .build()
            .expect("the built-in roots are valid PEM (a unit test parses them)");
        aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .tls_context(context)
            .build_https()
    }

    /// The SDK's own connect timeout for its behaviour version.
    pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(3100);
    /// How long one attempt of a call with a small JSON body may take in a function before the
    /// SDK gives up on it and retries.
    pub const JSON_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

    /// The AWS configuration inside Lambda, from the variables Lambda sets: the region
    /// (`AWS_REGION`), the function role's credentials (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), and `AWS_ENDPOINT_URL` when one is given
    /// (the emulator). [`aws`]'s default chain finds the same there, but only after reading the
    /// profile files and consulting every other source at init, and it links every credential
    /// provider there is (STS, SSO, IMDS, ECS, processes) into each function: about 0.5 MB of a
    /// function's binary and part of its cold start. Retries, timeouts, the identity cache and
    /// the HTTP client are the clients' defaults for the behaviour version, as `aws` gives them.
    pub fn aws_in_lambda() -> aws_config::SdkConfig {
        use aws_config::environment::EnvironmentVariableCredentialsProvider;
        use aws_config::{BehaviorVersion, Region, SdkConfig};
        use aws_credential_types::provider::SharedCredentialsProvider;
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".to_owned());
        let mut config = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            // The functions' DynamoDB, SQS, SSM and scheduler calls carry small JSON bodies:
            // stalled-stream protection watches each body with its own timer (11 % of the
            // intake's CPU per submission); an attempt that hangs is cut by its timeout
            // instead. S3 keeps it (`s3::client`): its bodies are reports and sources.
            .stalled_stream_protection(
                aws_types::sdk_config::StalledStreamProtectionConfig::disabled(),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(JSON_ATTEMPT_TIMEOUT)
                    .build(),
            )
            .credentials_provider(SharedCredentialsProvider::new(
                EnvironmentVariableCredentialsProvider::new(),
            ));
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|url| !url.is_empty());
        // An emulator over TLS (LocalStack's https endpoint) may have a certificate of any
        // issuer; AWS's endpoints, and an emulator over plain HTTP, need only Amazon's roots.
        config = match &endpoint {
            Some(url) if url.starts_with("https://") => config.http_client(https_client()),
            _ => config.http_client(aws_endpoints_client()),
        };
        if let Some(endpoint) = endpoint {
            config = config.endpoint_url(endpoint);
        }
        config.build()
    }
}

/// A variable `<NAME>_PARAMETER` names the SSM parameter (a SecureString) that holds `<NAME>`:
/// the subject hash key, the RabbitMQ URL with its password, vendors' tokens. The deployment
/// passes names, never values; values are read once, at init.
pub const PARAMETER_SUFFIX: &str = "_PARAMETER";

impl Env {
    /// (variable, SSM parameter name) for every `<NAME>_PARAMETER` variable.
    pub fn parameter_references(&self) -> Vec<(String, String)> {
        self.values
            .iter()
            .filter_map(|(key, parameter)| {
                let name = key.strip_suffix(PARAMETER_SUFFIX)?;
                (!name.is_empty() && !parameter.is_empty())
                    .then(|| (name.to_owned(), parameter.clone()))
            })
            .collect()
    }
}

/// The process's configuration with every `<NAME>_PARAMETER` resolved from SSM Parameter Store
/// (decrypted): what each function's `main` reads, once per cold start.
#[cfg(feature = "ssm")]
pub async fn from_process_with_secrets(aws: &aws_config::SdkConfig) -> Result<Env, ConfigError> {
    with_parameters(aws, Env::from_process()).await
}

/// `env` with its `<NAME>_PARAMETER` references resolved: `<NAME>` set to the parameter's value.
/// Ten names per call (the API's limit); a missing or unreadable parameter is an error naming
/// the variable that referred to it.
#[cfg(feature = "ssm")]
pub async fn with_parameters(aws: &aws_config::SdkConfig, env: Env) -> Result<Env, ConfigError> {
    let references = env.parameter_references();
    if references.is_empty() {
        return Ok(env);
    }
    let client = aws_sdk_ssm::Client::new(aws);
    let mut values = BTreeMap::new();
    for chunk in references.chunks(10) {
        let names: Vec<String> = chunk.iter().map(|(_, p)| p.clone()).collect();
        let out = client
            .get_parameters()
            .set_names(Some(names))
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| {
                ConfigError::unusable(
                    &format!("{}{PARAMETER_SUFFIX}", chunk[0].0),
                    format!(
                        "reading SSM parameters: {}",
                        aws_sdk_ssm::error::DisplayErrorContext(e)
                    ),
                )
            })?;
        let found: BTreeMap<&str, &str> = out
            .parameters()
            .iter()
            .filter_map(|p| Some((p.name()?, p.value()?)))
            .collect();
        for (variable, parameter) in chunk {
            let value = found.get(parameter.as_str()).ok_or_else(|| {
                ConfigError::unusable(
                    &format!("{variable}{PARAMETER_SUFFIX}"),
                    format!("SSM parameter `{parameter}` does not exist or cannot be read"),
                )
            })?;
            values.insert(variable.clone(), (*value).to_owned());
        }
    }
    Ok(env.overlaid_with(&Env::from_pairs(values)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SHA-256 fingerprints Amazon Trust Services publishes for its roots
    /// (https://www.amazontrust.com/repository/), and Starfield Services Root G2's.
    #[cfg(feature = "aws")]
    const AWS_ROOT_FINGERPRINTS: [&str; 5] = [
        "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e",
        "1ba5b2aa8c65401a82960118f80bec4f62304d83cec4713a19c39c011ea46db4",
        "18ce6cfe7bf14e60b2e347b8dfe868cb31d02ebb3ada271569f50343b46db3a4",
        "e35d28419ed02025cfa69038cd623962458da5c695fbdea3c22b0bfb25897092",
        "568d6905a2c88708a4b3025190edcfedb1974a606a13c6e5290fcb2ae63edab5",
    ];

    #[cfg(feature = "aws")]
    #[test]
    fn the_built_in_roots_are_amazons_and_nothing_else() {
        use base64::Engine;
        use sha2::Digest;
        let mut found = Vec::new();
        let mut block = String::new();
        let mut inside = false;
        for line in AWS_ROOTS_PEM.lines() {
            match line {
                "-----BEGIN CERTIFICATE-----" => inside = true,
                "-----END CERTIFICATE-----" => {
                    let der = base64::engine::general_purpose::STANDARD
                        .decode(&block)
                        .unwrap();
                    found.push(hex::encode(sha2::Sha256::digest(der)));
                    block.clear();
                    inside = false;
                }
                _ if inside => block.push_str(line),
                _ => {}
            }
        }
        assert_eq!(found, AWS_ROOT_FINGERPRINTS);
    }

    /// The SDK parses the trust store when a client is built (a bad one panics there): build
    /// one as a function in AWS does, with no endpoint of an emulator.
    #[cfg(feature = "dynamodb")]
    #[test]
    fn an_sdk_client_builds_on_the_built_in_roots() {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .http_client(aws_endpoints_client())
            .build();
        let _client = aws_sdk_dynamodb::Client::from_conf(config);
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn variables_ending_in_parameter_name_where_a_secret_is_kept() {
        let e = env(&[
            ("SUBJECT_HASH_KEY_PARAMETER", "/dsr/subject-hash-key"),
            ("VENDOR_TOKEN_PARAMETER", "/dsr/vendor"),
            ("_PARAMETER", "/odd"),
            ("EMPTY_PARAMETER", ""),
            ("REQUESTS_TABLE", "t"),
        ]);
        assert_eq!(
            e.parameter_references(),
            [
                (
                    "SUBJECT_HASH_KEY".to_owned(),
                    "/dsr/subject-hash-key".to_owned()
                ),
                ("VENDOR_TOKEN".to_owned(), "/dsr/vendor".to_owned()),
            ]
        );
    }

    #[test]
    fn required_values_name_what_is_missing_or_empty() {
        let e = env(&[("A", "x"), ("B", "  ")]);
        assert_eq!(e.required("A").unwrap(), "x");
        assert_eq!(
            e.required("B").unwrap_err().to_string(),
            "configuration variable B is empty"
        );
        assert_eq!(
            e.required("C").unwrap_err().to_string(),
            "configuration variable C is not set"
        );
        assert_eq!(e.optional("B"), None);
    }

    #[test]
    fn numbers_are_typed_with_defaults_and_refuse_nonsense() {
        let e = env(&[
            ("S", "90"),
            ("P", "0"),
            ("Q", "soon"),
            ("N", "-3"),
            ("D", "7"),
        ]);
        let minute = chrono::Duration::seconds(60);
        assert_eq!(e.seconds("S", minute).unwrap().num_seconds(), 90);
        assert_eq!(e.seconds("unset", minute).unwrap(), minute);
        assert_eq!(e.seconds("P", minute).unwrap().num_seconds(), 0);
        assert!(matches!(
            e.seconds("N", minute),
            Err(ConfigError::Invalid { .. })
        ));
        assert_eq!(e.days("D", minute).unwrap().num_days(), 7);
        assert_eq!(e.positive("S", 3).unwrap(), 90);
        assert_eq!(e.positive("unset", 3).unwrap(), 3);
        let zero = e.positive("P", 3).unwrap_err().to_string();
        assert!(
            zero.contains("P must be a positive whole number, not `0`"),
            "{zero}"
        );
        assert!(e.positive("Q", 3).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let e = env(&[("KEY", "hunter2-hunter2-hunter2")]);
        let secret = e.secret("KEY").unwrap();
        assert_eq!(secret.expose(), "hunter2-hunter2-hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{e:?}").contains("hunter2"));
        assert!(e.optional_secret("OTHER").is_none());
    }

    #[test]
    fn overrides_win() {
        let base = env(&[("A", "1"), ("B", "2")]);
        let top = base.overlaid_with(&env(&[("B", "3")])).with("C", "4");
        assert_eq!(
            (top.optional("A"), top.optional("B"), top.optional("C")),
            (Some("1".into()), Some("3".into()), Some("4".into()))
        );
        assert_eq!(base.optional("C"), None);
    }
}
