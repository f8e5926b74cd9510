//! Every AWS call the hosted functions make, by function and operation, with what AWS bills it
//! by: the SDK's HTTP client wrapped, each call attributed to the function whose invocation
//! made it (the task-local name `metric_check` runs every invocation under). What a data
//! subject request costs is read from here (`calls::what_a_dsr_costs`, `make bench`).

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Calls of one operation by one function, and the billed units in them: the items of a
/// DynamoDB transaction or batch (each billed on its own, a transaction's at twice the rate),
/// the 64 KiB chunks of an SQS message (each chunk is billed as a request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub calls: u64,
    pub units: u64,
}

/// `(function, operation)` → tally; the function is `-` for calls outside any invocation (the
/// local stack's own provisioning and polling).
pub type Calls = BTreeMap<(String, String), Tally>;

/// The calls counted through one wrapped client.
#[derive(Debug, Clone, Default)]
pub struct CallCounter {
    calls: Arc<Mutex<Calls>>,
}

impl CallCounter {
    /// `inner`, counting every call it makes here.
    pub fn wrap(&self, inner: SharedHttpClient) -> SharedHttpClient {
        SharedHttpClient::new(Counting {
            inner,
            counter: self.clone(),
        })
    }

    /// What was counted so far.
    pub fn snapshot(&self) -> Calls {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets what was counted so far.
    pub fn reset(&self) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn count(&self, request: &HttpRequest) {
        let function = crate::metric_check::current().unwrap_or("-").to_owned();
        let (operation, units) = operation(request);
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let tally = calls.entry((function, operation)).or_default();
        tally.calls += 1;
        tally.units += units;
    }
}

#[derive(Debug)]
struct Counting {
    inner: SharedHttpClient,
    counter: CallCounter,
}

impl HttpClient for Counting {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(CountingConnector {
            inner: self.inner.http_connector(settings, components),
            counter: self.counter.clone(),
        })
    }
}

#[derive(Debug)]
struct CountingConnector {
    inner: SharedHttpConnector,
    counter: CallCounter,
}

impl HttpConnector for CountingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        self.counter.count(&request);
        self.inner.call(request)
    }
}

/// `Service.Operation` and its billed units. JSON protocols name the operation in
/// `x-amz-target`; S3 and the scheduler's REST calls are told by method, path and query.
fn operation(request: &HttpRequest) -> (String, u64) {
    let body = request.body().bytes().unwrap_or_default();
    let name = operation_name(
        request.headers().get("x-amz-target"),
        request.headers().get("authorization").unwrap_or_default(),
        request.method(),
        request.uri(),
    );
    let units = match name.as_str() {
        "DynamoDB.TransactWriteItems" | "DynamoDB.TransactGetItems" => {
            json_len(body, "/TransactItems")
        }
        "DynamoDB.BatchWriteItem" | "DynamoDB.BatchGetItem" => {
            json_object_lens(body, "/RequestItems")
        }
        "SQS.SendMessage" => chunks_of_64_kib(body.len()),
        "SQS.SendMessageBatch" => json_len(body, "/Entries").max(1),
        _ => 1,
    };
    (name, units)
}

/// The operation a call is, from what any HTTP stack sees of it (the SDK's client here, the
/// fault proxy's server): the JSON protocols name it in `X-Amz-Target`
/// (`DynamoDB_20120810.TransactWriteItems` → `DynamoDB.TransactWriteItems`,
/// `AmazonSQS.SendMessage` → `SQS.SendMessage`); the REST services (S3, the scheduler) are
/// told by the service the call was signed for, the method, the path and the query.
pub fn operation_name(
    target: Option<&str>,
    authorization: &str,
    method: &str,
    uri: &str,
) -> String {
    if let Some((service, action)) = target.and_then(|t| t.split_once('.')) {
        let service = match service {
            s if s.starts_with("DynamoDB") => "DynamoDB",
            "AmazonSQS" => "SQS",
            "AmazonSSM" => "SSM",
            other => other,
        };
        return format!("{service}.{action}");
    }
    // Past the authority, if the URI has one: only the path and query tell an S3 call apart.
    let uri = uri.split_once("://").map_or(uri, |(_, rest)| {
        rest.find('/').map_or("/", |at| &rest[at..])
    });
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let has = |key: &str| {
        query
            .split('&')
            .any(|p| p == key || p.starts_with(&format!("{key}=")))
    };
    // `Credential=<key>/<date>/<region>/<service>/aws4_request` in the signature.
    let signed_for = authorization
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split('/').nth(3))
        .unwrap_or_default();
    let action = match (signed_for, method) {
        ("scheduler", "POST") => "Scheduler.CreateSchedule",
        ("scheduler", "PUT") => "Scheduler.UpdateSchedule",
        ("scheduler", "DELETE") => "Scheduler.DeleteSchedule",
        ("scheduler", _) => "Scheduler.GetSchedule",
        ("s3" | "", method) => {
            // An object's path has a key after the bucket (path style, as the emulator is reached).
            let object = path.trim_start_matches('/').contains('/');
            match method {
                "PUT" if has("partNumber") => "S3.UploadPart",
                "PUT" => "S3.PutObject",
                "POST" if has("uploads") => "S3.CreateMultipartUpload",
                "POST" if has("uploadId") => "S3.CompleteMultipartUpload",
                "POST" if has("delete") => "S3.DeleteObjects",
                "DELETE" if has("uploadId") => "S3.AbortMultipartUpload",
                "DELETE" => "S3.DeleteObject",
                "HEAD" => "S3.HeadObject",
                "GET" if has("uploads") => "S3.ListMultipartUploads",
                "GET" if has("uploadId") => "S3.ListParts",
                "GET" if object => "S3.GetObject",
                "GET" => "S3.ListObjectsV2",
                _ => "S3.Other",
            }
        }
        (other, method) => return format!("{other}.{method}"),
    };
    action.to_owned()
}

fn json_len(body: &[u8], pointer: &str) -> u64 {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer(pointer).and_then(|a| a.as_array()).map(Vec::len))
        .unwrap_or(1) as u64
}

fn json_object_lens(body: &[u8], pointer: &str) -> u64 {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer(pointer)
                .and_then(|o| o.as_object())
                .map(|tables| {
                    tables
                        .values()
                        .map(|t| {
                            t.as_array()
                                .map(Vec::len)
                                .or_else(|| t["Keys"].as_array().map(Vec::len))
                                .unwrap_or(1)
                        })
                        .sum::<usize>()
                })
        })
        .unwrap_or(1) as u64
}

fn chunks_of_64_kib(bytes: usize) -> u64 {
    (bytes.max(1) as u64).div_ceil(64 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::body::SdkBody;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> HttpRequest {
        let mut builder = http_1x::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        HttpRequest::try_from(builder.body(SdkBody::from(body.to_owned())).unwrap()).unwrap()
    }

    #[test]
    fn operations_and_their_billed_units_are_told_from_the_request() {
        let transaction = request(
            "POST",
            "http://127.0.0.1:4566/",
            &[("x-amz-target", "DynamoDB_20120810.TransactWriteItems")],
            r#"{"TransactItems":[{"Put":{}},{"Put":{}},{"ConditionCheck":{}}]}"#,
        );
        assert_eq!(
            operation(&transaction),
            ("DynamoDB.TransactWriteItems".to_owned(), 3)
        );
        let big = "x".repeat(100 * 1024);
        let send = request(
            "POST",
            "http://127.0.0.1:4566/",
            &[("x-amz-target", "AmazonSQS.SendMessage")],
            &big,
        );
        assert_eq!(operation(&send), ("SQS.SendMessage".to_owned(), 2));
        let signed = |service: &str| {
            format!("AWS4-HMAC-SHA256 Credential=test/20261130/us-east-1/{service}/aws4_request")
        };
        let s3 = signed("s3");
        for (method, uri, expected) in [
            ("PUT", "/bucket/reports/a/report.zip", "S3.PutObject"),
            ("PUT", "/bucket/k?partNumber=2&uploadId=x", "S3.UploadPart"),
            ("POST", "/bucket/k?uploads", "S3.CreateMultipartUpload"),
            ("GET", "/bucket/reports/a/report.zip", "S3.GetObject"),
            (
                "GET",
                "/bucket?list-type=2&prefix=reports/",
                "S3.ListObjectsV2",
            ),
            ("DELETE", "/bucket/k", "S3.DeleteObject"),
        ] {
            let r = request(method, uri, &[("authorization", &s3)], "");
            assert_eq!(operation(&r).0, expected, "{method} {uri}");
        }
        let schedule = request(
            "POST",
            "/schedules/due-1",
            &[("authorization", &signed("scheduler"))],
            "{}",
        );
        assert_eq!(operation(&schedule).0, "Scheduler.CreateSchedule");
    }
}
