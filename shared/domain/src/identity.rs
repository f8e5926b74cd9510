//! Who the subject is at each holder. The request carries the user id (the token's `sub`); an
//! ad vendor keys its data by e-mail address, a call-centre tool by phone number, a billing
//! provider by its own customer id. The registry says which identifiers each holder needs and
//! where they are looked up (identity sources: the profile service's API, a table); they are
//! resolved once per request, under its lease, kept on the request (personal data, removed
//! with its subject id), and recorded in its audit trail only as keyed hashes. Each holder is
//! sent the identifiers it asked for and no other; a holder needing one the subject does not
//! have is `not_applicable`, with the reason.

use crate::registry::{IdentitySource, RegisteredService, ServiceRegistry};
use crate::subject::{SubjectHasher, SubjectId};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A kind of identifier: `user_id` (the request's subject, always known), `email`, `phone`, or
/// a platform's own (`billing_customer_id`): lower-case letters, digits and `_`, starting with
/// a letter, at most 40 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdentifierKind(String);

impl IdentifierKind {
    pub const USER_ID: &'static str = "user_id";

    pub fn parse(raw: impl Into<String>) -> Result<Self, String> {
        let raw = raw.into();
        let mut chars = raw.chars();
        let well_formed = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && raw.len() <= 40;
        if well_formed {
            Ok(Self(raw))
        } else {
            Err(format!(
                "`{raw}` is not an identifier kind (lower-case letters, digits and `_`, starting with a letter, at most 40)"
            ))
        }
    }

    pub fn user_id() -> Self {
        Self(Self::USER_ID.into())
    }

    pub fn is_user_id(&self) -> bool {
        self.0 == Self::USER_ID
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdentifierKind {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(raw)
    }
}

impl From<IdentifierKind> for String {
    fn from(kind: IdentifierKind) -> Self {
        kind.0
    }
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identifiers found for a request's subject besides the user id (which is the subject).
/// Personal data: its `Debug` shows the kinds only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Identities(pub BTreeMap<IdentifierKind, SubjectId>);

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The subject as one holder knows them: `subject` is the value of the first identifier the
/// holder asked for (what its URL's `{subject}` or its command's `subject` carries), and
/// `identifiers` every one it asked for, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderIdentity {
    pub subject: SubjectId,
    pub identifiers: BTreeMap<IdentifierKind, SubjectId>,
}

impl HolderIdentity {
    /// A holder that asked for the user id alone (the default).
    pub fn user_id(subject: &SubjectId) -> Self {
        Self {
            subject: subject.clone(),
            identifiers: BTreeMap::from([(IdentifierKind::user_id(), subject.clone())]),
        }
    }
}

/// Why a holder cannot be asked: the subject has none of an identifier it keys its data by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotApplicable {
    pub missing: Vec<IdentifierKind>,
}

impl NotApplicable {
    /// The reason kept with the holder's answer and shown to the subject; names kinds, never
    /// values.
    pub fn reason(&self) -> String {
        let kinds: Vec<&str> = self.missing.iter().map(IdentifierKind::as_str).collect();
        format!(
            "keys its data by {}, which no identity source knows for this subject",
            kinds.join(" and ")
        )
    }
}

impl Identities {
    /// The subject as `holder` knows them: `None` identities (never resolved) stand for "no
    /// identifier but the user id", which is all a registry without identity sources has.
    pub fn for_holder(
        identities: Option<&Identities>,
        subject: &SubjectId,
        holder: &RegisteredService,
    ) -> Result<HolderIdentity, NotApplicable> {
        let wanted = holder.identifiers();
        let mut identifiers = BTreeMap::new();
        let mut missing = Vec::new();
        let mut first = None;
        for kind in wanted {
            let value = if kind.is_user_id() {
                Some(subject.clone())
            } else {
                identities.and_then(|found| found.0.get(&kind)).cloned()
            };
            match value {
                Some(value) => {
                    first.get_or_insert_with(|| value.clone());
                    identifiers.insert(kind, value);
                }
                None => missing.push(kind),
            }
        }
        match first {
            Some(subject) if missing.is_empty() => Ok(HolderIdentity {
                subject,
                identifiers,
            }),
            _ => Err(NotApplicable { missing }),
        }
    }

    /// What the audit trail records: each identifier looked for, as its keyed hash, or `none`.
    pub fn audit_line(&self, looked_for: &[IdentifierKind], hasher: &SubjectHasher) -> String {
        looked_for
            .iter()
            .map(|kind| match self.0.get(kind) {
                Some(value) => format!("{kind}={}", hasher.hash(value)),
                None => format!("{kind}=none"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Where identifiers are looked up: the adapters call the identity sources of the registry.
pub trait IdentityDirectory: Send + Sync {
    /// The identifiers `source` knows for `subject` (by kind, of those its `fields` map); an
    /// unknown subject is an empty answer, a source that cannot answer an error (worth trying
    /// again: the request is worked on again later).
    fn look_up<'a>(
        &'a self,
        source: &'a IdentitySource,
        subject: &'a SubjectId,
    ) -> BoxFuture<'a, Result<BTreeMap<IdentifierKind, SubjectId>, String>>;
}

/// A directory for a registry without identity sources (and for the functions that never
/// resolve: they use what the request keeps).
pub struct NoIdentitySources;

impl IdentityDirectory for NoIdentitySources {
    fn look_up<'a>(
        &'a self,
        _: &'a IdentitySource,
        _: &'a SubjectId,
    ) -> BoxFuture<'a, Result<BTreeMap<IdentifierKind, SubjectId>, String>> {
        Box::pin(async { Err("no identity sources are wired into this function".to_owned()) })
    }
}

/// Looks up every identifier the registry's holders need, source by source in the registry's
/// order: the first source that knows an identifier gives it. Only kinds a holder asked for are
/// kept (a profile answers more than the service needs).
pub async fn resolve(
    registry: &ServiceRegistry,
    directory: &dyn IdentityDirectory,
    subject: &SubjectId,
) -> Result<Identities, String> {
    let wanted = registry.identifiers_needed();
    let mut found = BTreeMap::new();
    for source in &registry.identity_sources {
        if wanted.iter().all(|kind| found.contains_key(kind)) {
            break;
        }
        let answer = directory
            .look_up(source, subject)
            .await
            .map_err(|why| format!("identity source {}: {why}", source.describe()))?;
        for (kind, value) in answer {
            if wanted.contains(&kind) {
                found.entry(kind).or_insert(value);
            }
        }
    }
    Ok(Identities(found))
}

/// Why identities could not be had for a request.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Store(#[from] crate::ports::StoreError),
    /// An identity source could not answer: tried again with the request's next attempt.
    #[error("{0}")]
    Lookup(String),
    /// Another worker took the request over meanwhile.
    #[error("request {0} was taken over by another worker")]
    FencedOut(crate::request::RequestId),
}

/// The request's identities for its holders, resolved once: kept on the request from its first
/// resolution (every later attempt, watchdog and verification uses those), looked up otherwise
/// by the worker holding lease `token` and kept with their audit line. `None`: the registry
/// needs no identifier but the user id, and nothing is looked up.
pub async fn resolve_once<S: crate::ports::RequestStore>(
    store: &S,
    registry: &ServiceRegistry,
    directory: &dyn IdentityDirectory,
    hasher: &SubjectHasher,
    request: &crate::request::Request,
    token: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Identities>, ResolveError> {
    if request.identities.is_some() {
        return Ok(request.identities.clone());
    }
    let needed = registry.identifiers_needed();
    if needed.is_empty() {
        return Ok(None);
    }
    let found = resolve(registry, directory, &request.subject)
        .await
        .map_err(ResolveError::Lookup)?;
    let line = found.audit_line(&needed, hasher);
    let audit = crate::Audited::IdentitiesResolved { found: &line };
    if store
        .record_identities(request.id, token, &found, &audit, now)
        .await?
    {
        tracing::info!(request_id = %request.id, identities = %line, "identities resolved");
        return Ok(Some(found));
    }
    // Kept by an earlier worker whose lease this one's read did not see, or fenced out.
    match store.get(request.id).await? {
        Some(stored) if stored.fencing_token == token && stored.identities.is_some() => {
            Ok(stored.identities)
        }
        _ => Err(ResolveError::FencedOut(request.id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Directory {
        answers: BTreeMap<String, Vec<(&'static str, &'static str)>>,
        asked: Mutex<Vec<String>>,
    }

    impl IdentityDirectory for Directory {
        fn look_up<'a>(
            &'a self,
            source: &'a IdentitySource,
            _: &'a SubjectId,
        ) -> BoxFuture<'a, Result<BTreeMap<IdentifierKind, SubjectId>, String>> {
            let name = source.describe();
            self.asked.lock().unwrap().push(name.clone());
            let answer = self.answers.get(&name).cloned();
            Box::pin(async move {
                let answer = answer.ok_or("HTTP 503")?;
                Ok(answer
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            IdentifierKind::parse(k).unwrap(),
                            SubjectId::parse(v).unwrap(),
                        )
                    })
                    .collect())
            })
        }
    }

    fn registry() -> ServiceRegistry {
        ServiceRegistry::parse(
            r#"
identity_sources:
  - { kind: http, url: "https://profile.internal/users/{subject}", fields: { email: /email, phone: /phone } }
  - { kind: dynamodb, table: customers, key_attribute: user_id, fields: { billing_customer_id: customer_id, email: email } }
services:
  - name: ads
    identifiers: [email]
    erase: { via: { kind: http, url: "https://ads.example/v1/people/{subject}" } }
  - name: callcentre
    identifiers: [phone, user_id]
    broker_user: svc-callcentre
    erase: { via: { kind: rabbitmq, routing_key: erasure.callcentre } }
  - name: orders
    broker_user: svc-orders
    erase: { via: { kind: rabbitmq, routing_key: erasure.orders } }
"#,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn each_holder_gets_the_identifiers_it_asked_for_and_one_without_is_not_applicable() {
        let registry = registry();
        let alice = SubjectId::parse("alice").unwrap();
        let directory = Directory {
            answers: BTreeMap::from([
                (
                    "http profile.internal".to_owned(),
                    vec![("email", "alice@example.com"), ("nickname", "al")],
                ),
                (
                    "dynamodb customers".to_owned(),
                    vec![("email", "old@example.com")],
                ),
            ]),
            asked: Mutex::default(),
        };
        let found = resolve(&registry, &directory, &alice).await.unwrap();
        // The first source's e-mail wins; a kind no holder asked for is not kept.
        assert_eq!(
            format!("{found:?}"),
            r#"{IdentifierKind("email")}"#,
            "Debug shows kinds, never values"
        );
        assert_eq!(
            found.0[&IdentifierKind::parse("email").unwrap()].as_str(),
            "alice@example.com"
        );
        assert_eq!(
            directory.asked.lock().unwrap().len(),
            2,
            "phone still wanted"
        );

        let holder = |name: &str| {
            registry
                .services
                .iter()
                .find(|s| s.name.as_str() == name)
                .unwrap()
        };
        let ads = Identities::for_holder(Some(&found), &alice, holder("ads")).unwrap();
        assert_eq!(ads.subject.as_str(), "alice@example.com");
        assert_eq!(
            ads.identifiers
                .keys()
                .map(|k| k.as_str())
                .collect::<Vec<_>>(),
            ["email"],
            "the vendor keyed by e-mail is not sent the user id"
        );
        let orders = Identities::for_holder(Some(&found), &alice, holder("orders")).unwrap();
        assert_eq!(orders.subject, alice);
        let call_centre = Identities::for_holder(Some(&found), &alice, holder("callcentre"))
            .expect_err("no phone number");
        assert_eq!(
            call_centre.reason(),
            "keys its data by phone, which no identity source knows for this subject"
        );
        let hasher = SubjectHasher::new(b"k");
        let line = found.audit_line(&registry.identifiers_needed(), &hasher);
        assert!(line.starts_with("email="), "{line}");
        assert!(line.ends_with(",phone=none"), "{line}");
        assert!(!line.contains("alice"), "keyed hashes only: {line}");
    }

    #[tokio::test]
    async fn a_source_that_cannot_answer_fails_the_resolution_naming_it() {
        let registry = registry();
        let directory = Directory {
            answers: BTreeMap::new(),
            asked: Mutex::default(),
        };
        let error = resolve(&registry, &directory, &SubjectId::parse("bob").unwrap())
            .await
            .unwrap_err();
        assert_eq!(error, "identity source http profile.internal: HTTP 503");
    }
}
