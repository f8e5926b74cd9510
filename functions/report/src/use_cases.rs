//! Report generation with in-memory ports and a clock the tests move: every path that the
//! integration tests also walk over the wire, in milliseconds.

use super::*;
use chrono::{TimeZone, Utc};
use dsr_adapters::memory::{
    FakeSources, InMemoryReportStore, InMemoryRequestStore, RecordingErasurePorts, RecordingOutbox,
};
use dsr_domain::registry::ServiceRegistry;
use dsr_domain::{
    FixedClock, Request, RequestId, RequestState, RequestStore, SubjectHasher, SubjectId,
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
    /// Where verification results go.
    results: Arc<RecordingErasurePorts>,
    clock: Arc<FixedClock>,
    staging: tempfile::TempDir,
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
        results: Arc::new(RecordingErasurePorts::default()),
        clock: Arc::new(FixedClock::at(
            Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap(),
        )),
        staging: tempfile::tempdir().unwrap(),
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

#[tokio::test]
async fn one_failing_source_leaves_nothing_and_hands_the_request_back() {
    let f = fixture();
    let id = f.access_request().await;
    f.sources.set_failing("orders", true);
    match f.worker("a").generate(id).await.unwrap() {
        WorkOutcome::RetryLater { after, error } => {
            assert_eq!(
                after,
                Duration::seconds(60),
                "the first retry waits the base delay"
            );
            assert!(error.contains("orders"), "{error}");
            assert!(
                !error.contains(SUBJECT),
                "no personal data in errors: {error}"
            );
        }
        other => panic!("{other:?}"),
    }
    let request = f.request(id).await;
    assert_eq!(
        (request.state, request.attempts),
        (RequestState::Received, 1)
    );
    assert!(request.last_error.unwrap().contains("orders"));
    assert!(f.reports.objects().is_empty());
    assert_eq!(f.reports.unfinished(), 0, "no half report anywhere");
    assert!(no_report_ready(&f.events.events()));

    // The second failure waits twice as long; then the source is back and all is well.
    match f.worker("a").generate(id).await.unwrap() {
        WorkOutcome::RetryLater { after, .. } => assert_eq!(after, Duration::seconds(120)),
        other => panic!("{other:?}"),
    }
    f.sources.set_failing("orders", false);
    assert!(matches!(
        f.worker("a").generate(id).await.unwrap(),
        WorkOutcome::Completed(_)
    ));
    assert_eq!(f.request(id).await.last_error, None);
}

#[tokio::test]
async fn the_last_attempt_fails_the_request_and_its_message_is_dead_lettered() {
    let f = fixture();
    let id = f.access_request().await;
    f.sources.set_failing("profile", true);
    let handler = f.handler(AccessReports {
        settings: ReportSettings {
            max_attempts: 2,
            staging_dir: f.staging.path().to_owned(),
            ..ReportSettings::default()
        },
        ..f.worker("a")
    });
    let message = ReportWork::Access(RequestMessage::new(id, RequestKind::Access, f.clock.now()));
    assert_eq!(
        handler.handle(message.clone(), &Origin::Internal).await,
        Outcome::Retry(Some(std::time::Duration::from_secs(60)))
    );
    let Outcome::Reject(reason) = handler.handle(message, &Origin::Internal).await else {
        panic!("the last attempt is not retried");
    };
    assert!(
        reason.contains("report failed after 2 attempts"),
        "{reason}"
    );
    assert!(reason.contains("profile"), "{reason}");
    let request = f.request(id).await;
    assert_eq!((request.state, request.attempts), (RequestState::Failed, 2));
    assert!(f.reports.objects().is_empty());
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
    assert!(f.reports.objects().is_empty(), "the fenced report is gone");
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
        (RequestState::Received, true),
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
