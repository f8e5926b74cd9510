//! How erasure commands leave: internal services get `erase_subject` on RabbitMQ (an envelope
//! on the outbound queue, published by the bridge); third parties' APIs are called directly,
//! one subject per call, or, for a vendor that takes batches, many subjects per call (the
//! commands wait on the vendor-erasures queue, whose consumer gathers them).

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
    /// Where commands to vendors that take batches wait for their call.
    vendor_queue_url: Option<String>,
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
            vendor_queue_url: None,
        }
    }

    /// Commands to vendors that take batches wait on this queue (the erasure function
    /// consumes it, many at a time) instead of being sent one by one.
    pub fn with_vendor_queue(mut self, url: impl Into<String>) -> Self {
        self.vendor_queue_url = Some(url.into());
        self
    }

    async fn enqueue(&self, command: &ErasureCommand) -> Result<Delivery, ChannelError> {
        let queue = self.vendor_queue_url.as_deref().ok_or_else(|| {
            ChannelError(
                format!(
                    "{} is not set: a vendor that takes batches cannot be sent to",
                    crate::config::vars::VENDOR_ERASURES_QUEUE_URL
                )
                .into(),
            )
        })?;
        let body = serde_json::to_string(command).map_err(|e| ChannelError(Box::new(e)))?;
        self.sqs
            .send_message()
            .queue_url(queue)
            .message_body(body)
            .send()
            .await
            .map_err(|e| ChannelError(Box::new(e)))?;
        Ok(Delivery::Sent)
    }

    /// The vendor's token, as the registry names it.
    fn authorised(
        &self,
        request: reqwest::RequestBuilder,
        auth: Option<&dsr_domain::registry::AuthHeader>,
    ) -> Result<reqwest::RequestBuilder, ChannelError> {
        let Some(auth) = auth else {
            return Ok(request);
        };
        let value = self
            .secrets
            .optional_secret(&auth.value_from_env)
            .ok_or_else(|| ChannelError(format!("{} is not set", auth.value_from_env).into()))?;
        Ok(request.header(&auth.header, value.expose()))
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
            ErasureRoute::Http { batch: Some(_), .. } => return self.enqueue(command).await,
            ErasureRoute::Http {
                url,
                method,
                auth,
                timeout_ms,
                max_per_second,
                not_found,
                batch: None,
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
        let request = self.authorised(
            self.http
                .get()
                .request(method, url.replace("{subject}", &subject))
                .timeout(Duration::from_millis(timeout_ms))
                .header("Idempotency-Key", &command.idempotency_key)
                .header("X-Request-Id", command.request_id.to_string()),
            auth.as_ref(),
        )?;
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

    async fn send_batch(
        &self,
        commands: &[ErasureCommand],
        how: &HowToErase,
    ) -> Result<Vec<Delivery>, ChannelError> {
        let ErasureRoute::Http {
            auth,
            timeout_ms,
            max_per_second,
            batch: Some(batch),
            ..
        } = &how.via
        else {
            return Err(ChannelError("the registry gives no batch endpoint".into()));
        };
        let all = |delivery: Delivery| vec![delivery; commands.len()];
        let Some(first) = commands.first() else {
            return Ok(Vec::new());
        };
        // One call, one slot of the vendor's rate limit, however many subjects it carries.
        if let Some(after) = self.pace(first.service.as_str(), *max_per_second).await? {
            return Ok(all(Delivery::Deferred {
                reason: format!(
                    "its rate limit ({max_per_second}/s, shared by every instance) is taken for the next {} s",
                    after.as_secs()
                ),
                after,
            }));
        }
        let body = serde_json::json!({
            "erasures": commands
                .iter()
                .map(|c| serde_json::json!({
                    "idempotency_key": c.idempotency_key,
                    "request_id": c.request_id,
                    "subject": c.subject,
                }))
                .collect::<Vec<_>>(),
        });
        let request = self.authorised(
            self.http
                .get()
                .post(&batch.url)
                .timeout(Duration::from_millis(*timeout_ms))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", batch_key(commands))
                .body(body.to_string()),
            auth.as_ref(),
        )?;
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return Ok(all(Delivery::Failed(err.without_url().to_string()))),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = match crate::http::read_capped(response, MAX_BATCH_ANSWER_BYTES).await {
            Ok(body) => body,
            Err(err) => return Ok(all(Delivery::Failed(err.without_url().to_string()))),
        };
        Ok(match (status.as_u16(), retry_after) {
            (429, after) => all(Delivery::Deferred {
                reason: format!("the batch API answered {status}"),
                after: after.unwrap_or(DEFAULT_RETRY_AFTER),
            }),
            (503, Some(after)) => all(Delivery::Deferred {
                reason: format!("the batch API answered {status}"),
                after,
            }),
            _ if !status.is_success() => {
                all(Delivery::Failed(format!("the batch API answered {status}")))
            }
            _ if body.truncated => all(Delivery::Failed(format!(
                "the batch API's answer is longer than {MAX_BATCH_ANSWER_BYTES} bytes"
            ))),
            _ => batch_answers(commands, status.as_u16(), &body.bytes),
        })
    }
}

/// The `Idempotency-Key` of a batch call: the same commands, in any order, make the same key.
fn batch_key(commands: &[ErasureCommand]) -> String {
    use sha2::{Digest, Sha256};
    let mut keys: Vec<&str> = commands
        .iter()
        .map(|c| c.idempotency_key.as_str())
        .collect();
    keys.sort_unstable();
    format!("batch:{}", hex::encode(Sha256::digest(keys.join("\n"))))
}

/// A batch answer: `{"results": [...]}`, one result per subject, found by idempotency key.
pub const MAX_BATCH_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// What a vendor's batch answer says of each command: `erased` and `not_found` are answers,
/// `failed` is the vendor's own failure (recorded, sent again by the watchdog); a command the
/// answer does not mention, or an outcome it does not know, is a failed send.
fn batch_answers(commands: &[ErasureCommand], http_status: u16, body: &[u8]) -> Vec<Delivery> {
    let results = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("results").and_then(|r| r.as_array()).cloned());
    let Some(results) = results else {
        return vec![
            Delivery::Failed("the batch API's answer is not {\"results\": [...]}".into());
            commands.len()
        ];
    };
    let by_key: HashMap<&str, &serde_json::Value> = results
        .iter()
        .filter_map(|r| Some((r.get("idempotency_key")?.as_str()?, r)))
        .collect();
    commands
        .iter()
        .map(|command| {
            let Some(result) = by_key.get(command.idempotency_key.as_str()) else {
                return Delivery::Failed("the batch API's answer says nothing of it".into());
            };
            let receipt = serde_json::json!({
                "http_status": http_status,
                "batch_of": commands.len(),
                "result": result,
            })
            .to_string();
            let status = match result.get("outcome").and_then(|o| o.as_str()) {
                Some("erased") => ObligationStatus::Confirmed,
                Some("not_found") => ObligationStatus::NotFound,
                Some("failed") => ObligationStatus::Failed,
                other => {
                    return Delivery::Failed(format!(
                        "the batch API's outcome {} is not erased, not_found or failed",
                        other.unwrap_or("(none)")
                    ))
                }
            };
            Delivery::Answered { status, receipt }
        })
        .collect()
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

    fn command(subject: &str) -> ErasureCommand {
        let request = dsr_domain::Request::receive(
            dsr_domain::RequestKind::Erasure,
            dsr_domain::SubjectId::parse(subject).unwrap(),
            chrono::Utc::now(),
        );
        ErasureCommand::new(
            &request,
            &dsr_domain::ServiceName::parse("ads").unwrap(),
            dsr_domain::identity::HolderIdentity::user_id(&request.subject),
            1,
            0,
            chrono::Utc::now(),
        )
    }

    #[test]
    fn a_batch_answer_is_read_per_subject_by_its_idempotency_key() {
        let commands: Vec<ErasureCommand> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| command(s))
            .collect();
        let key = |i: usize| commands[i].idempotency_key.clone();
        let body = serde_json::json!({"results": [
            // Any order; one it never asked about is ignored.
            {"idempotency_key": key(1), "outcome": "not_found"},
            {"idempotency_key": key(0), "outcome": "erased", "deleted": 3},
            {"idempotency_key": key(2), "outcome": "failed", "error": "locked"},
            {"idempotency_key": key(4), "outcome": "maybe"},
            {"idempotency_key": "erase:someone:else", "outcome": "erased"},
        ]})
        .to_string();
        let read: Vec<Result<ObligationStatus, String>> =
            batch_answers(&commands, 200, body.as_bytes())
                .into_iter()
                .map(|d| match d {
                    Delivery::Answered { status, receipt } => {
                        assert!(receipt.contains("\"batch_of\":5"), "{receipt}");
                        Ok(status)
                    }
                    Delivery::Failed(reason) => Err(reason),
                    other => panic!("{other:?}"),
                })
                .collect();
        assert_eq!(read[0], Ok(ObligationStatus::Confirmed));
        assert_eq!(read[1], Ok(ObligationStatus::NotFound));
        assert_eq!(read[2], Ok(ObligationStatus::Failed));
        assert!(read[3].as_ref().unwrap_err().contains("says nothing of it"));
        assert!(read[4].as_ref().unwrap_err().contains("maybe"));
        // Not the documented shape: nothing is known of any of them.
        for bad in ["[]", "{\"ok\": true}", "<html>"] {
            assert!(batch_answers(&commands, 200, bad.as_bytes())
                .iter()
                .all(|d| matches!(d, Delivery::Failed(r) if r.contains("results"))));
        }
    }

    #[test]
    fn a_batch_calls_key_is_the_same_for_the_same_commands_in_any_order() {
        let (a, b, c) = (command("a"), command("b"), command("c"));
        assert_eq!(
            batch_key(&[a.clone(), b.clone()]),
            batch_key(&[b.clone(), a.clone()])
        );
        assert_ne!(batch_key(&[a.clone(), b]), batch_key(&[a, c]));
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
