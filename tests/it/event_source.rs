//! The runner's SQS delivery behaves like Lambda's event source mapping: partial batch
//! failures, whole-batch retries on error, and SQS's own redrive to the DLQ.

use crate::helpers::{aws, drain, eventually, unique_name};
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::QueueAttributeName;
use dsr_domain::{RequestId, RequestKind, RequestMessage};
use dsr_local::event_source::{deliver_once, EventSource, SqsFunction};
use dsr_local::provision::queue_arn;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Queues {
    sqs: aws_sdk_sqs::Client,
    source: EventSource,
    dlq_url: String,
}

/// A queue with a 1-second visibility timeout and a DLQ after two receives.
async fn queues() -> Queues {
    let sqs = aws_sdk_sqs::Client::new(&aws().await);
    let name = unique_name();
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = queue_arn(&sqs, &dlq_url).await.unwrap();
    let url = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = queue_arn(&sqs, &url).await.unwrap();
    Queues {
        sqs,
        source: EventSource {
            queue_url: url,
            queue_arn: arn,
            batch_size: 10,
            batching_window: std::time::Duration::ZERO,
            wait_seconds: 1,
            region: "us-east-1".into(),
        },
        dlq_url,
    }
}

/// Wraps a function, counting how often each message body was delivered.
fn counting(inner: SqsFunction, seen: Arc<Mutex<HashMap<String, usize>>>) -> SqsFunction {
    Arc::new(move |event: SqsEvent| {
        for record in &event.records {
            *seen
                .lock()
                .unwrap()
                .entry(record.body.clone().unwrap_or_default())
                .or_default() += 1;
        }
        inner(event)
    })
}

fn work_message(kind: RequestKind) -> String {
    serde_json::to_string(&RequestMessage::new(
        RequestId::new_at(chrono::Utc::now()),
        kind,
        chrono::Utc::now(),
    ))
    .unwrap()
}

#[tokio::test]
async fn good_messages_are_deleted_once_and_a_poison_message_ends_in_the_dlq() {
    let q = queues().await;
    let good: Vec<String> = (0..4)
        .map(|i| {
            work_message(if i % 2 == 0 {
                RequestKind::Access
            } else {
                RequestKind::Erasure
            })
        })
        .collect();
    let poison = r#"{"version":1,"request_id":"not a request"}"#.to_owned();
    for body in good.iter().chain([&poison]) {
        q.sqs
            .send_message()
            .queue_url(&q.source.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let function = counting(logging_consumer("test"), seen.clone());

    let moved = eventually(Duration::from_secs(30), async || {
        deliver_once(&q.sqs, &q.source, &function).await.unwrap();
        crate::helpers::queue_depth(&q.sqs, &q.dlq_url).await == 1
    })
    .await;
    assert!(
        moved,
        "the poison message reached the DLQ; deliveries: {:?}",
        seen.lock().unwrap()
    );

    let seen = seen.lock().unwrap().clone();
    for body in &good {
        assert_eq!(
            seen.get(body),
            Some(&1),
            "a good message is delivered once and deleted"
        );
    }
    assert_eq!(
        seen.get(&poison),
        Some(&2),
        "the poison message is tried maxReceiveCount times"
    );
    assert_eq!(
        crate::helpers::queue_depth(&q.sqs, &q.source.queue_url).await,
        0
    );
    let dead = drain(&q.sqs, &q.dlq_url).await;
    assert_eq!(
        dead[0].body(),
        Some(poison.as_str()),
        "the poison message is kept as it was"
    );
}

#[tokio::test]
async fn a_failing_handler_leaves_the_whole_batch_for_a_retry() {
    let q = queues().await;
    let body = work_message(RequestKind::Access);
    q.sqs
        .send_message()
        .queue_url(&q.source.queue_url)
        .message_body(&body)
        .send()
        .await
        .unwrap();
    let failing: SqsFunction = Arc::new(|_| Box::pin(async { Err("downstream is down".into()) }));
    let delivery = deliver_once(&q.sqs, &q.source, &failing).await.unwrap();
    assert_eq!(
        (delivery.received, delivery.succeeded, delivery.failed),
        (1, 0, 1)
    );

    // The message comes back after its visibility timeout and now succeeds.
    let ok = logging_consumer("test");
    let redelivered = eventually(Duration::from_secs(10), async || {
        deliver_once(&q.sqs, &q.source, &ok)
            .await
            .unwrap()
            .succeeded
            == 1
    })
    .await;
    assert!(redelivered);
    assert_eq!(
        crate::helpers::queue_depth(&q.sqs, &q.source.queue_url).await,
        0
    );
}

#[tokio::test]
async fn naming_a_message_not_in_the_batch_fails_the_whole_batch() {
    let q = queues().await;
    q.sqs
        .send_message()
        .queue_url(&q.source.queue_url)
        .message_body(work_message(RequestKind::Erasure))
        .send()
        .await
        .unwrap();
    let confused: SqsFunction = Arc::new(|_| {
        Box::pin(async {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = "not-in-this-batch".into();
            let mut response = SqsBatchResponse::default();
            response.batch_item_failures.push(failure);
            Ok(response)
        })
    });
    let delivery = deliver_once(&q.sqs, &q.source, &confused).await.unwrap();
    assert_eq!((delivery.received, delivery.failed), (1, 1));
}

/// A consumer that checks each message against the work-message contract and logs it; a message that breaks the contract is reported as a
/// batch item failure, so after `maxReceiveCount` tries it lands in the dead-letter queue.
fn logging_consumer(queue: &'static str) -> SqsFunction {
    Arc::new(move |event: SqsEvent| {
        Box::pin(async move {
            let mut response = SqsBatchResponse::default();
            for record in event.records {
                let id = record.message_id.clone().unwrap_or_default();
                match serde_json::from_str::<dsr_domain::RequestMessage>(
                    record.body.as_deref().unwrap_or(""),
                ) {
                    Ok(message) => {
                        eprintln!("{queue}: work message for {}", message.request_id)
                    }
                    Err(err) => {
                        eprintln!("{queue}: malformed work message {id}: {err}");
                        let mut failure = BatchItemFailure::default();
                        failure.item_identifier = id;
                        response.batch_item_failures.push(failure);
                    }
                }
            }
            Ok(response)
        })
    })
}

/// Asks for every message to come back in a second.
struct ComeBackSoon;

impl dsr_adapters::batch::RecordHandler for ComeBackSoon {
    type Message = RequestMessage;

    async fn handle(
        &self,
        _message: RequestMessage,
        _origin: &dsr_domain::messages::Origin,
    ) -> dsr_adapters::batch::Outcome {
        dsr_adapters::batch::Outcome::Retry(Some(Duration::from_secs(1)))
    }
}

/// A retry's "come back in N seconds" is a change of the message's visibility. When SQS fails
/// it (here its first four calls: more than the SDK's own three attempts) the driver tries
/// again; were it given up, the message would stay away for the queue's whole visibility
/// timeout (an hour here, 90 minutes on the work queues) and the request with it.
#[tokio::test]
async fn a_retry_whose_delay_sqs_failed_to_set_still_comes_back_after_its_delay() {
    let sqs = aws_sdk_sqs::Client::new(&aws().await);
    let url = sqs
        .create_queue()
        .queue_name(unique_name())
        .attributes(QueueAttributeName::VisibilityTimeout, "3600")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let source = EventSource {
        queue_arn: queue_arn(&sqs, &url).await.unwrap(),
        queue_url: url.clone(),
        batch_size: 10,
        batching_window: Duration::ZERO,
        wait_seconds: 1,
        region: "us-east-1".into(),
    };
    let emulator =
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into());
    let proxy = dsr_local::fault_proxy::start(
        &emulator,
        dsr_local::fault_proxy::Faults {
            outage: Some(dsr_local::fault_proxy::Outage {
                operation: "SQS.ChangeMessageVisibility",
                calls: 4,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let faulty = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&aws().await)
            .endpoint_url(proxy.url())
            .build(),
    );
    let driver = Arc::new(dsr_adapters::batch::QueueDriver::new(
        "test",
        ComeBackSoon,
        faulty,
        url.clone(),
        None,
    ));
    let function: SqsFunction = Arc::new(move |event: SqsEvent| {
        let driver = driver.clone();
        Box::pin(async move { Ok(driver.handle(event, None).await) })
    });
    sqs.send_message()
        .queue_url(&url)
        .message_body(work_message(RequestKind::Access))
        .send()
        .await
        .unwrap();

    let first = deliver_once(&sqs, &source, &function).await.unwrap();
    assert_eq!((first.received, first.failed), (1, 1));
    let mut again = 0;
    let back = eventually(Duration::from_secs(30), async || {
        again += deliver_once(&sqs, &source, &function)
            .await
            .unwrap()
            .received;
        again > 0
    })
    .await;
    let changes = proxy.counts.operations()["SQS.ChangeMessageVisibility"];
    assert!(
        back,
        "the message came back after its 1-second delay, not the queue's hour ({changes} visibility changes asked)"
    );
    assert!(changes >= 5, "four failed, then one took: {changes}");
}
