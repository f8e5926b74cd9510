//! The RabbitMQ bridge's outbound path against the real broker: what the service puts on the
//! outbound SQS queue is published to RabbitMQ topic exchanges, confirmed, then deleted.

use crate::contract::assert_message;
use crate::helpers::{queue_depth, spawn_app, unique_name};
use dsr_bridge::Publisher;
use dsr_local::event_source::{deliver_once, SqsFunction};
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};

pub const LOCAL_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::test]
async fn outbound_messages_reach_rabbitmq_exchanges_with_their_ids_and_poison_is_dead_lettered() {
    let app = spawn_app().await;
    let name = unique_name();
    let (events, commands) = (format!("{name}.events"), format!("{name}.commands"));

    // A consumer of the platform: a queue bound to both exchanges.
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .expect("RabbitMQ runs (make test starts it)");
    let channel = conn.create_channel().await.unwrap();
    for exchange in [&events, &commands] {
        dsr_bridge::declare_topic_exchange(&channel, exchange)
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
        dsr_domain::SubjectHasher::new("sixteen-byte-key")
            .hash(&dsr_domain::SubjectId::parse("alice").unwrap()),
        chrono::Utc::now(),
        chrono::Utc::now(),
    );
    let event = serde_json::to_value(&event).unwrap();
    let envelope = json!({"version": 1, "message_id": "erase:email:1", "exchange": commands, "routing_key": "email.erase", "payload": {"request_id": id.to_string()}});
    assert_message(&event);
    assert_message(&envelope);
    let outbound = app.queue_url("OutboundQueue");
    // An envelope for an exchange the bridge does not publish to (here: the platform's
    // fanout of choice): the outbound queue is not a way onto any exchange.
    let elsewhere = json!({"version": 1, "message_id": "x:1", "exchange": "amq.fanout", "routing_key": "", "payload": {}});
    for body in [
        event.to_string(),
        envelope.to_string(),
        "{\"nonsense\": true}".to_owned(),
        elsewhere.to_string(),
    ] {
        app.sqs
            .send_message()
            .queue_url(&outbound)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    let bridge = dsr_adapters::batch::QueueDriver::new(
        "bridge",
        Publisher::new(LOCAL_BROKER, events.as_str())
            .publishing_to(std::collections::HashSet::from([commands.clone()])),
        app.sqs.clone(),
        app.queue_url("OutboundQueue"),
        Some(app.queue_url("OutboundDeadLetterQueue")),
    );
    let function: SqsFunction =
        dsr_local::stack::queue_function(&app.stack, "BridgeOutboundFunction", bridge);
    let mut source = app.stack.queue("OutboundQueue").unwrap();
    source.batch_size = 10;
    let mut total = dsr_local::event_source::Delivery::default();
    while total.received < 4 {
        let d = deliver_once(&app.sqs, &source, &function).await.unwrap();
        total.received += d.received;
        total.succeeded += d.succeeded;
        total.failed += d.failed;
    }
    assert_eq!(
        (total.succeeded, total.failed),
        (4, 0),
        "two published, the poison one and the stray one dead-lettered"
    );
    assert_eq!(queue_depth(&app.sqs, &outbound).await, 0);
    let mut dead: Vec<(String, String)> =
        crate::helpers::drain(&app.sqs, &app.queue_url("OutboundDeadLetterQueue"))
            .await
            .iter()
            .map(|m| {
                (
                    m.body().unwrap_or_default().to_owned(),
                    m.message_attributes().unwrap()["reason"]
                        .string_value()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect();
    dead.sort();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[1].0, "{\"nonsense\": true}");
    assert!(
        dead[1]
            .1
            .contains("an outbound envelope or event of version 0"),
        "{}",
        dead[1].1
    );
    assert_eq!(dead[0].0, elsewhere.to_string());
    assert!(
        dead[0]
            .1
            .contains("exchange `amq.fanout` is not one the bridge publishes to"),
        "{}",
        dead[0].1
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

/// Publishes `body` to `exchange` (declared durable topic) with a message id, confirmed, as the
/// connection's user (`guest`), which the `user_id` property names.
async fn publish_to(channel: &lapin::Channel, exchange: &str, message_id: &str, body: &[u8]) {
    publish_as(channel, exchange, message_id, body, Some("guest")).await;
}

/// [`publish_to`] with another `user_id`, or none.
pub async fn publish_as(
    channel: &lapin::Channel,
    exchange: &str,
    message_id: &str,
    body: &[u8],
    user_id: Option<&str>,
) {
    dsr_bridge::declare_topic_exchange(channel, exchange)
        .await
        .unwrap();
    channel
        .basic_publish(
            exchange.into(),
            "from.a.service".into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            match user_id {
                Some(user) => lapin::BasicProperties::default().with_user_id(user.into()),
                None => lapin::BasicProperties::default(),
            }
            .with_message_id(message_id.into())
            .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The dead-lettered messages of `queue`: (body, x-reject-reason, x-original-queue).
async fn dead_letters(
    channel: &lapin::Channel,
    queue: &str,
    want: usize,
) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for _ in 0..100 {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                let header = |name: &str| {
                    message
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|h| h.inner().get(name).cloned())
                        .map(|v| match v {
                            lapin::types::AMQPValue::LongString(s) => s.to_string(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default()
                };
                found.push((
                    String::from_utf8_lossy(&message.data).into_owned(),
                    header("x-reject-reason"),
                    header("x-original-queue"),
                ));
                if found.len() == want {
                    break;
                }
            }
            None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    found
}

fn confirmation(request_id: &str) -> Value {
    json!({"type": "erasure_confirmation", "version": 1, "message_id": "confirmation:1",
           "request_id": request_id, "service": "billing", "outcome": "erased",
           "receipt": {"records_deleted": 3}})
}

#[tokio::test]
async fn inbound_confirmations_and_schedule_requests_reach_sqs_and_garbage_is_dead_lettered_on_the_broker(
) {
    let name = unique_name();
    let ns = name.clone();
    let app = crate::helpers::spawn_app_with(move |s| {
        s.parameters.insert("RabbitMqNamespace".into(), ns);
    })
    .await;
    let (url, inbound) = app.stack.inbound_bridge().unwrap();
    let topology = inbound.topology.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let daemon = tokio::spawn(dsr_bridge::inbound::run_daemon(url, inbound, stopped));

    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    // The daemon declares its queues; wait for them before publishing. A passive declare of a
    // missing queue closes its channel, so each try gets a fresh one.
    assert!(
        crate::helpers::eventually(std::time::Duration::from_secs(20), async || {
            let probe = conn.create_channel().await.unwrap();
            probe
                .queue_declare(
                    topology.confirmations_queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .is_ok()
        })
        .await
    );
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();

    let id = dsr_domain::RequestId::new_at(chrono::Utc::now()).to_string();
    let good_confirmation = confirmation(&id);
    assert_message(&good_confirmation);
    let target = app.queue_url("AccessRequestsDeadLetterQueue");
    let schedule = json!({"action": "schedule", "version": 1, "key": format!("{name}-k1"),
        "deliver_at": "2030-01-01T00:00:00Z", "destination": {"kind": "sqs", "queue_url": target},
        "payload": {"hello": "later"}});
    assert_message(&schedule);
    publish_to(
        &channel,
        &topology.confirmations_exchange,
        "c-1",
        good_confirmation.to_string().as_bytes(),
    )
    .await;
    publish_to(
        &channel,
        &topology.confirmations_exchange,
        "c-2",
        b"{\"type\":\"erasure_confirmation\"}",
    )
    .await;
    publish_to(
        &channel,
        &topology.schedule_exchange,
        "s-1",
        schedule.to_string().as_bytes(),
    )
    .await;
    publish_to(
        &channel,
        &topology.schedule_exchange,
        "s-2",
        b"not json at all",
    )
    .await;
    // Bigger than SQS takes: refused here, not lost between the broker and SQS.
    let oversized = format!(
        "{{\"pad\":\"{}\"}}",
        "x".repeat(dsr_bridge::inbound::MAX_FORWARDED_BYTES)
    );
    publish_to(
        &channel,
        &topology.schedule_exchange,
        "s-3",
        oversized.as_bytes(),
    )
    .await;
    // Anonymous: without user_id nobody can tell who sent it.
    publish_as(
        &channel,
        &topology.confirmations_exchange,
        "c-3",
        good_confirmation.to_string().as_bytes(),
        None,
    )
    .await;

    let confirmations = app.queue_url("ConfirmationsQueue");
    let schedules = app.queue_url("ScheduleRequestsQueue");
    let mut arrived: Vec<(String, String, String)> = Vec::new();
    let both = crate::helpers::eventually(std::time::Duration::from_secs(20), async || {
        for queue in [&confirmations, &schedules] {
            let out = app
                .sqs
                .receive_message()
                .queue_url(queue)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap();
            for m in out.messages.unwrap_or_default() {
                let message_id = m
                    .message_attributes()
                    .and_then(|a| a.get("message_id"))
                    .and_then(|v| v.string_value())
                    .unwrap_or_default()
                    .to_owned();
                let publisher = m
                    .message_attributes()
                    .and_then(|a| a.get("broker_user"))
                    .and_then(|v| v.string_value())
                    .unwrap_or_default()
                    .to_owned();
                arrived.push((
                    message_id,
                    m.body().unwrap_or_default().to_owned(),
                    publisher,
                ));
            }
        }
        arrived.len() >= 2
    })
    .await;
    assert!(both, "{arrived:?}");
    arrived.sort();
    assert_eq!(arrived.len(), 2, "{arrived:?}");
    assert_eq!(arrived[0].0, "c-1");
    assert_eq!(
        serde_json::from_str::<Value>(&arrived[0].1).unwrap(),
        good_confirmation
    );
    assert_eq!(
        arrived[0].2, "guest",
        "the publisher, as RabbitMQ checked it"
    );
    assert_eq!(arrived[1].0, "s-1");
    assert_eq!(
        serde_json::from_str::<Value>(&arrived[1].1).unwrap(),
        schedule
    );

    let mut dead = dead_letters(&channel, &topology.dead_letter_queue, 4).await;
    dead.sort_by(|a, b| (&a.2, &a.0).cmp(&(&b.2, &b.0)));
    assert_eq!(
        dead.len(),
        4,
        "{:?}",
        dead.iter().map(|d| &d.1).collect::<Vec<_>>()
    );
    let big = dead
        .iter()
        .position(|d| d.0.len() == oversized.len())
        .expect("the oversized message is dead-lettered whole");
    let too_big = dead.remove(big);
    assert!(too_big.0 == oversized, "kept as it was published");
    assert!(too_big.1.contains("are forwarded"), "{}", too_big.1);
    assert_eq!(dead[0].0, good_confirmation.to_string());
    assert!(dead[0].1.contains("no user_id"), "{}", dead[0].1);
    assert_eq!(dead[1].0, "{\"type\":\"erasure_confirmation\"}");
    assert_eq!(dead[1].2, topology.confirmations_queue);
    assert!(dead[1].1.contains("not a confirmation"), "{}", dead[1].1);
    assert_eq!(dead[2].0, "not json at all");
    assert_eq!(dead[2].2, topology.schedule_queue);
    assert!(
        dead[2].1.contains("not a schedule request"),
        "{}",
        dead[2].1
    );

    // Everything was acknowledged: nothing waits on the bridge's queues.
    for queue in [&topology.confirmations_queue, &topology.schedule_queue] {
        let state = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        assert_eq!(state.message_count(), 0, "{queue}");
    }
    let _ = stop.send(true);
    daemon.await.unwrap();
}

#[tokio::test]
async fn the_amazon_mq_event_source_handler_forwards_and_dead_letters_like_the_daemon() {
    let name = unique_name();
    let ns = name.clone();
    let app = crate::helpers::spawn_app_with(move |s| {
        s.parameters.insert("RabbitMqNamespace".into(), ns);
    })
    .await;
    let (url, inbound) = app.stack.inbound_bridge().unwrap();
    let topology = inbound.topology.clone();
    let dead = dsr_bridge::inbound::DeadLetters::new(url, &topology);
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let id = dsr_domain::RequestId::new_at(chrono::Utc::now()).to_string();
    // The shape Lambda hands over (queue keys are `queue::vhost`).
    let event: aws_lambda_events::rabbitmq::RabbitMqEvent = serde_json::from_value(json!({
        "eventSource": "aws:rmq",
        "eventSourceArn": "arn:aws:mq:us-east-1:000000000000:broker:b:b-1",
        "rmqMessagesByQueue": {
            format!("{}::/", topology.confirmations_queue): [
                {"basicProperties": {"contentType": "application/json", "contentEncoding": null, "headers": {}, "deliveryMode": 2, "priority": 0, "correlationId": null, "replyTo": null, "expiration": null, "messageId": "c-1", "timestamp": null, "type": null, "userId": "svc-billing", "appId": null, "clusterId": null, "bodySize": 10},
                 "redelivered": false, "data": b64(&confirmation(&id).to_string())},
                {"basicProperties": {"contentType": null, "contentEncoding": null, "headers": {}, "deliveryMode": 2, "priority": 0, "correlationId": null, "replyTo": null, "expiration": null, "messageId": "c-2", "timestamp": null, "type": null, "userId": "svc-billing", "appId": null, "clusterId": null, "bodySize": 3},
                 "redelivered": false, "data": b64("[1]")}
            ]
        }
    }))
    .unwrap();
    let forwarded = inbound.handle_event(event, &dead).await.unwrap();
    assert_eq!(forwarded, 1);
    let got = crate::helpers::drain(&app.sqs, &app.queue_url("ConfirmationsQueue")).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(got[0].body().unwrap()).unwrap(),
        confirmation(&id)
    );
    assert_eq!(
        got[0].message_attributes().unwrap()["broker_user"].string_value(),
        Some("svc-billing")
    );
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let dead = dead_letters(&channel, &topology.dead_letter_queue, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "[1]");
    assert!(dead[0].1.contains("not a confirmation"), "{}", dead[0].1);
}
