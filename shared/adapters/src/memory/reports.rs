//! Report generation's ports in memory: sources that answer from a map (or fail on demand), a
//! report store whose uploads stay invisible until completed, and an outbox that records.

use super::locked;
use dsr_domain::messages::DomainEvent;
use dsr_domain::ports::{ChannelError, EventOutbox};
use dsr_domain::registry::{CollectFrom, RegisteredService};
use dsr_domain::report::export::{ExportAnswer, ExportOutcome};
use dsr_domain::report::{
    Collected, CollectionResumes, ReportSources, ReportStore, ReportUpload, SourceError,
    SourceQuery, StagedSource, StorageError,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Interlude = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Each service's records about each subject; services named in `failing` fail; services in
/// `exports` are asynchronous exports, ready after so many polls.
#[derive(Default)]
pub struct FakeSources {
    records: Mutex<HashMap<(String, String), Vec<Value>>>,
    failing: Mutex<HashSet<String>>,
    /// Runs at the start of the next collection: what happens elsewhere while a worker works.
    interlude: Mutex<Option<Interlude>>,
    /// Per export source: the polls it takes to be ready (after the start).
    exports: Mutex<HashMap<String, u32>>,
    /// Per source: calls made (a start, each poll and the fetch count one each).
    calls: Mutex<HashMap<String, u32>>,
    /// Per source: how long a collection takes (past the budget it fails).
    slow: Mutex<HashMap<String, std::time::Duration>>,
    /// Answers to exports over RabbitMQ, as kept.
    answers: Mutex<Vec<ExportAnswer>>,
    /// Exports over RabbitMQ asked for: (request, service, job).
    commands: Mutex<Vec<(String, String, String)>>,
}

impl FakeSources {
    pub fn before_next_collect(&self, interlude: Interlude) {
        *locked(&self.interlude) = Some(interlude);
    }

    pub fn hold(&self, service: &str, subject: &str, records: Vec<Value>) {
        locked(&self.records).insert((service.to_owned(), subject.to_owned()), records);
    }

    /// The service erased the subject: it holds nothing about them any more.
    pub fn forget(&self, service: &str, subject: &str) {
        locked(&self.records).remove(&(service.to_owned(), subject.to_owned()));
    }

    /// `service` is an asynchronous export, ready on the `polls`th poll after its start.
    pub fn export(&self, service: &str, polls: u32) {
        locked(&self.exports).insert(service.to_owned(), polls);
    }

    /// The `export_subject` commands sent so far: (request, service, job).
    pub fn export_commands(&self) -> Vec<(String, String, String)> {
        locked(&self.commands).clone()
    }

    /// Calls made to `service` so far.
    pub fn calls(&self, service: &str) -> u32 {
        locked(&self.calls).get(service).copied().unwrap_or(0)
    }

    /// Collecting `service` takes `took` (as the clock on the wall sees it).
    pub fn slow(&self, service: &str, took: std::time::Duration) {
        locked(&self.slow).insert(service.to_owned(), took);
    }

    pub fn set_failing(&self, service: &str, failing: bool) {
        let mut set = locked(&self.failing);
        if failing {
            set.insert(service.to_owned());
        } else {
            set.remove(service);
        }
    }
}

impl ReportSources for FakeSources {
    async fn record_answer(&self, answer: &ExportAnswer) -> Result<(), StorageError> {
        locked(&self.answers).push(answer.clone());
        Ok(())
    }

    async fn collect(
        &self,
        service: &RegisteredService,
        how: &CollectFrom,
        query: SourceQuery<'_>,
        dir: &Path,
        budget: std::time::Duration,
    ) -> Result<Collected, SourceError> {
        let (subject, job) = (query.subject, query.job);
        let fail = |reason: String| SourceError {
            service: service.name.clone(),
            reason,
        };
        if let CollectFrom::Rabbitmq { poll_seconds, .. } = how {
            // A command, then whatever answer was kept for its job.
            let poll_after = std::time::Duration::from_secs(*poll_seconds);
            let Some(job) = job else {
                let job = ulid::Ulid::new().to_string();
                locked(&self.commands).push((
                    query.request.to_string(),
                    service.name.to_string(),
                    job.clone(),
                ));
                return Ok(Collected::Exporting { job, poll_after });
            };
            let answer = locked(&self.answers)
                .iter()
                .find(|a| a.job == job && a.service == service.name)
                .cloned();
            let records = match answer {
                None => {
                    return Ok(Collected::Exporting {
                        job: job.to_owned(),
                        poll_after,
                    })
                }
                Some(answer) if answer.outcome == ExportOutcome::Failed => {
                    return Err(fail(format!(
                        "the service could not export: {}",
                        answer.reason.unwrap_or_default()
                    )))
                }
                Some(answer) => answer.records,
            };
            let path = dir.join(format!("{}.ndjson", service.name));
            let mut file = std::fs::File::create(&path).map_err(|e| fail(e.to_string()))?;
            for record in &records {
                writeln!(file, "{record}").map_err(|e| fail(e.to_string()))?;
            }
            return Ok(Collected::Staged(StagedSource {
                name: service.name.clone(),
                description: service.description.clone(),
                records: path,
                record_count: records.len() as u64,
                files: Vec::new(),
                not_applicable: None,
            }));
        }
        *locked(&self.calls)
            .entry(service.name.to_string())
            .or_default() += 1;
        let interlude = locked(&self.interlude).take();
        if let Some(interlude) = interlude {
            interlude.await;
        }
        let took = locked(&self.slow).get(service.name.as_str()).copied();
        if let Some(took) = took {
            if tokio::time::timeout(budget, tokio::time::sleep(took))
                .await
                .is_err()
            {
                return Err(fail(format!(
                    "did not finish within the invocation's {} s",
                    budget.as_secs()
                )));
            }
        }
        if locked(&self.failing).contains(service.name.as_str()) {
            return Err(fail("answered 503 (simulated)".into()));
        }
        if let Some(polls) = locked(&self.exports).get_mut(service.name.as_str()) {
            // A start, then polls until it is ready; the job id says how many polls were made.
            let made: u32 = job
                .and_then(|j| j.strip_prefix("job-"))
                .and_then(|n| n.parse().ok())
                .map_or(0, |n: u32| n + 1);
            if job.is_none() || made < *polls {
                return Ok(Collected::Exporting {
                    job: format!("job-{made}"),
                    poll_after: std::time::Duration::from_secs(300),
                });
            }
        }
        let records = locked(&self.records)
            .get(&(service.name.to_string(), subject.as_str().to_owned()))
            .cloned()
            .unwrap_or_default();
        let path = dir.join(format!("{}.ndjson", service.name));
        let mut file = std::fs::File::create(&path).map_err(|e| fail(e.to_string()))?;
        for record in &records {
            writeln!(file, "{record}").map_err(|e| fail(e.to_string()))?;
        }
        Ok(Collected::Staged(StagedSource {
            name: service.name.clone(),
            description: service.description.clone(),
            records: path,
            record_count: records.len() as u64,
            files: Vec::new(),
            not_applicable: None,
        }))
    }
}

#[derive(Default)]
struct Stored {
    objects: BTreeMap<String, Vec<u8>>,
    /// Unfinished uploads by id: (key, bytes so far).
    uploads: BTreeMap<u64, (String, Vec<u8>)>,
    next_upload: u64,
}

/// Objects and unfinished uploads, as S3 keeps them: an upload becomes an object only when
/// completed. `failing_completion` makes completions fail; `failing_listing` makes listing
/// and aborting what is under a prefix fail.
#[derive(Default, Clone)]
pub struct InMemoryReportStore {
    stored: Arc<Mutex<Stored>>,
    failing_completion: Arc<AtomicBool>,
    failing_listing: Arc<AtomicBool>,
}

impl InMemoryReportStore {
    pub fn objects(&self) -> Vec<String> {
        locked(&self.stored).objects.keys().cloned().collect()
    }

    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        locked(&self.stored).objects.get(key).cloned()
    }

    pub fn unfinished(&self) -> usize {
        locked(&self.stored).uploads.len()
    }

    /// Uploads begun so far, finished or not.
    pub fn uploads_begun(&self) -> u64 {
        locked(&self.stored).next_upload
    }

    /// An object put there by hand (what a worker that died after completing left).
    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        locked(&self.stored).objects.insert(key.to_owned(), bytes);
    }

    pub fn set_failing_completion(&self, failing: bool) {
        self.failing_completion.store(failing, Ordering::SeqCst);
    }

    pub fn set_failing_listing(&self, failing: bool) {
        self.failing_listing.store(failing, Ordering::SeqCst);
    }

    fn listing(&self) -> Result<(), StorageError> {
        match self.failing_listing.load(Ordering::SeqCst) {
            true => Err(StorageError("listing failed".into())),
            false => Ok(()),
        }
    }
}

pub struct InMemoryUpload {
    store: InMemoryReportStore,
    id: u64,
}

impl ReportStore for InMemoryReportStore {
    type Upload = InMemoryUpload;

    async fn begin(&self, key: &str) -> Result<InMemoryUpload, StorageError> {
        let mut stored = locked(&self.stored);
        stored.next_upload += 1;
        let id = stored.next_upload;
        stored.uploads.insert(id, (key.to_owned(), Vec::new()));
        Ok(InMemoryUpload {
            store: self.clone(),
            id,
        })
    }

    async fn abort_unfinished(&self, prefix: &str) -> Result<usize, StorageError> {
        self.listing()?;
        let mut stored = locked(&self.stored);
        let before = stored.uploads.len();
        stored
            .uploads
            .retain(|_, (key, _)| !key.starts_with(prefix));
        Ok(before - stored.uploads.len())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.listing()?;
        Ok(locked(&self.stored)
            .objects
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        locked(&self.stored).objects.remove(key);
        Ok(())
    }

    async fn fetch(&self, key: &str, path: &Path) -> Result<u64, StorageError> {
        let bytes = locked(&self.stored)
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| StorageError(format!("no object {key}").into()))?;
        std::fs::write(path, &bytes).map_err(|e| StorageError(Box::new(e)))?;
        Ok(bytes.len() as u64)
    }
}

impl ReportUpload for InMemoryUpload {
    async fn write_part(&mut self, bytes: Vec<u8>) -> Result<(), StorageError> {
        let mut stored = locked(&self.store.stored);
        let (_, written) = stored
            .uploads
            .get_mut(&self.id)
            .ok_or_else(|| StorageError("the upload was aborted".into()))?;
        written.extend_from_slice(&bytes);
        Ok(())
    }

    async fn complete(self) -> Result<(), StorageError> {
        if self.store.failing_completion.load(Ordering::SeqCst) {
            return Err(StorageError("completion refused (simulated)".into()));
        }
        let mut stored = locked(&self.store.stored);
        let (key, bytes) = stored
            .uploads
            .remove(&self.id)
            .ok_or_else(|| StorageError("the upload was aborted".into()))?;
        stored.objects.insert(key, bytes);
        Ok(())
    }

    async fn abort(self) -> Result<(), StorageError> {
        locked(&self.store.stored).uploads.remove(&self.id);
        Ok(())
    }
}

/// Records the events published; can be switched to fail.
#[derive(Default)]
pub struct RecordingOutbox {
    events: Mutex<Vec<DomainEvent>>,
    notices: Mutex<Vec<dsr_domain::messages::SubjectNotice>>,
    pub failing: AtomicBool,
}

impl RecordingOutbox {
    pub fn events(&self) -> Vec<DomainEvent> {
        locked(&self.events).clone()
    }

    pub fn notices(&self) -> Vec<dsr_domain::messages::SubjectNotice> {
        locked(&self.notices).clone()
    }
}

impl EventOutbox for RecordingOutbox {
    async fn publish(&self, event: &DomainEvent) -> Result<(), ChannelError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(ChannelError("outbox unavailable (simulated)".into()));
        }
        locked(&self.events).push(event.clone());
        Ok(())
    }

    async fn tell(&self, notice: &dsr_domain::messages::SubjectNotice) -> Result<(), ChannelError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(ChannelError("outbox unavailable (simulated)".into()));
        }
        locked(&self.notices).push(notice.clone());
        Ok(())
    }
}

/// Records when each collection asked to be resumed; can be switched to fail.
#[derive(Default)]
pub struct RecordingResumes {
    asked: Mutex<Vec<(dsr_domain::RequestId, chrono::DateTime<chrono::Utc>)>>,
    pub failing: AtomicBool,
}

impl RecordingResumes {
    pub fn asked(&self) -> Vec<(dsr_domain::RequestId, chrono::DateTime<chrono::Utc>)> {
        locked(&self.asked).clone()
    }
}

impl CollectionResumes for RecordingResumes {
    async fn resume_at(
        &self,
        id: dsr_domain::RequestId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), ChannelError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(ChannelError(
                "the schedule-requests queue is down (simulated)".into(),
            ));
        }
        locked(&self.asked).push((id, at));
        Ok(())
    }
}
