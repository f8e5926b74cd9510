//! The local runner as `make run` starts it: API, consumers and sweep in one process.

use crate::helpers::{eventually, queue_depth, spawn_app_with};
use reqwest::StatusCode;
use std::time::Duration;

#[tokio::test]
async fn the_runner_serves_the_api_drains_the_work_queues_and_stops_cleanly() {
    let app = spawn_app_with(|settings| {
        settings.consume_work_queues = true;
        // A registry the functions accept: one source (the stack's own table, which holds
        // nothing under the subject's id as a key) and one service to erase.
        settings.registry = Some(format!(
            "services:\n  - {{ name: records, collect: {{ kind: dynamodb, table: {}-RequestsTable, key_attribute: pk }} }}\n  - {{ name: crm, broker_user: svc-crm, erase: {{ via: {{ kind: rabbitmq, routing_key: erasure.crm }} }} }}\n",
            settings.stack_name
        ));
    })
    .await;
    let reply = app.submit("ivan", "access").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let reply = app.submit("ivan", "erasure").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);

    let access = app.queue_url("AccessRequestsQueue");
    let erasure = app.queue_url("ErasureRequestsQueue");
    let drained = eventually(Duration::from_secs(20), async || {
        queue_depth(&app.sqs, &access).await + queue_depth(&app.sqs, &erasure).await == 0
    })
    .await;
    assert!(drained, "the consumers took both messages");

    let base = app.base.clone();
    tokio::time::timeout(Duration::from_secs(15), app.running.shutdown())
        .await
        .expect("shutdown finishes");
    assert!(
        reqwest::get(format!("{base}/v1/requests")).await.is_err(),
        "the API is closed"
    );
}
