//! The intake function: the user API behind API Gateway (HTTP API, payload v2, JWT authorizer).
//!
//! The subject is always the authenticated user, the `sub` claim the authorizer verified; a
//! request body never names whose data it is about. Bad input gets a 4xx with
//! `{"error": {"code", "message"}}` and never a 5xx. Contract: `docs/openapi.yaml`.

mod certificate_page;
pub mod submissions;

use dsr_adapters::config::{vars, ConfigError, Env};
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_adapters::s3::{self, S3ReportStore};
use dsr_adapters::sqs::SqsWorkQueue;
use dsr_adapters::wiring;
use dsr_domain::erasure::certificate::{key_set, CertificateSigner};
use dsr_domain::erasure::ObligationStore;
use dsr_domain::requests::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use dsr_domain::{
    Clock, IdempotencyKey, ReportLinks, Request, RequestError, RequestId, RequestKind,
    RequestStore, Requests, StoreError, SubjectId, Submission, SystemClock, WorkQueue,
};
use lambda_http::http::{header, Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Error, RequestExt, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Submissions are one small JSON object; anything bigger is not a submission.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

pub const DEFAULT_REPORT_URL_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// What the user API needs: the request use cases, and where finished reports are linked from.
pub struct IntakeApi<S, Q, C, L> {
    pub requests: Requests<S, Q, C>,
    pub reports: L,
    /// How long a download link stays valid.
    pub link_ttl: std::time::Duration,
    /// Signs certificates of erasure; its public key is served at `/v1/certificate-keys`.
    pub signer: std::sync::Arc<dyn CertificateSigner>,
}

pub type Handler = IntakeApi<DynamoRequestStore, SqsWorkQueue, SystemClock, S3ReportStore>;

/// Builds the function from its configuration: the same wiring in Lambda and the local stack.
pub fn build(aws: &aws_config::SdkConfig, env: &Env) -> Result<Handler, ConfigError> {
    Ok(IntakeApi {
        requests: wiring::requests(aws, env, "intake")?,
        reports: S3ReportStore::new(s3::client(aws), env.required(vars::REPORTS_BUCKET)?),
        link_ttl: link_ttl(env)?,
        signer: std::sync::Arc::new(
            dsr_adapters::signing::Ed25519Signer::from_pem(
                &env.required(vars::CERTIFICATE_SIGNING_KEY)?,
            )
            .map_err(|e| ConfigError::unusable(vars::CERTIFICATE_SIGNING_KEY, e))?,
        ),
    })
}

/// `REPORT_URL_TTL_SECONDS` (1 s to 7 days), or 15 minutes.
pub fn link_ttl(env: &Env) -> Result<std::time::Duration, ConfigError> {
    let ttl = env.seconds(
        vars::REPORT_URL_TTL_SECONDS,
        chrono::Duration::from_std(DEFAULT_REPORT_URL_TTL).unwrap_or_default(),
    )?;
    if !(1..=7 * 24 * 3600).contains(&ttl.num_seconds()) {
        return Err(ConfigError::unusable(
            vars::REPORT_URL_TTL_SECONDS,
            "must be 1 to 604800 seconds",
        ));
    }
    Ok(ttl.to_std().unwrap_or(DEFAULT_REPORT_URL_TTL))
}

impl<S, Q, C, L> IntakeApi<S, Q, C, L>
where
    S: RequestStore + ObligationStore,
    Q: WorkQueue,
    C: Clock,
    L: ReportLinks,
{
    /// The Lambda handler (and the local stack's API Gateway).
    pub async fn handle(&self, request: lambda_http::Request) -> Result<Response<Body>, Error> {
        handle(self, request).await
    }
}

/// Answers one API Gateway request. Errors returned from here are infrastructure failures;
/// every problem with the input is an HTTP response.
pub async fn handle<S, Q, C, L>(
    api: &IntakeApi<S, Q, C, L>,
    request: lambda_http::Request,
) -> Result<Response<Body>, Error>
where
    S: RequestStore + ObligationStore,
    Q: WorkQueue,
    C: Clock,
    L: ReportLinks,
{
    Ok(route(api, &request)
        .await
        .unwrap_or_else(ApiError::into_response))
}

async fn route<S: RequestStore + ObligationStore, Q: WorkQueue, C: Clock, L: ReportLinks>(
    api: &IntakeApi<S, Q, C, L>,
    request: &lambda_http::Request,
) -> Result<Response<Body>, ApiError> {
    let requests = &api.requests;
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match segments.as_slice() {
        ["v1", "requests"] => {
            let subject = subject_of(request)?;
            match *request.method() {
                Method::POST => submit(requests, &subject, request).await,
                Method::GET => list(requests, &subject, request).await,
                _ => Err(ApiError::method_not_allowed("GET, POST")),
            }
        }
        ["v1", "requests", id] => {
            let subject = subject_of(request)?;
            let id = parse_id(id)?;
            match *request.method() {
                Method::GET => {
                    let found = requests.show(&subject, id).await?;
                    let mut view = RequestView::from(&found);
                    if found.kind == RequestKind::Access && !found.sources.is_empty() {
                        view.sources = Some(found.sources.iter().map(SourceView::from).collect());
                    }
                    if found.kind == RequestKind::Erasure {
                        view.services = Some(
                            requests
                                .progress(&found)
                                .await?
                                .iter()
                                .map(ServiceProgress::from)
                                .collect(),
                        );
                    }
                    Ok(json_response(StatusCode::OK, &view))
                }
                Method::DELETE => {
                    let cancelled = requests.cancel(&subject, id).await?;
                    Ok(json_response(
                        StatusCode::OK,
                        &RequestView::from(&cancelled),
                    ))
                }
                _ => Err(ApiError::method_not_allowed("GET, DELETE")),
            }
        }
        ["v1", "requests", id, "report"] => {
            let subject = subject_of(request)?;
            let id = parse_id(id)?;
            if request.method() != Method::GET {
                return Err(ApiError::method_not_allowed("GET"));
            }
            let link = requests
                .report_link(&subject, id, &api.reports, api.link_ttl)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "url": link.url,
                    "expires_at": link.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                }),
            ))
        }
        ["v1", "requests", id, "certificate"] => {
            let subject = subject_of(request)?;
            let id = parse_id(id)?;
            if request.method() != Method::GET {
                return Err(ApiError::method_not_allowed("GET"));
            }
            let signed = requests
                .certificate(&subject, id, api.signer.as_ref())
                .await?;
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            if !certificate_page::wants_html(accept) {
                return Ok(json_response(StatusCode::OK, &signed));
            }
            let page = certificate_page::render(
                &signed,
                &certificate_page::public_key(api.signer.as_ref()),
            );
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .header(header::CACHE_CONTROL, "no-store")
                .header(
                    header::CONTENT_SECURITY_POLICY,
                    certificate_page::policy_header(),
                )
                .body(Body::Text(page))
                .expect("status and headers are valid"))
        }
        // Public (no token): anyone holding a certificate checks it against this key.
        ["v1", "certificate-keys"] => {
            if request.method() != Method::GET {
                return Err(ApiError::method_not_allowed("GET"));
            }
            Ok(json_response(StatusCode::OK, &key_set(api.signer.as_ref())))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            format!(
                "no such route: {} {}",
                request.method(),
                path_for_error(&path)
            ),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    #[serde(rename = "type")]
    kind: RequestKind,
}

async fn submit<S: RequestStore, Q: WorkQueue, C: Clock>(
    requests: &Requests<S, Q, C>,
    subject: &SubjectId,
    request: &lambda_http::Request,
) -> Result<Response<Body>, ApiError> {
    if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
        let content_type = content_type.to_str().unwrap_or_default();
        if !content_type.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON: send Content-Type: application/json",
            ));
        }
    }
    let body: &[u8] = request.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body is {} bytes; at most {MAX_BODY_BYTES} are accepted",
                body.len()
            ),
        ));
    }
    let parsed: SubmitBody = serde_json::from_slice(body).map_err(|err| {
        let code = match err.classify() {
            serde_json::error::Category::Data => "invalid_body",
            _ => "malformed_json",
        };
        let message = if body.is_empty() {
            "the body is empty; send {\"type\": \"access\"} or {\"type\": \"erasure\"}".to_owned()
        } else {
            format!("{err}")
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    })?;
    let idempotency_key = match request.headers().get("idempotency-key") {
        None => None,
        Some(raw) => Some(
            raw.to_str()
                .map_err(|_| "an Idempotency-Key must be printable ASCII".to_owned())
                .and_then(IdempotencyKey::parse)
                .map_err(|message| {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", message)
                })?,
        ),
    };

    let submission = requests
        .submit(subject, parsed.kind, idempotency_key.as_ref())
        .await?;
    let (status, replayed) = match &submission {
        Submission::Created(_) => (StatusCode::ACCEPTED, false),
        Submission::Replayed(_) => (StatusCode::ACCEPTED, true),
        Submission::AlreadyOpen(_) => (StatusCode::OK, false),
    };
    let stored = submission.request();
    let mut response = json_response(status, &RequestView::from(stored));
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        format!("/v1/requests/{}", stored.id)
            .parse()
            .expect("a ULID path is a valid header value"),
    );
    if replayed {
        headers.insert(
            "idempotent-replayed",
            "true".parse().expect("static header"),
        );
    }
    Ok(response)
}

/// `GET /v1/requests?limit=&cursor=`: one page, newest first.
async fn list<S: RequestStore, Q: WorkQueue, C: Clock>(
    requests: &Requests<S, Q, C>,
    subject: &SubjectId,
    request: &lambda_http::Request,
) -> Result<Response<Body>, ApiError> {
    let query = request.query_string_parameters();
    let limit = match query.first("limit") {
        None => DEFAULT_PAGE_SIZE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_limit",
                    format!("limit must be a whole number from 1 to {MAX_PAGE_SIZE}"),
                )
            })?,
    };
    let page = requests
        .list_page(subject, query.first("cursor"), limit)
        .await?;
    let list = RequestList {
        requests: page.requests.iter().map(RequestView::from).collect(),
        next_cursor: page.next,
    };
    Ok(json_response(StatusCode::OK, &list))
}

#[derive(Debug, Serialize)]
pub struct RequestList {
    pub requests: Vec<RequestView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A request as the user sees it: no subject id (they know who they are), no internals.
#[derive(Debug, Serialize)]
pub struct RequestView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: RequestKind,
    pub state: dsr_domain::RequestState,
    /// How it came: `api` (the subject here), or support's channel, or `system`.
    pub channel: &'static str,
    pub received_at: String,
    pub due_at: String,
    pub updated_at: String,
    /// Set when an operator extended the deadline (Art. 12(3)): by how much and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_extension: Option<ExtensionView>,
    /// Erasure requests, on `GET /v1/requests/{id}`: each service's progress (no data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceProgress>>,
    /// Access requests being collected or collected, on `GET /v1/requests/{id}`: where each
    /// source stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<SourceView>>,
}

/// One source of an access report, as the user sees it.
#[derive(Debug, Serialize)]
pub struct SourceView {
    pub name: dsr_domain::ServiceName,
    /// `pending`, `exporting`, `collected` or `failed`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it is tried, or its export polled, next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Why its last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why it is not applicable (it keys its data by an identifier the subject does not have).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&dsr_domain::report::progress::SourceProgress> for SourceView {
    fn from(s: &dsr_domain::report::progress::SourceProgress) -> Self {
        Self {
            name: s.service.clone(),
            status: s.status.as_str(),
            records: s.records,
            attempts: s.attempts,
            next_attempt_at: s
                .next_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            last_error: s.error.clone(),
            reason: s.reason.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ExtensionView {
    pub months: u32,
    pub reason: String,
    pub extended_at: String,
}

/// One service's part of an erasure, as the user sees it.
#[derive(Debug, Serialize)]
pub struct ServiceProgress {
    pub service: dsr_domain::ServiceName,
    pub status: dsr_domain::erasure::ObligationStatus,
    /// Erased after the others, once the subject was told (the email service).
    pub erased_last: bool,
    pub commands_sent: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<String>,
    /// The service did not confirm after every re-send; an operator is on it.
    pub escalated: bool,
    /// Why it is not applicable (it keys its data by an identifier the subject does not have).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&dsr_domain::erasure::Obligation> for ServiceProgress {
    fn from(o: &dsr_domain::erasure::Obligation) -> Self {
        Self {
            service: o.service.clone(),
            status: o.status,
            erased_last: o.last,
            commands_sent: o.attempts,
            confirmed_at: o
                .confirmed_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            escalated: o.escalated_at.is_some(),
            reason: match o.status {
                dsr_domain::erasure::ObligationStatus::NotApplicable => o
                    .receipt
                    .as_deref()
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
                    .and_then(|r| r["not_applicable"].as_str().map(str::to_owned)),
                _ => None,
            },
        }
    }
}

impl From<&Request> for RequestView {
    fn from(request: &Request) -> Self {
        let time = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        Self {
            id: request.id.to_string(),
            kind: request.kind,
            state: request.state,
            channel: request.channel().as_str(),
            received_at: time(request.received_at),
            due_at: time(request.due_at),
            updated_at: time(request.updated_at),
            deadline_extension: request.deadline_extension.as_ref().map(|e| ExtensionView {
                months: e.months,
                reason: e.reason.clone(),
                extended_at: time(e.extended_at),
            }),
            services: None,
            sources: None,
        }
    }
}

/// The `sub` claim of the token API Gateway's JWT authorizer verified.
fn subject_of(request: &lambda_http::Request) -> Result<SubjectId, ApiError> {
    let claims = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context
            .authorizer
            .as_ref()
            .and_then(|authorizer| authorizer.jwt.as_ref())
            .map(|jwt| &jwt.claims),
        _ => None,
    };
    let sub = claims
        .and_then(|claims| claims.get("sub"))
        .ok_or_else(|| ApiError::unauthorized("no authenticated subject on the request"))?;
    SubjectId::parse(sub.clone())
        .map_err(|err| ApiError::unauthorized(format!("the token's subject is unusable: {err}")))
}

fn parse_id(raw: &str) -> Result<RequestId, ApiError> {
    raw.parse().map_err(|err: dsr_domain::RequestIdError| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_request_id",
            err.to_string(),
        )
    })
}

fn path_for_error(path: &str) -> String {
    path.chars().take(128).collect()
}

/// Every answer is about one person's requests (and may carry a download link that works for
/// anyone holding it): no cache, shared or private, keeps a copy.
fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::Text(
            serde_json::to_string(body).expect("response bodies serialize"),
        ))
        .expect("status and static headers are valid")
}

/// An HTTP error with the body every client can rely on: `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
    /// Seconds until trying again makes sense (`Retry-After`).
    retry_after: Option<i64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("allowed methods: {allow}"),
            )
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut response = json_response(
            self.status,
            &json!({ "error": { "code": self.code, "message": self.message } }),
        );
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, allow.parse().expect("static header"));
        }
        let retry_after = match self.status {
            StatusCode::SERVICE_UNAVAILABLE => Some(5),
            _ => self.retry_after,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                seconds
                    .to_string()
                    .parse()
                    .expect("digits are a valid header"),
            );
        }
        response
    }
}

impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::NotFound => {
                Self::new(StatusCode::NOT_FOUND, "not_found", "no such request")
            }
            RequestError::InvalidCursor => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_cursor", err.to_string())
            }
            RequestError::TooManyAccessRequests { retry_after, .. } => Self {
                retry_after: Some(retry_after.num_seconds().max(1)),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_access_requests",
                    err.to_string(),
                )
            },
            RequestError::NotCancellable { .. } => {
                Self::new(StatusCode::CONFLICT, "not_cancellable", err.to_string())
            }
            RequestError::ReportNotReady { .. } => {
                Self::new(StatusCode::CONFLICT, "report_not_ready", err.to_string())
            }
            // Operators' refusals: the user API does not extend or retry, but says so if asked.
            RequestError::CannotExtend(reason) => {
                Self::new(StatusCode::CONFLICT, "cannot_extend", reason)
            }
            RequestError::CannotRetry(reason) => {
                Self::new(StatusCode::CONFLICT, "cannot_retry", reason)
            }
            RequestError::ExtensionNotTold { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                err.to_string(),
            ),
            RequestError::NotCertifiable(reason) => Self::new(
                StatusCode::CONFLICT,
                "certificate_not_available",
                reason.to_string(),
            ),
            RequestError::ReportExpired => {
                Self::new(StatusCode::GONE, "report_expired", err.to_string())
            }
            RequestError::IdempotencyKeyReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                err.to_string(),
            ),
            RequestError::Store(StoreError::Unavailable(reason)) => {
                let reason = dsr_domain::ports::chain(reason.as_ref());
                tracing::error!(%reason, "request store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is temporarily unavailable; retry shortly",
                )
            }
            RequestError::Store(corrupt @ StoreError::Corrupt { .. }) => {
                tracing::error!(error = %corrupt, "stored request unreadable");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the request could not be read; operators have been alerted",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests;
