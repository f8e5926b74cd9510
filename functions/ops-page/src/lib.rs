//! The operations page: the service's own page for the people who run it. It answers the one
//! question the monitoring is built around — do the numbers at every hop agree? — and what an
//! operator needs next: which requests went missing where, what is open and for how long, what
//! waits in the dead-letter queues, what is stuck or escalated, which service is slow, and one
//! request's timeline.
//!
//! Routes (API Gateway HTTP API; the local stack serves the same handler on its port):
//! - `GET /ops` and `GET /ops/shell.js`: the page's shell (no data; public). It fetches
//!   `/ops/page` with the operator's token when one is stored in the browser tab, without one
//!   from the local stack's loopback.
//! - `GET /ops/page?hours=&request=`: the page itself, server-rendered HTML with SVG charts.
//! - `GET /ops/summary?hours=`: the same numbers as JSON.
//! - `POST /ops/actions`: an operator's decision on an escalated (or any unanswered)
//!   obligation — send the command again, or resolve it with the answer obtained by other
//!   means and its evidence — handed to the confirm function, as `dsr-ops resend`/`resolve` do.
//!   The operator is the token's subject.
//!
//! All but the shell need the operator scope ([`OPERATOR_SCOPE`]): API Gateway's JWT
//! authorizer checks it on the route, and the handler checks it again.

mod html;

use chrono::{DateTime, Duration, Utc};
use dsr_adapters::config::{vars, ConfigError, Env};
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_adapters::sqs::SqsOperatorDecisions;
use dsr_adapters::wiring;
use dsr_domain::erasure::{
    ConfirmationOutcome, NotActionable, Obligation, ObligationStore, OperatorAction,
    OperatorDecision, OperatorDecisions,
};
use dsr_domain::hops::{self, ClickOutcome, Hop, HopMark};
use dsr_domain::requests::reconcile::{self, ReconcileSettings};
use dsr_domain::{
    AuditEvent, Clock, Request, RequestId, RequestKind, RequestState, RequestStore, StoreError,
    SystemClock,
};
use lambda_http::http::{header, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Error, RequestExt, Response};
use serde::Serialize;
use std::collections::BTreeMap;

/// The scope an operator's token carries (API Gateway checks it on the operator routes).
pub const OPERATOR_SCOPE: &str = "dsr/operate";

/// Hours the page shows unless asked for another number (1 to [`MAX_HOURS`]).
pub const DEFAULT_HOURS: u32 = 24;
pub const MAX_HOURS: u32 = 24 * 14;

/// Where each of the service's dead-letter queues is: `DEAD_LETTER_QUEUES`, space-separated
/// `name=url` pairs.
pub const DEAD_LETTER_QUEUES: &str = "DEAD_LETTER_QUEUES";

pub struct OpsPage<S, C, D> {
    pub store: S,
    pub clock: C,
    /// Where operators' decisions go (the confirmations queue); without it the page only shows.
    pub decisions: Option<D>,
    pub sqs: Option<aws_sdk_sqs::Client>,
    /// (name, queue URL) of every dead-letter queue.
    pub dead_letter_queues: Vec<(String, String)>,
    pub settings: ReconcileSettings,
    /// Names the deployment on the page.
    pub stack: String,
}

pub type Handler = OpsPage<DynamoRequestStore, SystemClock, SqsOperatorDecisions>;

/// Builds the function from its configuration: the same wiring in Lambda and the local stack.
pub fn build(aws: &aws_config::SdkConfig, env: &Env) -> Result<Handler, ConfigError> {
    Ok(OpsPage {
        store: wiring::request_store(aws, env, "ops-page")?,
        clock: SystemClock,
        decisions: env
            .optional(vars::CONFIRMATIONS_QUEUE_URL)
            .map(|url| SqsOperatorDecisions::new(aws_sdk_sqs::Client::new(aws), url)),
        sqs: Some(aws_sdk_sqs::Client::new(aws)),
        dead_letter_queues: dead_letter_queues(env)?,
        settings: wiring::reconcile_settings(env)?,
        stack: env
            .optional("STACK_NAME")
            .unwrap_or_else(|| "gdpr-dsr".into()),
    })
}

/// `DEAD_LETTER_QUEUES` read as (name, url) pairs.
pub fn dead_letter_queues(env: &Env) -> Result<Vec<(String, String)>, ConfigError> {
    env.optional(DEAD_LETTER_QUEUES)
        .unwrap_or_default()
        .split_whitespace()
        .map(|pair| {
            pair.split_once('=')
                .filter(|(name, url)| !name.is_empty() && !url.is_empty())
                .map(|(name, url)| (name.to_owned(), url.to_owned()))
                .ok_or_else(|| {
                    ConfigError::unusable(DEAD_LETTER_QUEUES, format!("`{pair}` is not name=url"))
                })
        })
        .collect()
}

/// Everything the page shows, as numbers (`/ops/summary`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub stack: String,
    pub generated_at: DateTime<Utc>,
    pub hours: u32,
    /// No hop missing in any window shown.
    pub in_sync: bool,
    pub kinds: Vec<KindSummary>,
    /// Every request missing a hop it should have taken by now, oldest first.
    pub missing: Vec<MissingHop>,
    pub open: Vec<OpenState>,
    pub deadline_at_risk: Vec<RequestId>,
    pub deadline_missed: Vec<RequestId>,
    pub dead_letters: Vec<DeadLetters>,
    pub stuck: Vec<StuckRequest>,
    pub escalated: Vec<Escalation>,
    pub latency: Vec<HolderLatency>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindSummary {
    pub kind: RequestKind,
    /// Every click on "submit", per outcome, over the hours shown.
    pub clicks: BTreeMap<String, usize>,
    /// Requests that took each hop of the kind's path, over the hours shown, in path order.
    pub funnel: Vec<HopCount>,
    /// Per hour, oldest first: submitted (accepted), received, done.
    pub series: Vec<HourPoint>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HopCount {
    pub hop: Hop,
    pub count: usize,
    /// Requests missing this hop (late beyond its allowance).
    pub missing: usize,
    /// Requests still within the hop's allowance.
    pub in_flight: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HourPoint {
    pub hour: DateTime<Utc>,
    pub submitted: usize,
    pub received: usize,
    pub done: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MissingHop {
    pub kind: RequestKind,
    pub hop: Hop,
    pub request: RequestId,
    pub service: Option<String>,
    pub late_since: DateTime<Utc>,
}

/// Open requests in one state, by age since submission.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpenState {
    pub state: RequestState,
    pub total: usize,
    /// Counts per [`AGE_BUCKETS`].
    pub by_age: Vec<usize>,
    pub at_risk: usize,
    pub missed: usize,
}

/// Age buckets of open requests (upper bounds; the last is open-ended).
pub const AGE_BUCKETS: [(&str, i64); 5] = [
    ("< 1 h", 3600),
    ("1 h – 1 d", 86_400),
    ("1 – 7 d", 7 * 86_400),
    ("7 – 21 d", 21 * 86_400),
    ("> 21 d", i64::MAX),
];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetters {
    pub queue: String,
    /// `None`: the depth could not be read (shown as such, never as 0).
    pub depth: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StuckRequest {
    pub request: RequestId,
    pub kind: RequestKind,
    pub state: RequestState,
    pub idle_minutes: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Escalation {
    pub request: RequestId,
    pub service: String,
    pub at: DateTime<Utc>,
}

/// How long a holder takes from the broker's confirmation of its command to its answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HolderLatency {
    pub service: String,
    pub answers: usize,
    pub median_seconds: f64,
    pub p90_seconds: f64,
    pub max_seconds: f64,
}

/// One request, as it went: its hops with their times, its audit trail, its obligations.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub request: Request,
    pub hops: Vec<HopMark>,
    pub audit: Vec<AuditEvent>,
    pub obligations: Vec<Obligation>,
}

impl<S, C, D> OpsPage<S, C, D>
where
    S: RequestStore + ObligationStore,
    C: Clock,
    D: OperatorDecisions,
{
    /// The numbers of the last `hours` hours.
    pub async fn summary(&self, hours: u32) -> Result<Summary, StoreError> {
        let now = self.clock.now();
        let hours = hours.clamp(1, MAX_HOURS);
        let newest = hops::truncate_to_hour(now);
        let mut summary = Summary {
            stack: self.stack.clone(),
            generated_at: now,
            hours,
            in_sync: true,
            kinds: Vec::new(),
            missing: Vec::new(),
            open: Vec::new(),
            deadline_at_risk: Vec::new(),
            deadline_missed: Vec::new(),
            dead_letters: Vec::new(),
            stuck: Vec::new(),
            escalated: Vec::new(),
            latency: Vec::new(),
        };
        let mut latencies: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for kind in RequestKind::ALL {
            let path = Hop::path(kind);
            let mut funnel: Vec<HopCount> = path
                .iter()
                .map(|hop| HopCount {
                    hop: *hop,
                    count: 0,
                    missing: 0,
                    in_flight: 0,
                })
                .collect();
            let mut clicks: BTreeMap<String, usize> = ClickOutcome::ALL
                .iter()
                .map(|o| (o.as_str().to_owned(), 0))
                .collect();
            let mut series = Vec::new();
            let done = match kind {
                RequestKind::Access => Hop::Generated,
                RequestKind::Erasure => Hop::Completed,
            };
            for back in (0..hours).rev() {
                let hour = newest - Duration::hours(i64::from(back));
                let marks = self.store.window(kind, hour).await?;
                let window = hops::reconcile(kind, hour, &marks, now, &self.settings.allowances);
                for (outcome, n) in &window.clicks {
                    *clicks.entry(outcome.as_str().to_owned()).or_default() += n;
                }
                for entry in funnel.iter_mut() {
                    entry.count += window.count(entry.hop);
                    entry.missing += window.missing_at(entry.hop).count();
                    entry.in_flight += window.in_flight.get(&entry.hop).copied().unwrap_or(0);
                }
                series.push(HourPoint {
                    hour,
                    submitted: window.accepted(),
                    received: window.count(Hop::Received),
                    done: window.count(done),
                });
                summary
                    .missing
                    .extend(window.missing.iter().map(|m| MissingHop {
                        kind,
                        hop: m.hop,
                        request: m.request,
                        service: m.service.as_ref().map(|s| s.as_str().to_owned()),
                        late_since: m.due_at,
                    }));
                collect_escalations_and_latency(&marks, &mut summary.escalated, &mut latencies);
            }
            summary.kinds.push(KindSummary {
                kind,
                clicks,
                funnel,
                series,
            });
        }
        summary.missing.sort_by_key(|m| m.late_since);
        summary.in_sync = summary.missing.is_empty();
        summary.latency = latencies
            .into_iter()
            .map(|(service, mut seconds)| {
                seconds.sort_by(f64::total_cmp);
                let at = |q: f64| seconds[((seconds.len() - 1) as f64 * q).round() as usize];
                HolderLatency {
                    answers: seconds.len(),
                    median_seconds: at(0.5),
                    p90_seconds: at(0.9),
                    max_seconds: at(1.0),
                    service,
                }
            })
            .collect();
        self.open_requests(now, &mut summary).await?;
        summary.dead_letters = self.dead_letters().await;
        Ok(summary)
    }

    async fn open_requests(
        &self,
        now: DateTime<Utc>,
        summary: &mut Summary,
    ) -> Result<(), StoreError> {
        for (state, _) in reconcile::OPEN {
            let requests = self
                .store
                .in_state(state, self.settings.batch_limit)
                .await?;
            let mut row = OpenState {
                state,
                total: requests.len(),
                by_age: vec![0; AGE_BUCKETS.len()],
                at_risk: 0,
                missed: 0,
            };
            for request in &requests {
                let age = (now - request.received_at).num_seconds();
                let bucket = AGE_BUCKETS
                    .iter()
                    .position(|(_, below)| age < *below)
                    .unwrap_or(AGE_BUCKETS.len() - 1);
                row.by_age[bucket] += 1;
                match reconcile::deadline(request, now, &self.settings) {
                    Some(reconcile::Deadline::Missed) => {
                        row.missed += 1;
                        summary.deadline_missed.push(request.id);
                    }
                    Some(reconcile::Deadline::AtRisk) => {
                        row.at_risk += 1;
                        summary.deadline_at_risk.push(request.id);
                    }
                    None => {}
                }
                if reconcile::stuck(request, now, &self.settings) {
                    summary.stuck.push(StuckRequest {
                        request: request.id,
                        kind: request.kind,
                        state,
                        idle_minutes: (now - request.updated_at).num_minutes(),
                    });
                }
            }
            summary.open.push(row);
        }
        Ok(())
    }

    async fn dead_letters(&self) -> Vec<DeadLetters> {
        let mut out = Vec::new();
        for (name, url) in &self.dead_letter_queues {
            let depth = match &self.sqs {
                Some(sqs) => depth(sqs, url).await,
                None => None,
            };
            out.push(DeadLetters {
                queue: name.clone(),
                depth,
            });
        }
        out
    }

    /// One request's timeline, or `None` if there is no such request.
    pub async fn timeline(&self, id: RequestId) -> Result<Option<Timeline>, StoreError> {
        let Some(request) = self.store.get(id).await? else {
            return Ok(None);
        };
        let mut marks: Vec<HopMark> = self
            .store
            .window(request.kind, hops::hour_of(id))
            .await?
            .into_iter()
            .filter(|m| m.request == id)
            .collect();
        marks.sort_by_key(|m| m.first_at);
        let mut obligations = self.store.obligations(id).await?;
        obligations.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(Some(Timeline {
            audit: self.store.audit_trail(id).await?,
            hops: marks,
            obligations,
            request,
        }))
    }

    /// The Lambda handler (and the local stack's API Gateway).
    pub async fn handle(&self, request: lambda_http::Request) -> Result<Response<Body>, Error> {
        let path = request.raw_http_path().trim_end_matches('/').to_owned();
        let query = request.query_string_parameters();
        if path == "/ops" {
            return Ok(respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                html::shell(),
            ));
        }
        if path == "/ops/shell.js" {
            return Ok(respond(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                html::SHELL_SCRIPT.to_owned(),
            ));
        }
        if path == "/ops/actions" {
            if request.method() != lambda_http::http::Method::POST {
                return Ok(problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "an operator's decision is a POST",
                ));
            }
            if !is_operator(&request) {
                return Ok(problem(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "acting on an obligation needs a token with the operator scope (dsr/operate)",
                ));
            }
            return self.act(&request).await;
        }
        if path != "/ops/page" && path != "/ops/summary" {
            return Ok(problem(StatusCode::NOT_FOUND, "not_found", "no such page"));
        }
        if !is_operator(&request) {
            return Ok(problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the operations page needs a token with the operator scope (dsr/operate)",
            ));
        }
        let hours = match query.first("hours") {
            None => DEFAULT_HOURS,
            Some(raw) => match raw.parse::<u32>() {
                Ok(h) if (1..=MAX_HOURS).contains(&h) => h,
                _ => {
                    return Ok(problem(
                        StatusCode::BAD_REQUEST,
                        "invalid_hours",
                        &format!("`hours` must be a whole number from 1 to {MAX_HOURS}"),
                    ))
                }
            },
        };
        let summary = self.summary(hours).await?;
        if path == "/ops/summary" {
            return Ok(respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&summary)?,
            ));
        }
        let search = query
            .first("request")
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let found = match search {
            None => html::Found::NotAsked,
            Some(raw) => match raw.parse::<RequestId>() {
                Err(_) => html::Found::Invalid(raw.to_owned()),
                Ok(id) => match self.timeline(id).await? {
                    Some(timeline) => html::Found::Timeline(Box::new(timeline)),
                    None => html::Found::Unknown(id),
                },
            },
        };
        Ok(respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            html::page(&summary, &found),
        ))
    }
}

/// An operator's decision as the page posts it (`POST /ops/actions`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    request_id: String,
    service: String,
    decision: OperatorDecision,
    #[serde(default)]
    outcome: Option<ConfirmationOutcome>,
    #[serde(default)]
    evidence: Option<String>,
}

impl<S, C, D> OpsPage<S, C, D>
where
    S: RequestStore + ObligationStore,
    C: Clock,
    D: OperatorDecisions,
{
    /// Checks an operator's decision and hands it to the confirm function, which carries it
    /// out within seconds (the timeline then shows it). Who decided is the token's subject.
    async fn act(&self, request: &lambda_http::Request) -> Result<Response<Body>, Error> {
        let bad = |code: &str, message: &str| Ok(problem(StatusCode::BAD_REQUEST, code, message));
        let Some(operator) = operator_of(request) else {
            return Ok(problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token names no operator (its `sub` claim): the audit trail says who acted",
            ));
        };
        let decision: Decision = match serde_json::from_slice(request.body().as_ref()) {
            Ok(decision) => decision,
            Err(err) => {
                return bad(
                    "invalid_body",
                    &format!("expected {{request_id, service, decision: resend|resolve, outcome: erased|not_found, evidence}}: {err}"),
                )
            }
        };
        let Ok(id) = decision.request_id.trim().parse::<RequestId>() else {
            return bad("invalid_request_id", "`request_id` is not a request id");
        };
        let Ok(service) = dsr_domain::ServiceName::parse(decision.service.trim()) else {
            return bad("invalid_service", "`service` is not a service name");
        };
        let mut action = OperatorAction::new(
            id,
            &service,
            decision.decision,
            &operator,
            self.clock.now(),
            &RequestId::new_at(self.clock.now()).to_string(),
        );
        action.outcome = decision.outcome;
        action.evidence = decision.evidence.map(|e| e.trim().to_owned());
        if let Err(reason) = action.check() {
            return bad("invalid_decision", &reason);
        }
        let stored = self.store.get(id).await?;
        let obligations = self.store.obligations(id).await?;
        if let Err(refused) =
            dsr_domain::erasure::actionable(id, stored, &service, decision.decision, obligations)
        {
            let (status, code) = match refused {
                NotActionable::NoRequest(_) => (StatusCode::NOT_FOUND, "unknown_request"),
                NotActionable::Answered(..) => (StatusCode::CONFLICT, "already_answered"),
                _ => (StatusCode::CONFLICT, "not_actionable"),
            };
            return Ok(problem(status, code, &refused.to_string()));
        }
        let Some(decisions) = &self.decisions else {
            return Ok(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "actions_unavailable",
                "this deployment gives the page no confirmations queue (CONFIRMATIONS_QUEUE_URL)",
            ));
        };
        if let Err(err) = decisions.ask(&action).await {
            tracing::warn!(request_id = %id, service = %service, error = %err, "operator decision not handed on");
            return Ok(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "try_again",
                "the decision could not be handed to the confirm function; nothing was done: try again",
            ));
        }
        tracing::info!(request_id = %id, service = %service, decision = ?action.decision, operator = %action.operator, "operator decision handed to the confirm function");
        Ok(respond(
            StatusCode::ACCEPTED,
            "application/json",
            serde_json::json!({
                "message_id": action.message_id,
                "request_id": id,
                "service": service,
                "decision": action.decision,
                "operator": action.operator,
            })
            .to_string(),
        ))
    }
}

/// The operator behind a request: their token's subject.
fn operator_of(request: &lambda_http::Request) -> Option<String> {
    let Some(RequestContext::ApiGatewayV2(context)) = request.request_context_ref() else {
        return None;
    };
    context
        .authorizer
        .as_ref()
        .and_then(|a| a.jwt.as_ref())
        .and_then(|jwt| jwt.claims.get("sub"))
        .filter(|sub| !sub.is_empty())
        .cloned()
}

/// Escalated holders and (commanded → answered) latencies in one window's marks.
fn collect_escalations_and_latency(
    marks: &[HopMark],
    escalated: &mut Vec<Escalation>,
    latencies: &mut BTreeMap<String, Vec<f64>>,
) {
    let mut commanded = BTreeMap::new();
    for mark in marks {
        let Some(service) = &mark.service else {
            continue;
        };
        match mark.hop {
            Hop::Commanded => {
                commanded.insert((mark.request, service.clone()), mark.first_at);
            }
            Hop::Escalated => escalated.push(Escalation {
                request: mark.request,
                service: service.as_str().to_owned(),
                at: mark.first_at,
            }),
            _ => {}
        }
    }
    for mark in marks.iter().filter(|m| m.hop == Hop::Answered) {
        let Some(service) = &mark.service else {
            continue;
        };
        if let Some(sent) = commanded.get(&(mark.request, service.clone())) {
            let seconds = (mark.first_at - *sent).num_milliseconds().max(0) as f64 / 1000.0;
            latencies
                .entry(service.as_str().to_owned())
                .or_default()
                .push(seconds);
        }
    }
}

async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Option<u64> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| tracing::warn!(queue = url, error = %aws_sdk_sqs::error::DisplayErrorContext(e), "dead-letter depth not read"))
        .ok()?
        .attributes?;
    let read = |name: QueueAttributeName| {
        attributes
            .get(&name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(
        read(QueueAttributeName::ApproximateNumberOfMessages)
            + read(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Whether the caller is an operator: the authorizer's scopes (or the token's `scope` claim)
/// name [`OPERATOR_SCOPE`].
pub fn is_operator(request: &lambda_http::Request) -> bool {
    let Some(RequestContext::ApiGatewayV2(context)) = request.request_context_ref() else {
        return false;
    };
    let Some(jwt) = context.authorizer.as_ref().and_then(|a| a.jwt.as_ref()) else {
        return false;
    };
    let in_scopes = jwt
        .scopes
        .as_ref()
        .is_some_and(|scopes| scopes.iter().any(|s| s == OPERATOR_SCOPE));
    let in_claim = jwt
        .claims
        .get("scope")
        .is_some_and(|scope| scope.split_whitespace().any(|s| s == OPERATOR_SCOPE));
    in_scopes || in_claim
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        // The page shows live numbers: never from a cache.
        .header(header::CACHE_CONTROL, "no-store")
        .header("content-security-policy", html::CONTENT_SECURITY_POLICY)
        .header("x-content-type-options", "nosniff")
        .body(Body::Text(body))
        .unwrap_or_default()
}

fn problem(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    respond(
        status,
        "application/json",
        serde_json::json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

#[cfg(test)]
mod tests;
