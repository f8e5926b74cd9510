//! A local Lambda Runtime API: the HTTP interface the Lambda service offers a function's
//! process (`/2018-06-01/runtime/...`), enough to run a function's release `bootstrap` — or a
//! Python handler under `awslambdaric`, the runtime interface client of AWS's Python images —
//! outside AWS and time it the way Lambda bills it: when the process first asks for work (the
//! end of its init), how long each invocation takes from the moment it is handed out to the
//! moment its answer arrives.
//!
//! The benchmark (`lambda-bench`) starts one per process it measures.

use anyhow::{anyhow, bail, Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

const PREFIX: &str = "/2018-06-01/runtime";

/// What a function answered to one invocation.
#[derive(Debug)]
pub enum Outcome {
    /// `/invocation/{id}/response`: the handler's result.
    Response(Bytes),
    /// `/invocation/{id}/error`: the handler failed (the error document the runtime sent).
    Error(Bytes),
}

/// One invocation's outcome and its duration as Lambda bills it (handed out → answered).
#[derive(Debug)]
pub struct Invoked {
    pub outcome: Outcome,
    pub took: Duration,
}

struct Invocation {
    event: Bytes,
    reply: oneshot::Sender<Invoked>,
}

struct InFlight {
    handed_out: Instant,
    reply: oneshot::Sender<Invoked>,
}

struct Shared {
    waiting: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// Set by the process's first `/next`: its init is over.
    first_next: watch::Sender<Option<Instant>>,
    /// Set when the process reports that its init failed.
    init_error: watch::Sender<Option<String>>,
    function_arn: String,
}

/// A running local Runtime API for one function process.
pub struct RuntimeApi {
    address: SocketAddr,
    invocations: mpsc::Sender<Invocation>,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    /// Listens on a free loopback port; `function_name` goes into the invoked function's ARN.
    pub async fn start(function_name: &str) -> Result<Self> {
        let (invocations, waiting) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            waiting: tokio::sync::Mutex::new(waiting),
            in_flight: Mutex::new(HashMap::new()),
            first_next: watch::channel(None).0,
            init_error: watch::channel(None).0,
            function_arn: format!(
                "arn:aws:lambda:us-east-1:{}:function:{function_name}",
                crate::provision::DEFAULT_ACCOUNT_ID
            ),
        });
        let router = Router::new()
            .route(&format!("{PREFIX}/invocation/next"), get(next))
            .route(
                &format!("{PREFIX}/invocation/{{id}}/response"),
                post(response),
            )
            .route(&format!("{PREFIX}/invocation/{{id}}/error"), post(error))
            .route(&format!("{PREFIX}/init/error"), post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self {
            address,
            invocations,
            shared,
            server,
        })
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API` for the process.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Waits until the process first asks for work, and returns when it did; an init error the
    /// process reports, or `limit` passing first, is an error.
    pub async fn init_done(&self, limit: Duration) -> Result<Instant> {
        let mut first = self.shared.first_next.subscribe();
        let mut failed = self.shared.init_error.subscribe();
        let waited = tokio::time::timeout(limit, async {
            loop {
                if let Some(at) = *first.borrow_and_update() {
                    return Ok(at);
                }
                if let Some(error) = failed.borrow_and_update().clone() {
                    bail!("the function's init failed: {error}");
                }
                tokio::select! {
                    changed = first.changed() => changed?,
                    changed = failed.changed() => changed?,
                }
            }
        })
        .await;
        waited.map_err(|_| anyhow!("the function did not ask for work within {limit:?}"))?
    }

    /// Hands `event` to the process and waits for its answer (at most `limit`).
    pub async fn invoke(&self, event: &Value, limit: Duration) -> Result<Invoked> {
        let (reply, answer) = oneshot::channel();
        let invocation = Invocation {
            event: Bytes::from(serde_json::to_vec(event)?),
            reply,
        };
        self.invocations
            .send(invocation)
            .await
            .map_err(|_| anyhow!("the runtime API stopped"))?;
        tokio::time::timeout(limit, answer)
            .await
            .map_err(|_| anyhow!("no answer within {limit:?}"))?
            .context("the invocation was dropped")
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    let now = Instant::now();
    shared.first_next.send_if_modified(|first| {
        let unset = first.is_none();
        if unset {
            *first = Some(now);
        }
        unset
    });
    // One invocation at a time, as Lambda gives an execution environment.
    let invocation = shared.waiting.lock().await.recv().await;
    let Some(invocation) = invocation else {
        return StatusCode::GONE.into_response();
    };
    let id = ulid::Ulid::new().to_string();
    let deadline = chrono::Utc::now().timestamp_millis() + 900_000;
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("lambda-runtime-aws-request-id", id.clone());
    set("lambda-runtime-deadline-ms", deadline.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        shared.function_arn.clone(),
    );
    set(
        "lambda-runtime-trace-id",
        format!(
            "Root=1-{:08x}-{}",
            deadline / 1000,
            &id[..24].to_lowercase()
        ),
    );
    set("content-type", "application/json".into());
    let mut in_flight = shared
        .in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    in_flight.insert(
        id,
        InFlight {
            handed_out: Instant::now(),
            reply: invocation.reply,
        },
    );
    (StatusCode::OK, headers, invocation.event).into_response()
}

fn answer(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    let taken = shared
        .in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(id);
    match taken {
        Some(in_flight) => {
            let _ = in_flight.reply.send(Invoked {
                outcome,
                took: in_flight.handed_out.elapsed(),
            });
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn response(state: State<Arc<Shared>>, id: Path<String>, body: Bytes) -> StatusCode {
    answer(&state, &id, Outcome::Response(body))
}

async fn error(state: State<Arc<Shared>>, id: Path<String>, body: Bytes) -> StatusCode {
    answer(&state, &id, Outcome::Error(body))
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let text = String::from_utf8_lossy(&body).into_owned();
    shared.init_error.send_replace(Some(text));
    StatusCode::ACCEPTED
}
