//! The certificate of erasure: what the subject can keep and show anyone. It says which
//! holders erased their data or held none, when, with a digest of each holder's receipt, and
//! it is signed by the service (Ed25519, as a JWS, RFC 7515 and RFC 8037), so a copy can be
//! checked against the service's published key without asking the service.

use super::obligation::{Obligation, ObligationStatus};
use crate::request::{Request, RequestId, RequestKind, RequestState};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Signs certificates. The key never leaves the adapter; the domain sees bytes in, a
/// signature out.
pub trait CertificateSigner: Send + Sync {
    /// The Ed25519 public key (32 bytes).
    fn public_key(&self) -> [u8; 32];
    /// An Ed25519 signature of `message` (64 bytes).
    fn sign(&self, message: &[u8]) -> Vec<u8>;
}

/// The certified facts. Field order is the serialised order: the JWS payload is these bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// Always `certificate_of_erasure`.
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub request_id: RequestId,
    /// Whose data: the certificate is the subject's own, handed only to them.
    pub subject: String,
    pub received_at: String,
    pub completed_at: String,
    pub issued_at: String,
    pub holders: Vec<HolderErasure>,
    pub verification: VerificationResult,
}

/// Whether the erased holders were read again and held nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationResult {
    /// `nothing_left`: every erased holder that can be read was read again after all of them
    /// answered, and held nothing; `no_readable_holder`: none of them can be read.
    pub result: String,
    pub holders_read: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
}

/// A verification that found nothing left, as the audit trail has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NothingLeft {
    pub at: DateTime<Utc>,
    pub holders: usize,
}

impl NothingLeft {
    /// The last such verification in a request's audit trail.
    pub fn in_trail(trail: &[crate::AuditEvent]) -> Option<Self> {
        trail.iter().rev().find_map(|e| {
            let holders = e
                .event
                .strip_prefix("verified_nothing_left:")?
                .parse()
                .ok()?;
            Some(Self { at: e.at, holders })
        })
    }
}

/// One holder's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HolderErasure {
    pub service: String,
    /// `erased`; `held_nothing` when the holder answered it had nothing of the subject;
    /// `not_applicable` when it keys its data by an identifier the subject does not have.
    pub outcome: String,
    /// Erased after the subject was told (the service that tells them, last).
    pub erased_last: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commanded_at: Option<String>,
    pub answered_at: String,
    /// SHA-256 (hex) of the holder's receipt exactly as the service keeps it: whoever holds
    /// the receipt can show it is the one certified.
    pub receipt_sha256: String,
    /// How often a verification still found the subject's data here after the holder
    /// answered (each time it was told to erase again); absent when never.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub found_again: u32,
    /// The answer was obtained by other means and recorded by an operator, with the evidence
    /// (kept in the receipt); absent when the holder answered itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub settled_by_hand: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why no certificate can be issued (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotCertifiable {
    #[error("certificates are issued for erasure requests; this is an access request")]
    NotAnErasure,
    #[error("the erasure is {0}; its certificate is issued once it is completed")]
    NotCompleted(RequestState),
    #[error("the erasure is completed but {0} has no answer on record")]
    MissingAnswer(String),
}

/// A certificate and its signature: `jws` is `<header>.<payload>.<signature>` (base64url),
/// whose payload is `certificate`, byte for byte as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignedCertificate {
    pub certificate: Certificate,
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signature {
    /// `EdDSA` (Ed25519).
    pub alg: &'static str,
    /// The key's RFC 7638 thumbprint, as in the published key set.
    pub kid: String,
    pub jws: String,
}

/// The service's public keys as a JWK set (RFC 7517, OKP keys of RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySet {
    pub keys: Vec<PublicKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    #[serde(rename = "use")]
    pub usage: String,
    pub alg: String,
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Certificate {
    pub const KIND: &'static str = "certificate_of_erasure";

    /// The certificate of a completed erasure, from its obligations (each holder's answer).
    pub fn of(
        request: &Request,
        obligations: &[Obligation],
        verified: Option<NothingLeft>,
        issued_at: DateTime<Utc>,
    ) -> Result<Self, NotCertifiable> {
        if request.kind != RequestKind::Erasure {
            return Err(NotCertifiable::NotAnErasure);
        }
        if request.state != RequestState::Completed {
            return Err(NotCertifiable::NotCompleted(request.state));
        }
        let mut holders = obligations
            .iter()
            .map(|o| {
                let missing = || NotCertifiable::MissingAnswer(o.service.to_string());
                let outcome = match o.status {
                    ObligationStatus::Confirmed => "erased",
                    ObligationStatus::NotFound => "held_nothing",
                    ObligationStatus::NotApplicable => "not_applicable",
                    _ => return Err(missing()),
                };
                Ok(HolderErasure {
                    service: o.service.to_string(),
                    outcome: outcome.to_owned(),
                    erased_last: o.last,
                    commanded_at: o.sent_at.map(time),
                    answered_at: time(o.confirmed_at.ok_or_else(missing)?),
                    receipt_sha256: hex::encode(Sha256::digest(
                        o.receipt.as_deref().ok_or_else(missing)?.as_bytes(),
                    )),
                    found_again: o.reopened,
                    settled_by_hand: super::settled_by_hand(o.receipt.as_deref()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        holders.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(Self {
            kind: Self::KIND.to_owned(),
            version: 1,
            request_id: request.id,
            subject: request.subject.as_str().to_owned(),
            received_at: time(request.received_at),
            completed_at: time(request.updated_at),
            issued_at: time(issued_at),
            holders,
            verification: match verified {
                Some(v) => VerificationResult {
                    result: "nothing_left".into(),
                    holders_read: v.holders,
                    verified_at: Some(time(v.at)),
                },
                None => VerificationResult {
                    result: "no_readable_holder".into(),
                    holders_read: 0,
                    verified_at: None,
                },
            },
        })
    }

    /// Signed by `signer`, as a compact JWS whose payload is this certificate.
    pub fn sign(self, signer: &dyn CertificateSigner) -> SignedCertificate {
        let kid = thumbprint(&signer.public_key());
        let header =
            serde_json::json!({ "alg": "EdDSA", "kid": kid, "typ": "dsr-certificate+json" });
        // Serialising these plain structs cannot fail.
        let payload = serde_json::to_vec(&self).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = signer.sign(signing_input.as_bytes());
        SignedCertificate {
            certificate: self,
            signature: Signature {
                alg: "EdDSA",
                kid,
                jws: format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)),
            },
        }
    }
}

/// The key set that verifies what `signer` signs.
pub fn key_set(signer: &dyn CertificateSigner) -> KeySet {
    let public = signer.public_key();
    KeySet {
        keys: vec![PublicKey {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(public),
            kid: thumbprint(&public),
            usage: "sig".into(),
            alg: "EdDSA".into(),
        }],
    }
}

/// RFC 7638: the SHA-256 of the key's required members in lexicographic order, base64url.
fn thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceName;
    use crate::SubjectId;
    use chrono::TimeZone;

    /// A stand-in that "signs" with a digest: enough to see what is signed and how it is laid
    /// out; the real Ed25519 signer and an independent verifier are tested over the wire.
    struct DigestSigner;
    impl CertificateSigner for DigestSigner {
        fn public_key(&self) -> [u8; 32] {
            [7; 32]
        }
        fn sign(&self, message: &[u8]) -> Vec<u8> {
            Sha256::digest(message).to_vec()
        }
    }

    fn completed_erasure() -> (Request, Vec<Obligation>) {
        let at = Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap();
        let mut request =
            Request::receive(RequestKind::Erasure, SubjectId::parse("erin").unwrap(), at);
        request.state = RequestState::Completed;
        request.updated_at = at + chrono::Duration::hours(3);
        let answered = |name: &str, status, last| {
            let mut o = Obligation::planned(request.id, &ServiceName::parse(name).unwrap(), last);
            o.status = status;
            o.attempts = 1;
            o.sent_at = Some(at + chrono::Duration::minutes(1));
            o.confirmed_at = Some(at + chrono::Duration::minutes(30));
            o.receipt = Some(format!(r#"{{"service":"{name}"}}"#));
            o
        };
        let obligations = vec![
            answered("viewing-history", ObligationStatus::Confirmed, false),
            answered("email", ObligationStatus::Confirmed, true),
            answered("billing", ObligationStatus::NotFound, false),
        ];
        (request, obligations)
    }

    #[test]
    fn a_completed_erasure_is_certified_holder_by_holder_with_each_receipts_digest() {
        let (request, obligations) = completed_erasure();
        let issued = Utc.with_ymd_and_hms(2026, 11, 3, 0, 0, 0).unwrap();
        let certificate = Certificate::of(
            &request,
            &obligations,
            Some(NothingLeft {
                at: issued - chrono::Duration::hours(1),
                holders: 2,
            }),
            issued,
        )
        .unwrap();
        assert_eq!(certificate.subject, "erin");
        assert_eq!(certificate.completed_at, "2026-11-02T12:00:00.000Z");
        let services: Vec<_> = certificate
            .holders
            .iter()
            .map(|h| h.service.as_str())
            .collect();
        assert_eq!(services, ["billing", "email", "viewing-history"]);
        assert_eq!(certificate.holders[0].outcome, "held_nothing");
        assert_eq!(certificate.holders[1].outcome, "erased");
        assert!(certificate.holders[1].erased_last);
        assert_eq!(
            certificate.holders[2].receipt_sha256,
            hex::encode(Sha256::digest(br#"{"service":"viewing-history"}"#))
        );
        assert_eq!(certificate.verification.result, "nothing_left");
        assert_eq!(certificate.verification.holders_read, 2);
        assert_eq!(
            certificate.verification.verified_at.as_deref(),
            Some("2026-11-02T23:00:00.000Z")
        );
        let json = serde_json::to_value(&certificate).unwrap();
        assert!(
            json["holders"][0].get("found_again").is_none(),
            "absent when never"
        );
        assert!(
            json["holders"][0].get("settled_by_hand").is_none(),
            "absent when the holder answered itself"
        );
        // An answer an operator obtained by other means is certified as such.
        let mut by_hand = obligations.clone();
        by_hand[2].receipt =
            Some(r#"{"manual":true,"operator":"jane","evidence":"ticket 42"}"#.into());
        let certificate = Certificate::of(&request, &by_hand, None, issued).unwrap();
        assert!(certificate.holders[0].settled_by_hand);
        assert!(!certificate.holders[2].settled_by_hand);
    }

    #[test]
    fn no_certificate_before_completion_for_an_access_request_or_with_an_answer_missing() {
        let (mut request, mut obligations) = completed_erasure();
        let now = Utc::now();
        obligations[0].receipt = None;
        assert_eq!(
            Certificate::of(&request, &obligations, None, now),
            Err(NotCertifiable::MissingAnswer("viewing-history".into()))
        );
        request.state = RequestState::Notifying;
        assert_eq!(
            Certificate::of(&request, &obligations, None, now),
            Err(NotCertifiable::NotCompleted(RequestState::Notifying))
        );
        request.kind = RequestKind::Access;
        assert_eq!(
            Certificate::of(&request, &obligations, None, now),
            Err(NotCertifiable::NotAnErasure)
        );
    }

    #[test]
    fn the_signature_is_a_compact_jws_over_the_certificate_as_shown() {
        let (request, obligations) = completed_erasure();
        let signed = Certificate::of(&request, &obligations, None, Utc::now())
            .unwrap()
            .sign(&DigestSigner);
        let parts: Vec<&str> = signed.signature.jws.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], signed.signature.kid);
        let payload: Certificate =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(payload, signed.certificate);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            Sha256::digest(format!("{}.{}", parts[0], parts[1]).as_bytes()).to_vec()
        );
        let keys = key_set(&DigestSigner);
        assert_eq!(keys.keys[0].kid, signed.signature.kid);
        assert_eq!(keys.keys[0].x, URL_SAFE_NO_PAD.encode([7u8; 32]));
    }
}
