//! Stand-ins for the platform's existing services that hold personal data and take erasure
//! commands: small RabbitMQ consumers (profile, billing, viewing-history, email) and a
//! third-party HTTP API (an ad vendor). They behave as the contract asks real services to
//! (`docs/messages.schema.json`): erase once per idempotency key, confirm every command, and
//! the email service tells the subject on `erasure_notice`. They are not part of the service:
//! only `make run` and the tests start them. Their state is open for tests to inspect.

use anyhow::Result;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use dsr_bridge::Patience;
use dsr_domain::erasure::ErasureCommand;
use dsr_domain::report::export::ExportCommand;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How a fake service misbehaves, to test the watchdog and duplicates.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Takes commands and never confirms.
    pub silent: AtomicBool,
    /// Publishes every confirmation twice.
    pub duplicate_confirmations: AtomicBool,
    /// Hands every command back to the broker once after acting on it, so RabbitMQ delivers
    /// it a second time (as after a consumer crash before its ack).
    pub redeliver_once: AtomicBool,
    /// Answers this many erasures (new idempotency keys) with `erased` and keeps the data:
    /// what a verification is there to catch (`u32::MAX`: never erases).
    pub keeps_data: AtomicU32,
    /// Answers `export_subject` by uploading its records to the command's URL (as a service
    /// with much data does) instead of putting them in the answer.
    pub uploads_exports: AtomicBool,
    /// Broken on purpose (for `dsr-holder-check`): acts on every command, however often its
    /// idempotency key came before.
    pub not_idempotent: AtomicBool,
    /// Broken on purpose: acknowledges what it cannot read (lost) instead of dead-lettering it.
    pub acks_unreadable: AtomicBool,
    /// Broken on purpose: publishes its answers without `user_id`.
    pub anonymous_answers: AtomicBool,
}

/// One service's data and what happened to it.
#[derive(Default)]
pub struct ErasingService {
    pub name: String,
    /// Records per subject.
    pub data: Mutex<HashMap<String, Vec<Value>>>,
    /// Message ids of every command received (duplicates included).
    pub commands: Mutex<Vec<String>>,
    /// Idempotency keys acted on, with when: one per real erasure.
    pub erasures: Mutex<Vec<(String, DateTime<Utc>)>>,
    /// Email only: notices sent to subjects, per request id, with when.
    pub notices: Mutex<Vec<(String, DateTime<Utc>)>>,
    /// Jobs of the `export_subject` commands received (duplicates included).
    pub exports: Mutex<Vec<String>>,
    pub behaviour: Behaviour,
}

impl ErasingService {
    /// Drops everything about `subject`, as if it had never been seen.
    pub fn forget(&self, subject: &str) {
        lock(&self.data).remove(subject);
    }

    pub fn records(&self, subject: &str) -> usize {
        lock(&self.data).get(subject).map_or(0, Vec::len)
    }

    pub fn erasures_of(&self, request_id: &str) -> Vec<DateTime<Utc>> {
        lock(&self.erasures)
            .iter()
            .filter(|(key, _)| key.contains(request_id))
            .map(|(_, at)| *at)
            .collect()
    }

    pub fn commands_for(&self, request_id: &str) -> usize {
        lock(&self.commands)
            .iter()
            .filter(|id| id.contains(request_id))
            .count()
    }

    pub fn notices_of(&self, request_id: &str) -> Vec<DateTime<Utc>> {
        lock(&self.notices)
            .iter()
            .filter(|(id, _)| id == request_id)
            .map(|(_, at)| *at)
            .collect()
    }

    fn seed(&self, subject: &str, records: Vec<Value>) {
        lock(&self.data).insert(subject.to_owned(), records);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The AMQP services of one namespace, plus the ad vendor's API.
pub struct ErasingServices {
    pub amqp: HashMap<String, Arc<ErasingService>>,
    pub vendor: Arc<Vendor>,
    pub vendor_addr: SocketAddr,
}

impl ErasingServices {
    pub fn service(&self, name: &str) -> &Arc<ErasingService> {
        &self.amqp[name]
    }

    /// Seeds `subject` everywhere with a few records.
    pub fn seed(&self, subject: &str) {
        for (name, service) in &self.amqp {
            service.seed(
                subject,
                vec![
                    json!({"service": name, "kind": "example", "n": 1}),
                    json!({"service": name, "kind": "example", "n": 2}),
                ],
            );
        }
        self.vendor
            .service
            .seed(subject, vec![json!({"segment": "tea-lovers"})]);
    }

    /// Records left about `subject`, per service (vendor as `ads`).
    pub fn remaining(&self, subject: &str) -> HashMap<String, usize> {
        let mut left: HashMap<String, usize> = self
            .amqp
            .iter()
            .map(|(name, h)| (name.clone(), h.records(subject)))
            .collect();
        left.insert("ads".into(), self.vendor.service.records(subject));
        left
    }

    /// The registry entries (YAML list items) for these services; `email` is erased last.
    /// Each is readable too, as a platform's services are (what a report shows before an
    /// erasure is what the erasure must remove): over RabbitMQ (`export_subject`) for those in
    /// `over_amqp`, else through its data API on the vendor's port.
    pub fn registry_entries(
        &self,
        confirm_within_seconds: u64,
        max_sends: u32,
        over_amqp: &[&str],
    ) -> String {
        let mut yaml = String::new();
        let mut names: Vec<&String> = self.amqp.keys().collect();
        names.sort();
        for name in names {
            let last = name == "email";
            let collect = if over_amqp.contains(&name.as_str()) {
                format!("{{ kind: rabbitmq, routing_key: export.{name}, poll_seconds: 30 }}")
            } else {
                format!(
                    "{{ kind: http, url: \"http://{addr}/holders/{name}/users/{{subject}}\", records_pointer: /records, timeout_ms: 3000 }}",
                    addr = self.vendor_addr
                )
            };
            yaml.push_str(&format!(
                "  - name: {name}\n    description: The {name} service.\n    broker_user: {user}\n    collect: {collect}\n    erase: {{ via: {{ kind: rabbitmq, routing_key: erasure.{name} }}, last: {last}, confirm_within_seconds: {confirm_within_seconds}, max_sends: {max_sends} }}\n",
                user = broker_user(name),
            ));
        }
        yaml.push_str(&format!(
            "  - name: ads\n    description: Our advertising partner.\n    collect: {{ kind: http, url: \"http://{0}/v2/users/{{subject}}\", timeout_ms: 3000 }}\n    erase: {{ via: {{ kind: http, url: \"http://{0}/v2/users/{{subject}}\", not_found: {{ status: 404, body_contains: no_such_user }}, max_per_second: 20, timeout_ms: 3000 }}, confirm_within_seconds: {confirm_within_seconds}, max_sends: {max_sends} }}\n",
            self.vendor_addr
        ));
        yaml
    }
}

pub const AMQP_SERVICES: [&str; 4] = ["profile", "billing", "viewing-history", "email"];

/// The broker user a demo service connects and publishes as (`ensure-rabbitmq.sh` creates
/// them, password = user name): each service has its own identity, as on a real platform.
pub fn broker_user(service: &str) -> String {
    format!("dsr-demo-{service}")
}

/// `url` with `user`'s credentials instead of its own (local demo passwords are the names).
pub fn broker_url_as(url: &str, user: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{user}:{user}@{host}")
        }
        None => url.to_owned(),
    }
}

/// Starts the services: each consumes its commands under `namespace` until `stopped`,
/// reconnecting when the broker goes away, like a well-behaved service.
pub async fn start(
    url: &str,
    namespace: &str,
    vendor_listen: SocketAddr,
    stopped: watch::Receiver<bool>,
) -> Result<ErasingServices> {
    let mut amqp = HashMap::new();
    for name in AMQP_SERVICES {
        let service = Arc::new(ErasingService {
            name: name.to_owned(),
            ..ErasingService::default()
        });
        amqp.insert(name.to_owned(), service.clone());
        // Each service is its own broker user: its confirmations carry that identity.
        let url = &broker_url_as(url, &broker_user(name));
        // Declared before returning, so no command published from now on finds no queue.
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        declare(&channel, namespace, name).await?;
        let _ = channel.close(200, "declared".into()).await;
        let _ = conn.close(200, "declared".into()).await;
        tokio::spawn(serve_amqp(
            url.to_owned(),
            namespace.to_owned(),
            service,
            stopped.clone(),
        ));
    }
    let vendor = Arc::new(Vendor {
        service: ErasingService {
            name: "ads".into(),
            ..ErasingService::default()
        },
        failing: AtomicBool::new(false),
        rate_limited: AtomicU32::new(0),
        calls: AtomicU32::new(0),
        call_times: Mutex::new(Vec::new()),
        keys: Mutex::new(HashSet::new()),
        batches: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind(vendor_listen).await?;
    let vendor_addr = listener.local_addr()?;
    let router = Router::new()
        .route("/v2/users/{subject}", delete(vendor_erase).get(vendor_show))
        // An old API version that moved: a client following the redirect would erase there.
        .route("/v1/users/{subject}", delete(vendor_moved))
        // Its batch API: many subjects per call (`batch` in the registry).
        .route("/v2/erasures", post(vendor_erase_batch))
        .with_state(vendor.clone())
        .merge(
            Router::new()
                .route("/services/{subject}", get(remaining))
                .route("/holders/{name}/users/{subject}", get(holder_records))
                .with_state(Arc::new((amqp.clone(), vendor.clone()))),
        );
    let mut vendor_stop = stopped.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = vendor_stop.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok(ErasingServices {
        amqp,
        vendor,
        vendor_addr,
    })
}

fn queue_name(namespace: &str, name: &str) -> String {
    format!("{namespace}.svc.{name}")
}

/// The topology `docs/holders.md` asks of a holder: the three exchanges (durable topics), its
/// durable queue bound to its erasure and export routing keys, and a dead-letter queue beside
/// it where RabbitMQ moves what it rejects.
async fn declare(channel: &Channel, namespace: &str, name: &str) -> lapin::Result<()> {
    for exchange in ["commands", "events", "confirmations"] {
        dsr_bridge::declare_topic_exchange(channel, &format!("{namespace}.{exchange}")).await?;
    }
    let queue = queue_name(namespace, name);
    let dead_letters = format!("{queue}.dead-letter");
    channel
        .queue_declare(
            dead_letters.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        lapin::types::AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        lapin::types::AMQPValue::LongString(dead_letters.as_str().into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await?;
    for key in [format!("erasure.{name}"), format!("export.{name}")] {
        channel
            .queue_bind(
                queue.as_str().into(),
                format!("{namespace}.commands").as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    if name == "email" {
        // The email service also takes what it must tell subjects (`notice.*` on commands),
        // and, as the platform's one listener here, every event (the bridge publishes
        // mandatory: an event nobody is bound to would be retried as unroutable).
        for (exchange, key) in [("commands", "notice.#"), ("events", "#")] {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    format!("{namespace}.{exchange}").as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

async fn serve_amqp(
    url: String,
    namespace: String,
    service: Arc<ErasingService>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            result = consume(&url, &namespace, &service) => {
                if let Err(err) = result {
                    tracing::debug!(service = %service.name, error = %err, "fake service reconnecting");
                }
            }
        }
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Each step with the broker bounded, as the bridge's are: a connection that went quiet during
/// a broker restart is dropped, not waited on for ever.
async fn consume(url: &str, namespace: &str, service: &ErasingService) -> anyhow::Result<()> {
    let patience = Patience::default();
    let conn = patience
        .step(
            "connecting",
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await?;
    let consumed = consume_on(&conn, namespace, service, patience).await;
    dsr_bridge::abandon(conn, patience);
    consumed
}

async fn consume_on(
    conn: &Connection,
    namespace: &str,
    service: &ErasingService,
    patience: Patience,
) -> anyhow::Result<()> {
    let channel = patience.step("channel", conn.create_channel()).await?;
    patience
        .step("declaring", declare(&channel, namespace, &service.name))
        .await?;
    patience
        .step("qos", channel.basic_qos(16, BasicQosOptions::default()))
        .await?;
    let replies = patience.step("channel", conn.create_channel()).await?;
    patience
        .step(
            "confirms",
            replies.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
    let queue = queue_name(namespace, &service.name);
    let mut consumer = patience
        .step(
            "consuming",
            channel.basic_consume(
                queue.as_str().into(),
                format!("fake-{}", service.name).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    let mut probes = tokio::time::interval(patience.probe_every);
    probes.tick().await;
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            _ = probes.tick() => {
                let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
                patience
                    .step("probing", channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()))
                    .await?;
                continue;
            }
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        let body: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
        // What it cannot read goes to its dead-letter queue (RabbitMQ moves it there), never
        // silently away; events and notices it has no use for are simply acknowledged.
        let unreadable = match body["type"].as_str() {
            None => true,
            Some("erase_subject") => {
                serde_json::from_value::<ErasureCommand>(body.clone()).is_err()
            }
            Some("export_subject") => {
                serde_json::from_value::<ExportCommand>(body.clone()).is_err()
            }
            Some(_) => false,
        };
        if unreadable && service.behaviour.acks_unreadable.load(Ordering::SeqCst) {
            patience
                .step("acknowledging", delivery.ack(BasicAckOptions::default()))
                .await?;
            continue;
        }
        if unreadable {
            tracing::warn!(service = %service.name, "fake service: a message it cannot read, dead-lettered");
            patience
                .step(
                    "rejecting",
                    delivery.reject(lapin::options::BasicRejectOptions { requeue: false }),
                )
                .await?;
            continue;
        }
        if body["type"] == "export_subject" {
            if let Ok(command) = serde_json::from_value::<ExportCommand>(body) {
                lock(&service.exports).push(command.job.clone());
                let answer = export_answer(service, &command).await;
                publish_answer(&replies, patience, namespace, service, "export", &answer).await?;
            }
        } else if body["type"] == "subject_notice" && body["notice"] == "erasure_notice" {
            let request_id = body["request_id"].as_str().unwrap_or_default().to_owned();
            let mut notices = lock(&service.notices);
            // Idempotent by message id: one email per request.
            if !notices.iter().any(|(id, _)| *id == request_id) {
                tracing::info!(service = %service.name, %request_id, "fake email service: told the subject their data was erased");
                notices.push((request_id, Utc::now()));
            }
        } else if let Ok(command) = serde_json::from_value::<ErasureCommand>(body) {
            lock(&service.commands).push(command.message_id.clone());
            let first = {
                let mut erasures = lock(&service.erasures);
                let seen = erasures.iter().any(|(k, _)| *k == command.idempotency_key)
                    && !service.behaviour.not_idempotent.load(Ordering::SeqCst);
                if !seen {
                    erasures.push((command.idempotency_key.clone(), Utc::now()));
                }
                !seen
            };
            tracing::info!(service = %service.name, request_id = %command.request_id, attempt = command.attempt, first, "fake service: erase command");
            let lies = first
                && service
                    .behaviour
                    .keeps_data
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                        0 => None,
                        u32::MAX => Some(u32::MAX),
                        n => Some(n - 1),
                    })
                    .is_ok();
            let removed = if first && !lies {
                lock(&service.data)
                    .remove(command.subject.as_str())
                    .map_or(0, |r| r.len())
            } else {
                0
            };
            if !service.behaviour.silent.load(Ordering::SeqCst) {
                let confirmation = json!({
                    "type": "erasure_confirmation",
                    "version": 1,
                    "message_id": format!("confirmation:{}", command.message_id),
                    "request_id": command.request_id,
                    "service": service.name,
                    "outcome": if first && removed == 0 && !lies { "not_found" } else { "erased" },
                    "receipt": { "records_deleted": removed, "reference": format!("{}-{}", service.name, command.attempt) },
                });
                let copies = if service
                    .behaviour
                    .duplicate_confirmations
                    .load(Ordering::SeqCst)
                {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    publish_answer(
                        &replies,
                        patience,
                        namespace,
                        service,
                        "confirmation",
                        &confirmation,
                    )
                    .await?;
                }
            }
        }
        // Acknowledged only after the confirmation is on the broker: a restart in between
        // redelivers the command, which the idempotency key absorbs.
        if service.behaviour.redeliver_once.load(Ordering::SeqCst) && !delivery.redelivered {
            patience
                .step(
                    "requeueing",
                    delivery.nack(lapin::options::BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    }),
                )
                .await?;
        } else {
            patience
                .step("acknowledging", delivery.ack(BasicAckOptions::default()))
                .await?;
        }
    }
    Err(anyhow::anyhow!("consumer ended"))
}

/// Publishes an answer to `<ns>.confirmations` under `<kind>.<service>`, persistent, with its
/// `message_id`, as the service's broker user (RabbitMQ refuses a `user_id` that is not the
/// connection's own, so it cannot be forged), and waits for the broker's confirm.
async fn publish_answer(
    replies: &Channel,
    patience: Patience,
    namespace: &str,
    service: &ErasingService,
    kind: &str,
    answer: &Value,
) -> anyhow::Result<()> {
    let message_id = answer["message_id"].as_str().unwrap_or_default();
    patience
        .step("answering", async {
            replies
                .basic_publish(
                    format!("{namespace}.confirmations").as_str().into(),
                    format!("{kind}.{}", service.name).as_str().into(),
                    BasicPublishOptions::default(),
                    answer.to_string().as_bytes(),
                    signed(
                        service,
                        BasicProperties::default()
                            .with_message_id(message_id.into())
                            .with_content_type("application/json".into())
                            .with_delivery_mode(2),
                    ),
                )
                .await?
                .await
        })
        .await?;
    Ok(())
}

/// An answer's properties with the `user_id` of the service's broker user (none when it is
/// broken so).
fn signed(service: &ErasingService, properties: BasicProperties) -> BasicProperties {
    if service.behaviour.anonymous_answers.load(Ordering::SeqCst) {
        properties
    } else {
        properties.with_user_id(broker_user(&service.name).as_str().into())
    }
}

/// The answer to an `export_subject`: the records in it, or uploaded to the command's URL
/// (then `uploaded`), or `not_found`; `failed` if the upload did not go through.
async fn export_answer(service: &ErasingService, command: &ExportCommand) -> Value {
    let records = lock(&service.data)
        .get(command.subject.as_str())
        .cloned()
        .unwrap_or_default();
    let mut answer = json!({
        "type": "export_answer",
        "version": 1,
        "message_id": format!("answer:{}", command.message_id),
        "request_id": command.request_id,
        "service": service.name,
        "job": command.job,
    });
    if records.is_empty() {
        answer["outcome"] = json!("not_found");
    } else if service.behaviour.uploads_exports.load(Ordering::SeqCst) {
        let body: String = records.iter().map(|r| format!("{r}\n")).collect();
        let uploaded = reqwest::Client::new()
            .put(&command.upload_url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.error_for_status().map(|_| ()).map_err(|e| e.to_string()));
        match uploaded {
            Ok(()) => answer["outcome"] = json!("uploaded"),
            Err(err) => {
                answer["outcome"] = json!("failed");
                answer["reason"] = json!(format!("the upload failed: {err}"));
            }
        }
    } else {
        answer["outcome"] = json!("records");
        answer["records"] = Value::Array(records);
    }
    answer
}

/// A third party's erasure API: `DELETE /v2/users/{subject}` with an `Idempotency-Key`.
pub struct Vendor {
    pub service: ErasingService,
    /// Answers 503 while set.
    pub failing: AtomicBool,
    /// Answers this many calls with 429 and `Retry-After: 1` (its own rate limit).
    pub rate_limited: AtomicU32,
    pub calls: AtomicU32,
    /// When each erase call came in.
    pub call_times: Mutex<Vec<std::time::Instant>>,
    keys: Mutex<HashSet<String>>,
    /// The batch calls made: each call's subjects.
    pub batches: Mutex<Vec<Vec<String>>>,
}

impl Vendor {
    /// Counts an erase call; while it is rate limited, its 429 with `Retry-After: 1`.
    fn called(&self) -> Option<(StatusCode, HeaderMap, Json<Value>)> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        lock(&self.call_times).push(std::time::Instant::now());
        self.rate_limited
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()?;
        let mut retry = HeaderMap::new();
        retry.insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        Some((
            StatusCode::TOO_MANY_REQUESTS,
            retry,
            Json(json!({"error": "slow down"})),
        ))
    }

    /// Distinct idempotency keys seen.
    pub fn keys(&self) -> usize {
        lock(&self.keys).len()
    }
}

async fn vendor_erase(
    State(vendor): State<Arc<Vendor>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, Json<Value>) {
    if let Some(slow_down) = vendor.called() {
        return slow_down;
    }
    let (status, body) = vendor_erase_now(&vendor, &subject, &headers);
    (status, HeaderMap::new(), body)
}

fn vendor_erase_now(
    vendor: &Vendor,
    subject: &str,
    headers: &HeaderMap,
) -> (StatusCode, Json<Value>) {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Idempotency-Key required"})),
        );
    };
    if vendor.failing.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "maintenance"})),
        );
    }
    let known = lock(&vendor.service.data).contains_key(subject);
    if !known && !lock(&vendor.keys).contains(&key) {
        // The vendor's documented "never heard of them" (the registry's `not_found`).
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no_such_user"})),
        );
    }
    let first = lock(&vendor.keys).insert(key.clone());
    let removed = if first {
        lock(&vendor.service.erasures).push((key.clone(), Utc::now()));
        lock(&vendor.service.data)
            .remove(subject)
            .map_or(0, |r| r.len())
    } else {
        0
    };
    (
        StatusCode::OK,
        Json(
            json!({"deleted": removed, "deletion_id": format!("del-{}", key.len()), "replayed": !first}),
        ),
    )
}

/// `POST /v2/erasures` with `{"erasures": [{"idempotency_key", "request_id", "subject"}]}`:
/// each subject as the single call would treat it, answered together in `results`. Its rate
/// limit and maintenance answer apply to the call as a whole.
async fn vendor_erase_batch(
    State(vendor): State<Arc<Vendor>>,
    Json(body): Json<Value>,
) -> (StatusCode, HeaderMap, Json<Value>) {
    if let Some(slow_down) = vendor.called() {
        return slow_down;
    }
    if vendor.failing.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            HeaderMap::new(),
            Json(json!({"error": "maintenance"})),
        );
    }
    let Some(erasures) = body.get("erasures").and_then(Value::as_array) else {
        return (
            StatusCode::BAD_REQUEST,
            HeaderMap::new(),
            Json(json!({"error": "erasures required"})),
        );
    };
    let mut subjects = Vec::new();
    let mut results = Vec::new();
    for erasure in erasures {
        let (Some(key), Some(subject)) = (
            erasure.get("idempotency_key").and_then(Value::as_str),
            erasure.get("subject").and_then(Value::as_str),
        ) else {
            continue;
        };
        subjects.push(subject.to_owned());
        let mut headers = HeaderMap::new();
        if let Ok(value) = axum::http::HeaderValue::from_str(key) {
            headers.insert("idempotency-key", value);
        }
        let (status, Json(detail)) = vendor_erase_now(&vendor, subject, &headers);
        let outcome = match status {
            StatusCode::OK => "erased",
            StatusCode::NOT_FOUND => "not_found",
            _ => "failed",
        };
        results.push(json!({"idempotency_key": key, "outcome": outcome, "detail": detail}));
    }
    lock(&vendor.batches).push(subjects);
    (
        StatusCode::OK,
        HeaderMap::new(),
        Json(json!({"results": results})),
    )
}

async fn vendor_moved(
    State(vendor): State<Arc<Vendor>>,
    Path(subject): Path<String>,
) -> (StatusCode, HeaderMap) {
    vendor.calls.fetch_add(1, Ordering::SeqCst);
    let mut headers = HeaderMap::new();
    if let Ok(location) = format!("/v2/users/{subject}").parse() {
        headers.insert(axum::http::header::LOCATION, location);
    }
    (StatusCode::PERMANENT_REDIRECT, headers)
}

/// The AMQP services by name, and the vendor.
type Everyone = (HashMap<String, Arc<ErasingService>>, Arc<Vendor>);

/// `GET /services/{subject}`: records each fake service still has about the subject.
async fn remaining(State(state): State<Arc<Everyone>>, Path(subject): Path<String>) -> Json<Value> {
    let (amqp, vendor) = &*state;
    let mut left: serde_json::Map<String, Value> = amqp
        .iter()
        .map(|(name, h)| (name.clone(), json!(h.records(&subject))))
        .collect();
    left.insert("ads".into(), json!(vendor.service.records(&subject)));
    Json(Value::Object(left))
}

/// `GET /holders/{name}/users/{subject}`: what one service holds about the subject, as its
/// data API would answer the report function (`{"records": [...]}`, 404 when nothing).
async fn holder_records(
    State(state): State<Arc<Everyone>>,
    Path((name, subject)): Path<(String, String)>,
) -> (StatusCode, Json<Value>) {
    let records = state
        .0
        .get(&name)
        .and_then(|service| lock(&service.data).get(&subject).cloned());
    match records {
        Some(records) if !records.is_empty() => {
            (StatusCode::OK, Json(json!({ "records": records })))
        }
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such user"})),
        ),
    }
}

async fn vendor_show(
    State(vendor): State<Arc<Vendor>>,
    Path(subject): Path<String>,
) -> (StatusCode, Json<Value>) {
    match lock(&vendor.service.data).get(&subject) {
        Some(records) => (StatusCode::OK, Json(Value::Array(records.clone()))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such user"})),
        ),
    }
}
