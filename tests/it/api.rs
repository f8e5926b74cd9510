//! The user API over HTTP, backed by DynamoDB and SQS in the emulator.

use crate::contract::{assert_message, assert_response};
use crate::helpers::{drain, spawn_app, spawn_app_with};
use aws_sdk_dynamodb::types::AttributeValue;
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_domain::{RequestState, RequestStore, SubjectId};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn a_submission_is_stored_and_queued_on_the_queue_of_its_kind() {
    let app = spawn_app().await;
    let reply = app.submit("alice", "access").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_response("POST", "/v1/requests", 202, &reply.body);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.headers["location"],
        format!("/v1/requests/{id}").as_str()
    );

    let item = app
        .dynamodb
        .get_item()
        .table_name(app.table())
        .key(
            "pk",
            AttributeValue::S(dsr_adapters::dynamodb::keys::request(id.parse().unwrap())),
        )
        .key(
            "sk",
            AttributeValue::S(dsr_adapters::dynamodb::keys::META.into()),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("the request is in DynamoDB");
    let attr = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(attr("state"), "received");
    assert_eq!(attr("kind"), "access");
    assert_eq!(attr("subject"), "alice");
    assert_eq!(attr("due_at"), reply.body["due_at"].as_str().unwrap());
    assert_ne!(attr("subject_hash"), "alice");
    assert!(!attr("enqueued_at").is_empty(), "the send was recorded");

    let access = drain(&app.sqs, &app.queue_url("AccessRequestsQueue")).await;
    assert_eq!(access.len(), 1);
    let message: Value = serde_json::from_str(access[0].body().unwrap()).unwrap();
    assert_message(&message);
    crate::asyncapi::assert_on_channel("accessRequests", &message);
    assert_eq!(
        (message["request_id"].as_str(), message["kind"].as_str()),
        (Some(id.as_str()), Some("access"))
    );
    assert!(drain(&app.sqs, &app.queue_url("ErasureRequestsQueue"))
        .await
        .is_empty());

    let erasure = app.submit("alice", "erasure").await;
    assert_eq!(erasure.status, StatusCode::ACCEPTED);
    let queued = drain(&app.sqs, &app.queue_url("ErasureRequestsQueue")).await;
    assert_eq!(queued.len(), 1);
    let message: Value = serde_json::from_str(queued[0].body().unwrap()).unwrap();
    assert_eq!(message["request_id"], erasure.body["id"]);
    assert!(drain(&app.sqs, &app.queue_url("AccessRequestsQueue"))
        .await
        .is_empty());
}

#[tokio::test]
async fn twenty_concurrent_submissions_by_one_subject_make_exactly_one_request() {
    let app = spawn_app().await;
    let replies = futures::future::join_all((0..20).map(|_| app.submit("carol", "erasure"))).await;
    let created = replies
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .count();
    let returned = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(
        (created, returned),
        (1, 19),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let ids: std::collections::HashSet<_> = replies.iter().map(|r| r.body["id"].clone()).collect();
    assert_eq!(ids.len(), 1, "every reply names the same request");
    for reply in &replies {
        assert_response("POST", "/v1/requests", reply.status.as_u16(), &reply.body);
    }

    let list = app.get("carol", "/v1/requests").await;
    assert_response("GET", "/v1/requests", 200, &list.body);
    assert_eq!(list.body["requests"].as_array().unwrap().len(), 1);
    // One work message, for that request. SQS sends are at least once (an SDK retry after a
    // lost answer sends again), so a repeat may come with the same message id, which
    // consumers drop; a second request would carry another.
    let queued = drain(&app.sqs, &app.queue_url("ErasureRequestsQueue")).await;
    let message_ids: std::collections::HashSet<String> = queued
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m.body().unwrap()).unwrap()["message_id"].to_string()
        })
        .collect();
    assert_eq!(message_ids.len(), 1, "{queued:?}");
    assert!(message_ids
        .iter()
        .next()
        .is_some_and(|id| id.contains(ids.iter().next().unwrap().as_str().unwrap())));
}

/// Concurrent transactions that write one same item conflict (DynamoDB cancels them): an item
/// every submission writes would turn a busy minute into 503s. Each submission is counted as
/// its own item of the hop log, in the same transaction as the request.
#[tokio::test]
async fn concurrent_submissions_of_different_subjects_share_no_hot_item() {
    use dsr_domain::hops::{ClickOutcome, HopLog};
    let app = spawn_app().await;
    let subjects: Vec<String> = (0..40).map(|i| format!("subject-{i}")).collect();
    let replies =
        futures::future::join_all(subjects.iter().map(|s| app.submit(s, "erasure"))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::ACCEPTED));
    let ids: std::collections::BTreeSet<dsr_domain::RequestId> = replies
        .iter()
        .map(|r| r.body["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let log = app.hop_log();
    let mut counted = std::collections::BTreeSet::new();
    let hours: std::collections::BTreeSet<_> = ids
        .iter()
        .map(|id| dsr_domain::hops::hour_of(*id))
        .collect();
    for hour in hours {
        for mark in log
            .window(dsr_domain::RequestKind::Erasure, hour)
            .await
            .unwrap()
        {
            let click = mark.click.expect("only clicks so far");
            assert_eq!(click.outcome, ClickOutcome::Created);
            assert_eq!(
                click.id, mark.request,
                "a new request's click is the request"
            );
            assert!(counted.insert(mark.request), "one item per submission");
        }
    }
    assert_eq!(counted, ids);
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_return_the_same_request() {
    let app = spawn_app().await;
    let token = app.token("dave");
    let post = |kind: &'static str| {
        let token = token.clone();
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/v1/requests",
                Some(&token),
                Some(&format!(r#"{{"type":"{kind}"}}"#)),
                &[("Idempotency-Key", "5f1c-retry")],
            )
            .await
        }
    };
    let first = post("access").await;
    let retry = post("access").await;
    assert_eq!(
        (first.status, retry.status),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    assert_eq!(first.body["id"], retry.body["id"]);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    let misuse = post("erasure").await;
    assert_eq!(misuse.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_response("POST", "/v1/requests", 422, &misuse.body);
    let again = post("access").await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    // The retry, while the request waited, sent its work message once more (the first send
    // is recorded unconfirmed); the next retry did not. One message id.
    let messages = drain(&app.sqs, &app.queue_url("AccessRequestsQueue")).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let ids: std::collections::BTreeSet<String> = messages
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m.body().unwrap()).unwrap()["message_id"].to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[tokio::test]
async fn users_cannot_read_or_cancel_each_others_requests() {
    let app = spawn_app().await;
    let mine = app.submit("alice", "access").await;
    let path = format!("/v1/requests/{}", mine.body["id"].as_str().unwrap());

    let peek = app.get("bob", &path).await;
    assert_eq!(peek.status, StatusCode::NOT_FOUND);
    assert_response("GET", "/v1/requests/{id}", 404, &peek.body);
    let cancel = app.delete("bob", &path).await;
    assert_eq!(cancel.status, StatusCode::NOT_FOUND);
    assert_response("DELETE", "/v1/requests/{id}", 404, &cancel.body);
    let bobs = app.get("bob", "/v1/requests").await;
    assert_eq!(bobs.body, json!({"requests": []}));

    let still = app.get("alice", &path).await;
    assert_eq!(still.status, StatusCode::OK);
    assert_response("GET", "/v1/requests/{id}", 200, &still.body);
    assert_eq!(still.body["state"], "received");
}

#[tokio::test]
async fn cancel_works_until_work_starts_then_conflicts() {
    let app = spawn_app().await;
    let first = app.submit("erin", "erasure").await;
    let path = format!("/v1/requests/{}", first.body["id"].as_str().unwrap());
    let cancelled = app.delete("erin", &path).await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_response("DELETE", "/v1/requests/{id}", 200, &cancelled.body);
    assert_eq!(cancelled.body["state"], "cancelled");
    assert_eq!(app.get("erin", &path).await.body["state"], "cancelled");

    // The guard was released with the cancellation: a new request can be made.
    let second = app.submit("erin", "erasure").await;
    assert_eq!(second.status, StatusCode::ACCEPTED);
    let id = second.body["id"].as_str().unwrap();

    // The erasure worker (a later issue) takes it: move it the way that worker will.
    let store = DynamoRequestStore::new(app.dynamodb.clone(), app.table(), "test");
    let mut working = store.get(id.parse().unwrap()).await.unwrap().unwrap();
    working
        .transition_to(RequestState::FanningOut, chrono::Utc::now())
        .unwrap();
    let hash = app
        .stack
        .subject_hasher()
        .unwrap()
        .hash(&SubjectId::parse("erin").unwrap());
    store
        .save_transition(&working, &hash, RequestState::Received)
        .await
        .unwrap();

    let conflict = app.delete("erin", &format!("/v1/requests/{id}")).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_response("DELETE", "/v1/requests/{id}", 409, &conflict.body);
    assert_eq!(conflict.body["error"]["code"], "not_cancellable");
}

#[tokio::test]
async fn bad_input_gets_its_4xx_with_an_error_body_and_is_not_stored() {
    let app = spawn_app().await;
    let token = app.token("mallory");
    let now = chrono::Utc::now().timestamp();
    let expired = app
        .authorizer
        .sign(&json!({"sub": "mallory", "iss": "dsr-local", "aud": "dsr-api", "exp": now - 5}));
    let forged =
        dsr_local::jwt::JwtAuthorizer::new("not-the-local-secret-at-all", "dsr-local", "dsr-api")
            .issue("mallory", 60);
    let oversized = format!(r#"{{"type":"access","note":"{}"}}"#, "x".repeat(5000));
    let valid = r#"{"type":"access"}"#;

    // (method, path, token, body, expected status, expected error code)
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/requests",
            Some(&token),
            Some("{\"type\": \"acc"),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            "/v1/requests",
            Some(&token),
            Some(r#"{"type":"everything"}"#),
            400,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/requests",
            Some(&token),
            Some(r#"{"type":"access","subject":"alice"}"#),
            400,
            "invalid_body",
        ),
        (
            Method::POST,
            "/v1/requests",
            Some(&token),
            Some(&oversized),
            413,
            "body_too_large",
        ),
        (
            Method::POST,
            "/v1/requests",
            None,
            Some(valid),
            401,
            "unauthorized",
        ),
        (
            Method::POST,
            "/v1/requests",
            Some(&expired),
            Some(valid),
            401,
            "unauthorized",
        ),
        (
            Method::POST,
            "/v1/requests",
            Some(&forged),
            Some(valid),
            401,
            "unauthorized",
        ),
        (
            Method::POST,
            "/v1/requests",
            Some("garbage"),
            Some(valid),
            401,
            "unauthorized",
        ),
        (Method::GET, "/v1/requests", None, None, 401, "unauthorized"),
        (
            Method::GET,
            "/v1/requests/123",
            Some(&token),
            None,
            400,
            "malformed_request_id",
        ),
        (
            Method::DELETE,
            "/v1/requests/01ARZ3NDEKTSV4RRFFQ69G5FA!",
            Some(&token),
            None,
            400,
            "malformed_request_id",
        ),
        (
            Method::GET,
            "/v1/requests/01ARZ3NDEKTSV4RRFFQ69G5FAV",
            Some(&token),
            None,
            404,
            "not_found",
        ),
    ];
    for (method, path, token, body, status, code) in cases {
        let reply = app.send(method.clone(), path, token, body, &[]).await;
        let case = format!("{method} {path} {:?}", body.map(|b| &b[..b.len().min(40)]));
        assert_eq!(reply.status.as_u16(), status, "{case}: {}", reply.body);
        assert_eq!(reply.body["error"]["code"], code, "{case}");
        let template = if path == "/v1/requests" {
            path
        } else {
            "/v1/requests/{id}"
        };
        assert_response(method.as_str(), template, status, &reply.body);
    }
    let list = app.get("mallory", "/v1/requests").await;
    assert_eq!(list.body, json!({"requests": []}), "nothing was stored");
    assert!(drain(&app.sqs, &app.queue_url("AccessRequestsQueue"))
        .await
        .is_empty());
}

#[tokio::test]
async fn the_list_comes_in_pages_whose_cursor_works_for_its_subject_only_and_access_requests_are_limited(
) {
    let app = spawn_app_with(|s| {
        s.parameters
            .insert("AccessRequestsPerDay".into(), "3".into());
    })
    .await;
    // Three access requests, each cancelled so the next is a new one; then the fourth is refused.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = app.submit("paula", "access").await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        let id = reply.body["id"].as_str().unwrap().to_owned();
        let cancelled = app.delete("paula", &format!("/v1/requests/{id}")).await;
        assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
        ids.push(id);
    }
    let refused = app.submit("paula", "access").await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert_response("POST", "/v1/requests", 429, &refused.body);
    assert_eq!(refused.body["error"]["code"], "too_many_access_requests");
    let retry_after = refused.retry_after();
    assert!(
        (1..=24 * 3600).contains(&retry_after),
        "about a day: {retry_after}"
    );
    // Other kinds and other subjects are not limited by it.
    assert_eq!(
        app.submit("paula", "erasure").await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.submit("quentin", "access").await.status,
        StatusCode::ACCEPTED
    );

    // Four requests, two per page, newest first.
    let first = app.get("paula", "/v1/requests?limit=2").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_response("GET", "/v1/requests", 200, &first.body);
    assert_eq!(first.body["requests"].as_array().unwrap().len(), 2);
    assert_eq!(first.headers["cache-control"], "no-store");
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let second = app
        .get("paula", &format!("/v1/requests?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert!(second.body.get("next_cursor").is_none(), "{}", second.body);
    let listed: Vec<&str> = first.body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second.body["requests"].as_array().unwrap())
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 4);
    assert_eq!(
        listed[1..],
        [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]
    );

    // Somebody else's cursor, a forged one, a page too big.
    for (who, query) in [
        ("quentin", format!("cursor={cursor}")),
        ("paula", format!("cursor={}.{}", ids[2], "0".repeat(32))),
        ("paula", "limit=1000".to_owned()),
        ("paula", "limit=0".to_owned()),
    ] {
        let reply = app.get(who, &format!("/v1/requests?{query}")).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{who} {query}: {}",
            reply.body
        );
        assert_response("GET", "/v1/requests", 400, &reply.body);
    }
}
