//! Plays API Gateway (HTTP API, payload format 2.0) on a local port: authorizes the bearer
//! token, builds the same event Lambda would receive, and calls the same handler code.

use crate::jwt::JwtAuthorizer;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use futures::future::BoxFuture;
use lambda_http::Body;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// API Gateway's own payload limit; the handler enforces its much smaller one.
const GATEWAY_MAX_BODY: usize = 10 * 1024 * 1024;

pub type HttpFunction = Arc<
    dyn Fn(
            lambda_http::Request,
        ) -> BoxFuture<'static, Result<lambda_http::Response<Body>, lambda_http::Error>>
        + Send
        + Sync,
>;

/// The user API's public route (`Auth: { Authorizer: NONE }` in the template).
pub const PUBLIC_KEY_ROUTE: &str = "/v1/certificate-keys";

/// The operator scope the operations page's routes require (`dsr_ops_page::OPERATOR_SCOPE`).
pub const OPERATOR_SCOPE: &str = "dsr/operate";

/// The user API, and the operations page under `/ops` when given. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`: the page trusts loopback callers.
pub fn router(
    function: HttpFunction,
    ops: Option<HttpFunction>,
    authorizer: JwtAuthorizer,
) -> Router {
    Router::new().fallback(move |request: axum::extract::Request| {
        let function = function.clone();
        let ops = ops.clone();
        let authorizer = authorizer.clone();
        async move {
            let path = request.uri().path();
            match ops {
                Some(ops) if path == "/ops" || path.starts_with("/ops/") => {
                    operations(ops, authorizer, request).await
                }
                _ => gateway(function, authorizer, request).await,
            }
        }
    })
}

/// The operations page's routes, as the template declares them: the shell without a token;
/// the numbers with a token carrying the operator scope, or, here only, from loopback (the
/// person at this machine runs the stack).
async fn operations(
    function: HttpFunction,
    authorizer: JwtAuthorizer,
    request: axum::extract::Request,
) -> Response {
    let path = request.uri().path().to_owned();
    let loopback = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|peer| peer.0.ip().is_loopback());
    let public = path == "/ops" || path == "/ops/" || path == "/ops/shell.js";
    let (parts, body) = request.into_parts();
    let (body, authorization) = match read(&parts, body).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let authorization = authorization.as_deref();
    let authorized = if public {
        Err(String::new())
    } else {
        authorizer.authorize(authorization)
    };
    let (claims, scopes) = match ops_access(public, authorized, loopback) {
        OpsAccess::Allowed { claims, scopes } => (claims, scopes),
        OpsAccess::Refused(status, code, reason) => return error(status, code, &reason),
    };
    call(function, &parts, &body, claims, scopes).await
}

/// The operator at this machine, as the operations page names them without a token.
pub const LOCAL_OPERATOR: &str = "operator@localhost";

/// Who may see what under `/ops`.
#[derive(Debug, PartialEq)]
enum OpsAccess {
    Allowed {
        claims: HashMap<String, String>,
        scopes: Option<Vec<String>>,
    },
    Refused(StatusCode, &'static str, String),
}

/// The shell is public; the numbers need the operator scope in a valid token, or a loopback
/// caller (the local stack's operator is the person at this machine).
fn ops_access(
    public: bool,
    authorized: Result<HashMap<String, String>, String>,
    loopback: bool,
) -> OpsAccess {
    if public {
        return OpsAccess::Allowed {
            claims: HashMap::new(),
            scopes: None,
        };
    }
    match authorized {
        Ok(claims) => {
            let mut scopes: Vec<String> = claims
                .get("scope")
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default();
            if loopback && !scopes.iter().any(|s| s == OPERATOR_SCOPE) {
                scopes.push(OPERATOR_SCOPE.to_owned());
            }
            if !scopes.iter().any(|s| s == OPERATOR_SCOPE) {
                return OpsAccess::Refused(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the token does not carry the operator scope (dsr/operate)".into(),
                );
            }
            OpsAccess::Allowed {
                claims,
                scopes: Some(scopes),
            }
        }
        // Named in the audit trail of what they do (a resend, a resolution).
        Err(_) if loopback => OpsAccess::Allowed {
            claims: HashMap::from([("sub".to_owned(), LOCAL_OPERATOR.to_owned())]),
            scopes: Some(vec![OPERATOR_SCOPE.to_owned()]),
        },
        Err(reason) => OpsAccess::Refused(StatusCode::UNAUTHORIZED, "unauthorized", reason),
    }
}

/// The body (up to API Gateway's limit) and the `Authorization` header of a request.
async fn read(
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
) -> Result<(Bytes, Option<String>), Response> {
    let Ok(body) = axum::body::to_bytes(body, GATEWAY_MAX_BODY).await else {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body over 10 MB",
        ));
    };
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((body, authorization))
}

async fn gateway(
    function: HttpFunction,
    authorizer: JwtAuthorizer,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let (body, authorization) = match read(&parts, body).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let authorization = authorization.as_deref();
    // The template's one route without the authorizer: the key certificates are checked with.
    if parts.uri.path() == PUBLIC_KEY_ROUTE {
        return call(function, &parts, &body, HashMap::new(), None).await;
    }
    let claims = match authorizer.authorize(authorization) {
        Ok(claims) => claims,
        Err(reason) => {
            let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", &reason);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            return response;
        }
    };
    call(function, &parts, &body, claims, None).await
}

/// Builds the Lambda event and answers with what the function answered.
async fn call(
    function: HttpFunction,
    parts: &axum::http::request::Parts,
    body: &[u8],
    claims: HashMap<String, String>,
    scopes: Option<Vec<String>>,
) -> Response {
    let event = event(parts, body, claims, scopes);
    let request = match lambda_http::request::from_str(&event.to_string()) {
        Ok(request) => request,
        Err(err) => {
            tracing::error!(error = %err, "could not build the Lambda event");
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "request not representable",
            );
        }
    };
    match function(request).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let bytes = match body {
                Body::Empty => Bytes::new(),
                Body::Text(text) => Bytes::from(text),
                Body::Binary(binary) => Bytes::from(binary),
                _ => Bytes::new(),
            };
            (parts.status, parts.headers, bytes).into_response()
        }
        // What API Gateway answers when the function itself fails.
        Err(err) => {
            tracing::error!(error = %err, "function error");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"message": "Internal Server Error"})),
            )
                .into_response()
        }
    }
}

/// The API Gateway v2 event for this request, as AWS documents it.
fn event(
    parts: &axum::http::request::Parts,
    body: &[u8],
    claims: HashMap<String, String>,
    scopes: Option<Vec<String>>,
) -> Value {
    let (text, base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let now = chrono::Utc::now();
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or_default();
    let mut query_parameters: HashMap<String, String> = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query_parameters
            .entry(k.to_owned())
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(v);
            })
            .or_insert_with(|| v.to_owned());
    }
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers(&parts.headers),
        "queryStringParameters": query_parameters,
        "requestContext": {
            "accountId": crate::provision::DEFAULT_ACCOUNT_ID,
            "apiId": "local",
            "authorizer": { "jwt": { "claims": claims, "scopes": scopes } },
            "domainName": "127.0.0.1",
            "domainPrefix": "local",
            "http": {
                "method": parts.method.as_str(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default(),
            },
            "requestId": ulid::Ulid::new().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
            "timeEpoch": now.timestamp_millis(),
        },
        "body": text,
        "isBase64Encoded": base64,
    })
}

/// Header names lower-cased, repeated headers comma-joined, as API Gateway v2 does.
fn headers(headers: &HeaderMap) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_owned())
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// The service's error body. In AWS, the authorizer's own 401 is `{"message":"Unauthorized"}`;
/// locally it says why, which is what a developer wants.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scope: Option<&str>) -> Result<HashMap<String, String>, String> {
        let mut claims = HashMap::from([("sub".to_owned(), "someone".to_owned())]);
        if let Some(scope) = scope {
            claims.insert("scope".into(), scope.into());
        }
        Ok(claims)
    }

    fn allowed(access: &OpsAccess) -> bool {
        matches!(access, OpsAccess::Allowed { scopes: Some(s), .. } if s.iter().any(|s| s == OPERATOR_SCOPE))
    }

    #[test]
    fn away_from_loopback_the_numbers_need_a_token_with_the_operator_scope() {
        let no_token = Err("no bearer token".to_owned());
        assert!(matches!(
            ops_access(false, no_token.clone(), false),
            OpsAccess::Refused(StatusCode::UNAUTHORIZED, ..)
        ));
        assert!(matches!(
            ops_access(false, token(None), false),
            OpsAccess::Refused(StatusCode::FORBIDDEN, ..)
        ));
        assert!(matches!(
            ops_access(false, token(Some("dsr/read profile")), false),
            OpsAccess::Refused(StatusCode::FORBIDDEN, ..)
        ));
        assert!(allowed(&ops_access(
            false,
            token(Some("profile dsr/operate")),
            false
        )));
        // The local operator at this machine, with or without a token.
        assert!(allowed(&ops_access(false, no_token.clone(), true)));
        assert!(allowed(&ops_access(false, token(None), true)));
        // The shell carries no data: anyone, no scopes handed on.
        assert_eq!(
            ops_access(true, no_token, false),
            OpsAccess::Allowed {
                claims: HashMap::new(),
                scopes: None
            }
        );
    }
}
