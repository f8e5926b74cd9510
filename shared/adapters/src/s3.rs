//! Reports in S3: written with multipart uploads, so that an object appears only when it is
//! complete (no half report is ever downloadable), and handed out with presigned GET URLs.

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use std::time::Duration;

pub use dsr_domain::report::StorageError;
use dsr_domain::report::{ReportStore, ReportUpload};

fn storage_error<E>(err: E) -> StorageError
where
    E: std::error::Error + Send + Sync + 'static,
{
    StorageError(Box::new(err))
}

/// An S3 client for `aws`: path-style addressing when an endpoint is configured (an emulator
/// such as moto or LocalStack, where `bucket.host` does not resolve), virtual-hosted in AWS.
/// Its bodies are reports and sources of any size: stalled-stream protection on (a transfer
/// that stops moving fails in seconds) and no limit on an attempt's length, whatever the
/// functions' configuration says for their small JSON calls.
pub fn client(aws: &aws_config::SdkConfig) -> Client {
    Client::from_conf(
        aws_sdk_s3::config::Builder::from(aws)
            .force_path_style(aws.endpoint_url().is_some())
            .stalled_stream_protection(
                aws_sdk_s3::config::StalledStreamProtectionConfig::enabled().build(),
            )
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(crate::config::CONNECT_TIMEOUT)
                    .disable_operation_attempt_timeout()
                    .build(),
            )
            .build(),
    )
}

#[derive(Clone, Debug)]
pub struct S3ReportStore {
    client: Client,
    bucket: String,
}

impl S3ReportStore {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    pub async fn begin(&self, key: &str) -> Result<MultipartUpload, StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/zip")
            .send()
            .await
            .map_err(storage_error)?;
        Ok(MultipartUpload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            upload_id: created
                .upload_id
                .ok_or_else(|| StorageError("no upload id".into()))?,
            parts: Vec::new(),
        })
    }

    /// Aborts every unfinished multipart upload under `prefix` (left by workers that died),
    /// deleting their parts. Returns how many were aborted.
    pub async fn abort_unfinished(&self, prefix: &str) -> Result<usize, StorageError> {
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .map_err(storage_error)?;
        let mut aborted = 0;
        for upload in listed.uploads() {
            if let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) {
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(storage_error)?;
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// Keys of the finished objects under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(storage_error)?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(storage_error)?;
        Ok(())
    }

    /// A link that downloads `key` for `ttl`, signed with this function's credentials.
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StorageError> {
        let config = PresigningConfig::expires_in(ttl).map_err(storage_error)?;
        let presigned = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .response_content_disposition("attachment; filename=\"report.zip\"")
            .presigned(config)
            .await
            .map_err(storage_error)?;
        Ok(presigned.uri().to_owned())
    }
}

/// An upload in progress; invisible to readers until [`MultipartUpload::complete`].
pub struct MultipartUpload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
}

impl MultipartUpload {
    /// Uploads the next part. S3 wants every part but the last to be at least 5 MiB.
    async fn upload_part(&mut self, bytes: Vec<u8>) -> Result<(), StorageError> {
        let number = i32::try_from(self.parts.len() + 1)
            .map_err(|_| StorageError("too many parts".into()))?;
        let uploaded = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(storage_error)?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag)
                .build(),
        );
        Ok(())
    }

    async fn finish(self) -> Result<(), StorageError> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts))
                    .build(),
            )
            .send()
            .await
            .map_err(storage_error)?;
        Ok(())
    }

    async fn cancel(self) -> Result<(), StorageError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
            .map_err(storage_error)?;
        Ok(())
    }
}

impl ReportUpload for MultipartUpload {
    async fn write_part(&mut self, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.upload_part(bytes).await
    }
    async fn complete(self) -> Result<(), StorageError> {
        self.finish().await
    }
    async fn abort(self) -> Result<(), StorageError> {
        self.cancel().await
    }
}

impl ReportStore for S3ReportStore {
    type Upload = MultipartUpload;
    async fn begin(&self, key: &str) -> Result<MultipartUpload, StorageError> {
        S3ReportStore::begin(self, key).await
    }
    async fn abort_unfinished(&self, prefix: &str) -> Result<usize, StorageError> {
        S3ReportStore::abort_unfinished(self, prefix).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        S3ReportStore::list(self, prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        S3ReportStore::delete(self, key).await
    }
    async fn fetch(&self, key: &str, path: &std::path::Path) -> Result<u64, StorageError> {
        let mut body = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(storage_error)?
            .body;
        let mut out = tokio::fs::File::create(path).await.map_err(storage_error)?;
        let mut size = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(storage_error)? {
            size += chunk.len() as u64;
            tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                .await
                .map_err(storage_error)?;
        }
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(storage_error)?;
        Ok(size)
    }
}

impl dsr_domain::ReportLinks for S3ReportStore {
    async fn link(&self, key: &str, ttl: Duration) -> Result<String, dsr_domain::StoreError> {
        self.presign_get(key, ttl)
            .await
            .map_err(|e| dsr_domain::StoreError::Unavailable(Box::new(e)))
    }
}

#[cfg(test)]
mod client_tests {
    /// The functions' configuration turns stalled-stream protection off and bounds an attempt
    /// (small JSON bodies); the S3 client of the same configuration keeps both as reports need.
    #[test]
    fn reports_and_sources_keep_stalled_stream_protection_and_no_attempt_limit() {
        let functions = crate::config::aws_in_lambda();
        assert!(!functions
            .stalled_stream_protection()
            .expect("set")
            .is_enabled());
        assert_eq!(
            functions
                .timeout_config()
                .unwrap()
                .operation_attempt_timeout(),
            Some(crate::config::JSON_ATTEMPT_TIMEOUT)
        );
        let s3 = super::client(&functions);
        assert!(s3
            .config()
            .stalled_stream_protection()
            .unwrap()
            .is_enabled());
        let timeouts = s3.config().timeout_config().unwrap();
        assert_eq!(timeouts.operation_attempt_timeout(), None);
        assert_eq!(
            timeouts.connect_timeout(),
            Some(crate::config::CONNECT_TIMEOUT)
        );
    }
}
