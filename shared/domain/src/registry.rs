//! The service registry: every service and third party that holds personal data, how to
//! collect from each and how to erase in each. Configuration, not code: adding a service is an
//! entry in a file (read by `dsr_adapters::registry`).

use crate::identity::IdentifierKind;
use crate::service::ServiceName;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRegistry {
    /// Where identifiers other than the user id are looked up (`crate::identity`), in order:
    /// the first source that knows one gives it.
    #[serde(default)]
    pub identity_sources: Vec<IdentitySource>,
    pub services: Vec<RegisteredService>,
}

/// A place that knows a subject's other identifiers, looked up by the user id. `fields` maps
/// each identifier kind it gives to where it is in the answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum IdentitySource {
    /// `GET url` (`{subject}`: the URL-encoded user id) answering a JSON object; each field a
    /// JSON pointer into it (`/contact/email`). A 404 is a subject it does not know.
    Http {
        url: String,
        fields: BTreeMap<IdentifierKind, String>,
        #[serde(default)]
        auth: Option<AuthHeader>,
        #[serde(default = "default_lookup_timeout_ms")]
        timeout_ms: u64,
    },
    /// The item of `table` whose partition key `key_attribute` is the user id; each field an
    /// attribute name (a string attribute).
    Dynamodb {
        table: String,
        key_attribute: String,
        fields: BTreeMap<IdentifierKind, String>,
    },
}

impl IdentitySource {
    /// Names the source in errors and logs: its kind and host or table, never a subject.
    pub fn describe(&self) -> String {
        match self {
            IdentitySource::Http { url, .. } => {
                let host = url
                    .split_once("://")
                    .map_or(url.as_str(), |(_, rest)| rest)
                    .split(['/', '?', '#'])
                    .next()
                    .unwrap_or_default();
                format!("http {host}")
            }
            IdentitySource::Dynamodb { table, .. } => format!("dynamodb {table}"),
        }
    }

    pub fn fields(&self) -> &BTreeMap<IdentifierKind, String> {
        match self {
            IdentitySource::Http { fields, .. } | IdentitySource::Dynamodb { fields, .. } => fields,
        }
    }
}

fn default_lookup_timeout_ms() -> u64 {
    5_000
}

/// One service (or third party) that holds personal data.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisteredService {
    /// Stable, lower-case name; used in file names of the report, keys and logs.
    pub name: ServiceName,
    /// What it holds, in words a data subject understands (shown in the report).
    #[serde(default)]
    pub description: String,
    /// How to collect its data for an access request; `None` if it holds nothing to report.
    #[serde(default)]
    pub collect: Option<CollectFrom>,
    /// How often, and how far apart, collecting from it is tried before the access request
    /// fails; unset: the report function's defaults (`REPORT_MAX_ATTEMPTS`,
    /// `REPORT_RETRY_BASE_SECONDS`).
    #[serde(default)]
    pub collect_retry: Option<RetryPolicy>,
    /// How to erase its data for an erasure request; `None` if it holds nothing to erase.
    #[serde(default)]
    pub erase: Option<HowToErase>,
    /// The RabbitMQ user the service publishes as: only a confirmation published under it
    /// (RabbitMQ checks the `user_id` property against the connection) counts as the service's.
    /// Required for services erased over RabbitMQ.
    #[serde(default)]
    pub broker_user: Option<String>,
    /// The identifiers it keys the subject's data by, the first standing for the subject in
    /// its URLs and commands (`crate::identity`); unset: the user id alone.
    #[serde(default)]
    pub identifiers: Vec<IdentifierKind>,
}

impl RegisteredService {
    /// What it asked for: its `identifiers`, or the user id.
    pub fn identifiers(&self) -> Vec<IdentifierKind> {
        if self.identifiers.is_empty() {
            vec![IdentifierKind::user_id()]
        } else {
            self.identifiers.clone()
        }
    }
}

/// How a service is told to erase, and how long it may take to confirm.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HowToErase {
    pub via: ErasureRoute,
    /// Erased only after every other service confirmed and the subject was told, plus a grace
    /// period: the email service, which must still be able to send "your data was erased".
    #[serde(default)]
    pub last: bool,
    /// A command not confirmed within this is sent again (the watchdog).
    #[serde(default = "default_confirm_within")]
    pub confirm_within_seconds: u64,
    /// Commands sent at most; after that the obligation is escalated to an operator.
    #[serde(default = "default_max_sends")]
    pub max_sends: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ErasureRoute {
    /// An internal service: an `erase_subject` command on the commands exchange with this
    /// routing key; the service answers with an `erasure_confirmation`.
    Rabbitmq { routing_key: String },
    /// A third party's API, called directly: `method url` with an `Idempotency-Key`; a 2xx
    /// answer is the confirmation and its body the receipt. "Held nothing" only when the answer
    /// is the one `not_found` describes: a bare 404 may be a wrong URL, with the data still there.
    Http {
        url: String,
        #[serde(default)]
        not_found: Option<NotFoundAnswer>,
        #[serde(default = "default_erase_method")]
        method: String,
        #[serde(default)]
        auth: Option<AuthHeader>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        /// The vendor's rate limit: calls per second at most, from one function instance.
        #[serde(default = "default_rate")]
        max_per_second: u32,
        /// The vendor takes many subjects in one call: commands wait (at most a few seconds)
        /// on the vendor-erasures queue and leave together, up to `max_subjects` per call.
        #[serde(default)]
        batch: Option<VendorBatch>,
    },
}

/// A vendor's batch erasure endpoint: `POST url` with
/// `{"erasures": [{"idempotency_key", "request_id", "subject"}, ...]}`, answered with
/// `{"results": [{"idempotency_key", "outcome": "erased" | "not_found" | "failed", ...}]}`
/// (the README's "Third parties that take batches").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorBatch {
    pub url: String,
    #[serde(default = "default_batch_size")]
    pub max_subjects: u32,
}

/// The most subjects one batch call carries.
pub const MOST_SUBJECTS_PER_BATCH: u32 = 1000;

fn default_batch_size() -> u32 {
    100
}

/// The vendor's documented answer for "no such subject": its status and/or a text its body
/// contains. Both given: both must match.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotFoundAnswer {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub body_contains: Option<String>,
}

impl NotFoundAnswer {
    /// Whether a non-2xx answer is the vendor saying it holds nothing about the subject.
    pub fn matches(&self, status: u16, body: &str) -> bool {
        (self.status.is_some() || self.body_contains.is_some())
            && self.status.is_none_or(|s| s == status)
            && self
                .body_contains
                .as_deref()
                .is_none_or(|text| body.contains(text))
    }
}

/// Where `{subject}` appears it is replaced by the (URL-encoded, where in a URL) subject id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CollectFrom {
    /// Items of a table whose `key_attribute` equals the subject id: a query on the table's
    /// partition key, or on `index` when the attribute is an index's partition key.
    Dynamodb {
        table: String,
        key_attribute: String,
        #[serde(default)]
        index: Option<String>,
    },
    /// `GET url` returning JSON: an array of records, or an object holding them at
    /// `records_pointer` (a JSON pointer such as `/items`), or a single record.
    Http {
        url: String,
        #[serde(default)]
        auth: Option<AuthHeader>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_http_attempts")]
        max_attempts: u32,
        #[serde(default)]
        records_pointer: Option<String>,
    },
    /// An Elasticsearch/OpenSearch index: documents whose `field` equals the subject id, paged
    /// with `search_after` over `sort` (the last field must be unique, e.g. an event id).
    Search {
        url: String,
        field: String,
        sort: Vec<String>,
        #[serde(default = "default_page_size")]
        page_size: u32,
        #[serde(default)]
        auth: Option<AuthHeader>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
    },
    /// Every object under `prefix` in `bucket` (uploads, attachments), copied into the report.
    S3 { bucket: String, prefix: String },
    /// A platform service that speaks only AMQP: an `export_subject` command on the commands
    /// exchange with `routing_key`; the service answers with an `export_answer` (records in
    /// it, or uploaded to the command's presigned URL) within `answer_within_seconds`, else the
    /// attempt fails and a new command is sent. Looked for every `poll_seconds` in case an
    /// answer message is lost (an upload is found without one). Needs the `broker_user`.
    Rabbitmq {
        routing_key: String,
        #[serde(default = "default_answer_within")]
        answer_within_seconds: u64,
        #[serde(default = "default_poll_seconds")]
        poll_seconds: u64,
    },
    /// A third party's asynchronous export: `POST start_url` starts a job (its id at
    /// `job_pointer` of the answer); `GET status_url` says how it goes (the text at
    /// `status_pointer`: `done`, `failed`, anything else is still running); once done,
    /// `GET result_url` gives the records (as `http` does). `{subject}` in `start_url`, `{job}`
    /// in the other two. Polled every `poll_seconds`, over as many invocations as it takes.
    Export {
        start_url: String,
        status_url: String,
        result_url: String,
        #[serde(default = "default_job_pointer")]
        job_pointer: String,
        #[serde(default = "default_status_pointer")]
        status_pointer: String,
        #[serde(default)]
        records_pointer: Option<String>,
        #[serde(default)]
        auth: Option<AuthHeader>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_poll_seconds")]
        poll_seconds: u64,
    },
}

/// Collection attempts of one source: `attempts` at most, the first retry after
/// `backoff_seconds`, each next one twice as late, never more than `max_backoff_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff_seconds: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_seconds: u64,
}

/// A header sent with every call; the value is read from an environment variable so that no
/// secret sits in the registry file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthHeader {
    pub header: String,
    pub value_from_env: String,
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_http_attempts() -> u32 {
    4
}
fn default_job_pointer() -> String {
    "/job_id".into()
}
fn default_status_pointer() -> String {
    "/status".into()
}
fn default_poll_seconds() -> u64 {
    300
}
fn default_answer_within() -> u64 {
    3600
}
/// A presigned URL lives at most 7 days (SigV4).
pub const MAX_ANSWER_WITHIN_SECONDS: u64 = 7 * 24 * 3600;
fn default_max_backoff() -> u64 {
    6 * 3600
}
fn default_page_size() -> u32 {
    500
}
fn default_confirm_within() -> u64 {
    3 * 24 * 3600
}
fn default_max_sends() -> u32 {
    4
}
fn default_erase_method() -> String {
    "DELETE".into()
}
fn default_rate() -> u32 {
    5
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service registry: {0}")]
pub struct RegistryError(pub String);

impl ServiceRegistry {
    /// Reads a registry from YAML (or JSON, which is YAML) and validates it. Every error names
    /// the line of the text it is about: a typo in a key is found where it was typed, a wrong
    /// value at its service's `name`.
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let registry = serde_yaml_ng::from_str::<ServiceRegistry>(text)
            .map_err(|e| RegistryError(located::read_error(text, &e)))?;
        match registry.check() {
            Ok(()) => Ok(registry),
            Err((None, why)) => Err(RegistryError(why)),
            Err((Some(index), why)) => {
                let line = located::service_line(text, &registry.services, index);
                Err(RegistryError(format!("line {line}: {why}")))
            }
        }
    }

    /// Checks what the types cannot: unique, file-safe names, usable templates, and URLs that
    /// keep the subject and any credentials on the configured host.
    pub fn validated(self) -> Result<Self, RegistryError> {
        self.check().map_err(|(_, why)| RegistryError(why))?;
        Ok(self)
    }

    /// What is wrong, and with which service (its index), if anything.
    fn check(&self) -> Result<(), (Option<usize>, String)> {
        if self.services.is_empty() {
            return Err((
                None,
                "no services are registered: an erasure would complete without erasing anything and a report would be empty".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (index, service) in self.services.iter().enumerate() {
            // The name was checked when it was read (`ServiceName`).
            let name = &service.name;
            if !seen.insert(name.clone()) {
                return Err((Some(index), format!("service `{name}` is listed twice")));
            }
            Self::check_service(service).map_err(|e| (Some(index), e.0))?;
            let mut kinds = HashSet::new();
            for kind in &service.identifiers {
                if !kinds.insert(kind) {
                    return Err((
                        Some(index),
                        format!("{name}: identifier `{kind}` is listed twice"),
                    ));
                }
                if !kind.is_user_id()
                    && !self
                        .identity_sources
                        .iter()
                        .any(|source| source.fields().contains_key(kind))
                {
                    return Err((
                        Some(index),
                        format!(
                            "{name}: it needs identifier `{kind}`, which no identity source gives (add it to a source's `fields`)"
                        ),
                    ));
                }
            }
        }
        for source in &self.identity_sources {
            let about = source.describe();
            let fields = source.fields();
            if fields.is_empty() {
                return Err((None, format!("identity source {about}: `fields` is empty")));
            }
            if let Some(kind) = fields.keys().find(|k| k.is_user_id()) {
                return Err((
                    None,
                    format!(
                        "identity source {about}: `{kind}` is the subject itself, not looked up"
                    ),
                ));
            }
            match source {
                IdentitySource::Http { url, fields, .. } => {
                    check_url(&format!("identity source {about}"), url).map_err(|e| (None, e.0))?;
                    if !url.contains("{subject}") {
                        return Err((
                            None,
                            format!("identity source {about}: the url must contain {{subject}}"),
                        ));
                    }
                    if let Some((kind, _)) = fields.iter().find(|(_, p)| !p.starts_with('/')) {
                        return Err((
                            None,
                            format!(
                                "identity source {about}: field `{kind}` must be a JSON pointer (`/email`)"
                            ),
                        ));
                    }
                }
                IdentitySource::Dynamodb {
                    table,
                    key_attribute,
                    fields,
                } => {
                    if table.is_empty()
                        || key_attribute.is_empty()
                        || fields.values().any(String::is_empty)
                    {
                        return Err((
                            None,
                            format!(
                                "identity source {about}: table, key_attribute and every field's attribute are needed"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every identifier some holder asked for, besides the user id: what is resolved.
    pub fn identifiers_needed(&self) -> Vec<IdentifierKind> {
        let mut needed: Vec<IdentifierKind> = self
            .services
            .iter()
            .flat_map(|s| s.identifiers.iter())
            .filter(|k| !k.is_user_id())
            .cloned()
            .collect();
        needed.sort();
        needed.dedup();
        needed
    }

    fn check_service(service: &RegisteredService) -> Result<(), RegistryError> {
        let name = &service.name;
        {
            if name.as_str() == crate::erasure::OWN_COPIES {
                return Err(RegistryError(format!(
                    "`{name}` is the service's own obligation (its access reports); choose another name"
                )));
            }
            if let Some(CollectFrom::Http { url, .. } | CollectFrom::Search { url, .. }) =
                &service.collect
            {
                check_url(name, url)?;
            }
            if let Some(retry) = &service.collect_retry {
                if retry.attempts == 0
                    || retry.backoff_seconds == 0
                    || retry.max_backoff_seconds < retry.backoff_seconds
                {
                    return Err(RegistryError(format!(
                        "{name}: collect_retry needs attempts and backoff_seconds of at least 1, and max_backoff_seconds no less than backoff_seconds"
                    )));
                }
            }
            match &service.collect {
                Some(CollectFrom::Http {
                    url, max_attempts, ..
                }) => {
                    if !url.contains("{subject}") {
                        return Err(RegistryError(format!(
                            "{name}: the url must contain {{subject}}"
                        )));
                    }
                    if *max_attempts == 0 {
                        return Err(RegistryError(format!(
                            "{name}: max_attempts must be at least 1"
                        )));
                    }
                }
                Some(CollectFrom::Export {
                    start_url,
                    status_url,
                    result_url,
                    poll_seconds,
                    ..
                }) => {
                    for url in [start_url, status_url, result_url] {
                        check_url(name, url)?;
                    }
                    if !start_url.contains("{subject}")
                        || !status_url.contains("{job}")
                        || !result_url.contains("{job}")
                    {
                        return Err(RegistryError(format!(
                            "{name}: an export's start_url must contain {{subject}}, its status_url and result_url {{job}}"
                        )));
                    }
                    if *poll_seconds == 0 {
                        return Err(RegistryError(format!(
                            "{name}: poll_seconds must be at least 1"
                        )));
                    }
                }
                Some(CollectFrom::Rabbitmq {
                    routing_key,
                    answer_within_seconds,
                    poll_seconds,
                }) => {
                    if routing_key.is_empty() {
                        return Err(RegistryError(format!("{name}: a routing_key is needed")));
                    }
                    if service.broker_user.as_deref().is_none_or(str::is_empty) {
                        return Err(RegistryError(format!(
                            "{name}: a service collected over RabbitMQ needs its broker_user (the user its answers are published as)"
                        )));
                    }
                    if !(60..=MAX_ANSWER_WITHIN_SECONDS).contains(answer_within_seconds)
                        || *poll_seconds == 0
                    {
                        return Err(RegistryError(format!(
                            "{name}: answer_within_seconds must be 60 to {MAX_ANSWER_WITHIN_SECONDS} (an upload URL lives 7 days at most), poll_seconds at least 1"
                        )));
                    }
                }
                Some(CollectFrom::S3 { prefix, .. }) if !prefix.contains("{subject}/") => {
                    return Err(RegistryError(format!(
                        "{name}: the prefix must contain {{subject}} followed by `/` (else `alice` would collect `alice2`'s objects)"
                    )));
                }
                Some(CollectFrom::Search {
                    sort, page_size, ..
                }) if sort.is_empty() || *page_size == 0 => {
                    return Err(RegistryError(format!(
                        "{name}: a search source needs a sort (ending in a unique field) and a page size"
                    )));
                }
                _ => {}
            }
            if let Some(erase) = &service.erase {
                if erase.max_sends == 0 || erase.confirm_within_seconds == 0 {
                    return Err(RegistryError(format!(
                        "{name}: max_sends and confirm_within_seconds must be at least 1"
                    )));
                }
                match &erase.via {
                    ErasureRoute::Rabbitmq { routing_key } if routing_key.is_empty() => {
                        return Err(RegistryError(format!("{name}: a routing_key is needed")));
                    }
                    ErasureRoute::Rabbitmq { .. }
                        if service.broker_user.as_deref().is_none_or(str::is_empty) =>
                    {
                        return Err(RegistryError(format!(
                            "{name}: a service erased over RabbitMQ needs its broker_user (the user its confirmations are published as)"
                        )));
                    }
                    ErasureRoute::Http {
                        url,
                        method,
                        max_per_second,
                        not_found,
                        batch,
                        ..
                    } => {
                        check_url(name, url)?;
                        if not_found
                            .as_ref()
                            .is_some_and(|n| n.status.is_none() && n.body_contains.is_none())
                        {
                            return Err(RegistryError(format!(
                                "{name}: not_found needs a status, a body_contains, or both"
                            )));
                        }
                        if !url.contains("{subject}") {
                            return Err(RegistryError(format!(
                                "{name}: the erase url must contain {{subject}}"
                            )));
                        }
                        if !["DELETE", "POST", "PUT"].contains(&method.as_str()) {
                            return Err(RegistryError(format!(
                                "{name}: the erase method must be DELETE, POST or PUT"
                            )));
                        }
                        if *max_per_second == 0 {
                            return Err(RegistryError(format!(
                                "{name}: max_per_second must be at least 1"
                            )));
                        }
                        if let Some(batch) = batch {
                            check_url(name, &batch.url)?;
                            if batch.url.contains("{subject}") {
                                return Err(RegistryError(format!(
                                    "{name}: the batch url carries no {{subject}} (the subjects are in its body)"
                                )));
                            }
                            if !(1..=MOST_SUBJECTS_PER_BATCH).contains(&batch.max_subjects) {
                                return Err(RegistryError(format!(
                                    "{name}: batch max_subjects must be 1 to {MOST_SUBJECTS_PER_BATCH}"
                                )));
                            }
                        }
                    }
                    ErasureRoute::Rabbitmq { .. } => {}
                }
            }
        }
        Ok(())
    }

    /// For the functions that erase: a registry without a service to erase would "complete"
    /// every erasure having erased nothing, so they refuse to start with it.
    pub fn require_erasable(&self) -> Result<(), RegistryError> {
        if self.erasable().next().is_none() {
            return Err(RegistryError(
                "no service has an `erase` entry: every erasure would complete having erased nothing".into(),
            ));
        }
        Ok(())
    }

    /// For report generation: a registry without a source would send every user an empty report.
    pub fn require_collectable(&self) -> Result<(), RegistryError> {
        if self.collectable().next().is_none() {
            return Err(RegistryError(
                "no service has a `collect` entry: every access report would be empty".into(),
            ));
        }
        Ok(())
    }

    /// The service called `name`.
    pub fn service(&self, name: &ServiceName) -> Option<&RegisteredService> {
        self.services.iter().find(|s| &s.name == name)
    }

    /// The services an erasure must reach, in registry order.
    pub fn erasable(&self) -> impl Iterator<Item = (&RegisteredService, &HowToErase)> {
        self.services
            .iter()
            .filter_map(|h| h.erase.as_ref().map(|e| (h, e)))
    }

    pub fn eraser(&self, service: &ServiceName) -> Option<&HowToErase> {
        self.services
            .iter()
            .find(|s| &s.name == service)
            .and_then(|h| h.erase.as_ref())
    }

    /// The services an access report collects from, in registry order.
    pub fn collectable(&self) -> impl Iterator<Item = (&RegisteredService, &CollectFrom)> {
        self.services
            .iter()
            .filter_map(|h| h.collect.as_ref().map(|c| (h, c)))
    }
}

/// Line numbers for errors: the operator who mistyped a key should be told where.
mod located {
    use super::RegisteredService;

    /// serde's message with the line of the offending key: for an unknown field, the line where
    /// it was typed (serde points at the start of its mapping when a `kind` chose the type).
    pub(super) fn read_error(text: &str, error: &serde_yaml_ng::Error) -> String {
        let message = error.to_string();
        let message = match message.rfind(" at line ") {
            Some(at) => message[..at].to_owned(),
            None => message,
        };
        let from = error.location().map_or(1, |l| l.line());
        let line = unknown_field(&message)
            .and_then(|key| key_line(text, key, None, from, 0))
            .unwrap_or(from);
        format!("line {line}: {message}")
    }

    /// The line of the `index`th service's `name`.
    pub(super) fn service_line(text: &str, services: &[RegisteredService], index: usize) -> usize {
        let name = services[index].name.as_str();
        let earlier = services[..index]
            .iter()
            .filter(|s| s.name.as_str() == name)
            .count();
        key_line(text, "name", Some(name), 1, earlier).unwrap_or(1)
    }

    fn unknown_field(message: &str) -> Option<&str> {
        let rest = &message[message.find("unknown field `")? + "unknown field `".len()..];
        rest.split('`').next()
    }

    /// The line (from `from` on) of the `nth` (0-based) occurrence of `key:` (quoted or not,
    /// in block or flow style), with `value` after it when one is given.
    fn key_line(
        text: &str,
        key: &str,
        value: Option<&str>,
        from: usize,
        nth: usize,
    ) -> Option<usize> {
        let mut seen = 0;
        for (number, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
            for (at, _) in line.match_indices(key) {
                let before = line[..at].trim_end_matches(['"', '\'']);
                let opens = before.is_empty() || before.ends_with([' ', '{', ',', '-', '\t']);
                let after = line[at + key.len()..].trim_start_matches(['"', '\'']);
                let Some(rest) = after.trim_start().strip_prefix(':') else {
                    continue;
                };
                let matches = opens
                    && value.is_none_or(|value| {
                        let rest = rest.trim_start().trim_start_matches(['"', '\'']);
                        rest.strip_prefix(value).is_some_and(|tail| {
                            tail.is_empty() || tail.starts_with(['"', '\'', ',', '}', ' ', '#'])
                        })
                    });
                if matches {
                    if seen == nth {
                        return Some(number + 1);
                    }
                    seen += 1;
                }
            }
        }
        None
    }
}

/// An HTTP endpoint the service calls with the subject (and perhaps a credential): `https`, or
/// plain `http` to the loopback interface only (a sidecar, the local stack); and `{subject}` only
/// after the host, so that no subject id can choose where the call, and its auth header, goes.
fn check_url(name: &dyn std::fmt::Display, url: &str) -> Result<(), RegistryError> {
    let bad = |why: &str| Err(RegistryError(format!("{name}: the url `{url}` {why}")));
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return bad("is not an absolute URL"),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('{') || authority.contains('@') {
        return bad("must name a fixed host (no {subject} and no user info before the path)");
    }
    if !authority.is_ascii() {
        return bad(
            "has a host that is not ASCII: write an international domain name in its `xn--` form",
        );
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match scheme {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => bad("must use https (plain http is allowed to the loopback interface only)"),
        _ => bad("must use https"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(json: &str) -> Result<ServiceRegistry, String> {
        serde_json::from_str::<ServiceRegistry>(json)
            .map_err(|e| e.to_string())
            .and_then(|r| r.validated().map_err(|e| e.to_string()))
    }

    #[test]
    fn parses_every_kind_with_defaults() {
        let r = registry(
            r#"{"services": [
            {"name": "profile", "collect": {"kind": "dynamodb", "table": "profiles", "key_attribute": "user_id"}},
            {"name": "orders", "collect": {"kind": "http", "url": "https://o/users/{subject}/orders"}},
            {"name": "access-log", "collect": {"kind": "search", "url": "http://127.0.0.1:9200/logs", "field": "user", "sort": ["ts", "id"]}},
            {"name": "uploads", "collect": {"kind": "s3", "bucket": "b", "prefix": "u/{subject}/"}},
            {"name": "email", "description": "newsletters", "broker_user": "svc-email",
             "erase": {"via": {"kind": "rabbitmq", "routing_key": "erasure.email"}, "last": true}},
            {"name": "ads", "erase": {"via": {"kind": "http", "url": "https://ads/users/{subject}", "not_found": {"status": 404, "body_contains": "no_such_user"}}}}
        ]}"#,
        )
        .unwrap();
        assert_eq!(r.collectable().count(), 4);
        let erasable: Vec<_> = r
            .erasable()
            .map(|(h, e)| (h.name.as_str(), e.last))
            .collect();
        assert_eq!(erasable, [("email", true), ("ads", false)]);
        match r.eraser(&ServiceName::parse("ads").unwrap()) {
            Some(HowToErase {
                via:
                    ErasureRoute::Http {
                        method,
                        max_per_second,
                        ..
                    },
                confirm_within_seconds,
                max_sends,
                ..
            }) => assert_eq!(
                (
                    method.as_str(),
                    *max_per_second,
                    *confirm_within_seconds,
                    *max_sends
                ),
                ("DELETE", 5, 259_200, 4)
            ),
            other => panic!("{other:?}"),
        }
        match &r.services[1].collect {
            Some(CollectFrom::Http {
                timeout_ms,
                max_attempts,
                ..
            }) => {
                assert_eq!((*timeout_ms, *max_attempts), (10_000, 4));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_vendors_batch_endpoint_is_checked_and_its_size_defaults_to_100() {
        let with = |batch: &str| {
            registry(&format!(
                r#"{{"services": [{{"name": "ads", "erase": {{"via": {{"kind": "http", "url": "https://ads/users/{{subject}}", "batch": {batch}}}}}}}]}}"#
            ))
        };
        let r = with(r#"{"url": "https://ads/erasures"}"#).unwrap();
        match r
            .eraser(&ServiceName::parse("ads").unwrap())
            .map(|h| &h.via)
        {
            Some(ErasureRoute::Http {
                batch: Some(batch), ..
            }) => assert_eq!(
                (batch.url.as_str(), batch.max_subjects),
                ("https://ads/erasures", 100)
            ),
            other => panic!("{other:?}"),
        }
        for (bad, why) in [
            (r#"{"url": "https://ads/users/{subject}"}"#, "no {subject}"),
            (r#"{"url": "http://ads.example/erasures"}"#, "url"),
            (
                r#"{"url": "https://ads/erasures", "max_subjects": 0}"#,
                "1 to 1000",
            ),
            (
                r#"{"url": "https://ads/erasures", "max_subjects": 1001}"#,
                "1 to 1000",
            ),
            (
                r#"{"url": "https://ads/erasures", "size": 5}"#,
                "unknown field `size`",
            ),
        ] {
            let err = with(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_what_would_break_a_report() {
        for (bad, why) in [
            (r#"{"services": [{"name": "A b"}]}"#, "must be"),
            (r#"{"services": [{"name": "a"}, {"name": "a"}]}"#, "twice"),
            (
                r#"{"services": [{"name": "a", "collect": {"kind": "http", "url": "https://x/"}}]}"#,
                "{subject}",
            ),
            (
                r#"{"services": [{"name": "a", "collect": {"kind": "s3", "bucket": "b", "prefix": "all/"}}]}"#,
                "{subject}",
            ),
            (
                r#"{"services": [{"name": "a", "collect": {"kind": "s3", "bucket": "b", "prefix": "uploads/{subject}"}}]}"#,
                "followed by `/`",
            ),
            (
                r#"{"services": [{"name": "a", "collect": {"kind": "search", "url": "https://es/u", "field": "f", "sort": []}}]}"#,
                "sort",
            ),
            (
                r#"{"services": [{"name": "a", "collect": {"kind": "ftp"}}]}"#,
                "unknown variant",
            ),
            (
                r#"{"services": [{"name": "a", "colect": {}}]}"#,
                "unknown field",
            ),
            (
                r#"{"services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "https://x/"}}}]}"#,
                "{subject}",
            ),
            (
                r#"{"services": [{"name": "a", "broker_user": "a", "erase": {"via": {"kind": "rabbitmq", "routing_key": "k"}, "max_sends": 0}}]}"#,
                "at least 1",
            ),
            (r#"{"services": []}"#, "no services"),
            (
                r#"{"services": [{"name": "a", "erase": {"via": {"kind": "rabbitmq", "routing_key": "k"}}}]}"#,
                "needs its broker_user",
            ),
            (
                r#"{"services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "http://vendor.example/u/{subject}"}}}]}"#,
                "must use https",
            ),
            (
                r#"{"services": [{"name": "a", "collect": {"kind": "http", "url": "ftp://vendor.example/u/{subject}"}}]}"#,
                "must use https",
            ),
            (
                r#"{"services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "https://{subject}.vendor.example/u"}}}]}"#,
                "fixed host",
            ),
            (
                r#"{"services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "https://{subject}@vendor.example/u/{subject}"}}}]}"#,
                "fixed host",
            ),
            (
                r#"{"services": [{"name": "a", "collect": {"kind": "search", "url": "http://es.internal:9200/logs", "field": "f", "sort": ["id"]}}]}"#,
                "must use https",
            ),
            (
                r#"{"services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "https://v/u/{subject}", "not_found": {}}}}]}"#,
                "not_found needs",
            ),
            (
                r#"{"services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "https://bücher.example/u/{subject}"}}}]}"#,
                "`xn--` form",
            ),
            // Identifiers: every kind a holder needs is given by an identity source.
            (
                r#"{"services": [{"name": "a", "identifiers": ["email"], "erase": {"via": {"kind": "http", "url": "https://v/u/{subject}"}}}]}"#,
                "a: it needs identifier `email`, which no identity source gives",
            ),
            (
                r#"{"identity_sources": [{"kind": "http", "url": "https://p/{subject}", "fields": {"email": "/email"}}], "services": [{"name": "a", "identifiers": ["email", "email"], "erase": {"via": {"kind": "http", "url": "https://v/u/{subject}"}}}]}"#,
                "identifier `email` is listed twice",
            ),
            (
                r#"{"identity_sources": [{"kind": "http", "url": "https://p/u", "fields": {"email": "/email"}}], "services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "https://v/u/{subject}"}}}]}"#,
                "identity source http p: the url must contain {subject}",
            ),
            (
                r#"{"identity_sources": [{"kind": "http", "url": "https://p/{subject}", "fields": {"email": "email"}}], "services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "https://v/u/{subject}"}}}]}"#,
                "field `email` must be a JSON pointer",
            ),
            (
                r#"{"identity_sources": [{"kind": "dynamodb", "table": "t", "key_attribute": "uid", "fields": {"user_id": "uid"}}], "services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "https://v/u/{subject}"}}}]}"#,
                "`user_id` is the subject itself",
            ),
            (
                r#"{"identity_sources": [{"kind": "http", "url": "http://profile.internal/{subject}", "fields": {"email": "/email"}}], "services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "https://v/u/{subject}"}}}]}"#,
                "identity source http profile.internal: the url `http://profile.internal/{subject}` must use https",
            ),
            (
                r#"{"services": [{"name": "a", "identifiers": ["E-mail"], "erase": {"via": {"kind": "http", "url": "https://v/u/{subject}"}}}]}"#,
                "`E-mail` is not an identifier kind",
            ),
        ] {
            let err = registry(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn loopback_may_use_plain_http() {
        for url in [
            "http://127.0.0.1:3002/u/{subject}",
            "http://localhost/u/{subject}",
            "http://[::1]:80/u/{subject}",
        ] {
            let json = format!(
                r#"{{"services": [{{"name": "a", "erase": {{"via": {{"kind": "http", "url": "{url}"}}}}}}]}}"#
            );
            assert!(registry(&json).is_ok(), "{url}");
        }
    }

    #[test]
    fn functions_refuse_a_registry_with_nothing_for_them() {
        let only_reads = registry(
            r#"{"services": [{"name": "p", "collect": {"kind": "s3", "bucket": "b", "prefix": "u/{subject}/"}}]}"#,
        )
        .unwrap();
        assert!(only_reads.require_collectable().is_ok());
        assert!(only_reads
            .require_erasable()
            .unwrap_err()
            .to_string()
            .contains("erased nothing"));
        let only_erases = registry(
            r#"{"services": [{"name": "p", "broker_user": "p", "erase": {"via": {"kind": "rabbitmq", "routing_key": "k"}}}]}"#,
        )
        .unwrap();
        assert!(only_erases.require_erasable().is_ok());
        assert!(only_erases.require_collectable().is_err());
    }

    #[test]
    fn held_nothing_is_only_the_vendors_documented_answer() {
        let status_and_body = NotFoundAnswer {
            status: Some(404),
            body_contains: Some("no_such_user".into()),
        };
        assert!(status_and_body.matches(404, r#"{"error":"no_such_user"}"#));
        assert!(!status_and_body.matches(404, ""), "a bare 404");
        assert!(!status_and_body.matches(410, "no_such_user"));
        let body_only = NotFoundAnswer {
            status: None,
            body_contains: Some("unknown subject".into()),
        };
        assert!(body_only.matches(422, "unknown subject"));
        assert!(!NotFoundAnswer {
            status: None,
            body_contains: None
        }
        .matches(404, ""));
    }
}

#[cfg(test)]
mod line_tests {
    use super::ServiceRegistry;

    fn error(text: &str) -> String {
        ServiceRegistry::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_typo_is_an_error_naming_its_line() {
        let typed = [
            ("services:\n  - name: a\n    colect: {}\n", "line 3:", "`colect`"),
            (
                "services:\n  - name: a\n    collect:\n      kind: dynamodb\n      tabel: t\n      key_attribute: k\n",
                "line 5:",
                "`tabel`",
            ),
            (
                "services:\n  - name: a\n    broker_user: a\n    erase:\n      via: { kind: rabbitmq, routng_key: k }\n",
                "line 5:",
                "`routng_key`",
            ),
            (
                "services:\n  - name: a\n    erase:\n      via: { kind: rabbitmq, routing_key: k }\n      confirm_within: 3\n",
                "line 5:",
                "`confirm_within`",
            ),
            ("servics: []\n", "line 1:", "`servics`"),
            ("services:\n  - name: a\n  - name: A\n", "line 3:", "`A`"),
        ];
        for (text, line, what) in typed {
            let err = error(text);
            assert!(err.contains(line) && err.contains(what), "{text}: {err}");
        }
    }

    #[test]
    fn a_wrong_value_is_an_error_at_its_services_line() {
        let text = "services:\n  - name: ok\n    collect: { kind: s3, bucket: b, prefix: \"u/{subject}/\" }\n  - name: \"orders\"\n    collect: { kind: http, url: \"https://o/users\" }\n";
        let err = error(text);
        assert!(
            err.contains("line 4:") && err.contains("orders: the url must contain {subject}"),
            "{err}"
        );
        let twice =
            "services:\n  - name: a\n    description: the first\n  - name: b\n  - name: a\n";
        let err = error(twice);
        assert!(
            err.contains("line 5:") && err.contains("listed twice"),
            "{err}"
        );
        let json =
            r#"{"services": [{"name": "a", "collect": {"kind": "http", "url": "https://x/"}}]}"#;
        assert!(error(json).contains("line 1:"), "{}", error(json));
    }
}
