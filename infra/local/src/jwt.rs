//! Plays API Gateway's JWT authorizer locally: verifies HS256 bearer tokens (signature, `exp`,
//! `iss`, `aud`) and hands the claims on as strings, the way API Gateway does. `make token`
//! issues tokens with the same secret.

pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{decode, encode, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The documented local secret. Local only: in AWS the authorizer trusts your identity
/// provider's keys, and this secret means nothing there.
pub const LOCAL_JWT_SECRET: &str = "local-development-secret-not-for-production";

#[derive(Clone)]
pub struct JwtAuthorizer {
    secret: String,
    issuer: String,
    audience: String,
}

impl JwtAuthorizer {
    pub fn new(
        secret: impl Into<String>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        Self {
            secret: secret.into(),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    pub fn issue(&self, subject: &str, ttl_seconds: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        self.sign(&json!({
            "sub": subject,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": now + ttl_seconds,
        }))
    }

    /// Signs arbitrary claims; tests use it to make expired or foreign tokens.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(Algorithm::HS256, claims)
    }

    /// Signs with another HMAC algorithm than the one accepted (tests of the refusal).
    pub fn sign_with(&self, algorithm: Algorithm, claims: &Value) -> String {
        encode(
            &Header::new(algorithm),
            claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .expect("HMAC signing of a JSON object cannot fail")
    }

    /// The issuer and audience tokens must name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies an `Authorization` header value and returns the claims as API Gateway passes
    /// them to the function (`requestContext.authorizer.jwt.claims`).
    pub fn authorize(
        &self,
        authorization: Option<&str>,
    ) -> Result<HashMap<String, String>, String> {
        let header = authorization.ok_or("missing Authorization header")?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or("the Authorization header is not a Bearer token")?
            .trim();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        let data = decode::<Map<String, Value>>(
            token,
            &DecodingKey::from_secret(self.secret.as_bytes()),
            &validation,
        )
        .map_err(|e| format!("invalid token: {e}"))?;
        Ok(data
            .claims
            .into_iter()
            .map(|(name, value)| (name, claim_string(value)))
            .collect())
    }
}

/// API Gateway flattens claims to strings; arrays become `[a b]`.
fn claim_string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Array(items) => format!(
            "[{}]",
            items
                .into_iter()
                .map(claim_string)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorizer() -> JwtAuthorizer {
        JwtAuthorizer::new(LOCAL_JWT_SECRET, "iss", "aud")
    }

    #[test]
    fn accepts_its_own_tokens_and_passes_claims_as_strings() {
        let a = authorizer();
        let claims = a
            .authorize(Some(&format!("Bearer {}", a.issue("alice", 60))))
            .unwrap();
        assert_eq!(claims["sub"], "alice");
        assert!(claims["exp"].parse::<i64>().is_ok());
    }

    #[test]
    fn rejects_missing_expired_foreign_and_malformed_tokens() {
        let a = authorizer();
        let now = chrono::Utc::now().timestamp();
        let expired = a.sign(&json!({"sub": "a", "iss": "iss", "aud": "aud", "exp": now - 10}));
        let wrong_aud = a.sign(&json!({"sub": "a", "iss": "iss", "aud": "x", "exp": now + 60}));
        let no_sub = a.sign(&json!({"iss": "iss", "aud": "aud", "exp": now + 60}));
        let foreign = JwtAuthorizer::new("another-secret-entirely", "iss", "aud").issue("a", 60);
        assert!(a.authorize(None).is_err());
        assert!(a.authorize(Some("Basic abc")).is_err());
        assert!(a.authorize(Some("Bearer not.a.jwt")).is_err());
        for token in [expired, wrong_aud, no_sub, foreign] {
            assert!(a.authorize(Some(&format!("Bearer {token}"))).is_err());
        }
    }
}
