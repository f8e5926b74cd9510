//! Report generation with in-memory ports and a clock the tests move: every path that the
//! integration tests also walk over the wire, in milliseconds.

use super::*;
use chrono::{TimeZone, Utc};
use dsr_adapters::memory::{
    FakeSources, InMemoryReportStore, InMemoryRequestStore, RecordingErasurePorts, RecordingOutbox,
    RecordingResumes,
};
use dsr_domain::registry::ServiceRegistry;
use dsr_domain::report::progress::SourceStatus;
use dsr_domain::{
    FixedClock, Request, RequestId, RequestMessage, RequestState, RequestStore, SubjectHasher,
    SubjectId,
};
use serde_json::{json, Value};
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;

type Reports = AccessReports<
    Arc<InMemoryRequestStore>,
    Arc<FakeSources>,
    InMemoryReportStore,
    Arc<RecordingOutbox>,
    Arc<FixedClock>,
    Arc<RecordingResumes>,
>;
type Verifications = ErasureVerifications<
    Arc<InMemoryRequestStore>,
    Arc<FakeSources>,
    Arc<RecordingErasurePorts>,
    Arc<FixedClock>,
>;

const SUBJECT: &str = "rita@example.com";
const REGISTRY: &str = r#"
services:
  - name: profile
    description: Your profile
    collect: { kind: dynamodb, table: profiles, key_attribute: uid }
  - name: orders
    description: Your orders
    collect: { kind: http, url: "https://orders.example/users/{subject}" }
  - name: newsletter
    description: Holds nothing to report
"#;

struct Fixture {
    store: Arc<InMemoryRequestStore>,
    sources: Arc<FakeSources>,
    reports: InMemoryReportStore,
    events: Arc<RecordingOutbox>,
    /// When collections asked to be resumed.
    resumes: Arc<RecordingResumes>,
    /// Where verification results go.
    results: Arc<RecordingErasurePorts>,
    clock: Arc<FixedClock>,
    staging: tempfile::TempDir,
    identities: Arc<dsr_adapters::memory::InMemoryIdentities>,
}

fn fixture() -> Fixture {
    let sources = Arc::new(FakeSources::default());
    sources.hold(
        "profile",
        SUBJECT,
        vec![json!({"uid": SUBJECT, "name": "Rita"})],
    );
    sources.hold(
        "orders",
        SUBJECT,
        vec![json!({"order": 1}), json!({"order": 2, "note": "=SUM(A1)"})],
    );
    Fixture {
        store: Arc::new(InMemoryRequestStore::default()),
        sources,
        reports: InMemoryReportStore::default(),
        events: Arc::new(RecordingOutbox::default()),
        resumes: Arc::new(RecordingResumes::default()),
        results: Arc::new(RecordingErasurePorts::default()),
        clock: Arc::new(FixedClock::at(
            Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap(),
        )),
        staging: tempfile::tempdir().unwrap(),
        identities: Arc::default(),
    }
}

impl Fixture {
    /// A worker named `owner`, as the function builds one.
    fn worker(&self, owner: &str) -> Reports {
        AccessReports {
            store: self.store.clone(),
            sources: self.sources.clone(),
            reports: self.reports.clone(),
            events: self.events.clone(),
            clock: self.clock.clone(),
            resumes: self.resumes.clone(),
            hasher: SubjectHasher::new("a-test-key-of-16-bytes"),
            registry: ServiceRegistry::parse(REGISTRY).unwrap(),
            settings: ReportSettings {
                staging_dir: self.staging.path().to_owned(),
                ..ReportSettings::default()
            },
            worker: Worker {
                owner: owner.into(),
                lease_ttl: Duration::seconds(960),
            },
            identities: self.identities.clone(),
        }
    }

    /// The function's handler: `reports` for access requests, and verifications over the
    /// same sources and `registry`.
    fn handler(&self, reports: Reports) -> AccessRequestHandler<Reports, Verifications> {
        let registry = reports.registry.clone();
        AccessRequestHandler {
            verifications: ErasureVerifications {
                store: self.store.clone(),
                sources: self.sources.clone(),
                results: self.results.clone(),
                clock: self.clock.clone(),
                registry,
                staging_dir: self.staging.path().to_owned(),
            },
            reports,
        }
    }

    async fn access_request(&self) -> RequestId {
        let request = Request::receive(
            RequestKind::Access,
            SubjectId::parse(SUBJECT).unwrap(),
            self.clock.now(),
        );
        let hash = SubjectHasher::new("a-test-key-of-16-bytes").hash(&request.subject);
        self.store
            .create(&request, &hash, None, None)
            .await
            .unwrap();
        request.id
    }

    async fn request(&self, id: RequestId) -> Request {
        self.store.get(id).await.unwrap().unwrap()
    }
}

fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).unwrap();
            let mut content = Vec::new();
            file.read_to_end(&mut content).unwrap();
            (file.name().unwrap().to_string(), content)
        })
        .collect()
}

#[tokio::test]
async fn a_report_holds_every_source_and_is_announced() {
    let f = fixture();
    let id = f.access_request().await;
    let WorkOutcome::Completed(report) = f.worker("a").generate(id).await.unwrap() else {
        panic!("not completed");
    };
    assert_eq!(report.key, format!("reports/{id}/1/report.zip"));
    assert_eq!(f.reports.objects(), std::slice::from_ref(&report.key));
    assert_eq!(f.reports.unfinished(), 0);

    let files = unzip(&f.reports.object(&report.key).unwrap());
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let counts: Vec<(&str, u64)> = manifest["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["record_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [("profile", 1), ("orders", 2)]);
    let csv = String::from_utf8(files["sources/orders/records.csv"].clone()).unwrap();
    assert!(csv.contains("'=SUM(A1)"), "formulas are defused: {csv}");
    assert!(!files.keys().any(|f| f.contains("newsletter")));

    let stored = f.request(id).await;
    assert_eq!(stored.state, RequestState::ReportReady);
    assert_eq!(stored.report, Some(report.clone()));
    assert_eq!(
        f.reports.uploads_begun(),
        1,
        "sources that answer at once are not staged: the report is the one upload"
    );
    let collected: Vec<_> = stored
        .sources
        .iter()
        .map(|s| (s.service.as_str(), s.status, s.records))
        .collect();
    assert_eq!(
        collected,
        [
            ("profile", SourceStatus::Collected, Some(1)),
            ("orders", SourceStatus::Collected, Some(2))
        ],
        "what each source gave is recorded for its owner"
    );
    assert_eq!(
        stored.report.unwrap().expires_at,
        f.clock.now() + Duration::days(30)
    );
    let mut events = f.events.events();
    let told: Vec<_> = events.iter().map(|e| e.event_type).collect();
    // The worker announced the request when it took it (the submit path no longer does).
    assert_eq!(
        told,
        [
            dsr_domain::messages::EventType::RequestSubmitted,
            dsr_domain::messages::EventType::ReportReady
        ]
    );
    assert!(!serde_json::to_string(&events[0])
        .unwrap()
        .contains(stored.subject.as_str()));
    events.remove(0);
    let notices = f.events.notices();
    assert_eq!(
        notices.len(),
        1,
        "the subject is told, by the notifying service"
    );
    assert_eq!(notices[0].subject, stored.subject);
    assert!(
        !serde_json::to_string(&events[0])
            .unwrap()
            .contains(stored.subject.as_str()),
        "the event names nobody"
    );

    // A duplicate message: nothing generated again, the event sent again (same id).
    assert_eq!(
        f.worker("b").generate(id).await.unwrap(),
        WorkOutcome::NothingToDo(Some(RequestState::ReportReady))
    );
    assert_eq!(f.reports.objects().len(), 1);
    let ready: Vec<_> = f
        .events
        .events()
        .into_iter()
        .filter(|e| e.event_type == dsr_domain::messages::EventType::ReportReady)
        .collect();
    assert_eq!(ready.len(), 2);
    assert_eq!(ready[0].message_id, ready[1].message_id);
}

impl Fixture {
    fn source<'a>(
        request: &'a Request,
        name: &str,
    ) -> &'a dsr_domain::report::progress::SourceProgress {
        request
            .sources
            .iter()
            .find(|s| s.service.as_str() == name)
            .unwrap_or_else(|| panic!("no progress for {name}: {:?}", request.sources))
    }
}

#[tokio::test]
async fn a_failing_source_is_retried_on_its_own_after_its_backoff_and_the_others_are_kept() {
    let f = fixture();
    let id = f.access_request().await;
    f.sources.set_failing("orders", true);
    let started = f.clock.now();
    match f.worker("a").generate(id).await.unwrap() {
        WorkOutcome::Waiting { until, errors } => {
            assert_eq!(
                until,
                started + Duration::seconds(60),
                "the first retry waits the base delay"
            );
            assert_eq!(errors.len(), 1);
            assert!(errors[0].to_string().contains("orders"), "{}", errors[0]);
            assert!(
                !errors[0].to_string().contains(SUBJECT),
                "no personal data in errors"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        f.resumes.asked(),
        [(id, started + Duration::seconds(60))],
        "handed on"
    );
    let request = f.request(id).await;
    assert_eq!(
        (request.state, request.lease.is_none(), request.attempts),
        (RequestState::Collecting, true, 0),
        "still collecting, nobody's, and the request counted no failure"
    );
    let profile = Fixture::source(&request, "profile");
    assert_eq!(
        (profile.status, profile.records),
        (SourceStatus::Collected, Some(1))
    );
    let orders = Fixture::source(&request, "orders");
    assert_eq!((orders.status, orders.attempts), (SourceStatus::Pending, 1));
    assert!(orders.error.as_deref().unwrap().contains("503"));
    assert!(
        f.reports
            .objects()
            .iter()
            .all(|k| k.starts_with(&format!("staging/{id}/profile/"))),
        "only the collected source is staged: {:?}",
        f.reports.objects()
    );
    assert!(no_report_ready(&f.events.events()));

    // Delivered early (a duplicate): nothing is due, nothing is collected.
    assert!(matches!(
        f.worker("a").generate(id).await.unwrap(),
        WorkOutcome::Waiting { .. }
    ));
    assert_eq!(f.sources.calls("orders"), 1);

    // The second failure waits twice as long; then the source is back and all is well.
    f.clock.advance(Duration::seconds(60));
    match f.worker("a").generate(id).await.unwrap() {
        WorkOutcome::Waiting { until, .. } => {
            assert_eq!(until, f.clock.now() + Duration::seconds(120))
        }
        other => panic!("{other:?}"),
    }
    f.sources.set_failing("orders", false);
    f.clock.advance(Duration::seconds(120));
    let WorkOutcome::Completed(report) = f.worker("b").generate(id).await.unwrap() else {
        panic!("not completed");
    };
    assert_eq!(
        (f.sources.calls("profile"), f.sources.calls("orders")),
        (1, 3),
        "the collected source was not collected again"
    );
    let files = unzip(&f.reports.object(&report.key).unwrap());
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["sources"].as_array().unwrap().len(), 2);
    assert_eq!(
        f.reports.objects(),
        [report.key],
        "the staged sources are gone once the report is made"
    );
    let request = f.request(id).await;
    assert_eq!(
        (request.state, request.last_error),
        (RequestState::ReportReady, None)
    );
}

#[tokio::test]
async fn a_source_failing_its_last_attempt_fails_the_request_and_its_message_is_dead_lettered() {
    let f = fixture();
    let (id, last_attempt) = f.source_failing_at_its_last_attempt().await;
    let Outcome::Reject(reason) = last_attempt.await else {
        panic!("the last attempt is not retried");
    };
    assert!(reason.contains("report failed"), "{reason}");
    assert!(
        reason.contains("profile") && reason.contains("after 2 attempts"),
        "{reason}"
    );
    let request = f.request(id).await;
    assert_eq!(request.state, RequestState::Failed);
    assert_eq!(
        Fixture::source(&request, "profile").status,
        SourceStatus::Failed
    );
    assert!(
        f.reports.objects().is_empty(),
        "what was staged of the other source is gone: {:?}",
        f.reports.objects()
    );
}

/// The write that fails the request meets a store failure: tried again, rather than leaving
/// the lease to hold the failed request off every worker for its 16 minutes, unannounced.
#[tokio::test]
async fn a_request_failing_for_good_is_failed_even_when_the_store_stumbles_once() {
    let f = fixture();
    let (id, last_attempt) = f.source_failing_at_its_last_attempt().await;
    f.store.fail_next_calls(1);
    let outcome = last_attempt.await;
    assert!(matches!(outcome, Outcome::Reject(_)), "{outcome:?}");
    let request = f.request(id).await;
    assert_eq!((request.state, request.lease), (RequestState::Failed, None));
}

impl Fixture {
    /// An access request whose profile source fails both its allowed attempts: the first
    /// attempt is made; the second is returned, to be run.
    async fn source_failing_at_its_last_attempt(
        &self,
    ) -> (RequestId, impl std::future::Future<Output = Outcome> + '_) {
        let id = self.access_request().await;
        self.sources.set_failing("profile", true);
        let mut reports = self.worker("a");
        reports.settings.source_retry.attempts = 2;
        let handler = self.handler(reports);
        let message = ReportWork::Access(RequestMessage::new(
            id,
            RequestKind::Access,
            self.clock.now(),
        ));
        assert_eq!(
            handler.handle(message.clone(), &Origin::Internal).await,
            Outcome::Done,
            "handed on through delayed dispatch, not left on the queue"
        );
        self.clock.advance(Duration::seconds(60));
        (id, async move {
            handler.handle(message, &Origin::Internal).await
        })
    }
}

/// Profile and orders answer at once; the vendor is an asynchronous export.
const WITH_EXPORT: &str = r#"
services:
  - name: profile
    description: Your profile
    collect: { kind: dynamodb, table: profiles, key_attribute: uid }
  - name: orders
    description: Your orders
    collect: { kind: http, url: "https://orders.example/users/{subject}" }
  - name: vendor
    description: What our CRM vendor holds
    collect:
      kind: export
      start_url: "https://crm.example/exports?user={subject}"
      status_url: "https://crm.example/exports/{job}"
      result_url: "https://crm.example/exports/{job}/records"
"#;

#[tokio::test]
async fn a_report_whose_export_needs_three_invocations_collects_every_source_once() {
    let f = fixture();
    f.sources.export("vendor", 2);
    f.sources
        .hold("vendor", SUBJECT, vec![json!({"segment": "loyal"})]);
    let id = f.access_request().await;
    let worker = |owner: &str| AccessReports {
        registry: ServiceRegistry::parse(WITH_EXPORT).unwrap(),
        ..f.worker(owner)
    };
    // 1: the two quick sources are collected, the export started.
    let WorkOutcome::Waiting { until, errors } = worker("a").generate(id).await.unwrap() else {
        panic!("waits for the export");
    };
    assert!(errors.is_empty(), "an export under way is no failure");
    assert_eq!(
        until,
        f.clock.now() + Duration::seconds(300),
        "its next poll"
    );
    let request = f.request(id).await;
    let vendor = Fixture::source(&request, "vendor");
    assert_eq!(
        (vendor.status, vendor.job.as_deref()),
        (SourceStatus::Exporting, Some("job-0"))
    );
    // 2: polled, still running.
    f.clock.advance(Duration::seconds(300));
    assert!(matches!(
        worker("b").generate(id).await.unwrap(),
        WorkOutcome::Waiting { .. }
    ));
    // 3: polled, done, fetched; the report is assembled from what was staged.
    f.clock.advance(Duration::seconds(300));
    let WorkOutcome::Completed(report) = worker("c").generate(id).await.unwrap() else {
        panic!("the third invocation completes");
    };
    assert_eq!(
        (
            f.sources.calls("profile"),
            f.sources.calls("orders"),
            f.sources.calls("vendor")
        ),
        (1, 1, 3),
        "a start, a poll, a poll that fetched; the others once"
    );
    assert_eq!(f.resumes.asked().len(), 2);
    let files = unzip(&f.reports.object(&report.key).unwrap());
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let counts: Vec<(String, u64)> = manifest["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["record_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("profile".into(), 1),
            ("orders".into(), 2),
            ("vendor".into(), 1)
        ]
    );
    let request = f.request(id).await;
    assert!(request
        .sources
        .iter()
        .all(|s| s.status == SourceStatus::Collected));
}

#[tokio::test]
async fn a_worker_killed_in_the_middle_is_resumed_without_collecting_finished_sources_again() {
    let f = fixture();
    let id = f.access_request().await;
    // Orders hangs; profile is collected at once, held, and staged once the worker has run a
    // while. Then the worker dies.
    f.sources
        .slow("orders", std::time::Duration::from_secs(3600));
    let mut worker = f.worker("a");
    worker.settings.stage_after = std::time::Duration::from_millis(100);
    let killed =
        tokio::time::timeout(std::time::Duration::from_millis(500), worker.generate(id)).await;
    assert!(killed.is_err(), "still collecting when it was killed");
    let request = f.request(id).await;
    assert_eq!(
        Fixture::source(&request, "profile").status,
        SourceStatus::Collected
    );
    assert_eq!(
        Fixture::source(&request, "orders").status,
        SourceStatus::Pending
    );

    // Its lease runs out; the next worker collects only what was not done.
    f.sources.slow("orders", std::time::Duration::ZERO);
    f.clock.advance(Duration::seconds(961));
    let WorkOutcome::Completed(report) = f.worker("b").generate(id).await.unwrap() else {
        panic!("resumed and completed");
    };
    assert_eq!(
        (f.sources.calls("profile"), f.sources.calls("orders")),
        (1, 2)
    );
    let files = unzip(&f.reports.object(&report.key).unwrap());
    assert!(
        files.contains_key("sources/profile/records.json"),
        "{:?}",
        files.keys()
    );
}

#[tokio::test]
async fn a_source_slower_than_the_invocations_budget_is_a_failed_attempt() {
    let f = fixture();
    let id = f.access_request().await;
    f.sources
        .slow("orders", std::time::Duration::from_secs(3600));
    let mut worker = f.worker("a");
    worker.settings.time_budget = std::time::Duration::from_millis(50);
    let WorkOutcome::Waiting { errors, .. } = worker.generate(id).await.unwrap() else {
        panic!("handed on");
    };
    assert!(
        errors[0].reason.contains("did not finish within"),
        "{errors:?}"
    );
    assert_eq!(Fixture::source(&f.request(id).await, "orders").attempts, 1);
}

#[tokio::test]
async fn a_collection_that_cannot_be_handed_on_is_given_back_for_the_queue_to_retry() {
    let f = fixture();
    let id = f.access_request().await;
    f.sources.set_failing("orders", true);
    f.resumes.failing.store(true, Ordering::SeqCst);
    assert!(matches!(
        f.worker("a").generate(id).await.unwrap(),
        WorkOutcome::RetryLater { .. }
    ));
    let request = f.request(id).await;
    assert_eq!(
        (request.state, request.lease.is_none()),
        (RequestState::Collecting, true)
    );
    assert_eq!(
        Fixture::source(&request, "profile").status,
        SourceStatus::Collected
    );
}

/// The slow worker's lease runs out and worker "fast" takes the request.
async fn lease_passes_to_another(store: &InMemoryRequestStore, clock: &FixedClock, id: RequestId) {
    clock.advance(Duration::seconds(961));
    let taken = store
        .acquire_lease(
            id,
            "fast",
            RequestState::Collecting,
            clock.now(),
            Duration::seconds(960),
        )
        .await
        .unwrap();
    assert!(matches!(taken, dsr_domain::LeaseOutcome::Acquired(_)));
}

#[tokio::test]
async fn a_worker_whose_lease_passed_to_another_is_fenced_out_and_its_report_deleted() {
    let f = fixture();
    let id = f.access_request().await;
    // While the slow worker collects, its lease runs out and another worker takes over.
    let (store, clock) = (f.store.clone(), f.clock.clone());
    f.sources.before_next_collect(Box::pin(async move {
        lease_passes_to_another(&store, &clock, id).await;
    }));
    assert_eq!(
        f.worker("slow").generate(id).await.unwrap(),
        WorkOutcome::FencedOut
    );
    assert!(
        f.reports.objects().is_empty(),
        "what the fenced worker staged is gone: {:?}",
        f.reports.objects()
    );
    assert!(no_report_ready(&f.events.events()));
    let request = f.request(id).await;
    assert_eq!(
        (request.state, request.fencing_token),
        (RequestState::Collecting, 2),
        "the request is the new worker's"
    );
}

#[tokio::test]
async fn a_worker_whose_lease_passed_and_whose_completion_fails_removes_only_its_own_report() {
    let f = fixture();
    let id = f.access_request().await;
    // While the slow worker collects, its lease passes to another worker, which finishes
    // first; then the slow worker's completion fails (the next worker aborted its upload).
    let (store, clock, reports) = (f.store.clone(), f.clock.clone(), f.reports.clone());
    let theirs = format!("reports/{id}/2/report.zip");
    let committed = theirs.clone();
    f.sources.before_next_collect(Box::pin(async move {
        lease_passes_to_another(&store, &clock, id).await;
        reports.put(&committed, b"the fast worker's report".to_vec());
        reports.set_failing_completion(true);
    }));
    assert_eq!(
        f.worker("slow").generate(id).await.unwrap(),
        WorkOutcome::FencedOut
    );
    assert_eq!(
        f.reports.objects(),
        [theirs],
        "the other worker's report is kept"
    );
    assert_eq!(
        f.reports.unfinished(),
        0,
        "the slow worker's upload is gone"
    );
}

#[tokio::test]
async fn a_storage_failure_while_clearing_up_hands_the_request_back_at_once() {
    let f = fixture();
    let id = f.access_request().await;
    f.reports.set_failing_listing(true);
    assert!(matches!(
        f.worker("a").generate(id).await.unwrap(),
        WorkOutcome::RetryLater { .. }
    ));
    let request = f.request(id).await;
    assert_eq!(
        (request.state, request.lease.is_none()),
        (RequestState::Collecting, true),
        "no lease left holding the next worker off"
    );
    f.reports.set_failing_listing(false);
    assert!(matches!(
        f.worker("b").generate(id).await.unwrap(),
        WorkOutcome::Completed(_)
    ));
}

#[tokio::test]
async fn what_a_dead_attempt_left_is_removed_before_the_next_one_starts() {
    let f = fixture();
    let id = f.access_request().await;
    // A worker took the request, started an upload, and died; another left a finished object.
    let dead = f
        .store
        .acquire_lease(
            id,
            "dead",
            RequestState::Collecting,
            f.clock.now(),
            Duration::seconds(960),
        )
        .await
        .unwrap();
    assert!(matches!(dead, dsr_domain::LeaseOutcome::Acquired(_)));
    drop(
        f.reports
            .begin(&format!("reports/{id}/1/report.zip"))
            .await
            .unwrap(),
    );
    f.reports
        .put(&format!("reports/{id}/0/report.zip"), b"half".to_vec());
    assert_eq!(f.reports.unfinished(), 1);

    // While the dead worker's lease lasts, the request is busy.
    let WorkOutcome::Busy { until } = f.worker("next").generate(id).await.unwrap() else {
        panic!("taken while leased");
    };
    assert_eq!(until, f.clock.now() + Duration::seconds(960));

    f.clock.advance(Duration::seconds(961));
    let WorkOutcome::Completed(report) = f.worker("next").generate(id).await.unwrap() else {
        panic!("not completed");
    };
    assert_eq!(
        f.reports.objects(),
        [report.key],
        "only the new report is left"
    );
    assert_eq!(f.reports.unfinished(), 0);
}

#[tokio::test]
async fn a_store_refusing_to_complete_the_upload_is_a_failed_attempt_that_leaves_nothing() {
    let f = fixture();
    let id = f.access_request().await;
    f.reports.set_failing_completion(true);
    assert!(matches!(
        f.worker("a").generate(id).await.unwrap(),
        WorkOutcome::RetryLater { .. }
    ));
    assert!(f.reports.objects().is_empty());
    assert_eq!(
        f.reports.unfinished(),
        0,
        "the refused upload was aborted at once"
    );
    f.reports.set_failing_completion(false);
    assert!(matches!(
        f.worker("a").generate(id).await.unwrap(),
        WorkOutcome::Completed(_)
    ));
    assert_eq!(f.reports.unfinished(), 0);
}

#[tokio::test]
async fn an_announcement_that_fails_is_retried_and_the_report_kept() {
    let f = fixture();
    let id = f.access_request().await;
    // Fails after the request was announced, while the report is made: its own event fails.
    let events = f.events.clone();
    f.sources.before_next_collect(Box::pin(async move {
        events.failing.store(true, Ordering::SeqCst);
    }));
    let handler = f.handler(f.worker("a"));
    let message = ReportWork::Access(RequestMessage::new(id, RequestKind::Access, f.clock.now()));
    assert!(matches!(
        handler.handle(message.clone(), &Origin::Internal).await,
        Outcome::Retry(Some(_))
    ));
    assert_eq!(f.request(id).await.state, RequestState::ReportReady);
    f.events.failing.store(false, Ordering::SeqCst);
    assert_eq!(
        handler.handle(message, &Origin::Internal).await,
        Outcome::Done
    );
    let told: Vec<_> = f.events.events().iter().map(|e| e.event_type).collect();
    assert_eq!(
        told,
        [
            dsr_domain::messages::EventType::RequestSubmitted,
            dsr_domain::messages::EventType::ReportReady
        ],
        "announced on the redelivery"
    );
    assert_eq!(
        f.reports.objects().len(),
        1,
        "the report was not made twice"
    );
}

#[tokio::test]
async fn erasure_messages_on_the_access_queue_are_rejected() {
    let f = fixture();
    let handler = f.handler(f.worker("a"));
    let message = ReportWork::Access(RequestMessage::new(
        RequestId::new_at(f.clock.now()),
        RequestKind::Erasure,
        f.clock.now(),
    ));
    assert_eq!(
        handler.handle(message, &Origin::Internal).await,
        Outcome::Reject("a request of kind `erasure` on the access-requests queue".into())
    );
}

fn no_report_ready(events: &[dsr_domain::messages::DomainEvent]) -> bool {
    events
        .iter()
        .all(|e| e.event_type != dsr_domain::messages::EventType::ReportReady)
}

#[tokio::test]
async fn a_worker_that_cannot_count_its_receipt_gives_the_lease_up_at_once() {
    let f = fixture();
    let id = f.access_request().await;
    f.store.set_failing_hops(true);
    assert!(f.worker("a").generate(id).await.is_err());
    let request = f.request(id).await;
    assert_eq!(request.lease, None, "not held for the lease's whole time");
    assert_eq!(request.attempts, 0, "nothing of the work began");
    f.store.set_failing_hops(false);
    // The next delivery, to another worker, takes it at once.
    assert!(matches!(
        f.worker("b").generate(id).await.unwrap(),
        WorkOutcome::Completed(_)
    ));
}

#[tokio::test]
async fn a_worker_whose_lease_was_taken_but_the_answer_lost_gives_it_up_at_once() {
    let f = fixture();
    let id = f.access_request().await;
    f.store.lose_next_lease_answer();
    assert!(f.worker("a").generate(id).await.is_err());
    let request = f.request(id).await;
    assert_eq!(request.lease, None, "not held for the lease's whole time");
    // The next delivery, to another worker, takes it at once.
    assert!(matches!(
        f.worker("b").generate(id).await.unwrap(),
        WorkOutcome::Completed(_)
    ));
}

#[tokio::test]
async fn a_lease_whose_answer_was_lost_is_given_up_even_when_the_store_stumbles_again() {
    let f = fixture();
    let id = f.access_request().await;
    f.store.lose_next_lease_answer();
    // The read that finds the lease ours, then the write that gives it up, each fail once:
    // with one try each the lease would hold every delivery off for its 16 minutes.
    f.store.fail_next_calls(2);
    assert!(f.worker("a").generate(id).await.is_err());
    assert_eq!(f.request(id).await.lease, None, "given up");
    assert!(matches!(
        f.worker("b").generate(id).await.unwrap(),
        WorkOutcome::Completed(_)
    ));
}

/// Profile can be read and is erased; orders can only be read; newsletter is only erased.
const HOLDERS: &str = r#"
services:
  - name: profile
    description: Your profile
    collect: { kind: dynamodb, table: profiles, key_attribute: uid }
    broker_user: svc-profile
    erase: { via: { kind: rabbitmq, routing_key: erasure.profile } }
  - name: orders
    description: Your orders
    collect: { kind: http, url: "https://orders.example/users/{subject}" }
  - name: newsletter
    broker_user: svc-newsletter
    erase: { via: { kind: rabbitmq, routing_key: erasure.newsletter } }
"#;

impl Fixture {
    /// An erasure of the subject, every holder answered: `verifying`.
    async fn verifying_erasure(&self) -> Request {
        let mut request = Request::receive(
            RequestKind::Erasure,
            SubjectId::parse(SUBJECT).unwrap(),
            self.clock.now(),
        );
        request.state = RequestState::Verifying;
        let hash = SubjectHasher::new("a-test-key-of-16-bytes").hash(&request.subject);
        self.store
            .create(&request, &hash, None, None)
            .await
            .unwrap();
        request
    }

    fn verifier(&self) -> AccessRequestHandler<Reports, Verifications> {
        self.handler(AccessReports {
            registry: ServiceRegistry::parse(HOLDERS).unwrap(),
            ..self.worker("v")
        })
    }
}

#[tokio::test]
async fn a_verification_reads_every_erased_holder_that_can_be_read_and_says_what_is_left() {
    let f = fixture();
    let erasure = f.verifying_erasure().await;
    let ask = dsr_domain::erasure::VerifyErasure::new(erasure.id, erasure.updated_at);
    // Profile still holds the subject's record; orders (read-only) is not an erased holder.
    assert_eq!(
        f.verifier()
            .handle(ReportWork::Verify(ask.clone()), &Origin::Internal)
            .await,
        Outcome::Done
    );
    let sent = f.results.verified.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].requested_at, ask.requested_at);
    let names = |list: &[dsr_domain::ServiceName]| {
        list.iter()
            .map(|s| s.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&sent[0].checked), ["profile"]);
    assert_eq!(sent[0].found.len(), 1);
    assert_eq!(sent[0].found[0].service.as_str(), "profile");
    assert_eq!(sent[0].found[0].records, 1);
    assert!(
        !serde_json::to_string(&sent[0]).unwrap().contains("Rita"),
        "counts leave, never records"
    );

    // Erased for real: nothing found.
    f.sources.forget("profile", SUBJECT);
    assert_eq!(
        f.verifier()
            .handle(ReportWork::Verify(ask.clone()), &Origin::Internal)
            .await,
        Outcome::Done
    );
    let sent = f.results.verified.lock().unwrap().clone();
    assert!(sent[1].found.is_empty());
}

#[tokio::test]
async fn a_holder_that_cannot_be_read_is_not_a_holder_found_empty() {
    let f = fixture();
    let erasure = f.verifying_erasure().await;
    f.sources.set_failing("profile", true);
    let ask = dsr_domain::erasure::VerifyErasure::new(erasure.id, erasure.updated_at);
    assert!(matches!(
        f.verifier()
            .handle(ReportWork::Verify(ask.clone()), &Origin::Internal)
            .await,
        Outcome::Retry(Some(_))
    ));
    assert!(
        f.results.verified.lock().unwrap().is_empty(),
        "no result sent"
    );
    // From outside the service: refused; for a request not verifying: nothing to do.
    assert!(matches!(
        f.verifier()
            .handle(
                ReportWork::Verify(ask),
                &Origin::Broker("svc-profile".into())
            )
            .await,
        Outcome::Reject(_)
    ));
    let access = f.access_request().await;
    let ask = dsr_domain::erasure::VerifyErasure::new(access, f.clock.now());
    assert_eq!(
        f.verifier()
            .handle(ReportWork::Verify(ask), &Origin::Internal)
            .await,
        Outcome::Done
    );
    assert!(f.results.verified.lock().unwrap().is_empty());
}

/// Profile and orders answer at once; the ledger speaks only AMQP.
const WITH_LEDGER: &str = r#"
services:
  - name: profile
    description: Your profile
    collect: { kind: dynamodb, table: profiles, key_attribute: uid }
  - name: orders
    description: Your orders
    collect: { kind: http, url: "https://orders.example/users/{subject}" }
  - name: ledger
    description: Your ledger entries
    broker_user: svc-ledger
    collect: { kind: rabbitmq, routing_key: export.ledger }
"#;

fn answer(id: RequestId, job: &str, records: Vec<Value>) -> ReportWork {
    ReportWork::Answer(dsr_domain::report::export::ExportAnswer {
        version: 1,
        answer_type: "export_answer".into(),
        message_id: format!("answer:{job}"),
        request_id: id,
        service: dsr_domain::ServiceName::parse("ledger").unwrap(),
        job: job.into(),
        outcome: dsr_domain::report::export::ExportOutcome::Records,
        records,
        reason: None,
    })
}

/// An access request with the ledger registered, worked on once (the ledger asked, the rest
/// collected): the handler, the request, its work message, the export's job.
async fn ledger_asked(
    f: &Fixture,
) -> (
    AccessRequestHandler<Reports, Verifications>,
    RequestId,
    ReportWork,
    String,
) {
    let id = f.access_request().await;
    let mut reports = f.worker("a");
    reports.registry = ServiceRegistry::parse(WITH_LEDGER).unwrap();
    let handler = f.handler(reports);
    let work = ReportWork::Access(RequestMessage::new(id, RequestKind::Access, f.clock.now()));
    assert_eq!(
        handler.handle(work.clone(), &Origin::Internal).await,
        Outcome::Done
    );
    let job = f.sources.export_commands()[0].2.clone();
    (handler, id, work, job)
}

#[tokio::test]
async fn an_export_over_rabbitmq_is_collected_as_soon_as_its_own_holder_answers() {
    let f = fixture();
    let (handler, id, _, job) = ledger_asked(&f).await;
    let commands = f.sources.export_commands();
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert_eq!(commands[0].1, "ledger");
    let waiting = f.request(id).await;
    assert_eq!(waiting.state, RequestState::Collecting);
    assert_eq!(
        Fixture::source(&waiting, "ledger").status,
        SourceStatus::Exporting
    );

    let records = vec![json!({"entry": 1}), json!({"entry": 2})];
    // Another service's broker user cannot answer for the ledger.
    let Outcome::Reject(why) = handler
        .handle(
            answer(id, &job, records.clone()),
            &Origin::Broker("svc-other".into()),
        )
        .await
    else {
        panic!("an answer from another broker user was taken");
    };
    assert!(why.contains("only its broker user"), "{why}");
    // An answer to a job nobody waits on changes nothing.
    let other_job = ulid::Ulid::new().to_string();
    assert_eq!(
        handler
            .handle(
                answer(id, &other_job, vec![json!({"forged": true})]),
                &Origin::Broker("svc-ledger".into())
            )
            .await,
        Outcome::Done
    );
    assert_eq!(f.request(id).await.state, RequestState::Collecting);
    // A job id that is no ULID never reaches a key.
    let Outcome::Reject(why) = handler
        .handle(
            answer(id, "../../reports/x", vec![]),
            &Origin::Broker("svc-ledger".into()),
        )
        .await
    else {
        panic!("a made-up job id was taken");
    };
    assert!(why.contains("job"), "{why}");

    // Its own answer: collected at once, long before the next poll.
    assert_eq!(
        handler
            .handle(
                answer(id, &job, records),
                &Origin::Broker("svc-ledger".into())
            )
            .await,
        Outcome::Done
    );
    let done = f.request(id).await;
    assert_eq!(done.state, RequestState::ReportReady);
    assert_eq!(Fixture::source(&done, "ledger").records, Some(2));
    let files = unzip(&f.reports.object(&done.report.unwrap().key).unwrap());
    let ledger = String::from_utf8(files["sources/ledger/records.json"].clone()).unwrap();
    assert!(
        ledger.contains("\"entry\": 2") || ledger.contains("\"entry\":2"),
        "{ledger}"
    );
    assert!(!ledger.contains("forged"));
    assert_eq!(
        f.sources.export_commands().len(),
        1,
        "one command for one attempt"
    );
    // The same answer again (a redelivery) finds the request done.
    assert_eq!(
        handler
            .handle(
                answer(id, &job, vec![json!({"entry": 1})]),
                &Origin::Broker("svc-ledger".into())
            )
            .await,
        Outcome::Done
    );
}

#[tokio::test]
async fn a_holder_that_cannot_export_fails_the_attempt_and_the_next_one_asks_again() {
    let f = fixture();
    let (handler, id, work, job) = ledger_asked(&f).await;
    let ReportWork::Answer(mut failed) = answer(id, &job, vec![]) else {
        unreachable!()
    };
    failed.outcome = dsr_domain::report::export::ExportOutcome::Failed;
    failed.reason = Some("ledger database is being migrated".into());
    assert_eq!(
        handler
            .handle(
                ReportWork::Answer(failed),
                &Origin::Broker("svc-ledger".into())
            )
            .await,
        Outcome::Done
    );
    let request = f.request(id).await;
    let ledger = Fixture::source(&request, "ledger");
    assert_eq!((ledger.status, ledger.attempts), (SourceStatus::Pending, 1));
    assert!(ledger.error.as_deref().unwrap().contains("being migrated"));
    f.clock.advance(Duration::seconds(61));
    assert_eq!(handler.handle(work, &Origin::Internal).await, Outcome::Done);
    let commands = f.sources.export_commands();
    assert_eq!(commands.len(), 2, "a new command for the next attempt");
    assert_ne!(commands[0].2, commands[1].2, "under a new job id");
}

#[tokio::test]
async fn an_answer_while_another_worker_holds_the_request_brings_it_back_in_seconds() {
    let f = fixture();
    let (handler, id, work, job) = ledger_asked(&f).await;
    // Another worker takes the request (its next poll, say) just as the answer arrives.
    let busy = f
        .store
        .acquire_lease(
            id,
            "b",
            RequestState::Collecting,
            f.clock.now(),
            Duration::seconds(960),
        )
        .await
        .unwrap();
    let dsr_domain::LeaseOutcome::Acquired(held) = busy else {
        panic!("{busy:?}");
    };
    let resumes_before = f.resumes.asked().len();
    assert_eq!(
        handler
            .handle(
                answer(id, &job, vec![json!({"entry": 7})]),
                &Origin::Broker("svc-ledger".into())
            )
            .await,
        Outcome::Done,
        "kept, and not left on the queue behind the other worker's lease"
    );
    let asked = f.resumes.asked();
    assert_eq!(asked.len(), resumes_before + 1);
    assert_eq!(
        asked.last().unwrap().1,
        f.clock.now() + Duration::seconds(10)
    );
    // The other worker lets go without having seen it; the resumed message collects it,
    // though the ledger's next poll is minutes away.
    let token = held.fencing_token;
    let mut released = *held;
    released.lease = None;
    let hash = SubjectHasher::new("a-test-key-of-16-bytes").hash(&released.subject);
    f.store
        .commit_fenced(&released, &hash, token)
        .await
        .unwrap();
    f.clock.advance(Duration::seconds(10));
    assert_eq!(handler.handle(work, &Origin::Internal).await, Outcome::Done);
    let done = f.request(id).await;
    assert_eq!(done.state, RequestState::ReportReady);
    assert_eq!(Fixture::source(&done, "ledger").records, Some(1));
}

#[tokio::test]
async fn each_source_is_read_by_the_identifier_it_keys_by_and_one_the_subject_lacks_is_not_applicable(
) {
    let f = fixture();
    // The CRM is keyed by the customer number the accounts table knows; the call-centre tool
    // by phone number, which nobody knows for rita.
    let registry = r#"
identity_sources:
  - { kind: dynamodb, table: accounts, key_attribute: user_id, fields: { customer_no: customer_no, phone: phone } }
services:
  - name: profile
    description: Your profile
    collect: { kind: dynamodb, table: profiles, key_attribute: uid }
  - name: crm
    description: What our CRM holds
    identifiers: [customer_no]
    collect: { kind: http, url: "https://crm.example/customers/{subject}" }
  - name: callcentre
    description: Your calls to us
    identifiers: [phone]
    collect: { kind: http, url: "https://calls.example/by-phone/{subject}" }
"#;
    f.identities
        .knows("dynamodb accounts", SUBJECT, &[("customer_no", "C-1007")]);
    f.sources
        .hold("crm", "C-1007", vec![json!({"segment": "tea lovers"})]);
    // Held under the user id too: a source read by the wrong identifier would report it.
    f.sources
        .hold("crm", SUBJECT, vec![json!({"wrong": "identifier"})]);
    let id = f.access_request().await;
    let worker = AccessReports {
        registry: ServiceRegistry::parse(registry).unwrap(),
        ..f.worker("a")
    };
    let WorkOutcome::Completed(report) = worker.generate(id).await.unwrap() else {
        panic!("not completed");
    };
    let files = unzip(&f.reports.object(&report.key).unwrap());
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let sources: Vec<(&str, u64, &Value)> = manifest["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["record_count"].as_u64().unwrap(),
                &s["not_applicable"],
            )
        })
        .collect();
    let reason = "keys its data by phone, which no identity source knows for this subject";
    assert_eq!(
        sources,
        [
            ("profile", 1, &Value::Null),
            ("crm", 1, &Value::Null),
            ("callcentre", 0, &json!(reason))
        ]
    );
    let crm = String::from_utf8(files["sources/crm/records.json"].clone()).unwrap();
    assert!(
        crm.contains("tea lovers") && !crm.contains("wrong"),
        "{crm}"
    );
    let page = String::from_utf8(files["index.html"].clone()).unwrap();
    assert!(page.contains(&format!("Not applicable: this system {reason}")));
    let stored = f.request(id).await;
    let callcentre = stored
        .sources
        .iter()
        .find(|s| s.service == "callcentre")
        .unwrap();
    assert_eq!(callcentre.status, SourceStatus::NotApplicable);
    assert_eq!(callcentre.reason.as_deref(), Some(reason));
    assert_eq!(
        f.identities.asked.lock().unwrap().len(),
        1,
        "looked up once"
    );
    let trail: Vec<String> = f
        .store
        .audit_trail(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert!(
        trail.iter().any(
            |e| e.starts_with("identities_resolved:customer_no=") && e.ends_with(",phone=none")
        ),
        "{trail:?}"
    );
    assert!(trail.iter().all(|e| !e.contains("C-1007")), "{trail:?}");
}
