//! An example holder of personal data for the GDPR Data Subject Rights service, written from
//! docs/holders.md alone: it takes `erase_subject` and `export_subject` commands from its own
//! queue, erases once per idempotency key, answers on the confirmations exchange as its own
//! broker user, and dead-letters what it cannot read. Its data lives in memory here; a real
//! holder keeps the idempotency keys in the same database (and transaction) as the data.

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Who the holder is and where its broker is.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `amqp://<broker user>:<password>@host:5672/%2f`: connect as the holder's own user.
    pub amqp_url: String,
    /// The deployment's namespace (`gdpr` by default).
    pub namespace: String,
    /// The holder's name in the service registry.
    pub service: String,
    /// Its broker user: the `user_id` of every answer (RabbitMQ checks it).
    pub broker_user: String,
}

/// Records per subject, and the idempotency keys already acted on with what was answered.
#[derive(Default)]
pub struct Store {
    pub records: Mutex<HashMap<String, Vec<Value>>>,
    erased: Mutex<HashMap<String, &'static str>>,
}

impl Store {
    /// Puts a few example records about `subject` in the store (to try it out).
    pub fn seed(&self, subject: &str) {
        let records = vec![
            json!({"kind": "example", "n": 1}),
            json!({"kind": "example", "n": 2}),
        ];
        self.records
            .lock()
            .unwrap()
            .insert(subject.to_owned(), records);
    }

    /// Erases `subject` once per `key`: a key seen before gets the same outcome again and
    /// erases nothing.
    fn erase(&self, key: &str, subject: &str) -> &'static str {
        let mut erased = self.erased.lock().unwrap();
        if let Some(outcome) = erased.get(key) {
            return outcome;
        }
        let held = self.records.lock().unwrap().remove(subject).is_some();
        let outcome = if held { "erased" } else { "not_found" };
        erased.insert(key.to_owned(), outcome);
        outcome
    }
}

/// Answers bigger than this are uploaded to the command's URL instead (the bridge forwards
/// answers of up to 250 KiB).
const MOST_INLINE_BYTES: usize = 128 * 1024;

/// Serves the holder until the connection fails; call it again to reconnect.
pub async fn run(settings: &Settings, store: &Store) -> anyhow::Result<()> {
    let connection =
        Connection::connect(&settings.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = declare(&channel, settings).await?;
    // Answers go out on their own channel with publisher confirms: a command is acknowledged
    // only once the broker has its answer.
    let answers = connection.create_channel().await?;
    answers
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel.basic_qos(16, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            settings.service.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        let command: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
        let answer = match command["type"].as_str() {
            Some("erase_subject") => erasure_confirmation(&command, store),
            Some("export_subject") => export_answer(&command, store).await,
            _ => None,
        };
        let Some((routing_key, answer)) = answer else {
            // Not a command it can read: to the dead-letter queue, for a person to look at.
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await?;
            continue;
        };
        let exchange = format!("{}.confirmations", settings.namespace);
        answers
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                answer.to_string().as_bytes(),
                BasicProperties::default()
                    .with_message_id(answer["message_id"].as_str().unwrap_or("").into())
                    .with_user_id(settings.broker_user.as_str().into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?
            .await?;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Err(anyhow::anyhow!("the broker closed the consumer"))
}

/// Serves the holder for ever, reconnecting after a failure.
pub async fn serve(settings: Settings, store: &Store) {
    loop {
        if let Err(error) = run(&settings, store).await {
            eprintln!("{}: {error}; reconnecting in 2 s", settings.service);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The exchanges (durable topics), the holder's queue with its dead-letter queue, and the
/// bindings of its two routing keys. Declaring is idempotent: every start does it.
async fn declare(channel: &Channel, settings: &Settings) -> lapin::Result<String> {
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
    let queue = format!("{ns}.svc.{}", settings.service);
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
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead_letters.as_str().into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await?;
    for key in ["erasure", "export"] {
        channel
            .queue_bind(
                queue.as_str().into(),
                format!("{ns}.commands").as_str().into(),
                format!("{key}.{}", settings.service).as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(queue)
}

/// The answer to `erase_subject`: erased once per idempotency key, confirmed every time.
fn erasure_confirmation(command: &Value, store: &Store) -> Option<(String, Value)> {
    let key = command["idempotency_key"].as_str()?;
    let subject = command["subject"].as_str()?;
    let service = command["service"].as_str()?;
    let outcome = store.erase(key, subject);
    let confirmation = json!({
        "type": "erasure_confirmation",
        "version": 1,
        "message_id": format!("confirmation:{}", command["message_id"].as_str()?),
        "request_id": command["request_id"].as_str()?,
        "service": service,
        "outcome": outcome,
        "receipt": {"idempotency_key": key},
    });
    Some((format!("confirmation.{service}"), confirmation))
}

/// The answer to `export_subject`: the records in it, or uploaded to the command's URL when
/// they are many; `not_found` when it holds nothing; `failed` when the upload did not go.
async fn export_answer(command: &Value, store: &Store) -> Option<(String, Value)> {
    let subject = command["subject"].as_str()?;
    let service = command["service"].as_str()?;
    let upload_url = command["upload_url"].as_str()?;
    let records = store
        .records
        .lock()
        .unwrap()
        .get(subject)
        .cloned()
        .unwrap_or_default();
    let mut answer = json!({
        "type": "export_answer",
        "version": 1,
        "message_id": format!("answer:{}", command["message_id"].as_str()?),
        "request_id": command["request_id"].as_str()?,
        "service": service,
        "job": command["job"].as_str()?,
    });
    let lines: String = records.iter().map(|r| format!("{r}\n")).collect();
    if records.is_empty() {
        answer["outcome"] = json!("not_found");
    } else if lines.len() <= MOST_INLINE_BYTES {
        answer["outcome"] = json!("records");
        answer["records"] = Value::Array(records);
    } else {
        let uploaded = reqwest::Client::new()
            .put(upload_url)
            .header("content-type", "application/x-ndjson")
            .body(lines)
            .send()
            .await
            .and_then(|response| response.error_for_status());
        match uploaded {
            Ok(_) => answer["outcome"] = json!("uploaded"),
            Err(error) => {
                answer["outcome"] = json!("failed");
                answer["reason"] = json!(format!("the upload failed: {}", error.without_url()));
            }
        }
    }
    Some((format!("export.{service}"), answer))
}
