//! A fault-injecting proxy on loopback in front of the AWS emulator: what the functions see of
//! AWS when it misbehaves. At a configurable share of calls it answers a 5xx or a throttling
//! error (before the call reaches the emulator, or after it took effect there: the nastiest
//! case, where a retry repeats an effect), resets the connection, or adds latency. The proving
//! ground (`make chaos`) points the functions at it; provisioning and the tests' own checks go
//! to the emulator directly.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What goes wrong, and how often.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The share of calls that get a fault (0.0–1.0), spread evenly over the kinds below.
    pub rate: f64,
    /// Latency added to a delayed call.
    pub max_latency: Duration,
    /// Latency added to every call, fault or not: a slower service (the benchmark checks that
    /// a function's CPU per event does not grow with it).
    pub delay: Duration,
    /// One step failing, whatever `rate` says: a fault aimed where a test wants it.
    pub outage: Option<Outage>,
}

/// The first `calls` calls of `operation` (as counted: `SQS.ChangeMessageVisibility`) answer
/// 500.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    pub operation: &'static str,
    pub calls: u64,
}

/// The kinds of fault, in the order of [`FaultCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 before the call reached the emulator.
    ServerError,
    /// Throttled (400 `ThrottlingException`, or S3's 503 `SlowDown`) before the call.
    Throttled,
    /// The connection closed without an answer, before the call.
    ResetBefore,
    /// The call took effect, then the connection closed without an answer.
    ResetAfter,
    /// The call took effect, then a 500 came back.
    ServerErrorAfter,
    /// Up to `max_latency` more.
    Slow,
}

const KINDS: [Fault; 6] = [
    Fault::ServerError,
    Fault::Throttled,
    Fault::ResetBefore,
    Fault::ResetAfter,
    Fault::ServerErrorAfter,
    Fault::Slow,
];

/// How many calls went through, of which operation, and how many of each fault were injected.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub calls: AtomicU64,
    pub injected: [AtomicU64; 6],
    operations: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Calls of the outage's operation so far.
    outage_calls: AtomicU64,
}

impl FaultCounts {
    /// Calls per operation so far (`DynamoDB.TransactWriteItems`, `SQS.SendMessage`,
    /// `S3.PutObject`, ...): with no faults, the proxy is a recording one (the cost per request and
    /// the submit path's calls are counted with it).
    pub fn operations(&self) -> std::collections::BTreeMap<String, u64> {
        self.operations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets the operations counted so far.
    pub fn reset_operations(&self) {
        self.operations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn count_operation(&self, operation: String) {
        *self
            .operations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(operation)
            .or_default() += 1;
    }

    pub fn of(&self, fault: Fault) -> u64 {
        let i = KINDS.iter().position(|k| *k == fault).unwrap_or(0);
        self.injected[i].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.injected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<FaultCounts>,
}

impl FaultProxy {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

type Body = Full<Bytes>;

/// Starts the proxy on an ephemeral loopback port, forwarding to `upstream` (the emulator).
pub async fn start(upstream: &str, faults: Faults) -> anyhow::Result<FaultProxy> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counts = Arc::new(FaultCounts::default());
    let client: Client<_, Body> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let upstream: hyper::Uri = upstream.parse()?;
    let shared = Arc::new((client, upstream, faults, counts.clone()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| handle(shared.clone(), request));
                // An `Err` from the service closes the connection without an answer: the reset.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(FaultProxy { addr, counts })
}

#[derive(Debug, thiserror::Error)]
#[error("injected connection reset")]
struct Reset;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
type Answer = Result<Response<Body>, BoxError>;

fn boxed<E: std::error::Error + Send + Sync + 'static>(err: E) -> BoxError {
    Box::new(err)
}

type Shared = (
    Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    hyper::Uri,
    Faults,
    Arc<FaultCounts>,
);

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Answer {
    let (client, upstream, faults, counts) = &*shared;
    counts.calls.fetch_add(1, Ordering::Relaxed);
    let name = operation(&request);
    let aimed = faults.outage.is_some_and(|outage| {
        outage.operation == name
            && counts.outage_calls.fetch_add(1, Ordering::Relaxed) < outage.calls
    });
    counts.count_operation(name);
    let fault = if aimed {
        Some(Fault::ServerError)
    } else {
        (fastrand::f64() < faults.rate).then(|| KINDS[fastrand::usize(..KINDS.len())])
    };
    if let Some(fault) = fault {
        let i = KINDS.iter().position(|k| *k == fault).unwrap_or(0);
        counts.injected[i].fetch_add(1, Ordering::Relaxed);
    }
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    // S3 speaks XML and has no `X-Amz-Target`; the JSON protocols (DynamoDB, SQS, SSM) do.
    let json_protocol = request.headers().contains_key("x-amz-target");
    match fault {
        Some(Fault::ServerError) => return Ok(error(json_protocol, false)),
        Some(Fault::Throttled) => return Ok(error(json_protocol, true)),
        Some(Fault::ResetBefore) => return Err(boxed(Reset)),
        Some(Fault::Slow) => {
            let max = u64::try_from(faults.max_latency.as_millis()).unwrap_or(u64::MAX);
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=max))).await;
        }
        _ => {}
    }
    let (mut parts, body) = request.into_parts();
    let bytes = body.collect().await.map_err(boxed)?.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = format!(
        "{}://{}{path}",
        upstream.scheme_str().unwrap_or("http"),
        upstream
            .authority()
            .map_or("127.0.0.1:4566", |a| a.as_str())
    )
    .parse()
    .map_err(boxed)?;
    let response = client
        .request(Request::from_parts(parts, Full::new(bytes)))
        .await
        .map_err(boxed)?;
    let (mut parts, body) = response.into_parts();
    let bytes = body.collect().await.map_err(boxed)?.to_bytes();
    // Hop-by-hop headers are the upstream connection's, not the client's (RFC 9110 7.6.1): the
    // emulator closes every connection after its answer; the client's stays open, as AWS's do.
    for hop in ["connection", "keep-alive", "transfer-encoding"] {
        parts.headers.remove(hop);
    }
    match fault {
        Some(Fault::ResetAfter) => Err(boxed(Reset)),
        Some(Fault::ServerErrorAfter) => Ok(error(json_protocol, false)),
        _ => Ok(Response::from_parts(parts, Full::new(bytes))),
    }
}

/// The operation a call is (`DynamoDB.TransactWriteItems`, `S3.PutObject`, ...), named as the
/// call counter names it.
fn operation<B>(request: &Request<B>) -> String {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    crate::call_count::operation_name(
        header("x-amz-target"),
        header("authorization").unwrap_or_default(),
        request.method().as_str(),
        request.uri().path_and_query().map_or("/", |p| p.as_str()),
    )
}

/// An error as the service would answer it, so that the SDK classifies it as AWS's own.
fn error(json_protocol: bool, throttled: bool) -> Response<Body> {
    let (status, code) = match (json_protocol, throttled) {
        (true, true) => (StatusCode::BAD_REQUEST, "ThrottlingException"),
        (false, true) => (StatusCode::SERVICE_UNAVAILABLE, "SlowDown"),
        (_, false) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    };
    let (content_type, body) = if json_protocol {
        (
            "application/x-amz-json-1.0",
            format!(r#"{{"__type":"{code}","message":"injected by the fault proxy"}}"#),
        )
    } else {
        (
            "application/xml",
            format!(
                "<Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>"
            ),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        content_type.parse().expect("a header value"),
    );
    headers.insert("x-amzn-errortype", code.parse().expect("a header value"));
    response
}
