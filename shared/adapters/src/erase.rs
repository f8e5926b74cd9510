//! How erasure commands leave: internal services get `erase_subject` on RabbitMQ (an envelope
//! on the outbound queue, published by the bridge); third parties' APIs are called directly.

use crate::config::Env;
use aws_sdk_sqs::Client;
use dsr_domain::erasure::{
    ChannelError, Delivery, ErasureChannel, ErasureCommand, ObligationStatus,
};
use dsr_domain::registry::{ErasureRoute, HowToErase};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct ErasureChannels {
    sqs: Client,
    outbound_queue_url: String,
    commands_exchange: String,
    http: crate::http::Client,
    /// Where API tokens are read, by the name the registry gives.
    secrets: Env,
    /// Per vendor: the earliest time the next call may start (its rate limit), when it is
    /// held by this instance alone.
    next_call: Mutex<HashMap<String, Instant>>,
    /// The rate limits held across every instance, when configured.
    shared_pace: Option<crate::dynamodb::DynamoVendorPace>,
}

/// The longest a call waits for its vendor's rate limit; a slot further away defers the
/// command through delayed dispatch.
pub const MOST_PACE_WAIT: Duration = Duration::from_secs(5);

/// How long to wait after a 429 that does not say (`Retry-After`).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

impl ErasureChannels {
    pub fn new(
        sqs: Client,
        outbound_queue_url: impl Into<String>,
        commands_exchange: impl Into<String>,
        secrets: Env,
    ) -> Self {
        Self {
            sqs,
            outbound_queue_url: outbound_queue_url.into(),
            commands_exchange: commands_exchange.into(),
            http: crate::http::Client::default(),
            secrets,
            next_call: Mutex::new(HashMap::new()),
            shared_pace: None,
        }
    }

    /// Vendors' rate limits held across instances (a slot in DynamoDB per call) rather than per
    /// instance: N instances no longer make N times the allowed calls.
    pub fn with_shared_pace(mut self, pace: crate::dynamodb::DynamoVendorPace) -> Self {
        self.shared_pace = Some(pace);
        self
    }

    async fn publish(
        &self,
        command: &ErasureCommand,
        routing_key: &str,
    ) -> Result<Delivery, ChannelError> {
        let body = serde_json::json!({
            "version": 1,
            "message_id": command.message_id,
            "exchange": self.commands_exchange,
            "routing_key": routing_key,
            "payload": command,
            // The bridge counts the command once the broker confirmed it.
            "count": dsr_domain::hops::CountAs::new(
                dsr_domain::RequestKind::Erasure,
                dsr_domain::hops::Hop::Commanded,
                command.request_id,
            )
            .for_service(&command.service),
        });
        self.sqs
            .send_message()
            .queue_url(&self.outbound_queue_url)
            .message_body(body.to_string())
            .send()
            .await
            .map_err(|e| ChannelError(Box::new(e)))?;
        Ok(Delivery::Sent)
    }

    /// Waits for the vendor's next free slot (at most `per_second` calls start per second):
    /// `Some(after)` when that is further away than a call may wait.
    async fn pace(&self, vendor: &str, per_second: u32) -> Result<Option<Duration>, ChannelError> {
        if let Some(shared) = &self.shared_pace {
            use crate::dynamodb::Slot;
            return match shared
                .take(vendor, per_second, MOST_PACE_WAIT)
                .await
                .map_err(|e| ChannelError(Box::new(e)))?
            {
                Slot::At(start) => {
                    if let Ok(wait) = start.duration_since(std::time::SystemTime::now()) {
                        tokio::time::sleep(wait).await;
                    }
                    Ok(None)
                }
                Slot::Later(after) => Ok(Some(after)),
            };
        }
        let spacing = Duration::from_secs(1) / per_second.max(1);
        let start = {
            let mut next = self.next_call.lock().await;
            let now = Instant::now();
            let slot = next
                .get(vendor)
                .copied()
                .filter(|t| *t > now)
                .unwrap_or(now);
            next.insert(vendor.to_owned(), slot + spacing);
            slot
        };
        tokio::time::sleep_until(start).await;
        Ok(None)
    }
}

impl ErasureChannel for ErasureChannels {
    async fn send(
        &self,
        command: &ErasureCommand,
        how: &HowToErase,
    ) -> Result<Delivery, ChannelError> {
        let (url, method, auth, timeout_ms, per_second, not_found) = match &how.via {
            ErasureRoute::Rabbitmq { routing_key } => {
                return self.publish(command, routing_key).await
            }
            ErasureRoute::Http {
                url,
                method,
                auth,
                timeout_ms,
                max_per_second,
                not_found,
            } => (
                url,
                method,
                auth,
                *timeout_ms,
                *max_per_second,
                not_found.as_ref(),
            ),
        };
        if let Some(after) = self.pace(command.service.as_str(), per_second).await? {
            return Ok(Delivery::Deferred {
                reason: format!(
                    "its rate limit ({per_second}/s, shared by every instance) is taken for the next {} s",
                    after.as_secs()
                ),
                after,
            });
        }
        let subject = percent_encoding::utf8_percent_encode(
            command.subject.as_str(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| ChannelError(Box::new(e)))?;
        let mut request = self
            .http
            .get()
            .request(method, url.replace("{subject}", &subject))
            .timeout(Duration::from_millis(timeout_ms))
            .header("Idempotency-Key", &command.idempotency_key)
            .header("X-Request-Id", command.request_id.to_string());
        if let Some(auth) = auth {
            let value = self
                .secrets
                .optional_secret(&auth.value_from_env)
                .ok_or_else(|| {
                    ChannelError(format!("{} is not set", auth.value_from_env).into())
                })?;
            request = request.header(&auth.header, value.expose());
        }
        // The URL holds the subject id: errors are reported without it.
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return Ok(Delivery::Failed(err.without_url().to_string())),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = match crate::http::read_capped(response, MAX_VENDOR_ANSWER_BYTES).await {
            Ok(body) => body,
            Err(err) => return Ok(Delivery::Failed(err.without_url().to_string())),
        };
        let text = String::from_utf8_lossy(&body.bytes);
        let shown: String = text.chars().take(2000).collect();
        let receipt = serde_json::json!({
            "http_status": status.as_u16(),
            "body": serde_json::from_str::<serde_json::Value>(&shown).unwrap_or(serde_json::Value::String(shown)),
            "truncated": body.truncated,
        })
        .to_string();
        Ok(match (status.as_u16(), retry_after) {
            // "Not now", said by the vendor: the command goes again when it says.
            (429, after) => Delivery::Deferred {
                reason: format!("the API answered {status}"),
                after: after.unwrap_or(DEFAULT_RETRY_AFTER),
            },
            (503, Some(after)) => Delivery::Deferred {
                reason: format!("the API answered {status}"),
                after,
            },
            _ => answer(status, &text, not_found, receipt),
        })
    }
}

/// A `Retry-After` header: seconds, or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
        .or(Some(Duration::ZERO))
}

/// A vendor's erase answer is a small JSON document; more is not read.
pub const MAX_VENDOR_ANSWER_BYTES: usize = 64 * 1024;

/// What a vendor's answer means: 2xx erased; the registry's `not_found` answer held nothing;
/// anything else (a bare 404 from a wrong URL, a redirect, 5xx) is a failure, retried and in
/// the end escalated, never a confirmation.
fn answer(
    status: reqwest::StatusCode,
    body: &str,
    not_found: Option<&dsr_domain::registry::NotFoundAnswer>,
    receipt: String,
) -> Delivery {
    if status.is_success() {
        Delivery::Answered {
            status: ObligationStatus::Confirmed,
            receipt,
        }
    } else if not_found.is_some_and(|n| n.matches(status.as_u16(), body)) {
        Delivery::Answered {
            status: ObligationStatus::NotFound,
            receipt,
        }
    } else if status.is_redirection() {
        Delivery::Failed(format!(
            "the API answered {status}; redirects are not followed (fix the url in the registry)"
        ))
    } else if status == reqwest::StatusCode::NOT_FOUND {
        Delivery::Failed(format!(
            "the API answered {status}, which is not its documented not-found answer (is the url right? see `not_found` in the registry)"
        ))
    } else {
        Delivery::Failed(format!("the API answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_to_one_vendor_are_spaced_by_its_rate_limit_and_vendors_do_not_wait_for_each_other(
    ) {
        let sqs = Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
                .build(),
        );
        let channels = ErasureChannels::new(sqs, "q", "x", Env::default());
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(channels.pace("ads", 2).await.unwrap(), None);
        }
        // Five calls at two per second: the fifth starts two seconds after the first.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let other = Instant::now();
        assert_eq!(channels.pace("crm", 2).await.unwrap(), None);
        assert_eq!(other.elapsed(), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_a_date() {
        let headers = |value: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
            h
        };
        assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let wait = retry_after(&headers(&later)).unwrap();
        assert!(
            wait > Duration::from_secs(110) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO),
            "a date gone by: at once"
        );
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
    }

    #[test]
    fn only_a_2xx_or_the_documented_not_found_answer_is_an_answer() {
        use dsr_domain::registry::NotFoundAnswer;
        use reqwest::StatusCode;
        let documented = NotFoundAnswer {
            status: Some(404),
            body_contains: Some("no_such_user".into()),
        };
        let status = |d: Delivery| match d {
            Delivery::Answered { status, .. } => Ok(status),
            Delivery::Failed(reason) => Err(reason),
            other => panic!("{other:?}"),
        };
        let r = String::new;
        assert_eq!(
            status(answer(StatusCode::OK, "{}", None, r())),
            Ok(ObligationStatus::Confirmed)
        );
        assert_eq!(
            status(answer(
                StatusCode::NOT_FOUND,
                r#"{"error":"no_such_user"}"#,
                Some(&documented),
                r()
            )),
            Ok(ObligationStatus::NotFound)
        );
        let bare = status(answer(StatusCode::NOT_FOUND, "", Some(&documented), r())).unwrap_err();
        assert!(
            bare.contains("not its documented not-found answer"),
            "{bare}"
        );
        let no_contract = status(answer(StatusCode::NOT_FOUND, "no_such_user", None, r()));
        assert!(
            no_contract.is_err(),
            "no `not_found` in the registry: a 404 is a failure"
        );
        let moved = status(answer(
            StatusCode::TEMPORARY_REDIRECT,
            "",
            Some(&documented),
            r(),
        ))
        .unwrap_err();
        assert!(moved.contains("redirects are not followed"), "{moved}");
    }
}
