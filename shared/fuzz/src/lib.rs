//! What the fuzz targets share: the user API with in-memory adapters, and one runtime to run it.
//!
//! Every target checks the service's promise for outside input, not just "no panic": the API
//! answers a 4xx with `{"error": {"code", "message"}}` (never a 5xx), a queue message is either
//! taken or refused with a reason.

use chrono::{TimeZone, Utc};
use dsr_adapters::memory::{InMemoryReportLinks, InMemoryRequestStore, InMemoryWorkQueue};
use dsr_domain::{FixedClock, Requests, SubjectHasher};
use dsr_intake::IntakeApi;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::sync::Arc;

pub type Api = IntakeApi<
    Arc<InMemoryRequestStore>,
    Arc<InMemoryWorkQueue>,
    Arc<FixedClock>,
    InMemoryReportLinks,
>;

fn fresh_api() -> Api {
    IntakeApi {
        requests: Requests::new(
            Arc::new(InMemoryRequestStore::default()),
            Arc::new(InMemoryWorkQueue::default()),
            Arc::new(FixedClock::at(
                Utc.with_ymd_and_hms(2026, 1, 31, 9, 0, 0).unwrap(),
            )),
            SubjectHasher::new("fuzzing-hash-key-16"),
        ),
        reports: InMemoryReportLinks,
        link_ttl: dsr_intake::DEFAULT_REPORT_URL_TTL,
        signer: Arc::new(
            dsr_adapters::signing::Ed25519Signer::from_pem(dsr_adapters::signing::LOCAL_KEY_PEM)
                .unwrap(),
        ),
    }
}

/// Inputs an API serves before it is replaced by an empty one: state carries over between
/// inputs as between requests, but not without bound (the in-memory store only grows).
const INPUTS_PER_API: u32 = 20_000;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    static API: RefCell<(u32, Api)> = RefCell::new((0, fresh_api()));
}

/// A path or query string as it arrives from API Gateway: what a client sent, which HTTP
/// requires to be percent-encoded outside the characters a URI allows.
pub fn as_sent(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    for (i, &b) in bytes.iter().enumerate() {
        let escape_ok = b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b) || escape_ok {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An API Gateway HTTP API (v2) event as Lambda delivers it, with the authorizer's claims.
pub fn event(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    body: Option<&str>,
    claims: Option<Value>,
) -> Value {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": as_sent(path),
        "rawQueryString": as_sent(query).replace('?', "%3F"),
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012", "apiId": "api",
            "authorizer": claims.map(|c| json!({"jwt": {"claims": c, "scopes": null}})),
            "domainName": "api.example", "domainPrefix": "api",
            "http": {"method": method, "path": as_sent(path), "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7", "userAgent": "fuzz"},
            "requestId": "id", "routeKey": "$default", "stage": "$default",
            "time": "31/Jan/2026:09:15:00 +0000", "timeEpoch": 0
        },
        "body": body,
        "isBase64Encoded": false
    })
}

/// Runs one event through the API (events Lambda itself would refuse are skipped) and checks
/// the answer: never a 5xx, and every error is the documented JSON shape.
pub fn answer(event: Value) {
    let Ok(request) = lambda_http::request::from_str(&event.to_string()) else {
        return;
    };
    let response = API.with(|api| {
        let mut api = api.borrow_mut();
        api.0 += 1;
        if api.0 > INPUTS_PER_API {
            *api = (0, fresh_api());
        }
        RUNTIME.with(|runtime| runtime.block_on(api.1.handle(request)))
    });
    let response = response.expect("every problem with the input is an HTTP answer");
    let status = response.status().as_u16();
    assert!(status < 500, "a 5xx for outside input: {status}");
    if status >= 400 {
        let body: Value =
            serde_json::from_slice(response.body().as_ref()).expect("an error body is JSON");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "an error names its problem: {body}"
        );
    }
}
