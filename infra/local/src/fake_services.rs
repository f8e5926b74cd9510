//! Stand-ins for the platform's own services, served over real HTTP: a JSON microservice
//! (orders) and an Elasticsearch-compatible search index (access logs). The local stack's demo
//! and the tests collect from them exactly as the report function collects from real ones.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct FakeData {
    /// `GET /orders/users/{subject}/orders` answers these (404 for unknown subjects).
    pub orders: Mutex<HashMap<String, Vec<Value>>>,
    /// Documents of the `access-logs` index.
    pub access_logs: Mutex<Vec<Value>>,
    /// The next this many order calls answer 500.
    pub failing_order_calls: AtomicU32,
    /// Every order call answers 500 while set.
    pub orders_down: std::sync::atomic::AtomicBool,
    /// Order calls take this long (milliseconds).
    pub order_delay_ms: AtomicU32,
    /// Calls received, to check retries.
    pub order_calls: AtomicU32,
    /// When set, order calls must carry `Authorization: Bearer <token>` (else 401).
    pub orders_token: Mutex<Option<String>>,
    /// How the demo's other sources (a DynamoDB table, an S3 prefix) erase a subject, by
    /// source name: `DELETE /erase/{source}/{subject}` calls it (orders and access logs are
    /// erased here).
    pub erasers: Mutex<HashMap<String, Eraser>>,
    /// Idempotency keys of the erasures done, with what each erased: a repeat answers the same.
    pub erased: Mutex<HashMap<String, usize>>,
    /// What the CRM vendor holds, by subject: read through its asynchronous export.
    pub crm: Mutex<HashMap<String, Vec<Value>>>,
    /// How long an export takes to be ready (milliseconds; minutes in the demo).
    pub export_ready_after_ms: std::sync::atomic::AtomicU64,
    /// Export jobs started: their subject and when.
    pub exports: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// Calls to the export API, by kind.
    pub export_starts: AtomicU32,
    pub export_polls: AtomicU32,
    pub export_fetches: AtomicU32,
    /// The profile service's identity look-up: `GET /profiles/{subject}/identifiers` answers
    /// the subject's identifiers (404 for unknown subjects).
    pub profiles: Mutex<HashMap<String, Value>>,
    /// Holders that key their data by another identifier than the user id (an e-mail
    /// address, a phone number): by source, then by that identifier. `GET
    /// /keyed/{source}/{key}` answers `{"records": [...]}`; `DELETE /erase/{source}/{key}`
    /// erases them.
    pub keyed: Mutex<HashMap<String, HashMap<String, Vec<Value>>>>,
    /// Every key a keyed holder was called with (read and erase), by source: `GET
    /// /keyed-calls/{source}`.
    pub keyed_calls: Mutex<HashMap<String, Vec<String>>>,
}

/// Erases one subject's records from a source; says how many there were.
pub type Eraser =
    Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, Result<usize, String>> + Send + Sync>;

pub struct FakeServices {
    pub addr: SocketAddr,
    pub data: Arc<FakeData>,
}

impl FakeServices {
    pub async fn start(listen: SocketAddr, data: Arc<FakeData>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let router = Router::new()
            .route("/orders/users/{subject}/orders", get(orders))
            .route("/search/{index}/_search", post(search))
            .route("/bulky/users/{subject}/orders", get(bulky_orders))
            .route("/erase/{source}/{subject}", delete(erase))
            .route("/exports/users/{subject}", post(start_export))
            .route("/exports/{job}", get(export_status))
            .route("/exports/{job}/records", get(export_records))
            .route("/profiles/{subject}/identifiers", get(profile_identifiers))
            .route("/keyed/{source}/{key}", get(keyed_records))
            .route("/keyed-calls/{source}", get(keyed_calls))
            .with_state(data.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { addr, data })
    }

    pub fn orders_url(&self) -> String {
        format!("http://{}/orders/users/{{subject}}/orders", self.addr)
    }

    /// A misbehaving source: `GET` answers a 300 MB JSON array, streamed (never in memory),
    /// without a Content-Length, as a service dumping a whole table would.
    pub fn bulky_orders_url(&self) -> String {
        format!("http://{}/bulky/users/{{subject}}/orders", self.addr)
    }

    /// A CRM vendor's asynchronous export: `POST` starts a job for a subject, `GET` on the
    /// job says `running` until it is ready, then its records can be fetched.
    pub fn export_start_url(&self) -> String {
        format!("http://{}/exports/users/{{subject}}", self.addr)
    }

    pub fn export_status_url(&self) -> String {
        format!("http://{}/exports/{{job}}", self.addr)
    }

    pub fn export_result_url(&self) -> String {
        format!("http://{}/exports/{{job}}/records", self.addr)
    }

    pub fn access_logs_url(&self) -> String {
        format!("http://{}/search/access-logs", self.addr)
    }

    /// Where a source of these services erases a subject (HTTP `DELETE`, `Idempotency-Key`).
    pub fn profile_identifiers_url(&self) -> String {
        format!("http://{}/profiles/{{subject}}/identifiers", self.addr)
    }

    pub fn keyed_url(&self, source: &str) -> String {
        format!("http://{}/keyed/{source}/{{subject}}", self.addr)
    }

    pub fn erase_url(&self, source: &str) -> String {
        format!("http://{}/erase/{source}/{{subject}}", self.addr)
    }
}

/// The services' erasure API, as the registry's `erase: { via: { kind: http } }` calls it:
/// `200 {"erased": n}`, or `404 {"error": "no_such_user"}` when it held nothing; the same
/// `Idempotency-Key` again answers what the first call did.
async fn erase(
    State(data): State<Arc<FakeData>>,
    Path((source, subject)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("{source}:{k}"));
    let done = key.as_ref().and_then(|k| {
        data.erased
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(k)
            .copied()
    });
    let erased = match done {
        Some(n) => n,
        None => {
            let keyed = {
                let mut keyed = data.keyed.lock().unwrap_or_else(|p| p.into_inner());
                keyed.get_mut(&source).map(|held| {
                    data.keyed_calls
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(source.clone())
                        .or_default()
                        .push(subject.clone());
                    held.remove(&subject).map_or(0, |r| r.len())
                })
            };
            let n = match source.as_str() {
                _ if keyed.is_some() => keyed.unwrap_or_default(),
                "orders" => data
                    .orders
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&subject)
                    .map_or(0, |o| o.len()),
                "crm" => data
                    .crm
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&subject)
                    .map_or(0, |r| r.len()),
                "access-log" => {
                    let mut logs = data.access_logs.lock().unwrap_or_else(|p| p.into_inner());
                    let before = logs.len();
                    logs.retain(|d| d["user_id"] != subject.as_str());
                    before - logs.len()
                }
                other => {
                    let eraser = data
                        .erasers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(other)
                        .cloned();
                    let Some(eraser) = eraser else {
                        return (
                            StatusCode::NOT_FOUND,
                            Json(json!({"error": "no such source"})),
                        )
                            .into_response();
                    };
                    match eraser(subject.clone()).await {
                        Ok(n) => n,
                        Err(reason) => {
                            return (
                                StatusCode::SERVICE_UNAVAILABLE,
                                Json(json!({"error": reason})),
                            )
                                .into_response()
                        }
                    }
                }
            };
            if let Some(k) = key {
                data.erased
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(k, n);
            }
            n
        }
    };
    if erased == 0 {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no_such_user"})),
        )
            .into_response();
    }
    Json(json!({ "erased": erased })).into_response()
}

async fn profile_identifiers(
    State(data): State<Arc<FakeData>>,
    Path(subject): Path<String>,
) -> Response {
    match data
        .profiles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&subject)
    {
        Some(profile) => Json(profile.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no_such_user"})),
        )
            .into_response(),
    }
}

async fn keyed_records(
    State(data): State<Arc<FakeData>>,
    Path((source, key)): Path<(String, String)>,
) -> Response {
    data.keyed_calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(source.clone())
        .or_default()
        .push(key.clone());
    let records = data
        .keyed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&source)
        .and_then(|held| held.get(&key).cloned())
        .unwrap_or_default();
    Json(json!({ "records": records })).into_response()
}

async fn keyed_calls(State(data): State<Arc<FakeData>>, Path(source): Path<String>) -> Response {
    let calls = data
        .keyed_calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&source)
        .cloned()
        .unwrap_or_default();
    Json(json!(calls)).into_response()
}

async fn start_export(State(data): State<Arc<FakeData>>, Path(subject): Path<String>) -> Response {
    let n = data.export_starts.fetch_add(1, Ordering::SeqCst);
    let job = format!("exp-{n}-{}", ulid::Ulid::new());
    data.exports
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(job.clone(), (subject, std::time::Instant::now()));
    (StatusCode::ACCEPTED, Json(json!({ "job_id": job }))).into_response()
}

/// The job's subject and whether it is ready; `None` if there is no such job.
fn export_job(data: &FakeData, job: &str) -> Option<(String, bool)> {
    let exports = data.exports.lock().unwrap_or_else(|p| p.into_inner());
    let (subject, started) = exports.get(job)?;
    let ready_after = Duration::from_millis(data.export_ready_after_ms.load(Ordering::SeqCst));
    Some((subject.clone(), started.elapsed() >= ready_after))
}

fn no_such_job() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "no such job"}))).into_response()
}

async fn export_status(State(data): State<Arc<FakeData>>, Path(job): Path<String>) -> Response {
    data.export_polls.fetch_add(1, Ordering::SeqCst);
    match export_job(&data, &job) {
        Some((_, ready)) => {
            Json(json!({"job_id": job, "status": if ready { "done" } else { "running" }}))
                .into_response()
        }
        None => no_such_job(),
    }
}

async fn export_records(State(data): State<Arc<FakeData>>, Path(job): Path<String>) -> Response {
    data.export_fetches.fetch_add(1, Ordering::SeqCst);
    match export_job(&data, &job) {
        Some((subject, true)) => {
            let records = data
                .crm
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&subject)
                .cloned()
                .unwrap_or_default();
            Json(json!({ "records": records })).into_response()
        }
        Some((_, false)) => {
            (StatusCode::CONFLICT, Json(json!({"error": "not ready"}))).into_response()
        }
        None => no_such_job(),
    }
}

/// The size of the bulky answer.
pub const BULKY_ANSWER_BYTES: usize = 300 << 20;

async fn bulky_orders() -> Response {
    const CHUNK: usize = 64 << 10;
    let record = format!("{{\"note\":\"{}\"}},", "x".repeat(CHUNK - 12));
    let chunks = BULKY_ANSWER_BYTES / record.len();
    let body = futures::stream::iter(
        std::iter::once(bytes_of("["))
            .chain(std::iter::repeat_n(bytes_of(&record), chunks))
            .chain(std::iter::once(bytes_of("{}]")))
            .map(Ok::<_, std::convert::Infallible>),
    );
    Response::builder()
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn bytes_of(text: &str) -> axum::body::Bytes {
    axum::body::Bytes::copy_from_slice(text.as_bytes())
}

async fn orders(
    State(data): State<Arc<FakeData>>,
    Path(subject): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    data.order_calls.fetch_add(1, Ordering::SeqCst);
    let expected = data
        .orders_token
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(token) = expected {
        let sent = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if sent != Some(format!("Bearer {token}").as_str()) {
            return (StatusCode::UNAUTHORIZED, "missing or wrong token").into_response();
        }
    }
    let delay = data.order_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
    }
    let failing = data
        .failing_order_calls
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing || data.orders_down.load(Ordering::SeqCst) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "orders database unavailable",
        )
            .into_response();
    }
    let orders = data.orders.lock().unwrap_or_else(|p| p.into_inner());
    match orders.get(&subject) {
        Some(list) => Json(json!({ "items": list })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such user"})),
        )
            .into_response(),
    }
}

/// The subset of `_search` the report uses: a `term` query, `sort` on fields, `size` and
/// `search_after`, answered with `hits.hits[]._source` and `sort`.
async fn search(
    State(data): State<Arc<FakeData>>,
    Path(index): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    if index != "access-logs" {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "index_not_found_exception"})),
        )
            .into_response();
    }
    let Some((field, wanted)) = body["query"]["term"]
        .as_object()
        .and_then(|t| t.iter().next())
        .map(|(f, v)| (f.clone(), v.clone()))
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "only term queries"})),
        )
            .into_response();
    };
    let sort_fields: Vec<String> = body["sort"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|f| f.as_object().and_then(|o| o.keys().next().cloned()))
                .collect()
        })
        .unwrap_or_default();
    let size = body["size"].as_u64().unwrap_or(10) as usize;
    let key = |doc: &Value| -> Vec<Value> { sort_fields.iter().map(|f| doc[f].clone()).collect() };
    let compare = |a: &[Value], b: &[Value]| -> std::cmp::Ordering {
        a.iter()
            .zip(b)
            .map(|(x, y)| match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                _ => x.to_string().cmp(&y.to_string()),
            })
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    };
    let mut docs: Vec<Value> = data
        .access_logs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|d| d[&field] == wanted)
        .cloned()
        .collect();
    docs.sort_by(|a, b| compare(&key(a), &key(b)));
    let after: Option<Vec<Value>> = body["search_after"].as_array().cloned();
    let hits: Vec<Value> = docs
        .iter()
        .filter(|d| {
            after
                .as_ref()
                .is_none_or(|after| compare(&key(d), after).is_gt())
        })
        .take(size)
        .map(|d| json!({"_index": index, "_source": d, "sort": key(d)}))
        .collect();
    Json(json!({"hits": {"total": {"value": docs.len()}, "hits": hits}})).into_response()
}

/// Bytes that do not compress (xorshift), so a generated report really has the size asked for.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
