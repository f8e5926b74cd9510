//! `dsr-holder-check`: what a holder team runs against its own service (through RabbitMQ, on the
//! local stack or its staging broker) to see that it follows the contract of docs/holders.md.
//! It sends the holder real commands under made-up request ids and checks every answer: on
//! time, published as the holder's broker user, persistent, valid against
//! `docs/messages.schema.json`; an erasure done once per idempotency key; what the holder
//! cannot read dead-lettered; an export with valid records, and nothing left after the erasure.
//!
//! Run it against a namespace whose confirmations no live service acts on (the local stack, a
//! staging broker): its commands are for made-up requests, and a bridge that forwards the
//! answers sees them as answers to requests it does not know (dead-lettered, alarmed).

use anyhow::{anyhow, bail, Context};
use chrono::Utc;
use dsr_domain::registry::{CollectFrom, ErasureRoute, HowToErase, ServiceRegistry};
use dsr_domain::ServiceName;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The contract the answers are held to.
const SCHEMA: &str = include_str!("../../../docs/messages.schema.json");

/// What to check, and where.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker, as a user that may publish to `<ns>.commands` and bind to
    /// `<ns>.confirmations`.
    pub amqp_url: String,
    pub namespace: String,
    /// The holder's name in the registry.
    pub service: String,
    /// A subject the holder holds test data about (an export should find records, the erasure
    /// erases them).
    pub subject: String,
    /// How long the holder may take for each answer.
    pub within: Duration,
    /// Where the check takes uploads (export answers too big for a message).
    pub upload_listen: SocketAddr,
    /// The address the holder reaches that listener at (default: `http://<upload_listen>`).
    pub upload_base_url: Option<String>,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    /// `None`: not applicable to this holder (skipped).
    pub passed: Option<bool>,
    pub detail: String,
}

impl Check {
    fn new(name: &str, passed: bool, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            passed: Some(passed),
            detail: detail.into(),
        }
    }

    fn skipped(name: &str, why: &str) -> Self {
        Check {
            name: name.into(),
            passed: None,
            detail: why.into(),
        }
    }
}

/// Whether every check that applied passed.
pub fn all_passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.passed != Some(false))
}

/// The pass/fail table.
pub fn table(checks: &[Check]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::ASCII_MARKDOWN)
        .set_header(["#", "check", "result", "detail"]);
    for (n, check) in checks.iter().enumerate() {
        let result = match check.passed {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "skip",
        };
        table.add_row([
            (n + 1).to_string(),
            check.name.clone(),
            result.into(),
            check.detail.clone(),
        ]);
    }
    let failed = checks.iter().filter(|c| c.passed == Some(false)).count();
    let passed = checks.iter().filter(|c| c.passed == Some(true)).count();
    format!("{table}\n{passed} passed, {failed} failed\n")
}

/// An answer the holder published, with the properties it was published with.
#[derive(Debug, Clone)]
struct Answer {
    body: Value,
    user_id: Option<String>,
    message_id: Option<String>,
    delivery_mode: Option<u8>,
    arrived: Instant,
}

/// Answers as they arrive, and a way to wait for one.
struct Answers {
    incoming: mpsc::UnboundedReceiver<Answer>,
    seen: Vec<Answer>,
}

impl Answers {
    /// The first answer `matches` accepts, within `within` of `since`.
    async fn wait(
        &mut self,
        within: Duration,
        since: Instant,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Answer> {
        if let Some(found) = self.seen.iter().find(|a| matches(&a.body)) {
            return Some(found.clone());
        }
        let deadline = tokio::time::Instant::from_std(since + within);
        loop {
            let next = tokio::time::timeout_at(deadline, self.incoming.recv()).await;
            match next {
                Ok(Some(answer)) => {
                    let hit = matches(&answer.body);
                    self.seen.push(answer.clone());
                    if hit {
                        return Some(answer);
                    }
                }
                _ => return None,
            }
        }
    }
}

/// What the registry says of the holder.
struct Holder {
    name: ServiceName,
    broker_user: String,
    erase_key: Option<String>,
    export_key: Option<String>,
    /// The identifiers its commands carry (its registry entry's `identifiers`).
    identifiers: Vec<dsr_domain::identity::IdentifierKind>,
}

fn holder(registry: &ServiceRegistry, service: &str) -> anyhow::Result<Holder> {
    let name = ServiceName::parse(service).map_err(|e| anyhow!("{e}"))?;
    let entry = registry
        .service(&name)
        .ok_or_else(|| anyhow!("`{service}` is not in the service registry"))?;
    let erase_key = match &entry.erase {
        Some(HowToErase {
            via: ErasureRoute::Rabbitmq { routing_key },
            ..
        }) => Some(routing_key.clone()),
        _ => None,
    };
    let export_key = match &entry.collect {
        Some(CollectFrom::Rabbitmq { routing_key, .. }) => Some(routing_key.clone()),
        _ => None,
    };
    if erase_key.is_none() && export_key.is_none() {
        bail!("`{service}` is neither erased nor read over RabbitMQ in the registry: nothing to check over the broker");
    }
    let broker_user = entry
        .broker_user
        .clone()
        .ok_or_else(|| anyhow!("`{service}` has no broker_user in the registry"))?;
    Ok(Holder {
        name,
        broker_user,
        erase_key,
        export_key,
        identifiers: entry.identifiers(),
    })
}

/// Runs every check that applies to `settings.service` as `registry` describes it.
pub async fn run(settings: &Settings, registry: &ServiceRegistry) -> anyhow::Result<Vec<Check>> {
    let holder = holder(registry, &settings.service)?;
    let connection = Connection::connect(&settings.amqp_url, ConnectionProperties::default())
        .await
        .with_context(|| "connecting to the broker")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let ns = &settings.namespace;
    for exchange in ["commands", "confirmations"] {
        channel
            .exchange_declare(
                format!("{ns}.{exchange}").as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    let mut answers = listen(&connection, ns).await?;
    let uploads = Uploads::default();
    let upload_base = serve_uploads(settings, uploads.clone()).await?;
    let schema: Value = serde_json::from_str(SCHEMA)?;
    let ctx = Run {
        settings,
        holder: &holder,
        connection: &connection,
        channel: &channel,
        schema,
        uploads,
        upload_base,
    };

    let mut checks = vec![ctx.topology().await];
    let before = match &holder.export_key {
        Some(key) => {
            let (check, records) = ctx
                .export(&mut answers, key, "export_subject answered")
                .await?;
            checks.push(check);
            records
        }
        None => {
            checks.push(Check::skipped(
                "export_subject answered",
                "not read over RabbitMQ (registry `collect` is not kind rabbitmq)",
            ));
            None
        }
    };
    match &holder.erase_key {
        Some(key) => {
            let request = dsr_domain::RequestId::new_at(Utc::now());
            let (first, outcome) = ctx
                .erase(
                    &mut answers,
                    key,
                    request,
                    "erase_subject confirmed",
                    before,
                )
                .await?;
            checks.push(first);
            let (again, second) = ctx
                .erase(
                    &mut answers,
                    key,
                    request,
                    "the same erase_subject again: confirmed, not erased again",
                    None,
                )
                .await?;
            checks.push(match (again.passed, outcome, second) {
                (Some(true), Some(first), Some(second)) if first != second => Check::new(
                    &again.name,
                    false,
                    format!("answered `{second}` the second time, `{first}` the first: the command was acted on twice (keep the idempotency key with the erasure)"),
                ),
                _ => again,
            });
        }
        None => {
            for name in [
                "erase_subject confirmed",
                "the same erase_subject again: confirmed, not erased again",
            ] {
                checks.push(Check::skipped(name, "not erased over RabbitMQ"));
            }
        }
    }
    match (&holder.export_key, &holder.erase_key) {
        (Some(key), Some(_)) => {
            let (mut check, records) = ctx
                .export(
                    &mut answers,
                    key,
                    "after the erasure, its export holds nothing",
                )
                .await?;
            if let Some(left) = records.filter(|n| *n > 0) {
                check = Check::new(
                    &check.name,
                    false,
                    format!("{left} records about the subject are still there"),
                );
            }
            checks.push(check);
        }
        _ => checks.push(Check::skipped(
            "after the erasure, its export holds nothing",
            "needs both erase and export over RabbitMQ",
        )),
    }
    checks.push(ctx.unreadable().await?);
    let _ = connection.close(200, "checked".into()).await;
    Ok(checks)
}

/// A queue of the check's own, bound to every answer on `<ns>.confirmations`.
async fn listen(connection: &Connection, ns: &str) -> anyhow::Result<Answers> {
    let channel = connection.create_channel().await?;
    let queue = format!(
        "{ns}.holder-check.{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            format!("{ns}.confirmations").as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "holder-check".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (tx, incoming) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = consumer.next().await {
            let props = &delivery.properties;
            let answer = Answer {
                body: serde_json::from_slice(&delivery.data).unwrap_or(Value::Null),
                user_id: props.user_id().as_ref().map(|u| u.to_string()),
                message_id: props.message_id().as_ref().map(|m| m.to_string()),
                delivery_mode: *props.delivery_mode(),
                arrived: Instant::now(),
            };
            let _ = delivery.ack(BasicAckOptions::default()).await;
            if tx.send(answer).is_err() {
                break;
            }
        }
    });
    Ok(Answers {
        incoming,
        seen: Vec::new(),
    })
}

/// Bodies uploaded per job.
#[derive(Clone, Default)]
struct Uploads(Arc<Mutex<HashMap<String, Vec<u8>>>>);

async fn serve_uploads(settings: &Settings, uploads: Uploads) -> anyhow::Result<String> {
    use axum::extract::{Path, State};
    let listener = tokio::net::TcpListener::bind(settings.upload_listen)
        .await
        .with_context(|| format!("listening for uploads on {}", settings.upload_listen))?;
    let address = listener.local_addr()?;
    let router = axum::Router::new()
        .route(
            "/uploads/{job}",
            axum::routing::put(
                |State(uploads): State<Uploads>,
                 Path(job): Path<String>,
                 body: axum::body::Bytes| async move {
                    uploads
                        .0
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(job, body.to_vec());
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(uploads);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(settings
        .upload_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}")))
}

struct Run<'a> {
    settings: &'a Settings,
    holder: &'a Holder,
    connection: &'a Connection,
    channel: &'a Channel,
    schema: Value,
    uploads: Uploads,
    upload_base: String,
}

impl Run<'_> {
    async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
    ) -> anyhow::Result<()> {
        self.channel
            .basic_publish(
                format!("{}.commands", self.settings.namespace)
                    .as_str()
                    .into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_message_id(message_id.into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?
            .await?;
        Ok(())
    }

    /// What is wrong with an answer besides its content: who published it, how, how late.
    fn problems(&self, answer: &Answer, definition: &str, since: Instant) -> Vec<String> {
        let mut problems = Vec::new();
        if answer.user_id.as_deref() != Some(self.holder.broker_user.as_str()) {
            problems.push(format!(
                "published with user_id {:?}, not its broker user `{}`",
                answer.user_id, self.holder.broker_user
            ));
        }
        if answer.message_id.as_deref() != answer.body["message_id"].as_str() {
            problems.push("the message_id property is not the body's message_id".into());
        }
        if answer.delivery_mode != Some(2) {
            problems.push("not persistent (delivery_mode 2)".into());
        }
        let one = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": self.schema["$defs"],
            "$ref": format!("#/$defs/{definition}"),
        });
        match jsonschema::validator_for(&one) {
            Ok(validator) => {
                let errors: Vec<String> = validator
                    .iter_errors(&answer.body)
                    .map(|e| format!("{e} at `{}`", e.instance_path))
                    .take(3)
                    .collect();
                if !errors.is_empty() {
                    problems.push(format!("not a valid {definition}: {}", errors.join("; ")));
                }
            }
            Err(e) => problems.push(format!("the schema does not compile: {e}")),
        }
        let took = answer.arrived.saturating_duration_since(since);
        if took > self.settings.within {
            problems.push(format!("answered after {took:?}"));
        }
        problems
    }

    async fn topology(&self) -> Check {
        let name = "its queue is consumed and has a dead-letter queue";
        let queue = format!("{}.svc.{}", self.settings.namespace, self.holder.name);
        let dead = format!("{queue}.dead-letter");
        match (
            passive(self.connection, &queue).await,
            passive(self.connection, &dead).await,
        ) {
            (Ok((_, consumers)), Ok(_)) if consumers > 0 => Check::new(
                name,
                true,
                format!("{queue}: {consumers} consumer(s); {dead}"),
            ),
            (Ok(_), Ok(_)) => Check::new(name, false, format!("nobody consumes {queue}")),
            (Err(_), _) => Check::new(name, false, format!("no queue {queue}")),
            (_, Err(_)) => Check::new(name, false, format!("no dead-letter queue {dead}")),
        }
    }

    /// The identifiers the holder asked for (its registry entry's), each standing for the
    /// check's subject: the check has one test subject, however the holder knows it.
    fn identifiers(&self) -> Value {
        Value::Object(
            self.holder
                .identifiers
                .iter()
                .map(|kind| (kind.to_string(), json!(self.settings.subject)))
                .collect(),
        )
    }

    /// Sends `export_subject` and judges the answer; the records it gave, if it answered.
    async fn export(
        &self,
        answers: &mut Answers,
        routing_key: &str,
        name: &str,
    ) -> anyhow::Result<(Check, Option<u64>)> {
        let request = dsr_domain::RequestId::new_at(Utc::now());
        let job = ulid::Ulid::new().to_string();
        let message_id = format!("export:{request}:{}:{job}", self.holder.name);
        let now = Utc::now();
        let command = json!({
            "version": 1, "type": "export_subject", "message_id": message_id,
            "request_id": request, "service": self.holder.name, "subject": self.settings.subject,
            "identifiers": self.identifiers(), "job": job, "upload_url": format!("{}/uploads/{job}", self.upload_base),
            "answer_by": now + chrono::Duration::from_std(self.settings.within).unwrap_or_default(),
            "sent_at": now,
        });
        let since = Instant::now();
        self.publish(routing_key, command.to_string().as_bytes(), &message_id)
            .await?;
        let job_matches =
            |body: &Value| body["type"] == "export_answer" && body["job"] == job.as_str();
        let Some(answer) = answers.wait(self.settings.within, since, job_matches).await else {
            return Ok((
                Check::new(
                    name,
                    false,
                    format!("no export_answer within {:?}", self.settings.within),
                ),
                None,
            ));
        };
        let mut problems = self.problems(&answer, "ExportAnswer", since);
        let took = answer.arrived.saturating_duration_since(since);
        let records = match answer.body["outcome"].as_str() {
            Some("records") => Some((
                answer.body["records"].as_array().map_or(0, Vec::len) as u64,
                "in the answer",
            )),
            Some("not_found") => Some((0, "not_found")),
            Some("uploaded") => {
                let body = self
                    .uploads
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&job)
                    .cloned();
                match body {
                    None => {
                        problems.push("said `uploaded` but nothing was uploaded".into());
                        None
                    }
                    Some(body) => {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        let mut count = 0;
                        for (n, line) in text
                            .lines()
                            .enumerate()
                            .filter(|(_, l)| !l.trim().is_empty())
                        {
                            if serde_json::from_str::<Value>(line).is_err() {
                                problems.push(format!("uploaded line {} is not JSON", n + 1));
                                break;
                            }
                            count += 1;
                        }
                        Some((count, "uploaded"))
                    }
                }
            }
            Some("failed") => {
                problems.push(format!(
                    "answered `failed`: {}",
                    answer.body["reason"].as_str().unwrap_or("")
                ));
                None
            }
            _ => None,
        };
        if problems.is_empty() {
            let (count, how) = records.unwrap_or((0, ""));
            Ok((
                Check::new(
                    name,
                    true,
                    format!("{count} records ({how}) in {:.1} s", took.as_secs_f64()),
                ),
                Some(count),
            ))
        } else {
            Ok((
                Check::new(name, false, problems.join("; ")),
                records.map(|(n, _)| n),
            ))
        }
    }

    /// Sends `erase_subject` for `request` (the same command each time) and judges the
    /// confirmation; its outcome, if it confirmed.
    async fn erase(
        &self,
        answers: &mut Answers,
        routing_key: &str,
        request: dsr_domain::RequestId,
        name: &str,
        held: Option<u64>,
    ) -> anyhow::Result<(Check, Option<String>)> {
        let key = format!("erase:{request}:{}", self.holder.name);
        let message_id = format!("{key}:1");
        let command = json!({
            "version": 1, "type": "erase_subject", "message_id": message_id,
            "idempotency_key": key, "request_id": request, "service": self.holder.name,
            "subject": self.settings.subject, "identifiers": self.identifiers(), "attempt": 1,
            "sent_at": Utc::now(),
        });
        // The answer to an earlier send of this command does not count for this one.
        answers
            .seen
            .retain(|a| a.body["request_id"] != request.to_string());
        let since = Instant::now();
        self.publish(routing_key, command.to_string().as_bytes(), &message_id)
            .await?;
        let mine = |body: &Value| {
            body["type"] == "erasure_confirmation" && body["request_id"] == request.to_string()
        };
        let answer = answers.wait(self.settings.within, since, mine).await;
        let Some(answer) = answer else {
            return Ok((
                Check::new(
                    name,
                    false,
                    format!("no erasure_confirmation within {:?}", self.settings.within),
                ),
                None,
            ));
        };
        let mut problems = self.problems(&answer, "ErasureConfirmation", since);
        let outcome = answer.body["outcome"].as_str().map(str::to_owned);
        match (outcome.as_deref(), held) {
            (Some("erased" | "not_found"), _) if held.is_none_or(|n| n == 0) => {}
            (Some("erased"), _) => {}
            (Some(other), Some(n)) => problems.push(format!(
                "answered `{other}` though its export had {n} records"
            )),
            (other, _) => problems.push(format!("outcome {other:?}")),
        }
        let took = answer.arrived.saturating_duration_since(since);
        let check = if problems.is_empty() {
            Check::new(
                name,
                true,
                format!(
                    "`{}` in {:.1} s",
                    outcome.as_deref().unwrap_or(""),
                    took.as_secs_f64()
                ),
            )
        } else {
            Check::new(name, false, problems.join("; "))
        };
        Ok((check, outcome))
    }

    /// Two messages it cannot read (not JSON; an erase_subject without its subject) must end
    /// in its dead-letter queue, unanswered.
    async fn unreadable(&self) -> anyhow::Result<Check> {
        let name = "what it cannot read goes to its dead-letter queue";
        let dead = format!(
            "{}.svc.{}.dead-letter",
            self.settings.namespace, self.holder.name
        );
        let Ok((before, _)) = passive(self.connection, &dead).await else {
            return Ok(Check::new(
                name,
                false,
                format!("no dead-letter queue {dead}"),
            ));
        };
        let key = self
            .holder
            .erase_key
            .as_deref()
            .or(self.holder.export_key.as_deref())
            .unwrap_or_default();
        let request = dsr_domain::RequestId::new_at(Utc::now());
        let broken = json!({"version": 1, "type": "erase_subject", "message_id": format!("erase:{request}:{}:1", self.holder.name), "request_id": request});
        self.publish(key, b"this is not JSON", &format!("garbage:{request}"))
            .await?;
        self.publish(
            key,
            broken.to_string().as_bytes(),
            &format!("broken:{request}"),
        )
        .await?;
        let deadline = Instant::now() + self.settings.within;
        loop {
            let (now, _) = passive(self.connection, &dead).await?;
            if now >= before + 2 {
                return Ok(Check::new(
                    name,
                    true,
                    format!("2 messages moved to {dead}"),
                ));
            }
            if Instant::now() >= deadline {
                return Ok(Check::new(
                    name,
                    false,
                    format!(
                        "{} of 2 unreadable messages reached {dead} within {:?} (reject them with requeue=false)",
                        now.saturating_sub(before),
                        self.settings.within
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A queue's message and consumer counts, if it exists (on a channel of its own: the broker
/// closes a channel whose passive declaration failed).
async fn passive(connection: &Connection, queue: &str) -> anyhow::Result<(u32, u32)> {
    let probe = connection.create_channel().await?;
    let declared = probe
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = probe.close(200, "probed".into()).await;
    let q = declared?;
    Ok((q.message_count(), q.consumer_count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_what_passed_and_what_failed() {
        let checks = vec![
            Check::new("a", true, "fine"),
            Check::new("b", false, "answered twice"),
            Check::skipped("c", "not applicable"),
        ];
        let text = table(&checks);
        assert!(text.contains("PASS") && text.contains("FAIL") && text.contains("skip"));
        assert!(text.contains("answered twice"));
        assert!(text.ends_with("1 passed, 1 failed\n"), "{text}");
        assert!(!all_passed(&checks));
        assert!(all_passed(&checks[..1]));
    }

    #[test]
    fn a_service_that_is_neither_erased_nor_read_over_the_broker_is_refused() {
        let registry = ServiceRegistry::parse(
            "services:\n  - name: web\n    collect: {kind: s3, bucket: b, prefix: \"u/{subject}/\"}\n",
        )
        .unwrap();
        let refused = holder(&registry, "web").err().unwrap().to_string();
        assert!(refused.contains("nothing to check"), "{refused}");
        assert!(holder(&registry, "nobody").is_err());
    }

    #[test]
    fn its_own_commands_follow_the_schema() {
        // The shapes `export` and `erase` send, checked against the contract they hold
        // the holder to.
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let request = dsr_domain::RequestId::new_at(Utc::now());
        let job = ulid::Ulid::new().to_string();
        let now = Utc::now();
        for command in [
            json!({"version": 1, "type": "export_subject", "message_id": format!("export:{request}:ledger:{job}"),
                "request_id": request, "service": "ledger", "subject": "s",
                "identifiers": {"user_id": "s"}, "job": job, "upload_url": "http://127.0.0.1:1/uploads/x", "answer_by": now, "sent_at": now}),
            json!({"version": 1, "type": "erase_subject", "message_id": format!("erase:{request}:ledger:1"),
                "idempotency_key": format!("erase:{request}:ledger"), "request_id": request,
                "service": "ledger", "subject": "s", "identifiers": {"email": "s"},
                "attempt": 1, "sent_at": now}),
        ] {
            let errors: Vec<String> = validator
                .iter_errors(&command)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{errors:?}");
        }
    }
}
