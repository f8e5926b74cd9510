//! Exports over RabbitMQ, the report side (`dsr_domain::report::export`): the command goes out
//! through the outbound queue (the bridge publishes it), with a presigned URL for the upload;
//! the answer is kept in the reports bucket, where the collection reads it.

use dsr_domain::report::export::{
    answer_key, failure_key, ExportAnswer, ExportCommand, ExportOutcome,
};
use dsr_domain::report::{SourceQuery, StorageError};
use dsr_domain::ServiceName;
use serde_json::Value;
use std::time::Duration;

/// The most a holder may upload for one subject; past it the attempt fails.
pub const MAX_UPLOAD_BYTES: i64 = 2 << 30;

/// Where exports over RabbitMQ are sent and kept.
#[derive(Clone, Debug)]
pub struct RabbitExports {
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub outbound_queue_url: String,
    pub commands_exchange: String,
    pub bucket: String,
}

/// What the reports bucket holds for a job.
pub enum Kept {
    /// The records, one JSON value per line, written to the source's records file.
    Records,
    /// The holder said it could not export.
    Failed(String),
    /// Nothing yet.
    Nothing,
}

impl RabbitExports {
    /// Sends `export_subject` for `query`'s subject to `service`: a new job, an upload URL
    /// good for `answer_within`. Returns the job id.
    pub async fn send_command(
        &self,
        service: &ServiceName,
        routing_key: &str,
        query: SourceQuery<'_>,
        answer_within: Duration,
    ) -> Result<String, String> {
        let job = ulid::Ulid::new().to_string();
        let sent_at = chrono::Utc::now();
        let answer_by = sent_at + chrono::Duration::from_std(answer_within).unwrap_or_default();
        let presigning = aws_sdk_s3::presigning::PresigningConfig::expires_in(answer_within)
            .map_err(|e| format!("presigning the upload URL: {e}"))?;
        let upload_url = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(answer_key(query.request, service, &job))
            .presigned(presigning)
            .await
            .map_err(|e| format!("presigning the upload URL: {e}"))?
            .uri()
            .to_owned();
        let command = ExportCommand {
            version: ExportCommand::VERSION,
            command_type: ExportCommand::KIND.into(),
            message_id: format!("export:{}:{service}:{job}", query.request),
            request_id: query.request,
            service: service.clone(),
            subject: query.subject.clone(),
            identifiers: query.identifiers.clone(),
            job: job.clone(),
            upload_url,
            answer_by,
            sent_at,
        };
        let envelope = serde_json::json!({
            "version": 1,
            "message_id": command.message_id,
            "exchange": self.commands_exchange,
            "routing_key": routing_key,
            "payload": command,
        });
        let message_id = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(&command.message_id)
            .build()
            .map_err(|e| e.to_string())?;
        self.sqs
            .send_message()
            .queue_url(&self.outbound_queue_url)
            .message_body(envelope.to_string())
            .message_attributes("message_id", message_id)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "sending export_subject: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            })?;
        Ok(job)
    }

    /// What is kept for `job`: its records are written through `push` as they are read.
    pub async fn kept(
        &self,
        query: SourceQuery<'_>,
        service: &ServiceName,
        job: &str,
        mut push: impl FnMut(&Value) -> std::io::Result<()>,
    ) -> Result<Kept, String> {
        let Some(mut object) = self.get(&answer_key(query.request, service, job)).await? else {
            return match self.get(&failure_key(query.request, service, job)).await? {
                Some(failed) => {
                    let reason = failed
                        .body
                        .collect()
                        .await
                        .map(|b| String::from_utf8_lossy(&b.into_bytes()).into_owned())
                        .unwrap_or_default();
                    Ok(Kept::Failed(reason.chars().take(500).collect()))
                }
                None => Ok(Kept::Nothing),
            };
        };
        if object.content_length().unwrap_or_default() > MAX_UPLOAD_BYTES {
            return Err(format!(
                "the upload is larger than {} (the most one export may be)",
                crate::http::describe_size(MAX_UPLOAD_BYTES as usize)
            ));
        }
        let mut line = Vec::new();
        let mut number = 0u64;
        let mut take = |line: &mut Vec<u8>| -> Result<(), String> {
            number += 1;
            if !line.iter().all(u8::is_ascii_whitespace) {
                let record: Value = serde_json::from_slice(line)
                    .map_err(|e| format!("line {number} of the export is not JSON: {e}"))?;
                push(&record).map_err(|e| e.to_string())?;
            }
            line.clear();
            Ok(())
        };
        while let Some(chunk) = object
            .body
            .try_next()
            .await
            .map_err(|e| format!("reading the export: {e}"))?
        {
            for piece in chunk.split_inclusive(|b| *b == b'\n') {
                line.extend_from_slice(piece);
                if piece.ends_with(b"\n") {
                    take(&mut line)?;
                }
            }
        }
        take(&mut line)?;
        Ok(Kept::Records)
    }

    /// Keeps a holder's answer where [`Self::kept`] finds it.
    pub async fn record(&self, answer: &ExportAnswer) -> Result<(), StorageError> {
        let (key, body) = match answer.outcome {
            // The holder put its records at the answer key itself.
            ExportOutcome::Uploaded => return Ok(()),
            ExportOutcome::NotFound => (
                answer_key(answer.request_id, &answer.service, &answer.job),
                Vec::new(),
            ),
            ExportOutcome::Records => {
                let mut body = Vec::new();
                for record in &answer.records {
                    serde_json::to_writer(&mut body, record)
                        .map_err(|e| StorageError(Box::new(e)))?;
                    body.push(b'\n');
                }
                (
                    answer_key(answer.request_id, &answer.service, &answer.job),
                    body,
                )
            }
            ExportOutcome::Failed => (
                failure_key(answer.request_id, &answer.service, &answer.job),
                answer.reason.clone().unwrap_or_default().into_bytes(),
            ),
        };
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .map_err(|e| StorageError(Box::new(e)))?;
        Ok(())
    }

    async fn get(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, String> {
        match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => Ok(Some(object)),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(err) => Err(format!(
                "reading the export's answer: {}",
                aws_sdk_s3::error::DisplayErrorContext(err)
            )),
        }
    }
}
