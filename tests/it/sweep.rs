//! The sweep finds requests whose work message never left or was lost, and sends it again.

use crate::helpers::{drain, spawn_app, TestApp};
use chrono::{Duration, Utc};
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_adapters::sqs::SqsWorkQueue;
use dsr_domain::{
    FixedClock, RequestKind, RequestState, RequestStore, Requests, SubjectId, SweepSettings,
};
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::Arc;

/// The request use cases the sweep function gets from the template, but with a clock the test moves.
fn sweep_requests(
    app: &TestApp,
    queue: SqsWorkQueue,
    clock: Arc<FixedClock>,
) -> Requests<DynamoRequestStore, SqsWorkQueue, Arc<FixedClock>> {
    Requests::new(
        DynamoRequestStore::new(app.dynamodb.clone(), app.table(), "sweep"),
        queue,
        clock,
        app.stack.subject_hasher().unwrap(),
    )
}

fn real_queues(app: &TestApp) -> SqsWorkQueue {
    SqsWorkQueue::new(
        app.sqs.clone(),
        app.queue_url("AccessRequestsQueue"),
        app.queue_url("ErasureRequestsQueue"),
    )
}

#[tokio::test]
async fn a_request_whose_message_never_reached_sqs_is_sent_by_the_sweep() {
    let app = spawn_app().await;
    // Intake while SQS refuses: the queue URL points at a queue that does not exist.
    let missing = format!("{}-gone", app.queue_url("ErasureRequestsQueue"));
    let broken = SqsWorkQueue::new(app.sqs.clone(), &missing, &missing);
    let clock = Arc::new(FixedClock::at(Utc::now()));
    let intake = sweep_requests(&app, broken, clock.clone());
    let frank = SubjectId::parse("frank").unwrap();
    let submitted = intake
        .submit(&frank, RequestKind::Erasure, None)
        .await
        .unwrap();
    let id = submitted.request().id;
    let stored = intake.store().get(id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.enqueued_at),
        (RequestState::Received, None)
    );
    assert!(drain(&app.sqs, &app.queue_url("ErasureRequestsQueue"))
        .await
        .is_empty());

    let sweep = sweep_requests(&app, real_queues(&app), clock.clone());
    let settings = SweepSettings::default();
    let early = sweep.sweep_lost_messages(settings).await.unwrap();
    assert_eq!(
        early.reenqueued, 0,
        "within the grace period intake may still be sending"
    );

    clock.advance(settings.unqueued_grace + Duration::seconds(1));
    let report = sweep.sweep_lost_messages(settings).await.unwrap();
    assert_eq!((report.reenqueued, report.failed), (1, 0));
    let queued = drain(&app.sqs, &app.queue_url("ErasureRequestsQueue")).await;
    assert_eq!(queued.len(), 1);
    let message: Value = serde_json::from_str(queued[0].body().unwrap()).unwrap();
    crate::contract::assert_message(&message);
    assert_eq!(message["request_id"], id.to_string());
    assert!(intake
        .store()
        .get(id)
        .await
        .unwrap()
        .unwrap()
        .enqueued_at
        .is_some());

    let again = sweep.sweep_lost_messages(settings).await.unwrap();
    assert_eq!(
        again.reenqueued, 0,
        "once sent and recorded, it is not sent again"
    );
}

#[tokio::test]
async fn a_request_whose_message_was_lost_from_the_queue_is_sent_again() {
    let app = spawn_app().await;
    let reply = app.submit("grace", "access").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    // The message disappears (purged, expired, discarded from a DLQ...).
    assert_eq!(
        drain(&app.sqs, &app.queue_url("AccessRequestsQueue"))
            .await
            .len(),
        1
    );

    let clock = Arc::new(FixedClock::at(Utc::now()));
    let sweep = sweep_requests(&app, real_queues(&app), clock.clone());
    let settings = SweepSettings::default();
    assert_eq!(
        sweep
            .sweep_lost_messages(settings)
            .await
            .unwrap()
            .reenqueued,
        0
    );

    clock.advance(settings.stale_after + Duration::seconds(1));
    let report = sweep.sweep_lost_messages(settings).await.unwrap();
    assert_eq!(report.reenqueued, 1);
    let queued = drain(&app.sqs, &app.queue_url("AccessRequestsQueue")).await;
    assert_eq!(queued.len(), 1);
    let message: Value = serde_json::from_str(queued[0].body().unwrap()).unwrap();
    assert_eq!(message["request_id"], reply.body["id"]);
    assert_eq!(
        message["message_id"],
        format!("request:{}", reply.body["id"].as_str().unwrap()),
        "same message id: consumers drop duplicates"
    );
}

#[tokio::test]
async fn the_sweep_function_handler_runs_against_the_template_environment() {
    let app = spawn_app().await;
    let sweep = dsr_sweep::build(&app.stack.aws, &app.stack.env("SweepFunction").unwrap()).unwrap();
    assert_eq!(
        sweep.sweep.stale_after,
        Duration::seconds(1800),
        "from the template's parameter default"
    );
    app.submit("heidi", "access").await;
    let report = dsr_sweep::handle(&sweep.requests, &sweep.reports, sweep.sweep)
        .await
        .unwrap();
    assert_eq!(
        (report.examined, report.reenqueued),
        (1, 0),
        "a fresh, queued request is left alone"
    );
}
