//! The data subject: who a request is about, and the keyed hash that stands for them wherever
//! the raw id must not appear (logs, storage keys, metrics).

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;

/// The authenticated user's id (the JWT `sub` claim). Personal data: never log it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubjectId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectIdError {
    #[error("the subject id is empty")]
    Empty,
    #[error("the subject id is longer than {max} characters")]
    TooLong { max: usize },
    #[error("the subject id contains control characters")]
    ControlCharacters,
}

impl SubjectId {
    pub const MAX_LEN: usize = 256;

    pub fn parse(raw: impl Into<String>) -> Result<Self, SubjectIdError> {
        let raw = raw.into();
        if raw.trim().is_empty() {
            return Err(SubjectIdError::Empty);
        }
        if raw.chars().count() > Self::MAX_LEN {
            return Err(SubjectIdError::TooLong { max: Self::MAX_LEN });
        }
        if raw.chars().any(char::is_control) {
            return Err(SubjectIdError::ControlCharacters);
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What a request's subject reads as once its retention passed and the id was removed.
    /// No real subject can equal it: `parse` refuses control characters.
    pub fn redacted() -> Self {
        Self("\u{0}redacted".into())
    }

    pub fn is_redacted(&self) -> bool {
        self.0.starts_with('\u{0}')
    }
}

impl TryFrom<String> for SubjectId {
    type Error = SubjectIdError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<SubjectId> for String {
    fn from(id: SubjectId) -> Self {
        id.0
    }
}

/// Redacted on purpose: a `{:?}` in a log line must not leak the subject.
impl fmt::Debug for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectId(<redacted>)")
    }
}

/// HMAC-SHA256 of the subject id under a secret key, hex encoded. Stable for a given key, so it
/// can key storage and correlate log lines, yet it cannot be reversed without the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubjectHash(String);

impl SubjectHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubjectHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone)]
pub struct SubjectHasher {
    key: Vec<u8>,
}

impl SubjectHasher {
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self {
            key: key.as_ref().to_vec(),
        }
    }

    pub fn hash(&self, subject: &SubjectId) -> SubjectHash {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(subject.as_str().as_bytes());
        SubjectHash(hex::encode(mac.finalize().into_bytes()))
    }

    /// A keyed tag of any text (hex, the first 32 digits): what a client holds (a page cursor)
    /// can then be checked to be one this service made, for this subject.
    pub fn tag(&self, text: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"tag\0");
        mac.update(text.as_bytes());
        hex::encode(mac.finalize().into_bytes())[..32].to_owned()
    }
}

impl fmt::Debug for SubjectHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectHasher(<key redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_keyed_and_stable() {
        let alice = SubjectId::parse("alice").unwrap();
        let a = SubjectHasher::new("k1");
        let b = SubjectHasher::new("k2");
        assert_eq!(a.hash(&alice), a.hash(&alice));
        assert_ne!(a.hash(&alice), b.hash(&alice));
        assert_eq!(a.hash(&alice).as_str().len(), 64);
        assert!(!a.hash(&alice).as_str().contains("alice"));
    }

    #[test]
    fn subject_ids_are_validated_and_redacted() {
        assert_eq!(SubjectId::parse(""), Err(SubjectIdError::Empty));
        assert_eq!(
            SubjectId::parse("a\nb"),
            Err(SubjectIdError::ControlCharacters)
        );
        assert!(matches!(
            SubjectId::parse("x".repeat(257)),
            Err(SubjectIdError::TooLong { .. })
        ));
        let id = SubjectId::parse("alice@example.com").unwrap();
        assert!(!format!("{id:?}").contains("alice"));
    }
}
