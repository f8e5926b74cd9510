//! The service registry: every service and third party that holds personal data, how to
//! collect from each and how to erase in each. Configuration, not code: adding a service is an
//! entry in a file (read by `dsr_adapters::registry`).

use crate::service::ServiceName;
use serde::Deserialize;
use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRegistry {
    pub services: Vec<RegisteredService>,
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
    /// How to erase its data for an erasure request; `None` if it holds nothing to erase.
    #[serde(default)]
    pub erase: Option<HowToErase>,
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
    /// answer is the confirmation (404: it held nothing) and its body the receipt.
    Http {
        url: String,
        #[serde(default = "default_erase_method")]
        method: String,
        #[serde(default)]
        auth: Option<AuthHeader>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        /// The vendor's rate limit: calls per second at most, from one function instance.
        #[serde(default = "default_rate")]
        max_per_second: u32,
    },
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
    /// Reads a registry from YAML (or JSON, which is YAML) and validates it.
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        serde_yaml_ng::from_str::<ServiceRegistry>(text)
            .map_err(|e| RegistryError(e.to_string()))?
            .validated()
    }

    /// Checks what the types cannot: unique, file-safe names and usable templates.
    pub fn validated(self) -> Result<Self, RegistryError> {
        let mut seen = HashSet::new();
        for service in &self.services {
            // The name was checked when it was read (`ServiceName`).
            let name = &service.name;
            if !seen.insert(name.clone()) {
                return Err(RegistryError(format!("service `{name}` is listed twice")));
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
                Some(CollectFrom::S3 { prefix, .. }) if !prefix.contains("{subject}") => {
                    return Err(RegistryError(format!(
                        "{name}: the prefix must contain {{subject}}"
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
                    ErasureRoute::Http {
                        url,
                        method,
                        max_per_second,
                        ..
                    } => {
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
                    }
                    ErasureRoute::Rabbitmq { .. } => {}
                }
            }
        }
        Ok(self)
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
            {"name": "orders", "collect": {"kind": "http", "url": "http://o/users/{subject}/orders"}},
            {"name": "access-log", "collect": {"kind": "search", "url": "http://es/logs", "field": "user", "sort": ["ts", "id"]}},
            {"name": "uploads", "collect": {"kind": "s3", "bucket": "b", "prefix": "u/{subject}/"}},
            {"name": "email", "description": "newsletters",
             "erase": {"via": {"kind": "rabbitmq", "routing_key": "erasure.email"}, "last": true}},
            {"name": "ads", "erase": {"via": {"kind": "http", "url": "http://ads/users/{subject}"}}}
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
    fn rejects_what_would_break_a_report() {
        for (bad, why) in [
            (r#"{"services": [{"name": "A b"}]}"#, "must be"),
            (r#"{"services": [{"name": "a"}, {"name": "a"}]}"#, "twice"),
            (
                r#"{"services": [{"name": "a", "collect": {"kind": "http", "url": "http://x/"}}]}"#,
                "{subject}",
            ),
            (
                r#"{"services": [{"name": "a", "collect": {"kind": "s3", "bucket": "b", "prefix": "all/"}}]}"#,
                "{subject}",
            ),
            (
                r#"{"services": [{"name": "a", "collect": {"kind": "search", "url": "u", "field": "f", "sort": []}}]}"#,
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
                r#"{"services": [{"name": "a", "erase": {"via": {"kind": "http", "url": "http://x/"}}}]}"#,
                "{subject}",
            ),
            (
                r#"{"services": [{"name": "a", "erase": {"via": {"kind": "rabbitmq", "routing_key": "k"}, "max_sends": 0}}]}"#,
                "at least 1",
            ),
        ] {
            let err = registry(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
