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
    /// Per vendor: the earliest time the next call may start (its rate limit).
    next_call: Mutex<HashMap<String, Instant>>,
}

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
        }
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

    /// Waits for the vendor's next free slot: at most `per_second` calls start per second.
    async fn pace(&self, vendor: &str, per_second: u32) {
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
        self.pace(command.service.as_str(), per_second).await;
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
        Ok(answer(status, &text, not_found, receipt))
    }
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
            channels.pace("ads", 2).await;
        }
        // Five calls at two per second: the fifth starts two seconds after the first.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let other = Instant::now();
        channels.pace("crm", 2).await;
        assert_eq!(other.elapsed(), Duration::ZERO);
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
