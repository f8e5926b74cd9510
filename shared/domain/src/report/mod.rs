//! Access reports (Art. 15, Art. 20): everything the registered services hold about a subject,
//! in one portable file.
//!
//! A report may take a minute or a week: a source may be slow, rate limited, or a third party's
//! asynchronous export. So collection is resumable, source by source ([`progress`]). One worker
//! at a time holds the request ([`crate::lease`]); it collects every source that is due, stages
//! each result durably in the report store as soon as it is in (`staging/<request>/<source>/
//! <token>/`) and records it on the request, then either assembles the report from what is
//! staged (every source collected), fails the request (a source failed its last allowed
//! attempt), or hands the rest to a later invocation through delayed dispatch, at the time the
//! earliest waiting source is due (its own backoff, or its export's next poll). A worker that
//! dies loses only the sources it had not staged yet.
//!
//! The zip ([`archive`]) is written into an upload that becomes visible only when complete,
//! and committed on the request only if the worker's lease is still the request's. A failure
//! of the service's own storage is not a source's: the request is handed back as it stands and
//! tried again. Whatever a dead worker left under the request's prefixes is removed by the next
//! worker before it starts, and the staging area once the report is committed.

pub mod archive;
mod cells;
pub mod export;
pub mod html;
pub mod ports;
pub mod progress;
pub mod verify;

use crate::clock::Clock;
use crate::hops::{self, Hop, HopMark};
use crate::lease::{retry_delay, thrice, Committed, HandedBack, OurLease, Taken, Worker};
use crate::messages::DomainEvent;
use crate::metrics::{self, names, Metric};
use crate::ports::{ChannelError, EventOutbox, RequestStore, StoreError};
use crate::registry::{RegisteredService, RetryPolicy, ServiceRegistry};
use crate::request::{ReportInfo, Request, RequestId, RequestKind, RequestState};
use crate::service::ServiceName;
use crate::subject::SubjectHasher;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use futures::StreamExt;
pub use ports::{
    Collected, CollectionResumes, ReportSources, ReportStore, ReportUpload, SourceError,
    SourceQuery, StagedFile, StagedSource, StorageError,
};
use progress::{collection_state, CollectionState, SourceProgress};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// A source's collection attempts and backoff, unless its registry entry says otherwise.
    pub source_retry: RetryPolicy,
    /// How long a report stays downloadable (the bucket's lifecycle rule matches it).
    pub retention: Duration,
    /// Upload part size; S3 needs at least 5 MiB.
    pub part_size: usize,
    /// First retry delay after a failure of the service's own storage; doubles each time.
    pub retry_base: Duration,
    /// How long one invocation collects before it hands the rest on (Lambda stops a function
    /// after 15 minutes; staging and assembly need some of them).
    pub time_budget: std::time::Duration,
    /// A source's retries are never put off later than this before the request's deadline.
    pub deadline_margin: Duration,
    /// Sources collected in an invocation's first this long stay on local disk; a report
    /// whose sources all answer within it is assembled without staging them.
    pub stage_after: std::time::Duration,
    pub staging_dir: PathBuf,
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            source_retry: RetryPolicy {
                attempts: 5,
                backoff_seconds: 60,
                max_backoff_seconds: 6 * 3600,
            },
            retention: Duration::days(30),
            part_size: 8 * 1024 * 1024,
            retry_base: Duration::seconds(60),
            time_budget: std::time::Duration::from_secs(600),
            deadline_margin: Duration::days(3),
            stage_after: std::time::Duration::from_secs(5),
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
    /// Sources are still pending: the request comes back at `until` (delayed dispatch).
    /// `errors` are this invocation's failed attempts, by source.
    Waiting {
        until: DateTime<Utc>,
        errors: Vec<SourceError>,
    },
    /// The service's own storage or queue failed; the request was handed back as it stands.
    RetryLater {
        after: Duration,
        error: String,
    },
    /// A source failed its last attempt; the request is `failed`.
    Failed {
        error: String,
    },
    /// Another worker took the request over; this one's work was discarded.
    FencedOut,
}

/// What became of a holder's export answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Answered {
    Refused(export::Refusal),
    /// Kept, and the request worked on.
    Worked(WorkOutcome),
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

/// Why the service could not go on (never a source's failure, never personal data).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error("staging: {0}")]
    Staging(#[source] std::io::Error),
    #[error("the staged result of {0} is unreadable: {1}")]
    Staged(ServiceName, String),
    #[error("handing the collection on: {0}")]
    Resume(#[from] ChannelError),
    /// An identity source did not answer: the request is worked on again later.
    #[error("{0}")]
    Identities(String),
    /// Past the point of handing back (the report is committed, or the request failed).
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// What one invocation's collection left: the failed attempts, and the sources collected but
/// only held on local disk (by index into the progress).
#[derive(Default)]
struct Round {
    errors: Vec<SourceError>,
    held: Vec<(usize, StagedSource)>,
}

enum Event<'a> {
    Collected(usize, &'a RegisteredService, Result<Collected, SourceError>),
    /// The invocation has run `stage_after`: what is held is staged, and whatever comes next.
    StageNow,
}

/// Report generation, over its ports.
pub struct AccessReports<S, R, T, E, C, W> {
    pub store: S,
    pub sources: R,
    pub reports: T,
    pub events: E,
    pub clock: C,
    /// Where a collection waiting on its sources is handed on.
    pub resumes: W,
    pub hasher: SubjectHasher,
    pub registry: ServiceRegistry,
    pub settings: ReportSettings,
    pub worker: Worker,
    /// Where the subject's other identifiers are looked up, once per request.
    pub identities: std::sync::Arc<dyn crate::identity::IdentityDirectory>,
}

/// Where one source's staged result is kept, under the token of the lease that staged it.
pub fn staged_prefix(id: RequestId, service: &ServiceName, token: u64) -> String {
    format!("{}{service}/{token}/", staging_prefix(id))
}

/// Everything staged for request `id` (personal data: erased with the subject's own copies).
pub fn staging_prefix(id: RequestId) -> String {
    format!("staging/{id}/")
}

impl<S, R, T, E, C, W> AccessReports<S, R, T, E, C, W>
where
    S: RequestStore,
    R: ReportSources,
    T: ReportStore,
    E: EventOutbox,
    C: Clock,
    W: CollectionResumes,
{
    /// Works on request `id`, if it is this worker's: collects what is due, then assembles the
    /// report, fails the request, or hands it on.
    pub async fn generate(&self, id: RequestId) -> Result<WorkOutcome, ReportError> {
        self.work_under(id, self.clock.now()).await
    }

    /// A holder's answer to an export over RabbitMQ (sent by `origin`): kept where the
    /// collection finds it, then the request is worked on at once (a source waiting on a
    /// holder's answer is looked at whenever its request is). If another worker holds the
    /// request, it comes back in a few seconds through delayed dispatch.
    pub async fn answered(
        &self,
        answer: &export::ExportAnswer,
        origin: &crate::messages::Origin,
    ) -> Result<Answered, ReportError> {
        let request = self.store.get(answer.request_id).await?;
        if let Err(refusal) = export::check_answer(&self.registry, answer, origin, request.as_ref())
        {
            return Ok(Answered::Refused(refusal));
        }
        self.sources.record_answer(answer).await?;
        tracing::info!(request_id = %answer.request_id, source = %answer.service, outcome = ?answer.outcome, records = answer.records.len(), "export answer kept");
        let outcome = match self.generate(answer.request_id).await? {
            WorkOutcome::Busy { .. } => {
                let until = self.clock.now() + Duration::seconds(10);
                self.resumes.resume_at(answer.request_id, until).await?;
                WorkOutcome::Waiting {
                    until,
                    errors: Vec::new(),
                }
            }
            outcome => outcome,
        };
        Ok(Answered::Worked(outcome))
    }

    /// Takes request `id` if it is free, and works on it (`started`: when this began).
    async fn work_under(
        &self,
        id: RequestId,
        started: DateTime<Utc>,
    ) -> Result<WorkOutcome, ReportError> {
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
        tracing::info!(request_id = %id, subject = %lease.subject(), token, "collecting");
        // The platform hears of the request from here, not from the submit path; every
        // invocation says it again under the same message id, so a failed send is made good.
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
        // A failure from here on hands the request back: a lease kept by an attempt that gave
        // up would hold every other worker off until it ran out (longer than a function runs).
        match self.work(&lease, started).await {
            Ok(outcome) => Ok(outcome),
            Err(AttemptError::Report(error)) => Err(error),
            Err(error) => self.hand_back(&lease, &error.to_string()).await,
        }
    }

    async fn work(
        &self,
        lease: &OurLease<'_, S>,
        started: DateTime<Utc>,
    ) -> Result<WorkOutcome, AttemptError> {
        let id = lease.request().id;
        // Whatever earlier workers left (they died, or lost their lease) goes first: no
        // committed report can be there while the request is collecting, and no upload of a
        // live worker while this one holds the lease.
        let mut cleaned = self.clean(&format!("reports/{id}/")).await?;
        // The first worker ever finds no staging begun; later ones may (a worker that died in
        // the middle of an upload).
        if lease.token() > 1 {
            cleaned += self.reports.abort_unfinished(&staging_prefix(id)).await?;
        }
        if cleaned > 0 {
            tracing::info!(request_id = %id, cleaned, "removed what an earlier worker left");
        }
        let mut sources = self.plan(lease.request());
        // Who the subject is at each source, looked up once for the whole collection.
        let identities = match crate::identity::resolve_once(
            &self.store,
            &self.registry,
            self.identities.as_ref(),
            &self.hasher,
            lease.request(),
            lease.token(),
            self.clock.now(),
        )
        .await
        {
            Ok(identities) => identities,
            Err(crate::identity::ResolveError::FencedOut(_)) => return Ok(WorkOutcome::FencedOut),
            Err(crate::identity::ResolveError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(AttemptError::Identities(e.to_string())),
        };
        let mut settled_now = false;
        for source in sources.iter_mut().filter(|s| !s.settled()) {
            let Some(service) = self.registry.service(&source.service) else {
                continue;
            };
            if let Err(missing) = crate::identity::Identities::for_holder(
                identities.as_ref(),
                &lease.request().subject,
                service,
            ) {
                tracing::info!(request_id = %id, source = %source.service, reason = %missing.reason(), "source not applicable");
                source.not_applicable(missing.reason());
                settled_now = true;
            }
        }
        if settled_now && !self.record(lease, &sources, None).await? {
            return Ok(WorkOutcome::FencedOut);
        }
        // A holder's answer over RabbitMQ may be in whenever the request is worked on (its
        // answer message, or any other, woke it): looking costs a read, not a call to anyone.
        for source in sources.iter_mut() {
            let over_amqp = self.registry.service(&source.service).is_some_and(|s| {
                matches!(
                    s.collect,
                    Some(crate::registry::CollectFrom::Rabbitmq { .. })
                )
            });
            if over_amqp && source.status == progress::SourceStatus::Exporting {
                source.next_at = None;
            }
        }
        std::fs::create_dir_all(&self.settings.staging_dir).map_err(AttemptError::Staging)?;
        let staging =
            tempfile::tempdir_in(&self.settings.staging_dir).map_err(AttemptError::Staging)?;
        let Some(mut round) = self
            .collect_due(lease, identities.as_ref(), &mut sources, staging.path())
            .await?
        else {
            return Ok(WorkOutcome::FencedOut);
        };
        let now = self.clock.now();
        // Held sources count as collected: they go into the report, or are staged first.
        let mut seen = sources.clone();
        for (index, held) in &round.held {
            seen[*index].collected(held.record_count, lease.token());
        }
        match collection_state(&seen, now) {
            CollectionState::Complete => {
                let key = format!("reports/{id}/{}/report.zip", lease.token());
                let summary = self
                    .assemble(lease, &sources, &mut round.held, &key, staging.path())
                    .await?;
                crate::kill_point::reached("report.uploaded");
                let staged_any = sources.iter().any(|s| s.staged.is_some());
                Ok(self
                    .finish(lease, key, summary, started, &seen, staged_any)
                    .await?)
            }
            CollectionState::Failed(failed) => {
                let error = sources
                    .iter()
                    .filter(|s| failed.contains(&s.service))
                    .map(|s| {
                        format!(
                            "source {}: {} (after {} attempts)",
                            s.service,
                            s.error.as_deref().unwrap_or("failed"),
                            s.attempts
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                Ok(self.fail(lease, error).await?)
            }
            CollectionState::Waiting { next } => {
                // What is held goes to the staging area before the collection is handed on.
                if !round.held.is_empty() {
                    for (index, held) in std::mem::take(&mut round.held) {
                        self.stage(id, lease.token(), &held).await?;
                        sources[index].collected(held.record_count, lease.token());
                    }
                    if !self.record(lease, &sources, None).await? {
                        return Ok(WorkOutcome::FencedOut);
                    }
                }
                let errors = round.errors;
                let until = next.max(now);
                self.resumes.resume_at(id, until).await?;
                let request = lease.request();
                if request.due_at - until <= self.settings.deadline_margin {
                    // The sweep alarms on every request near its deadline; this says which
                    // sources hold this one up.
                    let waiting: Vec<&str> = sources
                        .iter()
                        .filter(|s| !s.settled())
                        .map(|s| s.service.as_str())
                        .collect();
                    tracing::warn!(request_id = %id, due_at = %request.due_at, waiting = %waiting.join(","), alert = "deadline_at_risk", "collection still waiting on sources close to the deadline");
                }
                let now = self.clock.now();
                if !thrice(|| lease.let_go(now)).await? {
                    return Ok(WorkOutcome::FencedOut);
                }
                tracing::info!(request_id = %id, resume_at = %until, "collection handed on");
                Ok(WorkOutcome::Waiting { until, errors })
            }
        }
    }

    /// The request's sources as the registry has them now: progress kept for every source
    /// still registered, new ones pending.
    fn plan(&self, request: &Request) -> Vec<SourceProgress> {
        self.registry
            .collectable()
            .map(|(service, _)| {
                request
                    .sources
                    .iter()
                    .find(|s| s.service == service.name)
                    .cloned()
                    .unwrap_or_else(|| SourceProgress::pending(service.name.clone()))
            })
            .collect()
    }

    /// Collects every due source at once, within the invocation's time budget, and records
    /// what became of each as it comes in. A source collected in the invocation's first
    /// `stage_after` is held on local disk (a quick report is assembled straight from there,
    /// without staging); from then on every collected source, those held first, is staged
    /// durably as it comes in. `None`: fenced out.
    async fn collect_due(
        &self,
        lease: &OurLease<'_, S>,
        identities: Option<&crate::identity::Identities>,
        sources: &mut [SourceProgress],
        dir: &Path,
    ) -> Result<Option<Round>, AttemptError> {
        use futures::future::Either;
        let request = lease.request();
        let now = self.clock.now();
        let latest = request.due_at - self.settings.deadline_margin;
        let mut running = futures::stream::FuturesUnordered::new();
        for (index, progress) in sources.iter().enumerate() {
            if !progress.due(now) {
                continue;
            }
            let Some((service, how)) = self
                .registry
                .collectable()
                .find(|(service, _)| service.name == progress.service)
            else {
                continue;
            };
            let job = progress.job.clone();
            let budget = self.settings.time_budget;
            // Settled above when the subject has none of its identifiers.
            let Ok(who) =
                crate::identity::Identities::for_holder(identities, &request.subject, service)
            else {
                continue;
            };
            running.push(Either::Left(async move {
                let query = SourceQuery {
                    request: request.id,
                    subject: &who.subject,
                    identifiers: &who.identifiers,
                    job: job.as_deref(),
                };
                let collected = self.sources.collect(service, how, query, dir, budget).await;
                Event::Collected(index, service, collected)
            }));
        }
        let mut outstanding = running.len();
        let mut staging = self.settings.stage_after.is_zero();
        if outstanding > 0 && !staging {
            running.push(Either::Right(async {
                self.clock.sleep(self.settings.stage_after).await;
                Event::StageNow
            }));
        }
        let mut round = Round::default();
        while outstanding > 0 {
            let Some(event) = running.next().await else {
                break;
            };
            let now = self.clock.now();
            let staged_now = match event {
                Event::StageNow => {
                    staging = true;
                    if round.held.is_empty() {
                        continue;
                    }
                    for (index, held) in std::mem::take(&mut round.held) {
                        self.stage(request.id, lease.token(), &held).await?;
                        sources[index].collected(held.record_count, lease.token());
                    }
                    None
                }
                Event::Collected(index, service, collected) => {
                    outstanding -= 1;
                    let progress = &mut sources[index];
                    match collected {
                        Ok(Collected::Staged(staged)) if !staging => {
                            round.held.push((index, staged));
                            continue;
                        }
                        Ok(Collected::Staged(staged)) => {
                            self.stage(request.id, lease.token(), &staged).await?;
                            progress.collected(staged.record_count, lease.token());
                            tracing::info!(request_id = %request.id, source = %service.name, records = staged.record_count, "source collected and staged");
                            Some(service)
                        }
                        Ok(Collected::Exporting { job, poll_after }) => {
                            let poll_after =
                                Duration::from_std(poll_after).unwrap_or(Duration::seconds(60));
                            progress.exporting(job, now + poll_after);
                            tracing::info!(request_id = %request.id, source = %service.name, poll_in_seconds = poll_after.num_seconds(), "export under way");
                            None
                        }
                        Err(error) => {
                            let policy = self.retry_policy(service);
                            let for_good =
                                progress.failed_attempt(error.reason.clone(), policy, now, latest);
                            metrics::emit(Metric::count(names::RETRIES, 1).with("Kind", "access"));
                            tracing::warn!(request_id = %request.id, source = %service.name, attempts = progress.attempts, for_good, error = %error.reason, "source attempt failed");
                            round.errors.push(error);
                            None
                        }
                    }
                }
            };
            if !self.record(lease, sources, staged_now).await? {
                return Ok(None);
            }
        }
        Ok(Some(round))
    }

    /// Writes the collection's progress, fenced on this worker's lease. A fenced-out worker
    /// removes the source it staged and could not record (`staged`): the sources it recorded
    /// before are the request's, and the next worker uses them.
    async fn record(
        &self,
        lease: &OurLease<'_, S>,
        sources: &[SourceProgress],
        staged: Option<&RegisteredService>,
    ) -> Result<bool, AttemptError> {
        let id = lease.request().id;
        if self
            .store
            .save_sources(id, lease.token(), sources, self.clock.now())
            .await?
        {
            crate::kill_point::reached("report.source_staged");
            return Ok(true);
        }
        if let Some(service) = staged {
            let prefix = staged_prefix(id, &service.name, lease.token());
            if let Err(err) = self.clean(&prefix).await {
                tracing::warn!(request_id = %id, error = %err, "could not remove a source staged by a fenced-out worker; the lifecycle rule will");
            }
        }
        Ok(false)
    }

    fn retry_policy<'a>(&'a self, service: &'a RegisteredService) -> &'a RetryPolicy {
        service
            .collect_retry
            .as_ref()
            .unwrap_or(&self.settings.source_retry)
    }

    /// Copies one source's result into the report store: its records, its files, and last a
    /// manifest (what the report needs of it later).
    async fn stage(
        &self,
        id: RequestId,
        token: u64,
        staged: &StagedSource,
    ) -> Result<(), AttemptError> {
        let prefix = staged_prefix(id, &staged.name, token);
        self.put_file(&format!("{prefix}records.ndjson"), &staged.records)
            .await?;
        let mut files = Vec::with_capacity(staged.files.len());
        for (n, file) in staged.files.iter().enumerate() {
            self.put_file(&format!("{prefix}files/{n}"), &file.path)
                .await?;
            files.push(serde_json::json!({"name": file.name, "size": file.size}));
        }
        let manifest = serde_json::json!({"record_count": staged.record_count, "files": files});
        self.put_bytes(
            &format!("{prefix}manifest.json"),
            manifest.to_string().into_bytes(),
        )
        .await
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), AttemptError> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(AttemptError::Staging)?;
        let mut upload = self.reports.begin(key).await?;
        let mut written = false;
        loop {
            let mut part = Vec::with_capacity(self.settings.part_size.min(1 << 20));
            let read = (&mut file)
                .take(self.settings.part_size as u64)
                .read_to_end(&mut part);
            let part = match read {
                Ok(_) => part,
                Err(err) => {
                    let _ = upload.abort().await;
                    return Err(AttemptError::Staging(err));
                }
            };
            // Every upload has a part, an empty file's an empty one.
            if part.is_empty() && written {
                break;
            }
            let last = part.len() < self.settings.part_size;
            if let Err(err) = upload.write_part(part).await {
                let _ = upload.abort().await;
                return Err(err.into());
            }
            written = true;
            if last {
                break;
            }
        }
        self.complete(upload, key).await
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), AttemptError> {
        let mut upload = self.reports.begin(key).await?;
        if let Err(err) = upload.write_part(bytes).await {
            let _ = upload.abort().await;
            return Err(err.into());
        }
        self.complete(upload, key).await
    }

    async fn complete(&self, upload: T::Upload, key: &str) -> Result<(), AttemptError> {
        if let Err(err) = upload.complete().await {
            // It may have taken effect before its answer was lost, or not at all.
            self.forget(key).await;
            return Err(err.into());
        }
        Ok(())
    }

    /// Brings one collected source back from the staging area onto local disk.
    async fn unstage(
        &self,
        id: RequestId,
        progress: &SourceProgress,
        service: &RegisteredService,
        dir: &Path,
    ) -> Result<StagedSource, AttemptError> {
        let bad = |why: String| AttemptError::Staged(progress.service.clone(), why);
        let prefix = staged_prefix(id, &progress.service, progress.staged.unwrap_or_default());
        let local = dir.join(format!("staged-{}", progress.service));
        std::fs::create_dir_all(&local).map_err(AttemptError::Staging)?;
        let manifest_path = local.join("manifest.json");
        self.reports
            .fetch(&format!("{prefix}manifest.json"), &manifest_path)
            .await?;
        let manifest: serde_json::Value = std::fs::read(&manifest_path)
            .map_err(AttemptError::Staging)
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string())))?;
        let records = local.join("records.ndjson");
        self.reports
            .fetch(&format!("{prefix}records.ndjson"), &records)
            .await?;
        let mut files = Vec::new();
        for (n, file) in manifest["files"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = file["name"]
                .as_str()
                .ok_or_else(|| bad("a file without a name".into()))?;
            let path = local.join(format!("file-{n}"));
            let size = self
                .reports
                .fetch(&format!("{prefix}files/{n}"), &path)
                .await?;
            files.push(StagedFile {
                name: name.to_owned(),
                path,
                size,
            });
        }
        Ok(StagedSource {
            name: progress.service.clone(),
            description: service.description.clone(),
            records,
            record_count: manifest["record_count"]
                .as_u64()
                .ok_or_else(|| bad("no record count".into()))?,
            files,
            not_applicable: None,
        })
    }

    /// Fails the request for a source that failed for good.
    async fn fail(
        &self,
        lease: &OurLease<'_, S>,
        error: String,
    ) -> Result<WorkOutcome, ReportError> {
        let now = self.clock.now();
        // Tried a few times: a lease left behind would hold the failed request off every
        // other worker until it ran out, and its failure unannounced.
        match thrice(|| {
            lease.commit(RequestState::Failed, now, |r| {
                r.last_error = Some(error.clone())
            })
        })
        .await?
        {
            Committed::Applied(request) => {
                metrics::emit(Metric::count(names::REQUESTS_FAILED, 1).with("Kind", "access"));
                self.count(&request, Hop::Failed).await?;
                self.forget_staged(request.id).await;
                Ok(WorkOutcome::Failed { error })
            }
            Committed::FencedOut | Committed::Illegal(_) => Ok(WorkOutcome::FencedOut),
        }
    }

    /// Removes what was staged for a request that is done with it (best effort: the bucket's
    /// lifecycle rule removes what is left).
    async fn forget_staged(&self, id: RequestId) {
        if let Err(err) = self.clean(&staging_prefix(id)).await {
            tracing::warn!(request_id = %id, error = %err, "could not remove the staged sources; the bucket's lifecycle rule will");
        }
    }

    async fn finish(
        &self,
        lease: &OurLease<'_, S>,
        key: String,
        summary: archive::ArchiveSummary,
        started: DateTime<Utc>,
        sources: &[SourceProgress],
        staged_any: bool,
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
                // What each source gave, for its owner to see (sources held on local disk
                // were never recorded); the report is committed either way.
                if let Err(err) = self
                    .store
                    .save_sources(id, lease.token(), sources, now)
                    .await
                {
                    tracing::warn!(request_id = %id, error = %err, "could not record the collected sources");
                }
                if staged_any {
                    self.forget_staged(id).await;
                }
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
        // Still collecting, what was staged kept: the service's own failure never fails a
        // request (the reconciliation re-drives it should this message be lost too). Tried a few
        // times: it is fenced, and a lease left behind holds every other worker off.
        let now = self.clock.now();
        match thrice(|| lease.release(error, now)).await? {
            HandedBack::Failed => Ok(WorkOutcome::FencedOut),
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

    /// Brings every staged source back, then streams the zip into an upload that only
    /// becomes visible on completion. On any error the upload is aborted: nothing is left.
    async fn assemble(
        &self,
        lease: &OurLease<'_, S>,
        progress: &[SourceProgress],
        held: &mut Vec<(usize, StagedSource)>,
        key: &str,
        dir: &Path,
    ) -> Result<archive::ArchiveSummary, AttemptError> {
        let request = lease.request();
        let mut sources = Vec::with_capacity(progress.len());
        for (index, (source, (service, _))) in
            progress.iter().zip(self.registry.collectable()).enumerate()
        {
            match held.iter().position(|(i, _)| *i == index) {
                Some(at) => sources.push(held.swap_remove(at).1),
                None if source.status == progress::SourceStatus::NotApplicable => {
                    // Nothing was asked of it: an empty section that says why.
                    let records = dir.join(format!("{}.not-applicable.ndjson", source.service));
                    std::fs::write(&records, b"").map_err(AttemptError::Staging)?;
                    sources.push(StagedSource {
                        name: source.service.clone(),
                        description: service.description.clone(),
                        records,
                        record_count: 0,
                        files: Vec::new(),
                        not_applicable: source.reason.clone(),
                    });
                }
                None => sources.push(self.unstage(request.id, source, service, dir).await?),
            }
        }

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
