//! What report generation needs from the outside world: the registered sources, and a store
//! in which a report becomes visible only when it is complete.

use crate::registry::{CollectFrom, RegisteredService};
use crate::service::ServiceName;
use crate::subject::SubjectId;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One source failed to give its data; the whole attempt fails (a report is complete or it is
/// nothing). Never holds the subject id: it ends in logs and on the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source {service}: {reason}")]
pub struct SourceError {
    pub service: ServiceName,
    pub reason: String,
}

/// What one source yielded, staged on local disk: a report's size is bounded by disk, not by
/// the function's memory.
#[derive(Debug, Clone)]
pub struct StagedSource {
    pub name: ServiceName,
    pub description: String,
    /// One JSON record per line.
    pub records: PathBuf,
    pub record_count: u64,
    pub files: Vec<StagedFile>,
}

#[derive(Debug, Clone)]
pub struct StagedFile {
    /// Path inside the source's folder of the report.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// The services in the registry that hold data to report, each read its own way (DynamoDB,
/// HTTP API, search index, S3 prefix).
pub trait ReportSources: Send + Sync {
    /// Collects `service`'s data about `subject` into `dir` (which exists).
    fn collect(
        &self,
        service: &RegisteredService,
        how: &CollectFrom,
        subject: &SubjectId,
        dir: &Path,
    ) -> impl Future<Output = Result<StagedSource, SourceError>> + Send;
}

/// The report store could not be reached or refused; worth another attempt.
#[derive(Debug, thiserror::Error)]
#[error("report storage: {}", crate::ports::chain(.0.as_ref()))]
pub struct StorageError(#[source] pub crate::ports::Cause);

/// Where reports are kept. A report is written as an upload that nobody can read until it is
/// completed, so no half report is ever downloadable.
pub trait ReportStore: Send + Sync {
    type Upload: ReportUpload;

    fn begin(&self, key: &str) -> impl Future<Output = Result<Self::Upload, StorageError>> + Send;

    /// Aborts every unfinished upload under `prefix` (left by workers that died). Returns how
    /// many it aborted.
    fn abort_unfinished(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<usize, StorageError>> + Send;

    /// The finished reports under `prefix`.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StorageError>> + Send;

    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// A report being written.
pub trait ReportUpload: Send {
    /// The next part, in order. Every part but the last is at least the store's minimum.
    fn write_part(
        &mut self,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Makes the report visible under its key.
    fn complete(self) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Drops everything written; nothing becomes visible.
    fn abort(self) -> impl Future<Output = Result<(), StorageError>> + Send;
}

impl<T: ReportSources> ReportSources for Arc<T> {
    async fn collect(
        &self,
        service: &RegisteredService,
        how: &CollectFrom,
        subject: &SubjectId,
        dir: &Path,
    ) -> Result<StagedSource, SourceError> {
        (**self).collect(service, how, subject, dir).await
    }
}

impl<T: ReportStore> ReportStore for Arc<T> {
    type Upload = T::Upload;
    async fn begin(&self, key: &str) -> Result<Self::Upload, StorageError> {
        (**self).begin(key).await
    }
    async fn abort_unfinished(&self, prefix: &str) -> Result<usize, StorageError> {
        (**self).abort_unfinished(prefix).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        (**self).list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        (**self).delete(key).await
    }
}
