use super::*;
use chrono::TimeZone;
use dsr_adapters::memory::{InMemoryRequestStore, InMemoryWorkQueue, RecordingDecisions};
use dsr_domain::hops::HopLog;
use dsr_domain::{FixedClock, Requests, SubjectHasher, SubjectId};
use std::sync::Arc;

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap() + Duration::minutes(minutes)
}

struct Fixture {
    page: OpsPage<Arc<InMemoryRequestStore>, Arc<FixedClock>, Arc<RecordingDecisions>>,
    decisions: Arc<RecordingDecisions>,
    requests: Requests<Arc<InMemoryRequestStore>, InMemoryWorkQueue, Arc<FixedClock>>,
    store: Arc<InMemoryRequestStore>,
    clock: Arc<FixedClock>,
}

fn fixture() -> Fixture {
    let store = Arc::new(InMemoryRequestStore::default());
    let clock = Arc::new(FixedClock::at(at(0)));
    let decisions = Arc::new(RecordingDecisions::default());
    Fixture {
        page: OpsPage {
            store: store.clone(),
            clock: clock.clone(),
            decisions: Some(decisions.clone()),
            sqs: None,
            dead_letter_queues: vec![("Outbound".into(), "http://nowhere".into())],
            settings: ReconcileSettings::default(),
            stack: "test-stack".into(),
        },
        requests: Requests::new(
            store.clone(),
            InMemoryWorkQueue::default(),
            clock.clone(),
            SubjectHasher::new("sixteen-byte-key"),
        ),
        store,
        clock,
        decisions,
    }
}

async fn submit(f: &Fixture, subject: &str, kind: RequestKind) -> RequestId {
    f.requests
        .submit(&SubjectId::parse(subject).unwrap(), kind, None)
        .await
        .unwrap()
        .request()
        .id
}

async fn hop(f: &Fixture, kind: RequestKind, hop: Hop, id: RequestId, minute: i64) {
    f.store
        .mark(&HopMark::new(kind, hop, id, at(minute)))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_summary_counts_each_hop_and_names_the_request_missing_one() {
    let f = fixture();
    let whole = submit(&f, "alice", RequestKind::Access).await;
    let lost = submit(&f, "bob", RequestKind::Access).await;
    // A second click by alice: the open request again.
    submit(&f, "alice", RequestKind::Access).await;
    for h in [Hop::Received, Hop::Generated, Hop::Notified, Hop::Announced] {
        hop(&f, RequestKind::Access, h, whole, 1).await;
    }
    f.clock.advance(Duration::hours(1));

    let summary = f.page.summary(3).await.unwrap();
    let access = &summary.kinds[0];
    assert_eq!(access.kind, RequestKind::Access);
    let count = |h: Hop| access.funnel.iter().find(|c| c.hop == h).unwrap().count;
    assert_eq!(count(Hop::Submitted), 3, "every click");
    assert_eq!(count(Hop::Received), 1);
    assert_eq!(access.clicks["created"], 2);
    assert_eq!(access.clicks["already_open"], 1);
    assert_eq!(
        access.series.iter().map(|p| p.submitted).sum::<usize>(),
        2,
        "accepted requests per hour"
    );
    assert!(!summary.in_sync);
    assert_eq!(summary.missing.len(), 1);
    assert_eq!(summary.missing[0].request, lost);
    assert_eq!(summary.missing[0].hop, Hop::Received);
    // Both requests are open (nothing moved them), an hour old.
    let received = summary
        .open
        .iter()
        .find(|o| o.state == RequestState::Received)
        .unwrap();
    assert_eq!((received.total, received.by_age[1]), (2, 2));
    assert_eq!(
        summary.dead_letters,
        vec![DeadLetters {
            queue: "Outbound".into(),
            depth: None
        }],
        "an unreadable depth is shown as such, never as 0"
    );

    let html = html::page(&summary, &html::Found::NotAsked);
    assert!(html.contains("1 hop(s) missing"));
    assert!(html.contains(&format!("<code>{lost}</code>")));
    assert!(html.contains(r#"<tr class="mismatch" data-hop="received">"#));
}

#[tokio::test]
async fn latency_per_service_and_escalations_come_from_the_hops() {
    let f = fixture();
    let id = submit(&f, "carol", RequestKind::Erasure).await;
    let billing = dsr_domain::ServiceName::parse("billing").unwrap();
    let crm = dsr_domain::ServiceName::parse("crm").unwrap();
    for (h, service, minute) in [
        (Hop::Commanded, &billing, 1),
        (Hop::Answered, &billing, 11),
        (Hop::Commanded, &crm, 1),
        (Hop::Escalated, &crm, 50),
    ] {
        f.store
            .mark(&HopMark::new(RequestKind::Erasure, h, id, at(minute)).for_service(service))
            .await
            .unwrap();
    }
    let summary = f.page.summary(2).await.unwrap();
    assert_eq!(summary.latency.len(), 1);
    assert_eq!(summary.latency[0].service, "billing");
    assert_eq!(summary.latency[0].median_seconds, 600.0);
    assert_eq!(summary.escalated.len(), 1);
    assert_eq!(summary.escalated[0].service, "crm");
}

#[tokio::test]
async fn a_requests_timeline_has_its_hops_and_its_audit_trail_in_order() {
    let f = fixture();
    let id = submit(&f, "dave", RequestKind::Access).await;
    hop(&f, RequestKind::Access, Hop::Received, id, 2).await;
    let timeline = f.page.timeline(id).await.unwrap().unwrap();
    let hops: Vec<Hop> = timeline.hops.iter().map(|m| m.hop).collect();
    assert_eq!(hops, [Hop::Submitted, Hop::Received]);
    let html = html::page(
        &f.page.summary(1).await.unwrap(),
        &html::Found::Timeline(Box::new(timeline)),
    );
    let submitted = html.find("hop: submitted (created)").unwrap();
    let received = html.find("hop: received").unwrap();
    assert!(submitted < received);
    assert!(f
        .page
        .timeline(RequestId::new_at(at(5)))
        .await
        .unwrap()
        .is_none());
}

fn event(path: &str, query: &str, scopes: Option<&[&str]>) -> lambda_http::Request {
    call("GET", path, query, scopes, None)
}

/// A `POST /ops/actions` by operator `op` (with the operator scope) carrying `body`.
fn decide(body: serde_json::Value) -> lambda_http::Request {
    call(
        "POST",
        "/ops/actions",
        "",
        Some(&[OPERATOR_SCOPE]),
        Some(body.to_string()),
    )
}

fn call(
    method: &str,
    path: &str,
    query: &str,
    scopes: Option<&[&str]>,
    body: Option<String>,
) -> lambda_http::Request {
    let event = serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query.chars().map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '=' | '&' | '-' | '_' | '.' => c.to_string(),
            c => format!("%{:02X}", c as u32),
        }).collect::<String>(),
        "headers": {},
        "queryStringParameters": query.split('&').filter(|p| !p.is_empty()).map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), serde_json::Value::String(v.to_owned()))
        }).collect::<serde_json::Map<_, _>>(),
        "requestContext": {
            "accountId": "000000000000", "apiId": "test",
            "authorizer": {"jwt": {"claims": {"sub": "op"}, "scopes": scopes}},
            "domainName": "x", "domainPrefix": "x",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "10.0.0.1", "userAgent": "t"},
            "requestId": "r", "routeKey": "$default", "stage": "$default",
            "time": "30/Nov/2026:09:00:00 +0000", "timeEpoch": 0
        },
        "body": body,
        "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

fn text(response: &Response<Body>) -> String {
    match response.body() {
        Body::Text(t) => t.clone(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn the_shell_is_public_and_the_numbers_need_the_operator_scope() {
    let f = fixture();
    let shell = f.page.handle(event("/ops", "", None)).await.unwrap();
    assert_eq!(shell.status(), StatusCode::OK);
    assert!(text(&shell).contains(r#"<script src="/ops/shell.js">"#));
    assert!(
        !text(&shell).contains("hop(s) missing"),
        "the shell carries no data"
    );

    for path in ["/ops/page", "/ops/summary"] {
        let user = f.page.handle(event(path, "", None)).await.unwrap();
        assert_eq!(user.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(text(&user).contains("dsr/operate"));
        let other = f
            .page
            .handle(event(path, "", Some(&["dsr/read"])))
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let operator = Some(&[OPERATOR_SCOPE][..]);
    let summary = f
        .page
        .handle(event("/ops/summary", "", operator))
        .await
        .unwrap();
    assert_eq!(summary.status(), StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&text(&summary)).unwrap();
    assert_eq!(json["hours"], DEFAULT_HOURS);
    assert_eq!(json["in_sync"], true);

    let bad = f
        .page
        .handle(event("/ops/page", "hours=0", operator))
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(text(&bad).contains("invalid_hours"));
    let garbage = f
        .page
        .handle(event(
            "/ops/page",
            "request=<script>alert(1)</script>",
            operator,
        ))
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::OK);
    assert!(
        !text(&garbage).contains("<script"),
        "what the user typed is escaped"
    );
    assert!(text(&garbage).contains("is not a request id"));
}

#[test]
fn dead_letter_queues_are_name_url_pairs() {
    let env = Env::from_pairs([(DEAD_LETTER_QUEUES, "A=http://q/a  B=http://q/b")]);
    assert_eq!(
        dead_letter_queues(&env).unwrap(),
        vec![
            ("A".to_owned(), "http://q/a".to_owned()),
            ("B".to_owned(), "http://q/b".to_owned())
        ]
    );
    let bad = Env::from_pairs([(DEAD_LETTER_QUEUES, "A")]);
    assert!(dead_letter_queues(&bad)
        .unwrap_err()
        .to_string()
        .contains(DEAD_LETTER_QUEUES));
}

/// An erasure with an unanswered obligation to `crm` and an answered one to `billing`.
async fn erasure_waiting_on_crm(f: &Fixture) -> RequestId {
    use dsr_domain::erasure::{Obligation, ObligationStatus};
    let id = submit(f, "erin", RequestKind::Erasure).await;
    let crm = dsr_domain::ServiceName::parse("crm").unwrap();
    let billing = dsr_domain::ServiceName::parse("billing").unwrap();
    let mut answered = Obligation::planned(id, &billing, false);
    answered.status = ObligationStatus::Confirmed;
    f.store
        .plan(id, &[Obligation::planned(id, &crm, false), answered], 0)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn an_operator_resends_or_resolves_an_obligation_and_is_named_as_the_one_who_did() {
    use dsr_domain::erasure::{ConfirmationOutcome, OperatorDecision};
    let f = fixture();
    let id = erasure_waiting_on_crm(&f).await;
    let resend = f
        .page
        .handle(decide(serde_json::json!({
            "request_id": id.to_string(), "service": "crm", "decision": "resend"
        })))
        .await
        .unwrap();
    assert_eq!(resend.status(), StatusCode::ACCEPTED, "{}", text(&resend));
    let resolve = f
        .page
        .handle(decide(serde_json::json!({
            "request_id": id.to_string(), "service": "crm", "decision": "resolve",
            "outcome": "erased", "evidence": "  vendor ticket #4711: deleted by their support  "
        })))
        .await
        .unwrap();
    assert_eq!(resolve.status(), StatusCode::ACCEPTED, "{}", text(&resolve));
    let asked = f.decisions.asked();
    assert_eq!(asked.len(), 2);
    assert_eq!(
        (
            asked[0].decision,
            asked[0].operator.as_str(),
            asked[0].request_id
        ),
        (OperatorDecision::Resend, "op", id),
        "the operator is the token's subject"
    );
    assert!(asked[0]
        .message_id
        .starts_with(&format!("operator:resend:{id}:crm:")));
    assert_eq!(asked[1].outcome, Some(ConfirmationOutcome::Erased));
    assert_eq!(
        asked[1].evidence.as_deref(),
        Some("vendor ticket #4711: deleted by their support")
    );
    let json: serde_json::Value = serde_json::from_str(&text(&resolve)).unwrap();
    assert_eq!(json["message_id"], asked[1].message_id);

    // Shown in the timeline as forms on the unanswered obligation only.
    let timeline = f.page.timeline(id).await.unwrap().unwrap();
    let html = html::page(
        &f.page.summary(1).await.unwrap(),
        &html::Found::Timeline(Box::new(timeline)),
    );
    assert!(html.contains(&format!(
        r#"<form class="act" data-request="{id}" data-service="crm">"#
    )));
    assert!(
        !html.contains(&format!(r#"data-request="{id}" data-service="billing""#)),
        "answered: nothing to act on"
    );
}

#[tokio::test]
async fn a_decision_the_service_cannot_carry_out_is_refused_with_the_reason_and_nothing_asked() {
    let f = fixture();
    let id = erasure_waiting_on_crm(&f).await;
    let access = submit(&f, "frank", RequestKind::Access).await;
    let cases = [
        (
            serde_json::json!({"request_id": id.to_string(), "service": "crm", "decision": "resolve", "outcome": "erased"}),
            StatusCode::BAD_REQUEST,
            "needs its evidence",
        ),
        (
            serde_json::json!({"request_id": id.to_string(), "service": "crm", "decision": "resolve", "outcome": "failed", "evidence": "x"}),
            StatusCode::BAD_REQUEST,
            "`erased` or `not_found`",
        ),
        (
            serde_json::json!({"request_id": id.to_string(), "service": "crm", "decision": "resend", "evidence": "x"}),
            StatusCode::BAD_REQUEST,
            "no outcome or evidence",
        ),
        (
            serde_json::json!({"request_id": id.to_string(), "service": "crm", "decision": "delete"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            serde_json::json!({"request_id": id.to_string(), "service": "crm", "decision": "resend", "admin": true}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            serde_json::json!({"request_id": "nope", "service": "crm", "decision": "resend"}),
            StatusCode::BAD_REQUEST,
            "not a request id",
        ),
        (
            serde_json::json!({"request_id": id.to_string(), "service": "../crm", "decision": "resend"}),
            StatusCode::BAD_REQUEST,
            "not a service name",
        ),
        (
            serde_json::json!({"request_id": RequestId::new_at(at(9)).to_string(), "service": "crm", "decision": "resend"}),
            StatusCode::NOT_FOUND,
            "no request",
        ),
        (
            serde_json::json!({"request_id": access.to_string(), "service": "crm", "decision": "resend"}),
            StatusCode::CONFLICT,
            "access request",
        ),
        (
            serde_json::json!({"request_id": id.to_string(), "service": "ads", "decision": "resend"}),
            StatusCode::CONFLICT,
            "no obligation for ads",
        ),
        (
            serde_json::json!({"request_id": id.to_string(), "service": "billing", "decision": "resend"}),
            StatusCode::CONFLICT,
            "already answered",
        ),
    ];
    for (body, status, says) in cases {
        let response = f.page.handle(decide(body.clone())).await.unwrap();
        assert_eq!(response.status(), status, "{body}: {}", text(&response));
        assert!(
            text(&response).contains(says),
            "{body}: {}",
            text(&response)
        );
    }
    let user = f
        .page
        .handle(call(
            "POST",
            "/ops/actions",
            "",
            Some(&["dsr/read"]),
            Some("{}".into()),
        ))
        .await
        .unwrap();
    assert_eq!(user.status(), StatusCode::FORBIDDEN);
    let get = f
        .page
        .handle(event("/ops/actions", "", Some(&[OPERATOR_SCOPE])))
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(f.decisions.asked().is_empty(), "nothing was asked");
}
