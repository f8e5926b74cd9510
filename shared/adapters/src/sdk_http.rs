//! The AWS SDK's calls over reqwest, the HTTP client a function that calls HTTP sources and
//! vendors already links: one HTTP stack in the binary instead of two. The SDK's own client
//! (hyper with HTTP/2, its connector and TLS glue) is about a quarter of a megabyte of each
//! function's binary; the report function, the largest, needs the room (docs/performance.md).
//!
//! The SDK signs, retries, times out and classifies; this only carries one request and its
//! answer. Transport failures are told apart as the SDK's retry strategy needs them: a timeout,
//! an I/O error (both retried), or anything else.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;

/// How long an answer's status and headers may take (bodies then stream under the client's
/// read timeout).
const HEAD_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// An SDK HTTP client on `client`.
pub fn sdk_client(client: reqwest::Client) -> SharedHttpClient {
    SharedHttpClient::new(ReqwestSdkClient(client))
}

#[derive(Debug, Clone)]
struct ReqwestSdkClient(reqwest::Client);

impl HttpClient for ReqwestSdkClient {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // The connect timeout is the reqwest client's; the SDK bounds every attempt itself.
        SharedHttpConnector::new(Connector(self.0.clone()))
    }
}

#[derive(Debug)]
struct Connector(reqwest::Client);

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.0.clone();
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::other(e.into(), None))?;
            let (parts, body) = request.into_parts();
            // The functions' request bodies are in memory (JSON, an upload's part); a streamed
            // one is read first.
            let bytes = match body.bytes() {
                Some(bytes) => bytes::Bytes::copy_from_slice(bytes),
                None => http_body_util::BodyExt::collect(body)
                    .await
                    .map_err(ConnectorError::io)?
                    .to_bytes(),
            };
            let mut headers = parts.headers;
            // The body goes whole, with its own length.
            headers.remove(http::header::TRANSFER_ENCODING);
            headers.remove(http::header::CONTENT_LENGTH);
            let sent = client
                .request(parts.method, parts.uri.to_string())
                .headers(headers)
                .body(bytes)
                .send();
            // Until the answer's head: a connection that takes the request and never answers
            // fails this attempt, and the SDK tries again.
            let response = tokio::time::timeout(HEAD_WITHIN, sent)
                .await
                .map_err(|elapsed| ConnectorError::timeout(elapsed.into()))?
                .map_err(classify)?;
            let response: http::Response<reqwest::Body> = response.into();
            let (parts, body) = response.into_parts();
            HttpResponse::try_from(http::Response::from_parts(
                parts,
                SdkBody::from_body_1_x(body),
            ))
            .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// A failure before an answer, as the SDK's retry strategy reads it.
fn classify(err: reqwest::Error) -> ConnectorError {
    if err.is_timeout() {
        ConnectorError::timeout(err.into())
    } else if err.is_connect() || err.is_request() || err.is_body() {
        ConnectorError::io(err.into())
    } else {
        ConnectorError::other(err.into(), None)
    }
}
