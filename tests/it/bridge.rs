//! The RabbitMQ bridge's outbound path against the real broker: what the service puts on the
//! outbound SQS queue is published to RabbitMQ topic exchanges, confirmed, then deleted.

use crate::contract::assert_message;
use crate::helpers::{queue_depth, spawn_app, unique_name};
use dsr_bridge::Publisher;
use dsr_local::event_source::{deliver_once, SqsFunction};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};
use std::sync::Arc;

pub const LOCAL_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::test]
async fn outbound_messages_reach_rabbitmq_exchanges_with_their_ids_and_poison_stays_behind() {
    let app = spawn_app().await;
    let name = unique_name();
    let (events, commands) = (format!("{name}.events"), format!("{name}.commands"));

    // A consumer of the platform: a queue bound to both exchanges.
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .expect("RabbitMQ runs (make test starts it)");
    let channel = conn.create_channel().await.unwrap();
    for exchange in [&events, &commands] {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let queue = format!("{name}.listener");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            events.as_str().into(),
            "report_ready".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            commands.as_str().into(),
            "email.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let id = dsr_domain::RequestId::new_at(chrono::Utc::now());
    let event = dsr_domain::messages::DomainEvent::report_ready(
        id,
        dsr_domain::SubjectId::parse("alice").unwrap(),
        chrono::Utc::now(),
        chrono::Utc::now(),
    );
    let event = serde_json::to_value(&event).unwrap();
    let envelope = json!({"version": 1, "message_id": "erase:email:1", "exchange": commands, "routing_key": "email.erase", "payload": {"request_id": id.to_string()}});
    assert_message(&event);
    assert_message(&envelope);
    let outbound = app.queue_url("OutboundQueue");
    for body in [
        event.to_string(),
        envelope.to_string(),
        "{\"nonsense\": true}".to_owned(),
    ] {
        app.sqs
            .send_message()
            .queue_url(&outbound)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    let publisher = Arc::new(Publisher::new(LOCAL_BROKER, events.as_str()));
    let function: SqsFunction = Arc::new(move |batch| {
        let publisher = publisher.clone();
        Box::pin(async move { Ok(publisher.handle(batch).await) })
    });
    let mut source = app.stack.queue("OutboundQueue").unwrap();
    source.batch_size = 10;
    let mut total = dsr_local::event_source::Delivery::default();
    while total.received < 3 {
        let d = deliver_once(&app.sqs, &source, &function).await.unwrap();
        total.received += d.received;
        total.succeeded += d.succeeded;
        total.failed += d.failed;
    }
    assert_eq!(
        (total.succeeded, total.failed),
        (2, 1),
        "the poison message is not acknowledged"
    );
    assert_eq!(
        queue_depth(&app.sqs, &outbound).await,
        1,
        "only the poison message is left, for the DLQ"
    );

    let mut got = Vec::new();
    for _ in 0..20 {
        match channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                let id = message
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let persistent = *message.properties.delivery_mode() == Some(2);
                let body: Value = serde_json::from_slice(&message.data).unwrap();
                got.push((message.routing_key.to_string(), id, persistent, body));
                if got.len() == 2 {
                    break;
                }
            }
            None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str(), got[0].2),
        ("email.erase", "erase:email:1", true)
    );
    assert_eq!(got[0].3, json!({"request_id": id.to_string()}));
    assert_eq!(
        (got[1].0.as_str(), got[1].1.as_str(), got[1].2),
        ("report_ready", format!("report_ready:{id}").as_str(), true)
    );
    assert_eq!(got[1].3, event);
}
