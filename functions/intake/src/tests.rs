//! The handler with in-memory adapters: every route, every bad input.

use super::*;
use chrono::{TimeZone, Utc};
use dsr_adapters::memory::{InMemoryReportLinks, InMemoryRequestStore, InMemoryWorkQueue};
use dsr_domain::{FixedClock, RequestState, SubjectHasher};
use serde_json::Value;
use std::sync::Arc;

type TestApi = IntakeApi<
    Arc<InMemoryRequestStore>,
    Arc<InMemoryWorkQueue>,
    Arc<FixedClock>,
    InMemoryReportLinks,
>;

struct Harness {
    api: TestApi,
    clock: Arc<FixedClock>,
    store: Arc<InMemoryRequestStore>,
    queue: Arc<InMemoryWorkQueue>,
}

fn harness() -> Harness {
    let store = Arc::new(InMemoryRequestStore::default());
    let queue = Arc::new(InMemoryWorkQueue::default());
    let clock = Arc::new(FixedClock::at(
        Utc.with_ymd_and_hms(2026, 1, 31, 9, 15, 0).unwrap(),
    ));
    Harness {
        api: IntakeApi {
            requests: Requests::new(
                store.clone(),
                queue.clone(),
                clock.clone(),
                SubjectHasher::new("unit-test-hash-key"),
            ),
            reports: InMemoryReportLinks,
            link_ttl: DEFAULT_REPORT_URL_TTL,
            signer: Arc::new(
                dsr_adapters::signing::Ed25519Signer::from_pem(
                    dsr_adapters::signing::LOCAL_KEY_PEM,
                )
                .unwrap(),
            ),
        },
        clock,
        store,
        queue,
    }
}

/// An API Gateway v2 event, as Lambda delivers it.
fn event(
    method: &str,
    path: &str,
    sub: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> lambda_http::Request {
    let mut all_headers = serde_json::Map::new();
    all_headers.insert("content-type".into(), "application/json".into());
    for (k, v) in headers {
        all_headers.insert((*k).into(), (*v).into());
    }
    let authorizer = sub.map(|s| json!({"jwt": {"claims": {"sub": s}, "scopes": null}}));
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": all_headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "authorizer": authorizer,
            "domainName": "api.example",
            "domainPrefix": "api",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7", "userAgent": "test"},
            "requestId": "id",
            "routeKey": "$default",
            "stage": "$default",
            "time": "31/Jan/2026:09:15:00 +0000",
            "timeEpoch": 0
        },
        "body": body,
        "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).expect("valid API Gateway v2 event")
}

async fn call(h: &Harness, request: lambda_http::Request) -> (StatusCode, Value, Response<Body>) {
    let response = handle(&h.api, request)
        .await
        .expect("handler never errors on input");
    let body: Value = match response.body() {
        Body::Text(text) => serde_json::from_str(text).expect("JSON body"),
        other => panic!("unexpected body {other:?}"),
    };
    (response.status(), body, response)
}

async fn submit(h: &Harness, sub: &str, kind: &str) -> (StatusCode, Value) {
    let body = format!(r#"{{"type":"{kind}"}}"#);
    let (status, body, _) = call(
        h,
        event("POST", "/v1/requests", Some(sub), Some(&body), &[]),
    )
    .await;
    (status, body)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn submit_accepts_queues_and_sets_the_one_month_deadline() {
    let h = harness();
    let (status, body, response) = call(
        &h,
        event(
            "POST",
            "/v1/requests",
            Some("alice"),
            Some(r#"{"type":"access"}"#),
            &[],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = body["id"].as_str().unwrap();
    assert_eq!(
        response.headers()[header::LOCATION],
        format!("/v1/requests/{id}").as_str()
    );
    assert_eq!(body["type"], "access");
    assert_eq!(body["state"], "received");
    assert_eq!(body["received_at"], "2026-01-31T09:15:00.000Z");
    assert_eq!(body["due_at"], "2026-02-28T09:15:00.000Z");
    assert!(
        body.get("subject").is_none(),
        "the subject id is never echoed"
    );

    let sent = h.queue.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].request_id.to_string(), id);
    assert_eq!(sent[0].kind, RequestKind::Access);
    let stored = h.store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.subject.as_str(), "alice");
    assert!(stored.enqueued_at.is_some());
}

#[tokio::test]
async fn the_fixture_event_from_api_gateway_submits_for_its_sub_claim() {
    let h = harness();
    let fixture = include_str!("../tests/fixtures/apigw-v2-submit.json");
    let request = lambda_http::request::from_str(fixture).unwrap();
    let (status, body, _) = call(&h, request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["type"], "erasure");
    let stored = h
        .store
        .get(body["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.subject.as_str(),
        "7c4a8d09-ca37-4c1b-9f1a-2b3c4d5e6f70"
    );
}

#[tokio::test]
async fn a_second_submission_while_one_is_open_returns_the_open_one() {
    let h = harness();
    let (first, a) = submit(&h, "alice", "access").await;
    let (second, b) = submit(&h, "alice", "access").await;
    assert_eq!((first, second), (StatusCode::ACCEPTED, StatusCode::OK));
    assert_eq!(a["id"], b["id"]);
    let (other_kind, c) = submit(&h, "alice", "erasure").await;
    assert_eq!(other_kind, StatusCode::ACCEPTED);
    assert_ne!(a["id"], c["id"]);
    let (other_subject, d) = submit(&h, "bob", "access").await;
    assert_eq!(other_subject, StatusCode::ACCEPTED);
    assert_ne!(a["id"], d["id"]);
    // The first send of a request is recorded with it, unconfirmed (the intake could have died
    // before it): a duplicate while it waits sends it once more, confirmed; later ones do not.
    assert_eq!(h.queue.sent().len(), 4, "the duplicate sent it once more");
    let (third, e) = submit(&h, "alice", "access").await;
    assert_eq!((third, &e["id"]), (StatusCode::OK, &a["id"]));
    assert_eq!(h.queue.sent().len(), 4, "and no more");
    let sent = h.queue.sent();
    let again: Vec<_> = sent
        .iter()
        .filter(|m| m.request_id.to_string() == a["id"].as_str().unwrap())
        .collect();
    assert_eq!(again.len(), 2);
    assert_eq!(again[0].message_id, again[1].message_id, "one message id");
}

#[tokio::test]
async fn idempotency_key_replays_and_refuses_reuse_for_another_type() {
    let h = harness();
    let key = [("idempotency-key", "retry-7")];
    let post = |kind: &str| {
        event(
            "POST",
            "/v1/requests",
            Some("alice"),
            Some(&format!(r#"{{"type":"{kind}"}}"#)),
            &key,
        )
    };
    let (s1, first, _) = call(&h, post("access")).await;
    let (s2, replay, response) = call(&h, post("access")).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(first["id"], replay["id"]);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let (s3, reused, _) = call(&h, post("erasure")).await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&reused), "idempotency_key_reused");
    // A retry while the request waits sends its message once more (see above), under the
    // same message id.
    assert_eq!(h.queue.sent().len(), 2);
    let (s4, _, _) = call(&h, post("access")).await;
    assert_eq!(s4, StatusCode::ACCEPTED);
    assert_eq!(h.queue.sent().len(), 2);
}

#[tokio::test]
async fn list_and_show_only_the_callers_own_requests() {
    let h = harness();
    let (_, mine) = submit(&h, "alice", "access").await;
    submit(&h, "alice", "erasure").await;
    submit(&h, "bob", "access").await;

    let (status, list, _) = call(&h, event("GET", "/v1/requests", Some("alice"), None, &[])).await;
    assert_eq!(status, StatusCode::OK);
    let listed = list["requests"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed[0]["id"].as_str() > listed[1]["id"].as_str(),
        "newest first"
    );

    let path = format!("/v1/requests/{}", mine["id"].as_str().unwrap());
    let (status, shown, _) = call(&h, event("GET", &path, Some("alice"), None, &[])).await;
    assert_eq!((status, &shown["id"]), (StatusCode::OK, &mine["id"]));
    let (status, hidden, _) = call(&h, event("GET", &path, Some("bob"), None, &[])).await;
    assert_eq!(
        (status, error_code(&hidden)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, _, _) = call(&h, event("DELETE", &path, Some("bob"), None, &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let still = h
        .store
        .get(mine["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        still.state,
        RequestState::Received,
        "bob's cancel changed nothing"
    );
}

#[tokio::test]
async fn cancel_while_received_then_conflict_once_work_started() {
    let h = harness();
    let (_, first) = submit(&h, "alice", "access").await;
    let path = format!("/v1/requests/{}", first["id"].as_str().unwrap());
    let (status, cancelled, _) = call(&h, event("DELETE", &path, Some("alice"), None, &[])).await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (status, again, _) = call(&h, event("DELETE", &path, Some("alice"), None, &[])).await;
    assert_eq!(
        (status, again["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );

    // Cancelling released the guard: a new request may be submitted.
    let (status, second) = submit(&h, "alice", "access").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(first["id"], second["id"]);

    // A worker starts on it; now it can no longer be cancelled.
    let id: RequestId = second["id"].as_str().unwrap().parse().unwrap();
    let mut working = h.store.get(id).await.unwrap().unwrap();
    working
        .transition_to(RequestState::Collecting, Utc::now())
        .unwrap();
    let hash = h.api.requests.subject_hash(&working.subject);
    h.store
        .save_transition(&working, &hash, RequestState::Received)
        .await
        .unwrap();
    let path = format!("/v1/requests/{id}");
    let (status, conflict, _) = call(&h, event("DELETE", &path, Some("alice"), None, &[])).await;
    assert_eq!(
        (status, error_code(&conflict)),
        (StatusCode::CONFLICT, "not_cancellable")
    );
    assert!(conflict["error"]["message"]
        .as_str()
        .unwrap()
        .contains("collecting"));
}

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_problem_and_stores_nothing() {
    let h = harness();
    let big = format!(
        r#"{{"type":"access","pad":"{}"}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    let cases: Vec<(lambda_http::Request, StatusCode, &str)> = vec![
        (
            event("POST", "/v1/requests", Some("a"), Some("{\"type\":"), &[]),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            event("POST", "/v1/requests", Some("a"), Some("not json"), &[]),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            event("POST", "/v1/requests", Some("a"), None, &[]),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            event(
                "POST",
                "/v1/requests",
                Some("a"),
                Some(r#"{"type":"delete-me"}"#),
                &[],
            ),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            event(
                "POST",
                "/v1/requests",
                Some("a"),
                Some(r#"{"type":"access","subject":"bob"}"#),
                &[],
            ),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            event("POST", "/v1/requests", Some("a"), Some("{}"), &[]),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            event("POST", "/v1/requests", Some("a"), Some(r#""access""#), &[]),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            event("POST", "/v1/requests", Some("a"), Some(&big), &[]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            event(
                "POST",
                "/v1/requests",
                Some("a"),
                Some("type=access"),
                &[("content-type", "application/x-www-form-urlencoded")],
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            event(
                "POST",
                "/v1/requests",
                Some("a"),
                Some(r#"{"type":"access"}"#),
                &[("idempotency-key", "has space")],
            ),
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        ),
        (
            event(
                "POST",
                "/v1/requests",
                None,
                Some(r#"{"type":"access"}"#),
                &[],
            ),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            event(
                "POST",
                "/v1/requests",
                Some(""),
                Some(r#"{"type":"access"}"#),
                &[],
            ),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            event("GET", "/v1/requests", None, None, &[]),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            event("GET", "/v1/requests/not-a-ulid", Some("a"), None, &[]),
            StatusCode::BAD_REQUEST,
            "malformed_request_id",
        ),
        (
            event(
                "DELETE",
                "/v1/requests/01ARZ3NDEKTSV4RRFFQ69G5FA%27",
                Some("a"),
                None,
                &[],
            ),
            StatusCode::BAD_REQUEST,
            "malformed_request_id",
        ),
        (
            event(
                "GET",
                "/v1/requests/01ARZ3NDEKTSV4RRFFQ69G5FAV",
                Some("a"),
                None,
                &[],
            ),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            event("PUT", "/v1/requests", Some("a"), None, &[]),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            event("GET", "/v2/whatever", Some("a"), None, &[]),
            StatusCode::NOT_FOUND,
            "route_not_found",
        ),
    ];
    for (request, expected_status, expected_code) in cases {
        let described = format!(
            "{} {} {:?}",
            request.method(),
            request.uri().path(),
            std::str::from_utf8(request.body().as_ref())
                .map(|b| b.chars().take(60).collect::<String>())
        );
        let (status, body, _) = call(&h, request).await;
        assert_eq!(status, expected_status, "{described}: {body}");
        assert_eq!(error_code(&body), expected_code, "{described}: {body}");
        assert!(!body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty());
    }
    assert!(h.queue.sent().is_empty());
    let anyone = SubjectHasher::new("unit-test-hash-key").hash(&SubjectId::parse("a").unwrap());
    assert!(h.store.list_for_subject(&anyone).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_sqs_outage_still_accepts_and_leaves_the_request_for_the_sweep() {
    let h = harness();
    h.queue.set_unavailable(true);
    let (status, body) = submit(&h, "alice", "erasure").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let stored = h
        .store
        .get(body["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, RequestState::Received);
    assert_eq!(
        stored.enqueued_at, None,
        "marked as never sent, so the sweep finds it"
    );
}

#[tokio::test]
async fn the_report_link_is_for_the_owner_once_ready_and_gone_once_expired() {
    let h = harness();
    let (_, submitted) = submit(&h, "alice", "access").await;
    let id: RequestId = submitted["id"].as_str().unwrap().parse().unwrap();
    let path = format!("/v1/requests/{id}/report");

    let (status, body, _) = call(&h, event("GET", &path, Some("alice"), None, &[])).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "report_not_ready")
    );

    // The report worker finishes it.
    let mut ready = h.store.get(id).await.unwrap().unwrap();
    let hash = h.api.requests.subject_hash(&ready.subject);
    ready
        .transition_to(RequestState::Collecting, h.clock.now())
        .unwrap();
    h.store
        .save_transition(&ready, &hash, RequestState::Received)
        .await
        .unwrap();
    ready
        .transition_to(RequestState::ReportReady, h.clock.now())
        .unwrap();
    ready.report = Some(dsr_domain::ReportInfo {
        key: format!("reports/{id}/1/report.zip"),
        size: 10,
        sha256: "00".repeat(32),
        expires_at: h.clock.now() + chrono::Duration::days(30),
    });
    h.store
        .commit_fenced(&ready, &hash, ready.fencing_token)
        .await
        .unwrap();

    let (status, link, response) = call(&h, event("GET", &path, Some("alice"), None, &[])).await;
    assert_eq!(status, StatusCode::OK, "{link}");
    assert_eq!(
        response.headers()["cache-control"],
        "no-store",
        "no cache keeps a working download link"
    );
    assert_eq!(
        link["url"],
        format!("memory://reports/{id}/1/report.zip?ttl=900")
    );
    assert_eq!(link["expires_at"], "2026-01-31T09:30:00.000Z");
    assert_eq!(
        h.store
            .events(id)
            .iter()
            .filter(|e| *e == "report_link_issued")
            .count(),
        1
    );

    let (status, _, _) = call(&h, event("GET", &path, Some("bob"), None, &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    h.clock.advance(chrono::Duration::days(31));
    let (status, gone, _) = call(&h, event("GET", &path, Some("alice"), None, &[])).await;
    assert_eq!(
        (status, error_code(&gone)),
        (StatusCode::GONE, "report_expired")
    );
    assert_eq!(
        h.store.get(id).await.unwrap().unwrap().state,
        RequestState::ReportReady,
        "the sweep deletes it and moves it on"
    );
    let (status, _, _) = call(&h, event("GET", &path, Some("alice"), None, &[])).await;
    assert_eq!(status, StatusCode::GONE, "and stays gone");
}
