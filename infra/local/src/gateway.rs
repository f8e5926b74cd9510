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

pub fn router(function: HttpFunction, authorizer: JwtAuthorizer) -> Router {
    Router::new().fallback(move |request: axum::extract::Request| {
        let function = function.clone();
        let authorizer = authorizer.clone();
        async move { gateway(function, authorizer, request).await }
    })
}

async fn gateway(
    function: HttpFunction,
    authorizer: JwtAuthorizer,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, GATEWAY_MAX_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body over 10 MB",
        );
    };
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
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
    let event = event(&parts, &body, claims);
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
            "authorizer": { "jwt": { "claims": claims, "scopes": null } },
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
