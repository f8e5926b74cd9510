//! The dispatcher with in-memory ports and a clock the tests move.

use super::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use dsr_adapters::memory::{InMemoryDelayedStore, RecordingDispatchPorts};
use dsr_domain::delayed::{
    CancelOutcome, DelayKey, DelayedMessage, Destination, DispatchSettings, ScheduleOutcome,
};
use dsr_domain::FixedClock;
use std::sync::atomic::Ordering;
use std::sync::Arc;

type TestDispatcher = Dispatcher<
    Arc<InMemoryDelayedStore>,
    Arc<RecordingDispatchPorts>,
    Arc<RecordingDispatchPorts>,
    Arc<FixedClock>,
>;

fn setup() -> (
    TestDispatcher,
    Arc<InMemoryDelayedStore>,
    Arc<RecordingDispatchPorts>,
    Arc<FixedClock>,
) {
    let store = Arc::new(InMemoryDelayedStore::default());
    let ports = Arc::new(RecordingDispatchPorts::default());
    let clock = Arc::new(FixedClock::at(
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap(),
    ));
    let dispatcher = Dispatcher {
        store: store.clone(),
        wake_ups: ports.clone(),
        sender: ports.clone(),
        clock: clock.clone(),
        settings: DispatchSettings::default(),
    };
    (dispatcher, store, ports, clock)
}

fn message(key: &str, at: DateTime<Utc>, payload: Value) -> DelayedMessage {
    DelayedMessage {
        key: DelayKey::parse(key).unwrap(),
        deliver_at: at,
        destination: Destination::Sqs {
            queue_url: "http://q".into(),
        },
        payload,
    }
}

fn sent_ids(ports: &RecordingDispatchPorts) -> Vec<String> {
    ports
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect()
}

#[tokio::test]
async fn a_72_hour_delay_wakes_once_and_is_sent_once_when_due() {
    let (d, store, ports, clock) = setup();
    let later = clock.now() + Duration::hours(72);
    let m = message("erase-email:01ABC", later, json!({"erase": "email"}));
    assert_eq!(d.schedule(&m).await.unwrap(), ScheduleOutcome::Created);
    assert_eq!(
        ports.wakes.lock().unwrap().get("erase-email:01ABC"),
        Some(&later)
    );
    assert_eq!(
        d.schedule(&m).await.unwrap(),
        ScheduleOutcome::Unchanged,
        "same key, same message"
    );

    assert_eq!(d.dispatch_due().await.unwrap().sent, 0, "not due yet");
    clock.advance(Duration::hours(72) - Duration::seconds(1));
    assert_eq!(d.dispatch_due().await.unwrap().sent, 0, "one second early");
    clock.advance(Duration::seconds(1));
    let report = d.dispatch_due().await.unwrap();
    assert_eq!((report.due, report.sent), (1, 1));
    assert_eq!(sent_ids(&ports), ["erase-email:01ABC"]);
    assert_eq!(store.status("erase-email:01ABC"), Some("dispatched"));

    assert_eq!(
        d.dispatch_due().await.unwrap().sent,
        0,
        "a second sweep sends nothing"
    );
    assert_eq!(
        d.schedule(&m).await.unwrap(),
        ScheduleOutcome::AlreadyDispatched
    );
    assert_eq!(sent_ids(&ports).len(), 1);
}

#[tokio::test]
async fn short_delays_are_left_to_the_sweep_and_rescheduling_moves_the_message() {
    let (d, _, ports, clock) = setup();
    let soon = clock.now() + Duration::minutes(5);
    d.schedule(&message("k", soon, json!(1))).await.unwrap();
    assert!(
        ports.wakes.lock().unwrap().is_empty(),
        "the recurring sweep covers five minutes"
    );

    let later = clock.now() + Duration::hours(2);
    assert_eq!(
        d.schedule(&message("k", later, json!(1))).await.unwrap(),
        ScheduleOutcome::Moved
    );
    assert_eq!(ports.wakes.lock().unwrap().get("k"), Some(&later));
    clock.advance(Duration::minutes(10));
    assert_eq!(
        d.dispatch_due().await.unwrap().sent,
        0,
        "it moved: not sent at the old time"
    );
    assert_eq!(
        d.schedule(&message("k", soon, json!(2))).await.unwrap(),
        ScheduleOutcome::Moved
    );
    assert!(
        ports.wakes.lock().unwrap().is_empty(),
        "moved back into the sweep's range"
    );
    assert_eq!(d.dispatch_due().await.unwrap().sent, 1);
    assert_eq!(
        ports.sent.lock().unwrap()[0].1,
        json!(2),
        "the latest content is sent"
    );
}

#[tokio::test]
async fn a_cancelled_message_is_never_sent() {
    let (d, _, ports, clock) = setup();
    let m = message(
        "retry:billing:1",
        clock.now() + Duration::hours(1),
        json!({}),
    );
    d.schedule(&m).await.unwrap();
    assert_eq!(d.cancel(&m.key).await.unwrap(), CancelOutcome::Cancelled);
    assert!(
        ports.wakes.lock().unwrap().is_empty(),
        "its wake-up is gone too"
    );
    clock.advance(Duration::hours(2));
    assert_eq!(d.dispatch_due().await.unwrap().sent, 0);
    assert!(ports.sent.lock().unwrap().is_empty());
    assert_eq!(
        d.cancel(&DelayKey::parse("nope").unwrap()).await.unwrap(),
        CancelOutcome::NotFound
    );
}

#[tokio::test]
async fn a_failed_send_is_retried_by_the_next_sweep_at_once_with_the_same_message_id() {
    let (d, store, ports, clock) = setup();
    d.schedule(&message("k1", clock.now(), json!("x")))
        .await
        .unwrap();
    ports.failing_sends.store(true, Ordering::SeqCst);
    let report = d.dispatch_due().await.unwrap();
    assert_eq!(report.failed, 1);
    ports.failing_sends.store(false, Ordering::SeqCst);
    // The failed send may have arrived: the key is spent for another message.
    assert_eq!(
        d.schedule(&message("k1", clock.now(), json!("other")))
            .await
            .unwrap(),
        ScheduleOutcome::KeySpent
    );
    // The next sweep, a moment later: the failed send gave its claim back.
    clock.advance(Duration::seconds(1));
    assert_eq!(d.dispatch_due().await.unwrap().sent, 1);
    assert_eq!(sent_ids(&ports), ["k1"]);
    assert_eq!(ports.sent.lock().unwrap()[0].1, json!("x"));
    assert_eq!(store.status("k1"), Some("dispatched"));
}

#[tokio::test]
async fn schedule_requests_arrive_over_sqs_and_poison_ones_are_reported() {
    let (d, _, ports, clock) = setup();
    let at = (clock.now() + Duration::hours(3)).to_rfc3339();
    let records = json!({"Records": [
        {"messageId": "m1", "body": json!({"action": "schedule", "version": 1, "key": "a", "deliver_at": at,
            "destination": {"kind": "rabbitmq", "exchange": "commands", "routing_key": "email.erase"}, "payload": {"x": 1}}).to_string()},
        {"messageId": "m2", "body": "{not json"},
        {"messageId": "m3", "body": json!({"action": "cancel", "version": 2, "key": "a"}).to_string()},
        {"messageId": "m4", "body": json!({"action": "schedule", "version": 1, "key": "now", "deliver_at": clock.now().to_rfc3339(),
            "destination": {"kind": "sqs", "queue_url": "http://q"}, "payload": "hi"}).to_string()},
        // Through the bridge: an allowed caller, and a stranger.
        {"messageId": "m5", "body": json!({"action": "schedule", "version": 1, "key": "a", "deliver_at": at,
            "destination": {"kind": "rabbitmq", "exchange": "billing.retries", "routing_key": "retry"}, "payload": {}}).to_string(),
            "messageAttributes": {"broker_user": {"dataType": "String", "stringValue": "svc-billing"}}},
        {"messageId": "m6", "body": json!({"action": "cancel", "version": 1, "key": "a"}).to_string(),
            "messageAttributes": {"broker_user": {"dataType": "String", "stringValue": "mallory"}}},
    ]});
    let policy = DispatchPolicy::new(
        Some("callers: [{name: billing, broker_user: svc-billing, destinations: [{exchange: billing.retries}]}]"),
        "gdpr",
        vec!["http://q".into()],
    )
    .unwrap();
    let dispatch = Dispatch::new(d, policy, unused_sqs(), "queue".into(), None);
    let response: aws_lambda_events::sqs::SqsBatchResponse =
        serde_json::from_value(dispatch.handle(records, None).await.unwrap()).unwrap();
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["m2", "m3", "m6"]);
    let wakes = ports.wakes.lock().unwrap().clone();
    assert!(
        wakes.contains_key("dsr/a") && wakes.contains_key("svc/billing/a"),
        "each caller's `a` is its own: {wakes:?}"
    );
    assert_eq!(
        sent_ids(&ports),
        ["dsr/now"],
        "a message due now goes out at once"
    );

    let wake = dispatch.handle(json!({"wake": "a"}), None).await.unwrap();
    assert_eq!(wake["sent"], 0);
}

/// A client the handler holds but these tests never reach (no retry delays, no dead-letter
/// queue).
fn unused_sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build(),
    )
}

#[tokio::test]
async fn a_time_past_the_horizon_and_a_spent_key_are_refused_never_sent_at_once_or_dropped() {
    let (d, _, ports, clock) = setup();
    let schedule = |key: &str, at: &str, payload: Value| {
        json!({"action": "schedule", "version": 1, "key": key, "deliver_at": at,
            "destination": {"kind": "sqs", "queue_url": "http://q"}, "payload": payload})
        .to_string()
    };
    let now = clock.now().to_rfc3339();
    let records = json!({"Records": [
        // Past year 9999: it would sort before today as stored, and go out at once.
        {"messageId": "far", "body": schedule("far", "+10000-01-01T00:00:00Z", json!(1))},
        {"messageId": "decade", "body": schedule("decade", "9999-12-31T23:59:59Z", json!(1))},
        {"messageId": "once", "body": schedule("once", &now, json!("first"))},
    ]});
    let policy = DispatchPolicy::new(None, "gdpr", vec!["http://q".into()]).unwrap();
    let dispatch = Dispatch::new(d, policy.clone(), unused_sqs(), "queue".into(), None);
    let failed = |response: Value| -> Vec<String> {
        let response: aws_lambda_events::sqs::SqsBatchResponse =
            serde_json::from_value(response).unwrap();
        response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    };
    // Without a dead-letter queue, refused ones stay failed (for the redrive policy).
    assert_eq!(
        failed(dispatch.handle(records, None).await.unwrap()),
        ["far", "decade"]
    );
    assert_eq!(sent_ids(&ports), ["dsr/once"]);

    // The same message again (a redelivery): nothing to do. Another one under the spent key:
    // refused with the reason, not silently dropped.
    let again = json!({"Records": [
        {"messageId": "dup", "body": schedule("once", &now, json!("first"))},
        {"messageId": "reuse", "body": schedule("once", &now, json!("second"))},
    ]});
    assert_eq!(
        failed(dispatch.handle(again, None).await.unwrap()),
        ["reuse"]
    );
    assert_eq!(sent_ids(&ports), ["dsr/once"]);
    assert!(
        dsr_domain::delayed::unschedulable(clock.now() + Duration::days(3000), clock.now())
            .is_none()
    );
    assert!(
        dsr_domain::delayed::unschedulable(clock.now() + Duration::days(4000), clock.now())
            .unwrap()
            .contains("more than 3653 days ahead")
    );
}
