//! Access reports (Art. 15, Art. 20): everything the registered services hold about a subject,
//! in one portable file.
//!
//! One worker per request ([`crate::lease`]): it takes the request, collects every source onto
//! local disk, writes the zip ([`archive`]) into an upload that becomes visible only when
//! complete, and commits the report on the request only if its lease is still the request's.
//! Self-healing: a failed attempt aborts its upload (nothing is left), hands the request back
//! to `received` with the error, and asks for a retry after a growing delay; after the last
//! attempt the request is `failed`. Whatever a dead worker left under the request's prefix is
//! removed by the next attempt before it starts.

pub mod archive;
mod cells;
pub mod html;
pub mod ports;
pub mod verify;

use crate::clock::Clock;
use crate::hops::{self, Hop, HopMark};
use crate::lease::{retry_delay, Committed, HandedBack, OurLease, Taken, Worker};
use crate::messages::DomainEvent;
use crate::metrics::{self, names, Metric};
use crate::ports::{ChannelError, EventOutbox, RequestStore, StoreError};
use crate::registry::ServiceRegistry;
use crate::request::{ReportInfo, Request, RequestId, RequestKind, RequestState};
use crate::subject::SubjectHasher;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
pub use ports::{
    ReportSources, ReportStore, ReportUpload, SourceError, StagedFile, StagedSource, StorageError,
};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// Attempts before the request is `failed` and its message dead-lettered.
    pub max_attempts: u32,
    /// How long a report stays downloadable (the bucket's lifecycle rule matches it).
    pub retention: Duration,
    /// Upload part size; S3 needs at least 5 MiB.
    pub part_size: usize,
    /// First retry delay; doubles with every failed attempt.
    pub retry_base: Duration,
    pub staging_dir: PathBuf,
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            retention: Duration::days(30),
            part_size: 8 * 1024 * 1024,
            retry_base: Duration::seconds(60),
            staging_dir: std::env::temp_dir(),
        }
    }
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkOutcome {
    Completed(ReportInfo),
    /// Done, cancelled, failed, or gone: a duplicate or late message.
    NothingToDo(Option<RequestState>),
    /// Another worker holds the lease.
    Busy {
        until: DateTime<Utc>,
    },
    /// This attempt failed; the request is back in `received`.
    RetryLater {
        after: Duration,
        error: String,
    },
    /// The last attempt failed; the request is `failed`.
    Failed {
        error: String,
    },
    /// Another worker took the request over; this one's work was discarded.
    FencedOut,
}

/// The store or the outbox could not be reached: the message comes back later.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("announcing the report: {0}")]
    Announce(#[from] ChannelError),
}

/// Why one attempt failed: the reason recorded on the request (never personal data).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error("staging the sources: {0}")]
    Staging(#[source] std::io::Error),
}

/// Report generation, over its ports.
pub struct AccessReports<S, R, T, E, C> {
    pub store: S,
    pub sources: R,
    pub reports: T,
    pub events: E,
    pub clock: C,
    pub hasher: SubjectHasher,
    pub registry: ServiceRegistry,
    pub settings: ReportSettings,
    pub worker: Worker,
}

impl<S, R, T, E, C> AccessReports<S, R, T, E, C>
where
    S: RequestStore,
    R: ReportSources,
    T: ReportStore,
    E: EventOutbox,
    C: Clock,
{
    /// Generates the report of request `id`, if it is this worker's to make.
    pub async fn generate(&self, id: RequestId) -> Result<WorkOutcome, ReportError> {
        let started = self.clock.now();
        let lease = match self
            .worker
            .take(
                &self.store,
                &self.clock,
                &self.hasher,
                id,
                RequestState::Collecting,
            )
            .await?
        {
            Taken::Ours(lease) => lease,
            Taken::Busy { until } => return Ok(WorkOutcome::Busy { until }),
            Taken::NotWorkable(Some(RequestState::ReportReady)) => {
                // The report was committed but the event may not have gone out: send it
                // (again); it carries the same message id, so receivers drop duplicates.
                if let Some(request) = self.store.get(id).await? {
                    self.count(&request, Hop::Generated).await?;
                    self.announce(&request).await?;
                }
                return Ok(WorkOutcome::NothingToDo(Some(RequestState::ReportReady)));
            }
            Taken::NotWorkable(Some(RequestState::Failed)) => {
                // The failure may not have been counted before the last attempt's end.
                if let Some(request) = self.store.get(id).await? {
                    self.count(&request, Hop::Failed).await?;
                }
                return Ok(WorkOutcome::NothingToDo(Some(RequestState::Failed)));
            }
            Taken::NotWorkable(state) => return Ok(WorkOutcome::NothingToDo(state)),
        };
        let token = lease.token();
        tracing::info!(request_id = %id, subject = %lease.subject(), token, attempt = lease.request().attempts + 1, "collecting");
        // The platform hears of the request from here, not from the submit path; every
        // attempt says it again under the same message id, so a failed send is made good.
        if let Err(error) = self
            .events
            .publish(&DomainEvent::request_submitted(
                lease.request(),
                lease.subject().clone(),
                lease.request().received_at,
            ))
            .await
        {
            return self.hand_back(&lease, &error.to_string()).await;
        }

        // Whatever earlier attempts left (they died, or lost their lease) goes first.
        let prefix = format!("reports/{id}/");
        // A failure from here on hands the request back: a lease kept by an attempt that gave
        // up would hold every other worker off until it ran out (longer than a function runs).
        let cleaned = match self.clean(&prefix).await {
            Ok(cleaned) => cleaned,
            Err(error) => return self.hand_back(&lease, &error.to_string()).await,
        };
        if cleaned > 0 {
            tracing::info!(request_id = %id, cleaned, "removed what an earlier attempt left");
        }

        let key = format!("{prefix}{token}/report.zip");
        match self.assemble(&lease, &key).await {
            Ok(summary) => {
                crate::kill_point::reached("report.uploaded");
                self.finish(&lease, key, summary, started).await
            }
            Err(error) => self.hand_back(&lease, &error.to_string()).await,
        }
    }

    async fn finish(
        &self,
        lease: &OurLease<'_, S>,
        key: String,
        summary: archive::ArchiveSummary,
        started: DateTime<Utc>,
    ) -> Result<WorkOutcome, ReportError> {
        let now = self.clock.now();
        let report = ReportInfo {
            key: key.clone(),
            size: summary.size,
            sha256: summary.sha256,
            // Stored with millisecond precision; keep the value identical.
            expires_at: DateTime::from_timestamp_millis(
                (now + self.settings.retention).timestamp_millis(),
            )
            .unwrap_or(now),
        };
        // The commit is conditional on this lease's token only, so repeating it is harmless;
        // giving up would leave a finished report behind a lease nobody releases.
        let mut tries = 0;
        let committed = loop {
            tries += 1;
            match lease
                .commit(RequestState::ReportReady, now, |r| {
                    r.report = Some(report.clone())
                })
                .await
            {
                Ok(committed) => break committed,
                Err(error) if tries < 3 => {
                    tracing::warn!(request_id = %lease.request().id, error = %error, "report commit failed; trying again")
                }
                Err(error) => return Err(error.into()),
            }
        };
        match committed {
            Committed::Applied(request) => {
                let id = request.id;
                let seconds = (now - started).num_milliseconds() as f64 / 1000.0;
                tracing::info!(request_id = %id, report_bytes = report.size, duration_ms = (now - started).num_milliseconds(), "report committed");
                metrics::emit(Metric::count(names::REQUESTS_COMPLETED, 1).with("Kind", "access"));
                metrics::emit(Metric::bytes(names::REPORT_BYTES, report.size));
                metrics::emit(Metric::seconds(names::REPORT_DURATION, seconds));
                // An upload whose creation answered an error after it took effect (the SDK
                // then made another) is nobody's: abort what is left under the prefix.
                let prefix = format!("reports/{id}/");
                for _ in 0..3 {
                    match self.reports.abort_unfinished(&prefix).await {
                        Ok(0) => break,
                        Ok(aborted) => {
                            tracing::info!(request_id = %id, aborted, "aborted uploads this attempt lost track of");
                            break;
                        }
                        Err(err) => {
                            tracing::warn!(request_id = %id, error = %err, "could not abort lost uploads; the bucket's lifecycle rule will")
                        }
                    }
                }
                crate::kill_point::reached("report.committed");
                self.count(&request, Hop::Generated).await?;
                self.announce(&request).await?;
                Ok(WorkOutcome::Completed(report))
            }
            // Fenced out, or the request moved on meanwhile: this report is nobody's.
            Committed::FencedOut | Committed::Illegal(_) => {
                self.forget(&key).await;
                Ok(WorkOutcome::FencedOut)
            }
        }
    }

    async fn hand_back(
        &self,
        lease: &OurLease<'_, S>,
        error: &str,
    ) -> Result<WorkOutcome, ReportError> {
        let now = self.clock.now();
        match lease
            .hand_back(error, Some(self.settings.max_attempts), now)
            .await?
        {
            HandedBack::Failed => {
                metrics::emit(Metric::count(names::REQUESTS_FAILED, 1).with("Kind", "access"));
                self.count(lease.request(), Hop::Failed).await?;
                Ok(WorkOutcome::Failed {
                    error: error.to_owned(),
                })
            }
            HandedBack::ForRetry { attempts } => {
                metrics::emit(Metric::count(names::RETRIES, 1).with("Kind", "access"));
                Ok(WorkOutcome::RetryLater {
                    after: retry_delay(self.settings.retry_base, attempts),
                    error: error.to_owned(),
                })
            }
            HandedBack::FencedOut => Ok(WorkOutcome::FencedOut),
        }
    }

    /// Collects every source, then streams the zip into an upload that only becomes visible
    /// on completion. On any error the upload is aborted: nothing is left.
    async fn assemble(
        &self,
        lease: &OurLease<'_, S>,
        key: &str,
    ) -> Result<archive::ArchiveSummary, AttemptError> {
        let request = lease.request();
        std::fs::create_dir_all(&self.settings.staging_dir).map_err(AttemptError::Staging)?;
        let staging =
            tempfile::tempdir_in(&self.settings.staging_dir).map_err(AttemptError::Staging)?;
        let sources =
            futures::future::try_join_all(self.registry.collectable().map(|(service, how)| {
                self.sources
                    .collect(service, how, &request.subject, staging.path())
            }))
            .await?;

        let mut upload = self.reports.begin(key).await?;
        let generated_at = self
            .clock
            .now()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let header = html::ReportHeader {
            request_id: &request.id.to_string(),
            subject_hash: &lease.subject().to_string(),
            generated_at: &generated_at,
        };
        match archive::write_report(&mut upload, self.settings.part_size, &header, &sources).await {
            Ok(summary) => match upload.complete().await {
                Ok(()) => Ok(summary),
                Err(err) => {
                    // The completion may have taken effect before its answer was lost, or
                    // not at all: remove this attempt's own report either way. Only its own
                    // key: this worker may have lost its lease, and another's report under
                    // the request's prefix may be the committed one.
                    self.forget(key).await;
                    Err(err.into())
                }
            },
            Err(err) => {
                let _ = upload.abort().await;
                Err(err.into())
            }
        }
    }

    /// Removes one attempt's own report, finished or not, trying a few times: nobody else
    /// knows its key (the next attempt's clean-up, or the bucket's lifecycle rule, are the
    /// last resort).
    async fn forget(&self, key: &str) {
        for _ in 0..3 {
            let aborted = self.reports.abort_unfinished(key).await;
            let deleted = self.reports.delete(key).await;
            match (aborted, deleted) {
                (Ok(_), Ok(())) => return,
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(key, error = %err, "could not remove an abandoned report yet")
                }
            }
        }
    }

    /// Aborts unfinished uploads and deletes reports under `prefix`. Only called while this
    /// worker holds the request's lease, when no committed report can be there.
    async fn clean(&self, prefix: &str) -> Result<usize, StorageError> {
        let mut cleaned = self.reports.abort_unfinished(prefix).await?;
        for key in self.reports.list(prefix).await? {
            self.reports.delete(&key).await?;
            cleaned += 1;
        }
        Ok(cleaned)
    }

    /// Counts a hop this function took (a redelivery counts it again, as the same mark).
    async fn count(&self, request: &Request, hop: Hop) -> Result<(), StoreError> {
        let mark = HopMark::new(RequestKind::Access, hop, request.id, self.clock.now());
        hops::take(&self.store, mark).await
    }

    async fn announce(&self, request: &Request) -> Result<(), ChannelError> {
        let Some(report) = &request.report else {
            return Ok(());
        };
        let event = DomainEvent::report_ready(
            request.id,
            self.hasher.hash(&request.subject),
            report.expires_at,
            self.clock.now(),
        );
        self.events
            .tell(&crate::messages::SubjectNotice::of(
                &event,
                request.subject.clone(),
            ))
            .await?;
        self.events.publish(&event).await
    }
}
