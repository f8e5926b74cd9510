//! Collecting a subject's data from the sources in the service registry into a local staging
//! directory: records as NDJSON, files as files. Nothing is held in memory beyond one page or
//! one chunk, so a report's size is bounded by disk, not by the function's memory.

use base64::Engine;
use dsr_domain::registry::{AuthHeader, CollectFrom, RegisteredService};
use dsr_domain::SubjectId;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::collect_rabbitmq::{Kept, RabbitExports};
use crate::config::Env;
pub use dsr_domain::report::{Collected, SourceError, SourceQuery, StagedFile, StagedSource};

/// Clients for every kind of source, built once per function instance.
#[derive(Clone)]
pub struct Collectors {
    dynamodb: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
    http: crate::http::Client,
    /// Where the values of auth headers (`value_from_env`) are read: secrets.
    secrets: Env,
    /// The most of one HTTP answer (a source's records, one search page) that is read.
    pub max_answer_bytes: usize,
    /// Where exports over RabbitMQ go and are kept; `None`: sources of that kind fail.
    rabbit: Option<RabbitExports>,
}

/// One HTTP source answer or search page is at most this big; a source with more pages it.
pub const MAX_SOURCE_ANSWER_BYTES: usize = 32 << 20;

/// An S3 prefix for `subject`: the subject percent-encoded (a `/` in it cannot reach another
/// folder), into a template whose `{subject}` is followed by `/` (checked with the registry),
/// so that `alice` never lists `alice2`'s objects.
pub fn s3_prefix(template: &str, subject: &SubjectId) -> String {
    const KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'@')
        .remove(b'+');
    let encoded = percent_encoding::utf8_percent_encode(subject.as_str(), KEPT).to_string();
    // `.` and `..` are names S3 keeps literally, but tools that map keys to paths do not.
    let encoded = match encoded.as_str() {
        "." => "%2E".to_owned(),
        ".." => "%2E%2E".to_owned(),
        _ => encoded,
    };
    template.replace("{subject}", &encoded)
}

impl Collectors {
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, s3: aws_sdk_s3::Client, secrets: Env) -> Self {
        Self {
            dynamodb,
            s3,
            http: crate::http::Client::default(),
            secrets,
            max_answer_bytes: MAX_SOURCE_ANSWER_BYTES,
            rabbit: None,
        }
    }

    /// Sources of kind `rabbitmq` are asked through `exports`.
    pub fn with_rabbit_exports(mut self, exports: RabbitExports) -> Self {
        self.rabbit = Some(exports);
        self
    }

    /// Collects `service`'s data about `subject` into `dir` (which must exist), within
    /// `budget`; `job` is the asynchronous export it started earlier, if any.
    pub async fn collect(
        &self,
        service: &RegisteredService,
        how: &CollectFrom,
        query: SourceQuery<'_>,
        dir: &Path,
        budget: Duration,
    ) -> Result<Collected, SourceError> {
        match tokio::time::timeout(budget, self.collect_now(service, how, query, dir)).await {
            Ok(collected) => collected,
            Err(_) => Err(SourceError {
                service: service.name.clone(),
                reason: format!(
                    "did not finish within the invocation's {} s (a source this slow suits an asynchronous export)",
                    budget.as_secs()
                ),
            }),
        }
    }

    async fn collect_now(
        &self,
        service: &RegisteredService,
        how: &CollectFrom,
        query: SourceQuery<'_>,
        dir: &Path,
    ) -> Result<Collected, SourceError> {
        let (subject, job) = (query.subject, query.job);
        let fail = |reason: String| SourceError {
            service: service.name.clone(),
            reason,
        };
        let records_path = dir.join(format!("{}.ndjson", service.name));
        let mut records = RecordFile::create(&records_path).map_err(|e| fail(e.to_string()))?;
        let files = match how {
            CollectFrom::Dynamodb {
                table,
                key_attribute,
                index,
            } => {
                self.collect_dynamodb(
                    table,
                    key_attribute,
                    index.as_deref(),
                    subject,
                    &mut records,
                )
                .await
                .map_err(fail)?;
                Vec::new()
            }
            CollectFrom::Http {
                url,
                auth,
                timeout_ms,
                max_attempts,
                records_pointer,
            } => {
                let url = url.replace("{subject}", &url_encode(subject.as_str()));
                let body = self
                    .send(
                        || self.http.get().get(&url),
                        auth.as_ref(),
                        *timeout_ms,
                        *max_attempts,
                    )
                    .await
                    .map_err(fail)?;
                write_found(body, records_pointer.as_deref(), &mut records)
                    .map_err(|e| fail(e.to_string()))?;
                Vec::new()
            }
            CollectFrom::Export {
                start_url,
                status_url,
                result_url,
                job_pointer,
                status_pointer,
                records_pointer,
                auth,
                timeout_ms,
                poll_seconds,
            } => {
                let auth = auth.as_ref();
                let poll = |job: String| {
                    Ok(Collected::Exporting {
                        job,
                        poll_after: Duration::from_secs(*poll_seconds),
                    })
                };
                let Some(job) = job else {
                    let url = start_url.replace("{subject}", &url_encode(subject.as_str()));
                    let answer = self
                        .send(|| self.http.get().post(&url), auth, *timeout_ms, 4)
                        .await
                        .map_err(fail)?
                        .ok_or_else(|| fail("starting the export: HTTP 404".into()))?;
                    let job = match answer.pointer(job_pointer) {
                        Some(Value::String(job)) => job.clone(),
                        Some(Value::Number(job)) => job.to_string(),
                        _ => {
                            return Err(fail(format!(
                                "the export's answer has no job id at {job_pointer}"
                            )))
                        }
                    };
                    // Stored with the request and put into URLs: a vendor's id, not trusted.
                    if job.is_empty()
                        || job.len() > 200
                        || !job.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(fail(
                            "the export's job id is not 1-200 printable characters".into(),
                        ));
                    }
                    return poll(job);
                };
                let at = |template: &str| template.replace("{job}", &url_encode(job));
                let status_url = at(status_url);
                let status = self
                    .send(|| self.http.get().get(&status_url), auth, *timeout_ms, 4)
                    .await
                    .map_err(fail)?
                    .ok_or_else(|| {
                        fail("the export job is gone (HTTP 404); starting again".into())
                    })?;
                match status.pointer(status_pointer).and_then(Value::as_str) {
                    Some("done") => {}
                    Some("failed") => return Err(fail("the export job failed".into())),
                    _ => return poll(job.to_owned()),
                }
                let result_url = at(result_url);
                let body = self
                    .send(|| self.http.get().get(&result_url), auth, *timeout_ms, 4)
                    .await
                    .map_err(fail)?;
                write_found(body, records_pointer.as_deref(), &mut records)
                    .map_err(|e| fail(e.to_string()))?;
                Vec::new()
            }
            CollectFrom::Search {
                url,
                field,
                sort,
                page_size,
                auth,
                timeout_ms,
            } => {
                self.collect_search(
                    url,
                    field,
                    sort,
                    *page_size,
                    auth.as_ref(),
                    *timeout_ms,
                    subject,
                    &mut records,
                )
                .await
                .map_err(fail)?;
                Vec::new()
            }
            CollectFrom::Rabbitmq {
                routing_key,
                answer_within_seconds,
                poll_seconds,
            } => {
                let exports = self
                    .rabbit
                    .as_ref()
                    .ok_or_else(|| fail("exports over RabbitMQ are not configured here".into()))?;
                let answer_within = Duration::from_secs(*answer_within_seconds);
                let Some(job) = job else {
                    let job = exports
                        .send_command(&service.name, routing_key, query, answer_within)
                        .await
                        .map_err(fail)?;
                    return Ok(Collected::Exporting {
                        job,
                        poll_after: Duration::from_secs(*poll_seconds).min(answer_within),
                    });
                };
                match exports
                    .kept(query, &service.name, job, |record| records.push(record))
                    .await
                    .map_err(fail)?
                {
                    Kept::Records => {}
                    Kept::Failed(reason) => {
                        return Err(fail(format!("the service could not export: {reason}")))
                    }
                    Kept::Nothing => {
                        let answer_by = dsr_domain::report::export::sent_at(job).map(|at| {
                            at + chrono::Duration::seconds(*answer_within_seconds as i64)
                        });
                        let left = answer_by
                            .map(|by| by - chrono::Utc::now())
                            .and_then(|left| left.to_std().ok());
                        return match left {
                            Some(left) if !left.is_zero() => Ok(Collected::Exporting {
                                job: job.to_owned(),
                                // Looked for again at the poll, or just after the answer was due.
                                poll_after: Duration::from_secs(*poll_seconds)
                                    .min(left + Duration::from_secs(1)),
                            }),
                            _ => Err(fail(format!(
                                "no answer to export_subject within {answer_within_seconds} s"
                            ))),
                        };
                    }
                }
                Vec::new()
            }
            CollectFrom::S3 { bucket, prefix } => {
                let prefix = s3_prefix(prefix, subject);
                let files_dir = dir.join(format!("{}.files", service.name));
                std::fs::create_dir_all(&files_dir).map_err(|e| fail(e.to_string()))?;
                self.collect_s3(bucket, &prefix, &files_dir, &mut records)
                    .await
                    .map_err(fail)?
            }
        };
        let record_count = records.finish().map_err(|e| fail(e.to_string()))?;
        Ok(Collected::Staged(StagedSource {
            name: service.name.clone(),
            description: service.description.clone(),
            records: records_path,
            record_count,
            files,
            not_applicable: None,
        }))
    }

    async fn collect_dynamodb(
        &self,
        table: &str,
        key_attribute: &str,
        index: Option<&str>,
        subject: &SubjectId,
        records: &mut RecordFile,
    ) -> Result<(), String> {
        use aws_sdk_dynamodb::types::AttributeValue;
        let mut start = None;
        loop {
            let page = self
                .dynamodb
                .query()
                .table_name(table)
                .set_index_name(index.map(str::to_owned))
                .key_condition_expression("#k = :subject")
                .expression_attribute_names("#k", key_attribute)
                .expression_attribute_values(":subject", AttributeValue::S(subject.as_str().into()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
            for item in page.items() {
                let record = Value::Object(
                    item.iter()
                        .map(|(k, v)| (k.clone(), attribute_to_json(v)))
                        .collect(),
                );
                records.push(&record).map_err(|e| e.to_string())?;
            }
            match page.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(()),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn collect_search(
        &self,
        url: &str,
        field: &str,
        sort: &[String],
        page_size: u32,
        auth: Option<&AuthHeader>,
        timeout_ms: u64,
        subject: &SubjectId,
        records: &mut RecordFile,
    ) -> Result<(), String> {
        let endpoint = format!("{}/_search", url.trim_end_matches('/'));
        let sort_spec: Vec<Value> = sort.iter().map(|f| json!({ f.as_str(): "asc" })).collect();
        let mut after: Option<Value> = None;
        loop {
            let mut query = json!({
                "size": page_size,
                "query": {"term": {field: subject.as_str()}},
                "sort": sort_spec,
            });
            if let Some(after) = &after {
                query["search_after"] = after.clone();
            }
            let body = self
                .send(
                    || self.http.get().post(&endpoint).json(&query),
                    auth,
                    timeout_ms,
                    4,
                )
                .await?
                .ok_or("the search index does not exist")?;
            let hits = body["hits"]["hits"]
                .as_array()
                .ok_or("the search response has no hits.hits")?;
            for hit in hits {
                records
                    .push(hit.get("_source").unwrap_or(&Value::Null))
                    .map_err(|e| e.to_string())?;
            }
            if hits.len() < page_size as usize {
                return Ok(());
            }
            after = Some(
                hits.last()
                    .and_then(|h| h.get("sort"))
                    .cloned()
                    .ok_or("a full page of hits without sort values; cannot page on")?,
            );
        }
    }

    async fn collect_s3(
        &self,
        bucket: &str,
        prefix: &str,
        files_dir: &Path,
        records: &mut RecordFile,
    ) -> Result<Vec<StagedFile>, String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let mut files = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let name = key.trim_start_matches(prefix).trim_start_matches('/');
                if name.is_empty() || name.split('/').any(|part| part == "..") {
                    continue;
                }
                let path = files_dir.join(format!("{}", files.len()));
                let mut out = tokio::fs::File::create(&path).await.map_err(|e| err(&e))?;
                let mut body = self
                    .s3
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())?
                    .body;
                let mut size = 0u64;
                while let Some(chunk) = body.try_next().await.map_err(|e| err(&e))? {
                    size += chunk.len() as u64;
                    tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                        .await
                        .map_err(|e| err(&e))?;
                }
                tokio::io::AsyncWriteExt::flush(&mut out)
                    .await
                    .map_err(|e| err(&e))?;
                records
                    .push(&json!({
                        "file": name,
                        "size": size,
                        "last_modified": object.last_modified().map(|t| t.to_string()),
                    }))
                    .map_err(|e| err(&e))?;
                files.push(StagedFile {
                    name: name.to_owned(),
                    path,
                    size,
                });
            }
        }
        Ok(files)
    }

    /// Sends with a timeout, retrying transport errors, 429 and 5xx with exponential backoff
    /// (honouring `Retry-After`). `Ok(None)` is a 404: the source knows nothing of the subject.
    async fn send(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
        auth: Option<&AuthHeader>,
        timeout_ms: u64,
        max_attempts: u32,
    ) -> Result<Option<Value>, String> {
        let auth = match auth {
            Some(a) => Some((
                a.header.clone(),
                self.secrets
                    .optional_secret(&a.value_from_env)
                    .ok_or_else(|| format!("auth header value {} is not set", a.value_from_env))?,
            )),
            None => None,
        };
        let mut last_problem = String::new();
        for attempt in 1..=max_attempts.max(1) {
            let mut builder = request().timeout(Duration::from_millis(timeout_ms));
            if let Some((name, value)) = &auth {
                builder = builder.header(name.as_str(), value.expose());
            }
            let mut wait = Duration::from_millis(100 * 2u64.pow(attempt.min(6)));
            match builder.send().await {
                Ok(response) if response.status().is_success() => {
                    let cap = self.max_answer_bytes;
                    let body = crate::http::read_capped(response, cap)
                        .await
                        .map_err(|e| format!("reading the answer: {}", e.without_url()))?;
                    if body.truncated {
                        return Err(format!(
                            "the answer is larger than {} (the most one answer may be); the source must page its records",
                            crate::http::describe_size(cap)
                        ));
                    }
                    return serde_json::from_slice::<Value>(&body.bytes)
                        .map(Some)
                        .map_err(|e| format!("the response is not JSON: {e}"));
                }
                Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {
                    return Ok(None);
                }
                Ok(response)
                    if response.status().is_server_error()
                        || response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS =>
                {
                    if let Some(seconds) = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        wait = Duration::from_secs(seconds.min(10));
                    }
                    last_problem = format!("HTTP {}", response.status());
                }
                Ok(response) => return Err(format!("HTTP {}", response.status())),
                // The URL holds the subject id, which must not reach logs or `last_error`.
                Err(err) => last_problem = format!("{}", err.without_url()),
            }
            if attempt < max_attempts {
                tokio::time::sleep(wait).await;
            }
        }
        Err(format!("{last_problem} after {max_attempts} attempts"))
    }
}

/// The records of an HTTP answer: an array, or one record, at `pointer` or at the top; a 404
/// (`None`) or nothing there is no record.
fn write_found(
    body: Option<Value>,
    pointer: Option<&str>,
    records: &mut RecordFile,
) -> std::io::Result<()> {
    let found = match (body, pointer) {
        (None, _) => Value::Null,
        (Some(body), Some(pointer)) => body.pointer(pointer).cloned().unwrap_or(Value::Null),
        (Some(body), None) => body,
    };
    match found {
        Value::Null => Ok(()),
        Value::Array(items) => items.iter().try_for_each(|item| records.push(item)),
        single => records.push(&single),
    }
}

/// An NDJSON file of records, counted as they are written.
struct RecordFile {
    out: std::io::BufWriter<std::fs::File>,
    count: u64,
}

impl RecordFile {
    fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            out: std::io::BufWriter::new(std::fs::File::create(path)?),
            count: 0,
        })
    }

    fn push(&mut self, record: &Value) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<u64> {
        self.out.flush()?;
        Ok(self.count)
    }
}

/// DynamoDB's typed values as plain JSON: numbers as numbers, sets as arrays, binary as base64.
pub fn attribute_to_json(value: &aws_sdk_dynamodb::types::AttributeValue) -> Value {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    let number = |raw: &str| {
        serde_json::from_str::<serde_json::Number>(raw)
            .map(Value::Number)
            .unwrap_or_else(|_| Value::String(raw.to_owned()))
    };
    let b64 = |b: &aws_sdk_dynamodb::primitives::Blob| {
        Value::String(base64::engine::general_purpose::STANDARD.encode(b.as_ref()))
    };
    match value {
        A::S(s) => Value::String(s.clone()),
        A::N(n) => number(n),
        A::Bool(b) => Value::Bool(*b),
        A::Null(_) => Value::Null,
        A::B(b) => b64(b),
        A::Ss(items) => Value::Array(items.iter().cloned().map(Value::String).collect()),
        A::Ns(items) => Value::Array(items.iter().map(|n| number(n)).collect()),
        A::Bs(items) => Value::Array(items.iter().map(b64).collect()),
        A::L(items) => Value::Array(items.iter().map(attribute_to_json).collect()),
        A::M(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), attribute_to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        _ => Value::Null,
    }
}

fn url_encode(raw: &str) -> String {
    percent_encoding::utf8_percent_encode(raw, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl dsr_domain::report::ReportSources for Collectors {
    async fn collect(
        &self,
        service: &RegisteredService,
        how: &CollectFrom,
        query: SourceQuery<'_>,
        dir: &Path,
        budget: Duration,
    ) -> Result<Collected, SourceError> {
        Collectors::collect(self, service, how, query, dir, budget).await
    }

    async fn record_answer(
        &self,
        answer: &dsr_domain::report::export::ExportAnswer,
    ) -> Result<(), dsr_domain::report::StorageError> {
        match &self.rabbit {
            Some(exports) => exports.record(answer).await,
            None => Err(dsr_domain::report::StorageError(
                "exports over RabbitMQ are not configured here".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_stays_inside_its_own_folder() {
        let subject = |s: &str| SubjectId::parse(s).unwrap();
        assert_eq!(
            s3_prefix("u/{subject}/", &subject("alice@example.com")),
            "u/alice@example.com/"
        );
        assert_eq!(
            s3_prefix("u/{subject}/", &subject("acme/bob")),
            "u/acme%2Fbob/"
        );
        assert_eq!(s3_prefix("u/{subject}/", &subject("..")), "u/%2E%2E/");
        assert_eq!(
            s3_prefix("u/{subject}/", &subject("a b?c#d")),
            "u/a%20b%3Fc%23d/"
        );
    }
}
