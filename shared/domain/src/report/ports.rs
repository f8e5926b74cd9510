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
    /// Why nothing was asked of it (not applicable: it keys its data by an identifier the
    /// subject does not have); shown in the report instead of a count.
    pub not_applicable: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StagedFile {
    /// Path inside the source's folder of the report.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// What one collection call came back with.
#[derive(Debug, Clone)]
pub enum Collected {
    Staged(StagedSource),
    /// An asynchronous export was started, or is still running: ask again after `poll_after`
    /// with this `job`.
    Exporting {
        job: String,
        poll_after: std::time::Duration,
    },
}

/// Whose data one collection call is for.
#[derive(Debug, Clone, Copy)]
pub struct SourceQuery<'a> {
    pub request: crate::request::RequestId,
    /// The subject as this source knows them: its first identifier (`crate::identity`).
    pub subject: &'a SubjectId,
    /// Every identifier the source asked for, by kind.
    pub identifiers: &'a std::collections::BTreeMap<crate::identity::IdentifierKind, SubjectId>,
    /// The export this source started earlier, if it is one.
    pub job: Option<&'a str>,
}

/// The services in the registry that hold data to report, each read its own way (DynamoDB,
/// HTTP API, search index, S3 prefix, a third party's asynchronous export, an export over
/// RabbitMQ).
pub trait ReportSources: Send + Sync {
    /// Collects `service`'s data about the query's subject into `dir` (which exists), within
    /// `budget` (past it the call fails: the invocation's time is up).
    fn collect(
        &self,
        service: &RegisteredService,
        how: &CollectFrom,
        query: SourceQuery<'_>,
        dir: &Path,
        budget: std::time::Duration,
    ) -> impl Future<Output = Result<Collected, SourceError>> + Send;

    /// Keeps a holder's answer to an export over RabbitMQ where the next collection of its
    /// source finds it (checked by [`super::export::check_answer`] first).
    fn record_answer(
        &self,
        answer: &super::export::ExportAnswer,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// Hands a collection that is waiting on its sources to a later invocation: delivers the
/// request's work message again at `at` (delayed dispatch).
pub trait CollectionResumes: Send + Sync {
    fn resume_at(
        &self,
        id: crate::request::RequestId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> impl Future<Output = Result<(), crate::ports::ChannelError>> + Send;
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

    /// Copies the object at `key` into the file at `path`; returns its size.
    fn fetch(
        &self,
        key: &str,
        path: &Path,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;
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
        query: SourceQuery<'_>,
        dir: &Path,
        budget: std::time::Duration,
    ) -> Result<Collected, SourceError> {
        (**self).collect(service, how, query, dir, budget).await
    }

    async fn record_answer(
        &self,
        answer: &super::export::ExportAnswer,
    ) -> Result<(), StorageError> {
        (**self).record_answer(answer).await
    }
}

impl<T: CollectionResumes> CollectionResumes for Arc<T> {
    async fn resume_at(
        &self,
        id: crate::request::RequestId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), crate::ports::ChannelError> {
        (**self).resume_at(id, at).await
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
    async fn fetch(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        (**self).fetch(key, path).await
    }
}
