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
    let (app, name) = app_in_a_namespace_of_its_own().await;
    let (url, inbound) = app.stack.inbound_bridge().unwrap();
    let topology = inbound.topology.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let daemon = tokio::spawn(dsr_bridge::inbound::run_daemon(url, inbound, stopped));

    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    // The daemon binds its queues before it consumes; publish only once it consumes from both.
    assert!(
        crate::helpers::consumed(
            &conn,
            &[&topology.confirmations_queue, &topology.schedule_queue],
            std::time::Duration::from_secs(30),
        )
        .await
    );
    let channel = crate::helpers::confirming_channel(&conn).await;

    let id = dsr_domain::RequestId::new_at(chrono::Utc::now()).to_string();
    let good_confirmation = confirmation(&id);
    assert_message(&good_confirmation);
    crate::asyncapi::assert_on_channel("confirmations", &good_confirmation);
    let target = app.queue_url("AccessRequestsDeadLetterQueue");
    let schedule = json!({"action": "schedule", "version": 1, "key": format!("{name}-k1"),
        "deliver_at": "2030-01-01T00:00:00Z", "destination": {"kind": "sqs", "queue_url": target},
        "payload": {"hello": "later"}});
    assert_message(&schedule);
    crate::asyncapi::assert_on_channel("schedule", &schedule);
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
    let (app, _) = app_in_a_namespace_of_its_own().await;
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

/// Runs the outbound queue through `driver` once per round, `rounds` times, and returns what
/// each round did.
async fn outbound_rounds(
    app: &crate::helpers::TestApp,
    driver: dsr_adapters::batch::QueueDriver<Publisher>,
    rounds: usize,
) -> Vec<dsr_local::event_source::Delivery> {
    let function: SqsFunction =
        dsr_local::stack::queue_function(&app.stack, "BridgeOutboundFunction", driver);
    let source = app.stack.queue("OutboundQueue").unwrap();
    let mut done = Vec::new();
    for _ in 0..rounds {
        let mut delivery = deliver_once(&app.sqs, &source, &function).await.unwrap();
        // A message put back to wait has a delay of its own; look again until it is seen.
        for _ in 0..20 {
            if delivery.received > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            delivery = deliver_once(&app.sqs, &source, &function).await.unwrap();
        }
        done.push(delivery);
    }
    done
}

fn outbound_driver(
    app: &crate::helpers::TestApp,
    publisher: Publisher,
) -> dsr_adapters::batch::QueueDriver<Publisher> {
    dsr_adapters::batch::QueueDriver::new(
        "bridge",
        publisher,
        app.sqs.clone(),
        app.queue_url("OutboundQueue"),
        Some(app.queue_url("OutboundDeadLetterQueue")),
    )
    .with_wait_base(std::time::Duration::ZERO)
}

/// A durable queue bound to `exchange` under `key`, as a holder's would be.
/// The local stack with its RabbitMQ names under a fresh namespace (returned).
async fn app_in_a_namespace_of_its_own() -> (crate::helpers::TestApp, String) {
    let name = unique_name();
    let ns = name.clone();
    let app = crate::helpers::spawn_app_with(move |s| {
        s.parameters.insert("RabbitMqNamespace".into(), ns);
    })
    .await;
    (app, name)
}

pub async fn bound_queue(channel: &lapin::Channel, exchange: &str, key: &str, queue: &str) {
    dsr_bridge::declare_topic_exchange(channel, exchange)
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

async fn get_one(channel: &lapin::Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    for _ in 0..50 {
        if let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            return Some(message);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn a_broker_outage_longer_than_the_queues_receive_limit_loses_nothing_and_the_notice_is_receipted(
) {
    let app = spawn_app().await;
    let name = unique_name();
    let (events, commands) = (format!("{name}.events"), format!("{name}.commands"));
    let id = dsr_domain::RequestId::new_at(chrono::Utc::now());
    let notice = json!({"version": 1, "message_id": format!("notice:erasure_notice:{id}"),
        "exchange": commands, "routing_key": "notice.erasure_notice", "receipt": true,
        "payload": {"type": "subject_notice", "request_id": id.to_string()}});
    assert_message(&notice);
    app.sqs
        .send_message()
        .queue_url(app.queue_url("OutboundQueue"))
        .message_body(notice.to_string())
        .send()
        .await
        .unwrap();

    // The broker is away (nothing listens on that port) for more rounds than the queue's
    // maxReceiveCount (5): the message waits, it is never dead-lettered.
    let away = "amqp://guest:guest@127.0.0.1:1/%2f";
    let rounds = outbound_rounds(
        &app,
        outbound_driver(&app, Publisher::new(away, events.as_str())),
        8,
    )
    .await;
    assert!(
        rounds.iter().all(|d| d.received == 1 && d.succeeded == 1),
        "each round put the message back as a fresh one: {rounds:?}"
    );
    assert_eq!(
        queue_depth(&app.sqs, &app.queue_url("OutboundDeadLetterQueue")).await,
        0
    );
    let waiting = app
        .sqs
        .receive_message()
        .queue_url(app.queue_url("OutboundQueue"))
        .message_attribute_names("All")
        .visibility_timeout(0)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let waiting = &waiting.messages()[0];
    assert_eq!(waiting.body(), Some(notice.to_string().as_str()));
    assert_eq!(
        waiting.message_attributes().unwrap()["waits"].string_value(),
        Some("8")
    );

    // The broker is back: the notice is published once, and the service gets its receipt.
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let email = format!("{name}.email");
    bound_queue(&channel, &commands, "notice.#", &email).await;
    let back = Publisher::new(LOCAL_BROKER, events.as_str())
        .with_receipts(app.sqs.clone(), app.queue_url("ConfirmationsQueue"));
    let rounds = outbound_rounds(&app, outbound_driver(&app, back), 1).await;
    assert_eq!((rounds[0].succeeded, rounds[0].failed), (1, 0));
    let published = get_one(&channel, &email).await.expect("the notice arrived");
    assert_eq!(
        published
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string()),
        Some(format!("notice:erasure_notice:{id}"))
    );
    let receipts = crate::helpers::drain(&app.sqs, &app.queue_url("ConfirmationsQueue")).await;
    assert_eq!(receipts.len(), 1);
    let receipt: Value = serde_json::from_str(receipts[0].body().unwrap()).unwrap();
    assert_message(&receipt);
    assert_eq!(receipt["type"], "published");
    assert_eq!(receipt["request_id"], id.to_string());
    assert_eq!(receipt["message_id"], format!("notice:erasure_notice:{id}"));
    assert_eq!(
        queue_depth(&app.sqs, &app.queue_url("OutboundQueue")).await,
        0
    );
}

#[tokio::test]
async fn an_unroutable_command_is_retried_and_alarmed_until_its_queue_is_bound_never_dropped() {
    let app = spawn_app().await;
    let name = unique_name();
    let (events, commands) = (format!("{name}.events"), format!("{name}.commands"));
    let command = json!({"version": 1, "message_id": "erase:r:billing:1", "exchange": commands,
        "routing_key": "erasure.billing", "payload": {"type": "erase_subject"}});
    let unheard = json!({"version": 1, "message_id": "x:2", "exchange": commands,
        "routing_key": "erasure.nobody", "payload": {}});
    for body in [&command, &unheard] {
        app.sqs
            .send_message()
            .queue_url(app.queue_url("OutboundQueue"))
            .message_body(body.to_string())
            .send()
            .await
            .unwrap();
    }
    // Nobody is bound yet: the broker returns both; they stay on the outbound queue.
    let publisher = || Publisher::new(LOCAL_BROKER, events.as_str());
    let function: SqsFunction = dsr_local::stack::queue_function(
        &app.stack,
        "BridgeOutboundFunction",
        outbound_driver(&app, publisher()),
    );
    let mut source = app.stack.queue("OutboundQueue").unwrap();
    source.batch_size = 10;
    let mut seen = 0;
    for _ in 0..40 {
        seen += deliver_once(&app.sqs, &source, &function)
            .await
            .unwrap()
            .received;
        if seen >= 6 {
            break;
        }
    }
    assert!(seen >= 6, "both came back three times: {seen}");
    assert_eq!(
        queue_depth(&app.sqs, &app.queue_url("OutboundDeadLetterQueue")).await,
        0
    );

    // The billing service binds its queue: the command is delivered on the next round.
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let billing = format!("{name}.billing");
    bound_queue(&channel, &commands, "erasure.billing", &billing).await;
    // The other one, unheard for longer than the bridge waits, is dead-lettered with why.
    let impatient = outbound_driver(
        &app,
        publisher().with_unroutable_dead_letter_after(std::time::Duration::ZERO),
    );
    let function: SqsFunction =
        dsr_local::stack::queue_function(&app.stack, "BridgeOutboundFunction", impatient);
    let mut settled = 0;
    for _ in 0..40 {
        let d = deliver_once(&app.sqs, &source, &function).await.unwrap();
        settled += d.succeeded;
        if settled >= 2 {
            break;
        }
    }
    let got = get_one(&channel, &billing)
        .await
        .expect("the command arrived");
    assert_eq!(
        got.properties.message_id().as_ref().map(|s| s.to_string()),
        Some("erase:r:billing:1".to_owned())
    );
    let dead = crate::helpers::drain(&app.sqs, &app.queue_url("OutboundDeadLetterQueue")).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some(unheard.to_string().as_str()));
    let reason = dead[0].message_attributes().unwrap()["reason"]
        .string_value()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("unroutable") && reason.contains("erasure.nobody"),
        "{reason}"
    );
    assert_eq!(
        queue_depth(&app.sqs, &app.queue_url("OutboundQueue")).await,
        0
    );
}

#[tokio::test]
async fn with_amazon_mq_the_outbound_lambda_declares_what_the_inbound_lambda_consumes() {
    // A fresh namespace: nothing of it exists on the broker, and no daemon runs.
    let (app, name) = app_in_a_namespace_of_its_own().await;
    let bridge = app.stack.outbound_bridge().unwrap();
    let id = dsr_domain::RequestId::new_at(chrono::Utc::now());
    let command = json!({"version": 1, "message_id": format!("erase:{id}:billing:1"),
        "exchange": format!("{name}.commands"), "routing_key": "erasure.billing",
        "payload": {"type": "erase_subject", "request_id": id.to_string()}});
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let billing = format!("{name}.billing");
    bound_queue(&channel, &format!("{name}.commands"), "erasure.#", &billing).await;
    // The Lambda handler, as the outbound queue's event source mapping calls it.
    let mut record = aws_lambda_events::sqs::SqsMessage::default();
    record.message_id = Some("m-1".into());
    record.body = Some(command.to_string());
    let mut batch = aws_lambda_events::sqs::SqsEvent::default();
    batch.records = vec![record];
    let answer = bridge
        .handle_lambda(lambda_runtime::LambdaEvent::new(
            serde_json::to_value(batch).unwrap(),
            lambda_runtime::Context::default(),
        ))
        .await
        .unwrap();
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    assert!(get_one(&channel, &billing).await.is_some());

    // The billing service answers to `<ns>.confirmations`: the bridge's queue is there, bound.
    let confirm_channel = crate::helpers::confirming_channel(&conn).await;
    let confirmation = confirmation(&id.to_string());
    let routed = confirm_channel
        .basic_publish(
            format!("{name}.confirmations").as_str().into(),
            "billing".into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..lapin::options::BasicPublishOptions::default()
            },
            confirmation.to_string().as_bytes(),
            lapin::BasicProperties::default()
                .with_user_id("guest".into())
                .with_message_id("c-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        matches!(routed, lapin::Confirmation::Ack(None)),
        "routed to the bridge's queue: {routed:?}"
    );
    // What Amazon MQ's event source would hand the inbound Lambda from that queue.
    let topology = &bridge.inbound.topology;
    let message = get_one(&channel, &topology.confirmations_queue)
        .await
        .expect("queued for the inbound Lambda");
    use base64::Engine;
    let event = json!({
        "eventSource": "aws:rmq",
        "eventSourceArn": "arn:aws:mq:us-east-1:000000000000:broker:b:b-1",
        "rmqMessagesByQueue": {
            format!("{}::/", topology.confirmations_queue): [
                {"basicProperties": {"contentType": null, "contentEncoding": null, "headers": {}, "deliveryMode": 2, "priority": 0, "correlationId": null, "replyTo": null, "expiration": null, "messageId": "c-1", "timestamp": null, "type": null, "userId": "guest", "appId": null, "clusterId": null, "bodySize": 10},
                 "redelivered": false, "data": base64::engine::general_purpose::STANDARD.encode(&message.data)}
            ]
        }
    });
    let answer = bridge
        .handle_lambda(lambda_runtime::LambdaEvent::new(
            event,
            lambda_runtime::Context::default(),
        ))
        .await
        .unwrap();
    assert_eq!(answer["forwarded"], 1);
    let got = crate::helpers::drain(&app.sqs, &app.queue_url("ConfirmationsQueue")).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(got[0].body().unwrap()).unwrap(),
        confirmation
    );
}

/// Quick to give up on a quiet connection, so the tests below take seconds.
const IMPATIENT: dsr_bridge::Patience = dsr_bridge::Patience {
    answer_within: std::time::Duration::from_secs(2),
    probe_every: std::time::Duration::from_secs(1),
};

/// A broker restart once left the inbound bridge waiting for ever on a connection that would
/// never answer again: every confirmation stayed on RabbitMQ and no erasure finished.
#[tokio::test]
async fn an_inbound_bridge_whose_connection_goes_quiet_connects_again_and_forwards() {
    let (app, _) = app_in_a_namespace_of_its_own().await;
    let (url, mut inbound) = app.stack.inbound_bridge().unwrap();
    inbound.patience = IMPATIENT;
    let topology = inbound.topology.clone();
    let proxy = crate::helpers::SilencingProxy::start("127.0.0.1:5672").await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(dsr_bridge::inbound::run_daemon(
        proxy.url(&url),
        inbound,
        stopped,
    ));
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let queues = [
        topology.confirmations_queue.as_str(),
        topology.schedule_queue.as_str(),
    ];
    let within = std::time::Duration::from_secs(30);
    assert!(crate::helpers::consumed(&conn, &queues, within).await);

    proxy.silence();
    let channel = crate::helpers::confirming_channel(&conn).await;
    let id = dsr_domain::RequestId::new_at(chrono::Utc::now()).to_string();
    publish_to(
        &channel,
        &topology.confirmations_exchange,
        "c-quiet",
        confirmation(&id).to_string().as_bytes(),
    )
    .await;
    let confirmations = app.queue_url("ConfirmationsQueue");
    let mut forwarded = Vec::new();
    let arrived = crate::helpers::eventually(within, async || {
        forwarded.extend(crate::helpers::drain(&app.sqs, &confirmations).await);
        !forwarded.is_empty()
    })
    .await;
    assert!(
        arrived,
        "the confirmation published after the connection went quiet never reached SQS"
    );
    let body: Value = serde_json::from_str(forwarded[0].body().unwrap()).unwrap();
    assert_eq!(body["request_id"], id.as_str());
}

/// The outbound side: a publication on a connection gone quiet fails within the patience (the
/// message waits out, see the batch driver) and the next one goes out on a new connection.
#[tokio::test]
async fn an_outbound_publication_on_a_connection_gone_quiet_fails_in_time_and_the_next_goes_out() {
    let name = unique_name();
    let (events, queue) = (format!("{name}.events"), format!("{name}.listener"));
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    bound_queue(&channel, &events, "#", &queue).await;
    let proxy = crate::helpers::SilencingProxy::start("127.0.0.1:5672").await;
    let publisher =
        Publisher::new(proxy.url(LOCAL_BROKER), events.as_str()).with_patience(IMPATIENT);
    let publication = |n: u32| dsr_bridge::Publication {
        exchange: events.clone(),
        routing_key: "report_ready".into(),
        message_id: format!("m-{n}"),
        body: format!("{{\"n\":{n}}}").into_bytes(),
        receipt_for: None,
        count: None,
    };
    publisher.publish(&publication(1)).await.unwrap();
    let first = get_one(&channel, &queue)
        .await
        .expect("the first is published");
    assert_eq!(first.delivery.data, b"{\"n\":1}");

    proxy.silence();
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        publisher.publish(&publication(2)),
    )
    .await
    .expect("a publication on a quiet connection must not wait for ever");
    let err = answered.expect_err("not confirmed: the broker never got it");
    assert!(
        matches!(err, dsr_bridge::BridgeError::Broker(ref reason) if reason.contains("did not answer")),
        "{err}"
    );
    publisher
        .publish(&publication(2))
        .await
        .expect("the retry goes out on a new connection");
    let second = get_one(&channel, &queue)
        .await
        .expect("the retry is published");
    assert_eq!(second.delivery.data, b"{\"n\":2}");
}
