//! Delayed dispatch over the wire: DynamoDB, EventBridge Scheduler and SQS in the emulator, a
//! clock the tests move (a 72-hour delay takes milliseconds).

use crate::contract::assert_message;
use crate::helpers::{drain, queue_depth, spawn_app, unique_name, TestApp};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use chrono::{Duration, Utc};
use dsr_adapters::dynamodb::DynamoDelayedStore;
use dsr_adapters::scheduler::SchedulerWakeUps;
use dsr_adapters::sqs::SqsDestinationSender;
use dsr_domain::delayed::{
    CancelOutcome, DelayKey, DelayedMessage, DelayedStore, Destination, Dispatcher,
    ScheduleOutcome, Sender,
};
use dsr_domain::{Clock, FixedClock};
use serde_json::{json, Value};
use std::sync::Arc;

type TestDispatcher =
    Dispatcher<DynamoDelayedStore, SchedulerWakeUps, SqsDestinationSender, Arc<FixedClock>>;

struct Fixture {
    app: TestApp,
    clock: Arc<FixedClock>,
    dispatcher: TestDispatcher,
    scheduler: aws_sdk_scheduler::Client,
    /// A queue of "some other service", the destination.
    target: String,
}

async fn fixture() -> Fixture {
    let app = spawn_app().await;
    let clock = Arc::new(FixedClock::at(Utc::now()));
    let dispatcher = app.stack.dispatcher(clock.clone()).unwrap();
    let aws = crate::helpers::aws().await;
    let target = app
        .sqs
        .create_queue()
        .queue_name(format!("{}-target", unique_name()))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    Fixture {
        scheduler: aws_sdk_scheduler::Client::new(&aws),
        app,
        clock,
        dispatcher,
        target,
    }
}

impl Fixture {
    fn message(&self, key: &str, after: Duration, payload: Value) -> DelayedMessage {
        DelayedMessage {
            key: DelayKey::parse(key).unwrap(),
            deliver_at: self.clock.now() + after,
            destination: Destination::Sqs {
                queue_url: self.target.clone(),
            },
            payload,
        }
    }

    fn env(&self, name: &str) -> String {
        self.app.stack.environment("DispatchFunction").unwrap()[name].clone()
    }

    async fn schedule_of(
        &self,
        key: &str,
    ) -> Option<aws_sdk_scheduler::operation::get_schedule::GetScheduleOutput> {
        self.scheduler
            .get_schedule()
            .name(SchedulerWakeUps::schedule_name(
                &DelayKey::parse(key).unwrap(),
            ))
            .group_name(self.env(dsr_adapters::config::vars::SCHEDULE_GROUP))
            .send()
            .await
            .ok()
    }

    /// (message id attribute, body) of everything that reached the target queue.
    async fn delivered(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        loop {
            let batch = self
                .app
                .sqs
                .receive_message()
                .queue_url(&self.target)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            if batch.is_empty() {
                return out;
            }
            for m in batch {
                let id = m
                    .message_attributes()
                    .and_then(|a| a.get("message_id"))
                    .and_then(|v| v.string_value())
                    .unwrap_or_default()
                    .to_owned();
                out.push((id, serde_json::from_str(m.body().unwrap()).unwrap()));
                self.app
                    .sqs
                    .delete_message()
                    .queue_url(&self.target)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_long_delay_gets_a_one_time_schedule_that_moves_and_goes_with_it() {
    let f = fixture().await;
    let m = f.message(
        "erase:email:01JABC",
        Duration::hours(72),
        json!({"command": "erase"}),
    );
    assert_eq!(
        f.dispatcher.schedule(&m).await.unwrap(),
        ScheduleOutcome::Created
    );

    let schedule = f
        .schedule_of("erase:email:01JABC")
        .await
        .expect("a one-time schedule exists");
    let expected = format!("at({})", m.deliver_at.format("%Y-%m-%dT%H:%M:%S"));
    assert_eq!(schedule.schedule_expression(), Some(expected.as_str()));
    assert_eq!(schedule.schedule_expression_timezone(), Some("UTC"));
    assert_eq!(
        schedule.group_name(),
        Some(f.env(dsr_adapters::config::vars::SCHEDULE_GROUP).as_str())
    );
    assert_eq!(
        schedule.action_after_completion().map(|a| a.as_str()),
        Some("DELETE")
    );
    let target = schedule.target().unwrap();
    assert_eq!(
        target.arn(),
        f.env(dsr_adapters::config::vars::DISPATCH_TARGET_ARN)
    );
    assert!(target.arn().ends_with(&format!(
        ":function:{}-dispatch",
        f.app.stack.context.stack_name
    )));
    assert_eq!(
        target.role_arn(),
        f.env(dsr_adapters::config::vars::SCHEDULER_ROLE_ARN)
    );
    assert_eq!(
        target.dead_letter_config().and_then(|d| d.arn()),
        Some(
            f.env(dsr_adapters::config::vars::SCHEDULER_DLQ_ARN)
                .as_str()
        )
    );
    assert!(
        target
            .retry_policy()
            .and_then(|r| r.maximum_retry_attempts())
            .unwrap_or(0)
            > 0
    );
    assert_eq!(
        serde_json::from_str::<Value>(target.input().unwrap()).unwrap(),
        json!({"wake": "erase:email:01JABC"})
    );

    // Same key, same message: nothing changes. Rescheduled: the wake-up moves.
    assert_eq!(
        f.dispatcher.schedule(&m).await.unwrap(),
        ScheduleOutcome::Unchanged
    );
    let moved = f.message(
        "erase:email:01JABC",
        Duration::hours(96),
        json!({"command": "erase"}),
    );
    assert_eq!(
        f.dispatcher.schedule(&moved).await.unwrap(),
        ScheduleOutcome::Moved
    );
    let expected = format!("at({})", moved.deliver_at.format("%Y-%m-%dT%H:%M:%S"));
    assert_eq!(
        f.schedule_of("erase:email:01JABC")
            .await
            .unwrap()
            .schedule_expression(),
        Some(expected.as_str())
    );

    // Cancelled: the wake-up is deleted and the message is never sent.
    assert_eq!(
        f.dispatcher.cancel(&moved.key).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert!(f.schedule_of("erase:email:01JABC").await.is_none());
    f.clock.advance(Duration::hours(100));
    assert_eq!(f.dispatcher.dispatch_due().await.unwrap().sent, 0);
    assert!(f.delivered().await.is_empty());
}

#[tokio::test]
async fn due_messages_are_delivered_with_their_key_as_message_id_and_the_rest_wait() {
    let f = fixture().await;
    f.dispatcher
        .schedule(&f.message("retry:a", Duration::hours(72), json!({"n": 1})))
        .await
        .unwrap();
    f.dispatcher
        .schedule(&f.message("retry:b", Duration::minutes(5), json!({"n": 2})))
        .await
        .unwrap();
    f.dispatcher
        .schedule(&f.message("retry:c", Duration::hours(80), json!({"n": 3})))
        .await
        .unwrap();
    assert!(
        f.schedule_of("retry:b").await.is_none(),
        "five minutes is the sweep's job"
    );

    f.clock.advance(Duration::minutes(5));
    assert_eq!(f.dispatcher.dispatch_due().await.unwrap().sent, 1);
    assert_eq!(
        f.delivered().await,
        [("retry:b".to_owned(), json!({"n": 2}))]
    );

    f.clock.advance(Duration::hours(72));
    let report = f.dispatcher.dispatch_due().await.unwrap();
    assert_eq!((report.due, report.sent), (1, 1));
    assert_eq!(
        f.delivered().await,
        [("retry:a".to_owned(), json!({"n": 1}))]
    );
    assert_eq!(
        f.dispatcher.dispatch_due().await.unwrap().sent,
        0,
        "retry:c is not due"
    );
}

#[tokio::test]
async fn concurrent_sweeps_send_each_message_once() {
    let f = fixture().await;
    for i in 0..40 {
        f.dispatcher
            .schedule(&f.message(&format!("m{i:02}"), Duration::minutes(1), json!(i)))
            .await
            .unwrap();
    }
    f.clock.advance(Duration::minutes(2));
    let second = f.app.stack.dispatcher(f.clock.clone()).unwrap();
    let (a, b) = tokio::join!(f.dispatcher.dispatch_due(), second.dispatch_due());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.sent + b.sent, 40, "{a:?} {b:?}");
    let delivered = f.delivered().await;
    let ids: std::collections::HashSet<_> = delivered.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        (delivered.len(), ids.len()),
        (40, 40),
        "40 messages, 40 distinct ids"
    );
}

#[tokio::test]
async fn only_the_holder_of_a_claim_may_release_it_and_a_released_claim_is_sent_next() {
    let f = fixture().await;
    let m = f.message("retry:01JABC", Duration::seconds(0), json!({"n": 1}));
    f.dispatcher.schedule(&m).await.unwrap();
    let store = DynamoDelayedStore::new(
        f.app.dynamodb.clone(),
        f.env(dsr_adapters::config::vars::DELAYED_MESSAGES_TABLE),
    );
    let stored = m.clone().normalized();
    let now = f.clock.now();
    let until = now + Duration::minutes(2);
    assert!(store.claim(&stored, now, until).await.unwrap());
    assert!(
        !store
            .release_claim(&stored, until + Duration::seconds(1), now)
            .await
            .unwrap(),
        "another claim's holder cannot release this one"
    );
    assert_eq!(f.dispatcher.dispatch_due().await.unwrap().sent, 0);
    assert!(store.release_claim(&stored, until, now).await.unwrap());
    assert_eq!(
        f.dispatcher.dispatch_due().await.unwrap().sent,
        1,
        "released: the next sweep sends it, long before the claim would have run out"
    );
    assert_eq!(f.delivered().await.len(), 1);
}

#[tokio::test]
async fn a_crash_between_send_and_mark_resends_the_same_message_id() {
    let f = fixture().await;
    let m = f.message(
        "notify:01JXYZ",
        Duration::seconds(0),
        json!({"hello": "again"}),
    );
    f.dispatcher.schedule(&m).await.unwrap();
    // A dispatcher claims and sends, then dies before marking it dispatched.
    let store = DynamoDelayedStore::new(
        f.app.dynamodb.clone(),
        f.env(dsr_adapters::config::vars::DELAYED_MESSAGES_TABLE),
    );
    let now = f.clock.now();
    assert!(store
        .claim(&m.clone().normalized(), now, now + Duration::minutes(2))
        .await
        .unwrap());
    f.dispatcher
        .sender
        .send(&m.destination, m.key.as_str(), &m.payload)
        .await
        .unwrap();

    assert_eq!(
        f.dispatcher.dispatch_due().await.unwrap().sent,
        0,
        "the claim still holds"
    );
    f.clock.advance(Duration::minutes(3));
    assert_eq!(
        f.dispatcher.dispatch_due().await.unwrap().sent,
        1,
        "the claim expired: sent again"
    );
    assert_eq!(
        f.dispatcher.dispatch_due().await.unwrap().sent,
        0,
        "and now marked"
    );
    let delivered = f.delivered().await;
    assert_eq!(delivered.len(), 2);
    assert!(
        delivered
            .iter()
            .all(|(id, body)| id == "notify:01JXYZ" && body == &m.payload),
        "the same message, never a different one"
    );
}

#[tokio::test]
async fn a_rabbitmq_destination_goes_out_through_the_outbound_queue() {
    let f = fixture().await;
    let m = DelayedMessage {
        destination: Destination::Rabbitmq {
            exchange: "gdpr.commands".into(),
            routing_key: "email.erase".into(),
        },
        ..f.message(
            "erase:email:01JQ",
            Duration::seconds(1),
            json!({"subject": "x"}),
        )
    };
    f.dispatcher.schedule(&m).await.unwrap();
    f.clock.advance(Duration::seconds(1));
    assert_eq!(f.dispatcher.dispatch_due().await.unwrap().sent, 1);
    let out = drain(&f.app.sqs, &f.app.queue_url("OutboundQueue")).await;
    assert_eq!(out.len(), 1);
    let envelope: Value = serde_json::from_str(out[0].body().unwrap()).unwrap();
    assert_message(&envelope);
    assert_eq!(envelope["routing_key"], "email.erase");
    assert_eq!(envelope["message_id"], "erase:email:01JQ");
}

#[tokio::test]
async fn schedule_requests_over_sqs_reach_the_dispatch_function_and_poison_ends_in_the_dlq() {
    let f = fixture().await;
    let at = (Utc::now() + Duration::hours(5)).to_rfc3339();
    let confirmations = f.app.queue_url("ConfirmationsQueue");
    let request = json!({"action": "schedule", "version": 1, "key": "via-sqs", "deliver_at": at,
        "destination": {"kind": "sqs", "queue_url": confirmations}, "payload": {"p": 1}});
    assert_message(&request);
    // Even the service's own roles reach only its own queue through delayed dispatch.
    let elsewhere = json!({"action": "schedule", "version": 1, "key": "elsewhere", "deliver_at": at,
        "destination": {"kind": "sqs", "queue_url": f.target}, "payload": {"p": 2}});
    let queue = f.app.queue_url("ScheduleRequestsQueue");
    f.app
        .sqs
        .send_message()
        .queue_url(&queue)
        .message_body(elsewhere.to_string())
        .send()
        .await
        .unwrap();
    f.app
        .sqs
        .send_message()
        .queue_url(&queue)
        .message_body(request.to_string())
        .send()
        .await
        .unwrap();
    f.app
        .sqs
        .send_message()
        .queue_url(&queue)
        .message_body("{\"action\": \"explode\"}")
        .send()
        .await
        .unwrap();

    let dispatch = Arc::new(f.app.stack.dispatch(f.clock.clone()).unwrap());
    let function: dsr_local::event_source::SqsFunction = Arc::new(move |event| {
        let dispatch = dispatch.clone();
        Box::pin(async move {
            let answer = dispatch.handle(serde_json::to_value(event)?, None).await?;
            Ok(serde_json::from_value(answer)?)
        })
    });
    let mut source = f.app.stack.event_source("DispatchFunction").unwrap();
    source.queue_url = queue.clone();
    // Short visibility so the poison message's retries come quickly.
    f.app
        .sqs
        .set_queue_attributes()
        .queue_url(&queue)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "1",
        )
        .send()
        .await
        .unwrap();
    let dead = crate::helpers::eventually(std::time::Duration::from_secs(30), async || {
        dsr_local::event_source::deliver_once(&f.app.sqs, &source, &function)
            .await
            .unwrap();
        queue_depth(
            &f.app.sqs,
            &f.app.queue_url("ScheduleRequestsDeadLetterQueue"),
        )
        .await
            == 2
    })
    .await;
    assert!(
        dead,
        "the poison and the unlisted destination were dead-lettered"
    );
    assert!(
        f.schedule_of("dsr/via-sqs").await.is_some(),
        "the good request was scheduled, in the service's own key namespace"
    );
    assert!(f.schedule_of("dsr/elsewhere").await.is_none());
}

/// Run on its own after the rest of the suite (see the Makefile): it keeps the emulator busy
/// for minutes. The figures go to stderr; the README records them.
#[tokio::test]
async fn ten_thousand_messages_due_at_once_are_all_delivered() {
    use futures::StreamExt;
    let f = fixture().await;
    let n: usize = std::env::var("DSR_BULK_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // A hundred destinations, as many services would be: the emulator's SQS slows down with
    // the length of one queue, real SQS does not.
    let mut targets = Vec::new();
    for q in 0..100 {
        let url = f
            .app
            .sqs
            .create_queue()
            .queue_name(format!("{}-bulk{q}", unique_name()))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        targets.push(url);
    }
    let started = std::time::Instant::now();
    let scheduled: Vec<ScheduleOutcome> = futures::stream::iter(0..n)
        .map(|i| {
            let m = DelayedMessage {
                destination: Destination::Sqs {
                    queue_url: targets[i % targets.len()].clone(),
                },
                ..f.message(
                    &format!("bulk:{i:05}"),
                    Duration::minutes(10),
                    json!({"i": i}),
                )
            };
            let dispatcher = &f.dispatcher;
            async move { dispatcher.schedule(&m).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(scheduled.iter().all(|o| *o == ScheduleOutcome::Created));
    eprintln!(
        "bulk: scheduled {n} in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    f.clock.advance(Duration::minutes(10));
    let started = std::time::Instant::now();
    let report = f.dispatcher.dispatch_due().await.unwrap();
    eprintln!(
        "bulk: dispatched {} due at once in {:.1} s",
        report.sent,
        started.elapsed().as_secs_f64()
    );
    assert_eq!((report.due, report.sent, report.failed), (n, n, 0));
    let mut delivered = 0;
    for url in &targets {
        delivered += queue_depth(&f.app.sqs, url).await;
    }
    assert_eq!(delivered, n);
    assert_eq!(
        f.dispatcher.dispatch_due().await.unwrap().due,
        0,
        "nothing left, nothing twice"
    );
}
