//! A service's name: how the registry, obligations, commands and confirmations name a service
//! (or third party) that holds personal data. Checked once, where it enters: a value of this
//! type is always a usable name (in file names of the report, keys, logs and routing).

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service name `{0}` must be 1-64 characters of a-z, 0-9, - and _")]
pub struct ServiceNameError(String);

impl ServiceName {
    pub fn parse(raw: &str) -> Result<Self, ServiceNameError> {
        let usable = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if usable {
            Ok(Self(raw.to_owned()))
        } else {
            // Names come from messages too: quote only a little of what arrived.
            Err(ServiceNameError(raw.chars().take(64).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = ServiceNameError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<ServiceName> for String {
    fn from(name: ServiceName) -> Self {
        name.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for ServiceName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ServiceName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_file_safe_names_exist() {
        assert_eq!(
            ServiceName::parse("viewing-history_2").unwrap().as_str(),
            "viewing-history_2"
        );
        for bad in ["", "Billing", "a b", "../etc", &"x".repeat(65)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad:?}");
        }
        let from_json: Result<ServiceName, _> = serde_json::from_str("\"A\"");
        assert!(from_json.unwrap_err().to_string().contains("must be 1-64"));
    }
}
