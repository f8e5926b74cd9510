//! The registry's identity sources, looked up over the wire: the profile service's HTTP API and
//! DynamoDB tables (`dsr_domain::identity`).

use crate::config::Env;
use aws_sdk_dynamodb::types::AttributeValue;
use dsr_domain::identity::{IdentifierKind, IdentityDirectory};
use dsr_domain::registry::IdentitySource;
use dsr_domain::SubjectId;
use std::collections::BTreeMap;
use std::time::Duration;

/// The most of an identity source's answer that is read: one subject's profile.
const MOST_ANSWER_BYTES: usize = 256 << 10;

/// Looks identifiers up; built once per function instance.
#[derive(Clone)]
pub struct IdentityLookups {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub http: crate::http::Client,
    /// Where auth header values (`value_from_env`) are read.
    pub secrets: Env,
}

type Found = BTreeMap<IdentifierKind, SubjectId>;
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl IdentityLookups {
    async fn over_http(
        &self,
        url: &str,
        fields: &BTreeMap<IdentifierKind, String>,
        auth: Option<&dsr_domain::registry::AuthHeader>,
        timeout_ms: u64,
        subject: &SubjectId,
    ) -> Result<Found, String> {
        let url = url.replace(
            "{subject}",
            &percent_encoding::utf8_percent_encode(
                subject.as_str(),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string(),
        );
        let mut call = self
            .http
            .get()
            .get(&url)
            .timeout(Duration::from_millis(timeout_ms));
        if let Some(auth) = auth {
            let value = self
                .secrets
                .optional_secret(&auth.value_from_env)
                .ok_or_else(|| format!("auth header value {} is not set", auth.value_from_env))?;
            call = call.header(auth.header.as_str(), value.expose());
        }
        // The URL holds the subject id, which must not reach logs or errors.
        let answer = call.send().await.map_err(|e| e.without_url().to_string())?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Found::new());
        }
        if !answer.status().is_success() {
            return Err(format!("HTTP {}", answer.status()));
        }
        let body = crate::http::read_capped(answer, MOST_ANSWER_BYTES)
            .await
            .map_err(|e| format!("reading the answer: {}", e.without_url()))?;
        if body.truncated {
            return Err("the answer is larger than one profile can be".into());
        }
        let profile: serde_json::Value = serde_json::from_slice(&body.bytes)
            .map_err(|e| format!("the answer is not JSON: {e}"))?;
        Ok(fields
            .iter()
            .filter_map(|(kind, pointer)| {
                let value = match profile.pointer(pointer)? {
                    serde_json::Value::String(text) => text.clone(),
                    serde_json::Value::Number(number) => number.to_string(),
                    _ => return None,
                };
                Some((kind.clone(), SubjectId::parse(value).ok()?))
            })
            .collect())
    }

    async fn in_table(
        &self,
        table: &str,
        key_attribute: &str,
        fields: &BTreeMap<IdentifierKind, String>,
        subject: &SubjectId,
    ) -> Result<Found, String> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(table)
            .key(
                key_attribute,
                AttributeValue::S(subject.as_str().to_owned()),
            )
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?
            .item
            .unwrap_or_default();
        Ok(fields
            .iter()
            .filter_map(|(kind, attribute)| {
                let value = match item.get(attribute)? {
                    AttributeValue::S(text) => text.clone(),
                    AttributeValue::N(number) => number.clone(),
                    _ => return None,
                };
                Some((kind.clone(), SubjectId::parse(value).ok()?))
            })
            .collect())
    }
}

impl IdentityDirectory for IdentityLookups {
    fn look_up<'a>(
        &'a self,
        source: &'a IdentitySource,
        subject: &'a SubjectId,
    ) -> BoxFuture<'a, Result<Found, String>> {
        Box::pin(async move {
            match source {
                IdentitySource::Http {
                    url,
                    fields,
                    auth,
                    timeout_ms,
                } => {
                    self.over_http(url, fields, auth.as_ref(), *timeout_ms, subject)
                        .await
                }
                IdentitySource::Dynamodb {
                    table,
                    key_attribute,
                    fields,
                } => self.in_table(table, key_attribute, fields, subject).await,
            }
        })
    }
}
