//! The erasure use cases with in-memory ports and a clock the tests move.

use chrono::{Duration, TimeZone, Utc};
use dsr_adapters::memory::{InMemoryReportStore, InMemoryRequestStore, RecordingErasurePorts};
use dsr_domain::erasure::{
    Confirmation, ConfirmationOutcome, Delivery, ErasureError, ErasureSettings, Erasures, Handled,
    ObligationDue, ObligationStatus, ObligationStore, Published, OWN_COPIES,
};
use dsr_domain::messages::{EventType, Origin};
use dsr_domain::registry::ServiceRegistry;
use dsr_domain::{
    FixedClock, Request, RequestId, RequestKind, RequestState, RequestStore, SubjectHasher,
    SubjectId,
};
use std::sync::Arc;

type TestErasures = Erasures<
    Arc<InMemoryRequestStore>,
    Arc<RecordingErasurePorts>,
    Arc<RecordingErasurePorts>,
    Arc<RecordingErasurePorts>,
    Arc<FixedClock>,
    InMemoryReportStore,
>;

struct Fixture {
    erasures: TestErasures,
    store: Arc<InMemoryRequestStore>,
    ports: Arc<RecordingErasurePorts>,
    clock: Arc<FixedClock>,
    reports: InMemoryReportStore,
    identities: Arc<dsr_adapters::memory::InMemoryIdentities>,
}

const REGISTRY: &str = r#"
services:
  - name: billing
    broker_user: svc-billing
    erase: { via: { kind: rabbitmq, routing_key: erasure.billing }, confirm_within_seconds: 600, max_sends: 2 }
  - name: profile
    broker_user: svc-profile
    erase: { via: { kind: rabbitmq, routing_key: erasure.profile } }
  - name: ads
    # A vendor erased over HTTP; bound to a broker user too, so tests may answer for it.
    broker_user: svc-ads
    erase: { via: { kind: http, url: "https://ads.example/users/{subject}" } }
  - name: email
    broker_user: svc-email
    erase: { via: { kind: rabbitmq, routing_key: erasure.email }, last: true }
  - name: orders
    description: collected only, nothing to erase
"#;

fn fixture() -> Fixture {
    fixture_with(REGISTRY)
}

fn fixture_with(registry: &str) -> Fixture {
    let store = Arc::new(InMemoryRequestStore::default());
    let ports = Arc::new(RecordingErasurePorts::default());
    let clock = Arc::new(FixedClock::at(
        Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap(),
    ));
    let registry: ServiceRegistry = serde_yaml_ng::from_str(registry).unwrap();
    let reports = InMemoryReportStore::default();
    let identities = Arc::new(dsr_adapters::memory::InMemoryIdentities::default());
    let erasures = Erasures {
        store: store.clone(),
        channel: ports.clone(),
        checks: ports.clone(),
        events: ports.clone(),
        reports: reports.clone(),
        clock: clock.clone(),
        registry: registry.validated().unwrap(),
        hasher: SubjectHasher::new("a-test-key-of-16-bytes"),
        settings: ErasureSettings::default(),
        worker: dsr_domain::lease::Worker {
            owner: "test".into(),
            lease_ttl: dsr_domain::erasure::DEFAULT_FAN_OUT_LEASE,
        },
        identities: identities.clone(),
    };
    Fixture {
        erasures,
        store,
        ports,
        clock,
        reports,
        identities,
    }
}

impl Fixture {
    /// An erasure fanned out, confirmed by these services.
    async fn answered_by(&self, services: &[&str]) -> RequestId {
        let id = self.erasure().await;
        self.erasures.fan_out(id).await.unwrap();
        for service in services {
            self.confirm(id, service).await.unwrap();
        }
        id
    }

    async fn erasure(&self) -> RequestId {
        self.erasure_of("erin").await
    }

    async fn erasure_of(&self, subject: &str) -> RequestId {
        let request = Request::receive(
            RequestKind::Erasure,
            SubjectId::parse(subject).unwrap(),
            dsr_domain::Clock::now(&*self.clock),
        );
        let hash = SubjectHasher::new("a-test-key-of-16-bytes").hash(&request.subject);
        self.store
            .create(&request, &hash, None, None)
            .await
            .unwrap();
        request.id
    }

    async fn state(&self, id: RequestId) -> RequestState {
        self.store.get(id).await.unwrap().unwrap().state
    }

    async fn obligation(&self, id: RequestId, service: &str) -> dsr_domain::erasure::Obligation {
        self.store
            .obligations(id)
            .await
            .unwrap()
            .into_iter()
            .find(|o| o.service == service)
            .unwrap()
    }

    /// The service's confirmation, published as the service's own broker user.
    async fn confirm(&self, id: RequestId, service: &str) -> Result<Handled, ErasureError> {
        self.confirm_as(id, service, &Origin::Broker(format!("svc-{service}")))
            .await
    }

    /// Answers written straight into the store, as if confirmed while nobody moved the request.
    async fn answers_recorded_behind_its_back(&self, id: RequestId, services: &[&str]) {
        for service in services {
            self.store
                .record_answer(
                    id,
                    &svc(service),
                    ObligationStatus::Confirmed,
                    "{}",
                    Utc::now(),
                )
                .await
                .unwrap();
        }
    }

    /// The bridge's receipt for the erasure notice: the broker confirmed it at `at`.
    async fn publish_notice(
        &self,
        id: RequestId,
        at: chrono::DateTime<Utc>,
    ) -> Result<Handled, ErasureError> {
        self.erasures
            .published(
                &Published::new(format!("notice:erasure_notice:{id}"), id, at),
                &Origin::Internal,
            )
            .await
    }

    async fn confirm_as(
        &self,
        id: RequestId,
        service: &str,
        origin: &Origin,
    ) -> Result<Handled, ErasureError> {
        self.erasures
            .confirm(
                &Confirmation {
                    version: 1,
                    message_id: format!("c:{service}"),
                    request_id: id,
                    service: svc(service),
                    outcome: ConfirmationOutcome::Erased,
                    receipt: serde_json::json!({"rows": 1}),
                },
                origin,
            )
            .await
    }
}

#[tokio::test]
async fn fan_out_plans_every_erasable_service_and_commands_all_but_the_erase_last_once() {
    let f = fixture();
    f.ports.answers.lock().unwrap().insert(
        svc("ads"),
        Delivery::Answered {
            status: ObligationStatus::Confirmed,
            receipt: "{\"http_status\":200}".into(),
        },
    );
    let id = f.erasure().await;
    assert_eq!(
        f.erasures.fan_out(id).await.unwrap(),
        Handled::FannedOut { commands: 3 }
    );
    assert_eq!(f.state(id).await, RequestState::AwaitingConfirmations);
    let mut planned: Vec<_> = f
        .store
        .obligations(id)
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.service, o.status, o.attempts))
        .collect();
    planned.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        planned,
        [
            (svc("ads"), ObligationStatus::Confirmed, 1),
            (svc("billing"), ObligationStatus::Sent, 1),
            (svc(OWN_COPIES), ObligationStatus::Confirmed, 1),
            (svc("email"), ObligationStatus::Pending, 0),
            (svc("profile"), ObligationStatus::Sent, 1),
        ]
    );
    let commands = f.ports.commands();
    assert!(commands
        .iter()
        .all(|c| c.attempt == 1 && c.service != "email"));
    let billing = commands.iter().find(|c| c.service == "billing").unwrap();
    assert_eq!(billing.idempotency_key, format!("erase:{id}:billing"));
    assert_eq!(billing.message_id, format!("erase:{id}:billing:1"));
    // Each send has its watchdog, at the service's own timeout.
    let billing_check = f
        .ports
        .checks()
        .into_iter()
        .find(|(c, _)| c.service == "billing")
        .unwrap();
    assert_eq!(
        billing_check.1,
        dsr_domain::Clock::now(&*f.clock) + Duration::seconds(600)
    );

    // The same message again: nothing is sent twice.
    assert!(matches!(
        f.erasures.fan_out(id).await.unwrap(),
        Handled::Nothing(_)
    ));
    assert_eq!(f.ports.commands().len(), 3);
}

#[tokio::test]
async fn the_email_service_is_released_after_the_notice_and_the_grace_period_then_completes() {
    let f = fixture();
    let id = f.erasure().await;
    f.erasures.fan_out(id).await.unwrap();
    for service in ["billing", "profile", "ads"] {
        assert_eq!(f.confirm(id, service).await.unwrap(), Handled::Recorded);
    }
    assert_eq!(f.state(id).await, RequestState::Notifying);
    let events = f.ports.events();
    let told: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
    // The fan-out announced the request (the submit path no longer does), then the notice.
    assert_eq!(
        told,
        [EventType::RequestSubmitted, EventType::ErasureNotice]
    );
    // Broadcast with the hash only; the subject id goes to the notifying service alone.
    for event in &events {
        assert!(!serde_json::to_string(event).unwrap().contains("erin"));
    }
    let notices = f.ports.notices();
    assert_eq!(notices.len(), 1);
    assert_eq!(
        (notices[0].notice, notices[0].subject.as_str()),
        (EventType::ErasureNotice, "erin")
    );
    assert_eq!(notices[0].routing_key(), "notice.erasure_notice");
    // Queued is not told: nothing is scheduled for the email service until the broker
    // confirmed the notice.
    assert!(f.ports.checks().iter().all(|(c, _)| c.service != "email"));
    f.clock.advance(Duration::minutes(5));
    let published_at = dsr_domain::Clock::now(&*f.clock);
    assert_eq!(
        f.publish_notice(id, published_at).await.unwrap(),
        Handled::NoticePublished {
            release_at: published_at + Duration::hours(72)
        }
    );
    let release = f
        .ports
        .checks()
        .into_iter()
        .find(|(c, _)| c.service == "email")
        .unwrap();
    assert_eq!(release.0.attempt, 0);
    assert_eq!(release.1, published_at + Duration::hours(72));
    assert!(f.ports.commands().iter().all(|c| c.service != "email"));

    f.clock.advance(Duration::hours(72));
    assert_eq!(
        f.erasures.check(&release.0).await.unwrap(),
        Handled::Resent { attempt: 1 }
    );
    assert_eq!(f.ports.commands().last().unwrap().service, "email");
    // A duplicate of the release is stale now.
    assert!(matches!(
        f.erasures.check(&release.0).await.unwrap(),
        Handled::Nothing(_)
    ));
    f.confirm(id, "email").await.unwrap();
    assert_eq!(f.state(id).await, RequestState::Completed);
    let events = f.ports.events();
    assert_eq!(
        events.last().unwrap().event_type,
        EventType::ErasureCompleted
    );
    assert_eq!(events.len(), 3, "submitted, notice, completed");
    // Confirming again changes nothing.
    assert!(matches!(
        f.confirm(id, "email").await.unwrap(),
        Handled::Nothing(_)
    ));
    assert_eq!(f.ports.events().len(), 3);
}

impl Fixture {
    /// An access request of `subject` in `state`, with a finished report object and one
    /// unfinished upload under its prefix when it got that far.
    async fn access_request(&self, subject: &str, state: RequestState) -> RequestId {
        use dsr_domain::report::ReportStore;
        let now = dsr_domain::Clock::now(&*self.clock);
        let mut request =
            Request::receive(RequestKind::Access, SubjectId::parse(subject).unwrap(), now);
        let hash = SubjectHasher::new("a-test-key-of-16-bytes").hash(&request.subject);
        self.store
            .create(&request, &hash, None, None)
            .await
            .unwrap();
        request.state = state;
        let key = format!("reports/{}/attempt-1/report.zip", request.id);
        if state == RequestState::ReportReady {
            self.reports.put(&key, b"zip".to_vec());
            self.reports.put(
                &format!("reports/{}/attempt-0/report.zip", request.id),
                b"old".to_vec(),
            );
            request.report = Some(dsr_domain::ReportInfo {
                key,
                size: 3,
                sha256: "x".into(),
                expires_at: now + Duration::days(30),
            });
        }
        if state == RequestState::Collecting {
            let _upload = self
                .reports
                .begin(&format!("reports/{}/attempt-2/report.zip", request.id))
                .await
                .unwrap();
        }
        self.store
            .save_transition(&request, &hash, RequestState::Received)
            .await
            .unwrap();
        request.id
    }
}

#[tokio::test]
async fn the_erasure_deletes_the_subjects_reports_and_closes_their_access_requests_with_proof() {
    let f = fixture();
    let ready = f.access_request("erin", RequestState::ReportReady).await;
    let collecting = f.access_request("erin", RequestState::Collecting).await;
    let someone_else = f.access_request("erik", RequestState::ReportReady).await;
    let id = f.erasure().await;
    f.erasures.fan_out(id).await.unwrap();

    assert_eq!(
        f.state(ready).await,
        RequestState::Expired,
        "its link gives 410"
    );
    assert_eq!(f.state(collecting).await, RequestState::Cancelled);
    assert_eq!(f.state(someone_else).await, RequestState::ReportReady);
    let left = f.reports.objects();
    assert!(
        left.iter().all(|k| k.contains(&someone_else.to_string())) && left.len() == 2,
        "only the other subject's objects are left: {left:?}"
    );
    assert_eq!(
        f.reports.unfinished(),
        0,
        "the collecting attempt's upload is aborted"
    );

    let own = f.obligation(id, OWN_COPIES).await;
    assert_eq!(own.status, ObligationStatus::Confirmed);
    let receipt: serde_json::Value = serde_json::from_str(own.receipt.as_deref().unwrap()).unwrap();
    assert_eq!(receipt["report_objects_deleted"], 2);
    assert_eq!(receipt["unfinished_uploads_aborted"], 1);
    assert_eq!(
        receipt["access_requests_closed"].as_array().unwrap().len(),
        2
    );
    let trail = f.store.audit_trail(ready).await.unwrap();
    assert!(trail
        .iter()
        .any(|e| e.event == format!("closed_by_erasure:{id}")));

    // An access request made while the erasure waits on the services is closed before the end.
    let late = f.access_request("erin", RequestState::ReportReady).await;
    for service in ["billing", "profile", "ads"] {
        f.confirm(id, service).await.unwrap();
    }
    f.clock.advance(Duration::hours(72));
    let release = ObligationDue::new(id, &svc("email"), 0);
    f.erasures.check(&release).await.unwrap();
    f.confirm(id, "email").await.unwrap();
    assert_eq!(f.state(id).await, RequestState::Completed);
    assert_eq!(f.state(late).await, RequestState::Expired);
    assert!(f
        .reports
        .objects()
        .iter()
        .all(|k| !k.contains(&late.to_string())));
    let trail = f.store.audit_trail(id).await.unwrap();
    assert!(
        trail.iter().any(|e| e.event == "own_copies_erased:1:2"),
        "{trail:?}"
    );
}

#[tokio::test]
async fn a_silent_service_is_sent_again_until_max_sends_then_escalated_once() {
    let f = fixture();
    let id = f.erasure().await;
    f.erasures.fan_out(id).await.unwrap();
    let first = ObligationDue::new(id, &svc("billing"), 1);
    assert_eq!(
        f.erasures.check(&first).await.unwrap(),
        Handled::Resent { attempt: 2 }
    );
    assert_eq!(f.obligation(id, "billing").await.attempts, 2);
    assert_eq!(
        f.erasures
            .check(&ObligationDue::new(id, &svc("billing"), 2))
            .await
            .unwrap(),
        Handled::Escalated
    );
    assert!(f.obligation(id, "billing").await.escalated_at.is_some());
    assert!(matches!(
        f.erasures
            .check(&ObligationDue::new(id, &svc("billing"), 2))
            .await
            .unwrap(),
        Handled::Nothing(_)
    ));
    assert_eq!(
        f.ports
            .commands()
            .iter()
            .filter(|c| c.service == "billing")
            .count(),
        2
    );
    // A late confirmation still counts: escalation does not close the obligation.
    f.confirm(id, "billing").await.unwrap();
    assert_eq!(
        f.obligation(id, "billing").await.status,
        ObligationStatus::Confirmed
    );
}

#[tokio::test]
async fn a_failed_api_call_is_recorded_and_a_failed_answer_waits_for_the_resend() {
    let f = fixture();
    f.ports
        .answers
        .lock()
        .unwrap()
        .insert(svc("ads"), Delivery::Failed("the API answered 503".into()));
    let id = f.erasure().await;
    f.erasures.fan_out(id).await.unwrap();
    let ads = f.obligation(id, "ads").await;
    assert_eq!(
        (ads.status, ads.attempts, ads.last_error.as_deref()),
        (ObligationStatus::Failed, 1, Some("the API answered 503"))
    );
    let failed = Confirmation {
        version: 1,
        message_id: "c".into(),
        request_id: id,
        service: svc("profile"),
        outcome: ConfirmationOutcome::Failed,
        receipt: serde_json::Value::Null,
    };
    assert_eq!(
        f.erasures
            .confirm(&failed, &Origin::Broker("svc-profile".into()))
            .await
            .unwrap(),
        Handled::Recorded
    );
    assert!(matches!(
        f.erasures
            .confirm(&failed, &Origin::Broker("svc-profile".into()))
            .await
            .unwrap(),
        Handled::Nothing(_)
    ));
    assert_eq!(f.state(id).await, RequestState::AwaitingConfirmations);
}

#[tokio::test]
async fn a_vendor_saying_not_now_is_asked_again_when_it_says_not_after_the_whole_confirmation_time()
{
    let f = fixture();
    f.ports.answers.lock().unwrap().insert(
        svc("ads"),
        Delivery::Deferred {
            reason: "the API answered 429 Too Many Requests".into(),
            after: std::time::Duration::from_secs(30),
        },
    );
    let id = f.erasure().await;
    let sent_at = dsr_domain::Clock::now(&*f.clock);
    f.erasures.fan_out(id).await.unwrap();
    let ads = f.obligation(id, "ads").await;
    assert_eq!(
        (ads.status, ads.attempts, ads.last_error.as_deref()),
        (
            ObligationStatus::Failed,
            1,
            Some("the API answered 429 Too Many Requests")
        )
    );
    // Its check, first scheduled at the end of the confirmation time, is moved to when the
    // vendor said (the same key: delayed dispatch moves it).
    let checks: Vec<_> = f
        .ports
        .checks()
        .into_iter()
        .filter(|(due, _)| due.service == svc("ads"))
        .collect();
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert_eq!(checks[0].0.message_id, checks[1].0.message_id);
    assert!(checks[0].1 > sent_at + Duration::hours(1), "{checks:?}");
    assert_eq!(checks[1].1, sent_at + Duration::seconds(30));
}

#[tokio::test]
async fn confirmations_for_unknown_requests_or_services_are_rejected() {
    let f = fixture();
    let id = f.erasure().await;
    f.erasures.fan_out(id).await.unwrap();
    assert!(matches!(
        f.confirm(id, "orders").await,
        Err(ErasureError::Rejected(reason)) if reason.contains("no broker user is registered for service `orders`")
    ));
    let unknown = RequestId::new_at(Utc::now());
    assert!(matches!(
        f.confirm(unknown, "billing").await,
        Err(ErasureError::Rejected(reason)) if reason.contains("unknown request")
    ));
}

#[tokio::test]
async fn only_the_services_own_broker_user_may_confirm_for_it() {
    let f = fixture();
    let id = f.erasure().await;
    f.erasures.fan_out(id).await.unwrap();
    for (origin, why) in [
        (
            Origin::Broker("svc-profile".into()),
            "from broker user `svc-profile`",
        ),
        (
            Origin::Broker("mallory".into()),
            "from broker user `mallory`",
        ),
        (Origin::Internal, "from the service itself"),
    ] {
        match f.confirm_as(id, "billing", &origin).await {
            Err(ErasureError::Rejected(reason)) => {
                assert!(
                    reason.contains(why) && reason.contains("`svc-billing`"),
                    "{reason}"
                )
            }
            other => panic!("{origin}: {other:?}"),
        }
    }
    let billing = f.obligation(id, "billing").await;
    assert_eq!(
        billing.status,
        ObligationStatus::Sent,
        "no forged confirmation counted"
    );
    assert!(f.confirm(id, "billing").await.is_ok());
    assert_eq!(
        f.obligation(id, "billing").await.status,
        ObligationStatus::Confirmed
    );
}

#[tokio::test]
async fn obligations_are_written_only_under_the_current_fencing_token() {
    let f = fixture();
    let id = f.erasure().await;
    let stale = f
        .store
        .plan(
            id,
            &[dsr_domain::erasure::Obligation::planned(
                id,
                &svc("billing"),
                false,
            )],
            7,
        )
        .await;
    assert!(stale.is_err());
    assert!(f.store.obligations(id).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_watchdog_check_moves_on_a_request_whose_confirmations_all_came_before_the_commit() {
    let f = fixture();
    let id = f.erasure().await;
    f.erasures.fan_out(id).await.unwrap();
    f.answers_recorded_behind_its_back(id, &["billing", "profile", "ads"])
        .await;
    // As if the fan-out had died between its commit and its own advance.
    assert_eq!(f.state(id).await, RequestState::AwaitingConfirmations);
    assert!(matches!(
        f.erasures
            .check(&ObligationDue::new(id, &svc("billing"), 1))
            .await
            .unwrap(),
        Handled::Nothing(_)
    ));
    assert_eq!(f.state(id).await, RequestState::Notifying);
    let told: Vec<EventType> = f.ports.events().iter().map(|e| e.event_type).collect();
    // The fan-out announced the request (the submit path no longer does), then the notice.
    assert_eq!(
        told,
        [EventType::RequestSubmitted, EventType::ErasureNotice],
        "{told:?}"
    );
}

#[tokio::test]
async fn the_grace_period_runs_from_the_broker_confirmed_notice_never_from_a_queued_one() {
    let f = fixture();
    let id = f.erasure().await;
    f.erasures.fan_out(id).await.unwrap();
    for service in ["billing", "profile", "ads"] {
        f.confirm(id, service).await.unwrap();
    }
    assert_eq!(f.state(id).await, RequestState::Notifying);
    // A release check that arrives without a published notice (scheduled by an older version
    // when the notice was only queued, or forged) erases nothing.
    f.clock.advance(Duration::hours(73));
    let release = ObligationDue::new(id, &svc("email"), 0);
    assert_eq!(
        f.erasures.check(&release).await.unwrap(),
        Handled::Nothing(dsr_domain::erasure::Skipped::WaitsForTheNotice)
    );
    assert!(f.ports.commands().iter().all(|c| c.service != "email"));

    // Receipts come only from the service's own bridge.
    let now = dsr_domain::Clock::now(&*f.clock);
    let forged = Published::new(format!("notice:erasure_notice:{id}"), id, now);
    assert!(matches!(
        f.erasures.published(&forged, &Origin::Broker("svc-email".into())).await,
        Err(ErasureError::Rejected(reason)) if reason.contains("only the service's own bridge")
    ));
    // A receipt for another message (another notice, another request's) moves nothing.
    let access = f.access_request("erin", RequestState::ReportReady).await;
    assert_eq!(
        f.erasures
            .published(
                &Published::new(format!("notice:report_ready:{access}"), access, now),
                &Origin::Internal
            )
            .await
            .unwrap(),
        Handled::Nothing(dsr_domain::erasure::Skipped::NothingWaitsForIt)
    );
    assert_eq!(
        f.erasures
            .published(
                &Published::new(format!("erasure_notice:{id}"), id, now),
                &Origin::Internal
            )
            .await
            .unwrap(),
        Handled::Nothing(dsr_domain::erasure::Skipped::NothingWaitsForIt)
    );

    f.publish_notice(id, now).await.unwrap();
    // The notice published twice (a redelivered outbound message): the first time holds.
    f.clock.advance(Duration::hours(1));
    let later = dsr_domain::Clock::now(&*f.clock);
    assert_eq!(
        f.publish_notice(id, later).await.unwrap(),
        Handled::NoticePublished {
            release_at: now + Duration::hours(72)
        }
    );
    assert_eq!(
        f.obligation(id, "email").await.release_at,
        Some(now + Duration::hours(72))
    );
    // Before the grace period is over the release waits; then the command leaves once.
    assert_eq!(
        f.erasures.check(&release).await.unwrap(),
        Handled::Nothing(dsr_domain::erasure::Skipped::WaitsForTheNotice)
    );
    f.clock.advance(Duration::hours(71));
    assert_eq!(
        f.erasures.check(&release).await.unwrap(),
        Handled::Resent { attempt: 1 }
    );
    let trail = f.store.events(id);
    assert_eq!(
        trail.iter().filter(|e| *e == "notice_published").count(),
        1,
        "{trail:?}"
    );
}

#[tokio::test]
async fn a_redelivered_confirmation_finishes_what_its_first_delivery_left_half_done() {
    let f = fixture();
    let id = f.erasure().await;
    f.erasures.fan_out(id).await.unwrap();
    for service in ["billing", "profile"] {
        f.confirm(id, service).await.unwrap();
    }
    // The last answer is recorded, the request moves on, then telling the subject fails.
    f.ports.fail_next("tell", 1);
    assert!(f.confirm(id, "ads").await.is_err());
    assert_eq!(
        f.obligation(id, "ads").await.status,
        ObligationStatus::Confirmed
    );
    assert_eq!(f.state(id).await, RequestState::Notifying);
    assert_eq!(f.ports.notices().len(), 0);
    // SQS delivers the same confirmation again: it finds its answer recorded, and tells the
    // subject (the notice was never confirmed by the broker).
    assert_eq!(
        f.confirm(id, "ads").await.unwrap(),
        Handled::Nothing(dsr_domain::erasure::Skipped::AlreadyAnswered)
    );
    assert_eq!(f.state(id).await, RequestState::Notifying);
    assert_eq!(f.ports.notices().len(), 1);

    // The same for the receipt: the release time is set, scheduling its check fails.
    let now = dsr_domain::Clock::now(&*f.clock);
    f.ports.fail_next("schedule", 1);
    assert!(f.publish_notice(id, now).await.is_err());
    assert!(f.ports.checks().iter().all(|(c, _)| c.service != "email"));
    f.publish_notice(id, now).await.unwrap();
    let release: Vec<_> = f
        .ports
        .checks()
        .into_iter()
        .filter(|(c, _)| c.service == "email")
        .collect();
    assert_eq!(release.len(), 1);
    assert_eq!(release[0].1, now + Duration::hours(72));

    // And for completion: the email service's answer recorded, the completion event fails.
    f.clock.advance(Duration::hours(72));
    f.erasures.check(&release[0].0).await.unwrap();
    f.ports.fail_next("publish", 1);
    assert!(f.confirm(id, "email").await.is_err());
    assert_eq!(f.state(id).await, RequestState::Notifying);
    f.confirm(id, "email").await.unwrap();
    assert_eq!(f.state(id).await, RequestState::Completed);
    assert_eq!(
        f.ports.events().last().unwrap().event_type,
        EventType::ErasureCompleted
    );
}

#[tokio::test]
async fn a_redelivered_fan_out_message_moves_on_a_request_whose_answers_are_all_in() {
    let f = fixture();
    let id = f.erasure().await;
    // Every answer came in while the fan-out was still running, and it died right after its
    // commit, before moving on.
    f.erasures.fan_out(id).await.unwrap();
    f.answers_recorded_behind_its_back(id, &["billing", "profile", "ads"])
        .await;
    assert_eq!(f.state(id).await, RequestState::AwaitingConfirmations);
    assert_eq!(
        f.erasures.fan_out(id).await.unwrap(),
        Handled::Nothing(dsr_domain::erasure::Skipped::NotWaitingForFanOut)
    );
    assert_eq!(f.state(id).await, RequestState::Notifying);
    assert_eq!(f.ports.notices().len(), 1);
}

#[tokio::test]
async fn a_check_whose_send_never_recorded_itself_sends_in_its_place() {
    let f = fixture();
    let id = f.erasure().await;
    // A command's check is scheduled, then the command fails to leave (or its process dies
    // before the send is recorded).
    f.ports.fail_after("send", 1, 1);
    assert!(f.erasures.fan_out(id).await.is_err());
    let obligations = f.store.obligations(id).await.unwrap();
    let unsent = obligations
        .iter()
        .find(|o| !o.last && o.attempts == 0)
        .expect("a command that did not leave")
        .service
        .clone();
    // Its check comes before the fan-out's next attempt: it sends the command itself.
    assert_eq!(
        f.erasures
            .check(&ObligationDue::new(id, &unsent, 1))
            .await
            .unwrap(),
        Handled::Resent { attempt: 1 }
    );
    assert_eq!(f.obligation(id, unsent.as_str()).await.attempts, 1);
    // The fan-out's next attempt does not send it a second time.
    f.erasures.fan_out(id).await.unwrap();
    let sent = |service: &str| {
        f.ports
            .commands()
            .iter()
            .filter(|c| c.service == service)
            .count()
    };
    assert_eq!(sent(unsent.as_str()), 1);
    assert_eq!(f.state(id).await, RequestState::AwaitingConfirmations);
}

#[tokio::test]
async fn a_failed_fan_out_keeps_the_request_out_of_the_subjects_reach_and_the_next_attempt_finishes_it(
) {
    let f = fixture();
    let id = f.erasure().await;
    // The own copies are erased and two commands leave, then the channel fails.
    f.ports.fail_after("send", 2, 1);
    assert!(f.erasures.fan_out(id).await.is_err());
    let request = f.store.get(id).await.unwrap().unwrap();
    assert_eq!(request.state, RequestState::FanningOut);
    assert!(
        request.lease.is_none(),
        "the lease is given up for the next attempt"
    );
    assert_eq!(request.attempts, 1);
    assert!(request.last_error.is_some());
    // The subject can no longer cancel: commands left.
    assert!(request
        .clone()
        .transition_to(RequestState::Cancelled, Utc::now())
        .is_err());
    assert!(dsr_domain::request::transition(
        RequestKind::Erasure,
        RequestState::FanningOut,
        RequestState::Received
    )
    .is_err());
    let sent = f.ports.commands().len();
    assert_eq!(sent, 2);
    // The next delivery takes the request at once and sends only what did not leave.
    assert!(matches!(
        f.erasures.fan_out(id).await.unwrap(),
        Handled::FannedOut { commands: 1 }
    ));
    assert_eq!(f.ports.commands().len(), 3);
    assert_eq!(f.state(id).await, RequestState::AwaitingConfirmations);
}

/// Giving the lease up after a failed fan-out meets a store failure: tried again, rather than
/// leaving the lease to hold every delivery off until it runs out.
#[tokio::test]
async fn a_failed_fan_out_gives_its_lease_up_even_when_the_store_stumbles_once() {
    let f = fixture();
    let id = f.erasure().await;
    f.ports.fail_after("send", 2, 1);
    f.store.fail_next_calls(1);
    assert!(f.erasures.fan_out(id).await.is_err());
    let request = f.store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (request.state, request.lease),
        (RequestState::FanningOut, None)
    );
    assert_eq!(request.attempts, 1);
}

fn svc(name: &str) -> dsr_domain::ServiceName {
    dsr_domain::ServiceName::parse(name).unwrap()
}

/// A worker that took the request and vanished (or whose take's answer was lost) holds it
/// until its lease runs out. A delivery that finds it so must come back after that, not in
/// 30 s: at 30 s a row of deliveries used up the message's five receives inside one lease and
/// dead-lettered it, leaving the request `fanning_out` for good (the proving ground's
/// 500-request run under AWS faults).
#[tokio::test]
async fn a_delivery_that_finds_the_request_held_comes_back_when_the_lease_runs_out() {
    use dsr_adapters::batch::{Outcome, RecordHandler};
    let f = fixture();
    let id = f.erasure().await;
    let now = dsr_domain::Clock::now(&*f.clock);
    f.store
        .acquire_lease(
            id,
            "vanished",
            RequestState::FanningOut,
            now,
            dsr_domain::erasure::DEFAULT_FAN_OUT_LEASE,
        )
        .await
        .unwrap();
    f.clock.advance(Duration::seconds(20));
    let Fixture {
        erasures, store, ..
    } = f;
    let handler = crate::ErasureRequestHandler {
        erasures: Arc::new(erasures),
    };
    let message = dsr_domain::RequestMessage::new(id, RequestKind::Erasure, now);
    let outcome = handler.handle(message, &Origin::Internal).await;
    let Outcome::Retry(Some(after)) = outcome else {
        panic!("expected a retry, got {outcome:?}");
    };
    assert!(
        after >= std::time::Duration::from_secs(100),
        "comes back after the 100 s left of the lease, not after {after:?}"
    );
    assert!(after <= std::time::Duration::from_secs(105), "{after:?}");
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        RequestState::FanningOut
    );
}

/// Billing can be read back as well as erased; the others only erased.
const READABLE_BILLING: &str = r#"
services:
  - name: billing
    broker_user: svc-billing
    collect: { kind: http, url: "https://billing.example/users/{subject}" }
    erase: { via: { kind: rabbitmq, routing_key: erasure.billing }, confirm_within_seconds: 600, max_sends: 3 }
  - name: profile
    broker_user: svc-profile
    erase: { via: { kind: rabbitmq, routing_key: erasure.profile } }
  - name: email
    broker_user: svc-email
    erase: { via: { kind: rabbitmq, routing_key: erasure.email }, last: true }
"#;

impl Fixture {
    /// Fans out, every holder answers, the notice is published and the email service released
    /// and answered: where a verification is asked for.
    async fn every_holder_answered(&self) -> RequestId {
        let id = self.answered_by(&["billing", "profile"]).await;
        let at = dsr_domain::Clock::now(&*self.clock);
        self.publish_notice(id, at).await.unwrap();
        self.clock.advance(Duration::hours(73));
        let release = self
            .ports
            .checks()
            .into_iter()
            .find(|(c, _)| c.service == "email")
            .unwrap();
        self.erasures.check(&release.0).await.unwrap();
        self.confirm(id, "email").await.unwrap();
        id
    }

    fn verified(
        &self,
        ask: &dsr_domain::erasure::VerifyErasure,
        found: &[(&str, u64)],
    ) -> dsr_domain::erasure::ErasureVerified {
        dsr_domain::erasure::ErasureVerified::new(
            ask,
            dsr_domain::Clock::now(&*self.clock),
            vec![svc("billing")],
            found
                .iter()
                .map(|(s, n)| dsr_domain::erasure::StillHeld {
                    service: svc(s),
                    records: *n,
                })
                .collect(),
        )
    }
}

#[tokio::test]
async fn an_erasure_is_completed_only_when_a_verification_finds_nothing_and_data_found_is_erased_again(
) {
    let f = fixture_with(READABLE_BILLING);
    let id = f.every_holder_answered().await;
    assert_eq!(f.state(id).await, RequestState::Verifying);
    let asks = f.ports.verifications();
    assert_eq!(asks.len(), 1, "asked once");
    let first = asks[0].clone();

    // Only the service itself verifies.
    let forged = f.verified(&first, &[]);
    assert!(matches!(
        f.erasures
            .verified(&forged, &Origin::Broker("svc-billing".into()))
            .await,
        Err(ErasureError::Rejected(_))
    ));
    assert_eq!(f.state(id).await, RequestState::Verifying);

    // Billing still holds two records: opened again, sent again under a new key.
    f.clock.advance(Duration::minutes(1));
    assert_eq!(
        f.erasures
            .verified(&f.verified(&first, &[("billing", 2)]), &Origin::Internal)
            .await
            .unwrap(),
        Handled::Reopened { services: 1 }
    );
    assert_eq!(f.state(id).await, RequestState::Notifying);
    let billing = f.obligation(id, "billing").await;
    assert_eq!(
        (billing.status, billing.attempts, billing.reopened),
        (ObligationStatus::Sent, 2, 1)
    );
    let again = f.ports.commands().last().unwrap().clone();
    assert_eq!(again.service, "billing");
    assert_eq!(again.idempotency_key, format!("erase:{id}:billing:r1"));
    // The same result delivered again sends nothing more.
    f.erasures
        .verified(&f.verified(&first, &[("billing", 2)]), &Origin::Internal)
        .await
        .unwrap();
    assert_eq!(
        f.ports
            .commands()
            .iter()
            .filter(|c| c.service == "billing")
            .count(),
        2
    );

    // Billing erases for real; every holder answered again: a second round.
    f.clock.advance(Duration::minutes(1));
    f.confirm(id, "billing").await.unwrap();
    assert_eq!(f.state(id).await, RequestState::Verifying);
    let asks = f.ports.verifications();
    assert_eq!(asks.len(), 2);
    let second = asks[1].clone();
    assert!(second.requested_at > first.requested_at);
    // A late result of the first round changes nothing.
    assert_eq!(
        f.erasures
            .verified(&f.verified(&first, &[]), &Origin::Internal)
            .await
            .unwrap(),
        Handled::Nothing(dsr_domain::erasure::Skipped::NotThisVerification)
    );
    assert_eq!(f.state(id).await, RequestState::Verifying);
    assert_eq!(
        f.erasures
            .verified(&f.verified(&second, &[]), &Origin::Internal)
            .await
            .unwrap(),
        Handled::Verified
    );
    assert_eq!(f.state(id).await, RequestState::Completed);
    let told: Vec<EventType> = f.ports.events().iter().map(|e| e.event_type).collect();
    assert_eq!(
        told,
        [
            EventType::RequestSubmitted,
            EventType::ErasureNotice,
            EventType::ErasureCompleted
        ],
        "one notice, one completion"
    );
    let trail = f.store.events(id);
    assert!(
        trail.contains(&"reopened:billing:2".to_owned()),
        "{trail:?}"
    );
    assert!(
        trail.contains(&"verified_nothing_left:1".to_owned()),
        "{trail:?}"
    );
}

#[tokio::test]
async fn without_a_readable_holder_an_erasure_completes_without_a_verification() {
    let f = fixture_with(&READABLE_BILLING.replace(
        "    collect: { kind: http, url: \"https://billing.example/users/{subject}\" }\n",
        "",
    ));
    let id = f.every_holder_answered().await;
    assert_eq!(f.state(id).await, RequestState::Completed);
    assert!(f.ports.verifications().is_empty());
}

/// The fixture's registry with `ads` taking batches of two.
fn batched_registry() -> String {
    REGISTRY.replace(
        r#"url: "https://ads.example/users/{subject}" }"#,
        r#"url: "https://ads.example/users/{subject}", batch: { url: "https://ads.example/erasures", max_subjects: 2 } }"#,
    )
}

impl Fixture {
    /// An erasure fanned out whose holders all answered but billing (and email, erased last).
    async fn only_billing_unanswered(&self) -> RequestId {
        self.answered_by(&["profile", "ads"]).await
    }

    /// The request's audit trail, its events' texts, oldest first.
    async fn trail(&self, id: RequestId) -> Vec<String> {
        self.store
            .audit_trail(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect()
    }

    async fn assert_audited(&self, id: RequestId, event: &str) {
        let trail = self.trail(id).await;
        assert!(trail.iter().any(|e| e == event), "no {event} in {trail:?}");
    }

    /// An erasure request of `subject`, fanned out.
    async fn fanned_out(&self, subject: &str) -> RequestId {
        let id = self.erasure_of(subject).await;
        self.erasures.fan_out(id).await.unwrap();
        id
    }
}

#[tokio::test]
async fn a_vendor_that_takes_batches_is_called_once_per_max_subjects_and_each_subject_answered() {
    use crate::VendorBatchHandler;
    use dsr_adapters::batch::{BatchHandler, Outcome};
    let registry = batched_registry();
    let f = fixture_with(&registry);
    let mut ids = Vec::new();
    for subject in ["s0", "s1", "s2"] {
        ids.push(f.fanned_out(subject).await);
    }
    // Queued, not called: the command is sent (and watched) as any other.
    for id in &ids {
        let ads = f.obligation(*id, "ads").await;
        assert_eq!((ads.status, ads.attempts), (ObligationStatus::Sent, 1));
    }
    let queued: Vec<_> = f
        .ports
        .commands()
        .into_iter()
        .filter(|c| c.service == "ads")
        .collect();
    assert_eq!(queued.len(), 3);
    f.ports.batch_answers.lock().unwrap().insert(
        "s2".into(),
        Delivery::Answered {
            status: ObligationStatus::NotFound,
            receipt: "{}".into(),
        },
    );
    let mut forged = queued[0].clone();
    forged.subject = SubjectId::parse("someone-else").unwrap();
    let billing = f
        .ports
        .commands()
        .into_iter()
        .find(|c| c.service == "billing")
        .unwrap();
    let mut messages: Vec<_> = queued
        .iter()
        .map(|c| (c.clone(), Origin::Internal))
        .collect();
    messages.push((forged, Origin::Internal));
    messages.push((queued[1].clone(), Origin::Broker("svc-ads".into())));
    messages.push((billing, Origin::Internal));

    let Fixture {
        erasures,
        ports,
        store,
        clock,
        ..
    } = f;
    let handler = VendorBatchHandler {
        erasures: Arc::new(erasures),
    };
    let outcomes = handler.handle_all(messages).await;
    assert_eq!(
        &outcomes[..3],
        [Outcome::Done, Outcome::Done, Outcome::Done]
    );
    let rejected: Vec<String> = outcomes[3..]
        .iter()
        .map(|o| match o {
            Outcome::Reject(reason) => reason.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        rejected[0].contains("subject is not request"),
        "{rejected:?}"
    );
    assert!(
        rejected[1].contains("broker user `svc-ads`"),
        "{rejected:?}"
    );
    assert!(rejected[2].contains("takes no batches"), "{rejected:?}");
    // Two calls for three subjects (two per call); the forged one never reached the vendor.
    let calls: Vec<Vec<String>> = ports
        .batches()
        .iter()
        .map(|b| b.iter().map(|c| c.subject.as_str().to_owned()).collect())
        .collect();
    assert_eq!(calls, [vec!["s0", "s1"], vec!["s2"]]);
    let status = |id: RequestId| {
        let store = store.clone();
        async move {
            store
                .obligations(id)
                .await
                .unwrap()
                .into_iter()
                .find(|o| o.service == "ads")
                .unwrap()
                .status
        }
    };
    assert_eq!(status(ids[0]).await, ObligationStatus::Confirmed);
    assert_eq!(status(ids[1]).await, ObligationStatus::Confirmed);
    assert_eq!(status(ids[2]).await, ObligationStatus::NotFound);

    // A call that fails says nothing of anyone: its commands come back soon.
    let f = fixture_with(&registry);
    let again = f.fanned_out("s3").await;
    let command = f
        .ports
        .commands()
        .into_iter()
        .find(|c| c.service == "ads")
        .unwrap();
    f.ports.fail_next("send_batch", 1);
    let Fixture {
        erasures,
        ports,
        store,
        ..
    } = f;
    let handler = VendorBatchHandler {
        erasures: Arc::new(erasures),
    };
    let outcomes = handler
        .handle_all(vec![(command.clone(), Origin::Internal)])
        .await;
    assert!(
        matches!(outcomes[..], [Outcome::Retry(Some(_))]),
        "{outcomes:?}"
    );
    // "Not now" from the vendor: done here, its check moved to when the vendor said.
    ports.batch_answers.lock().unwrap().insert(
        "s3".into(),
        Delivery::Deferred {
            reason: "429".into(),
            after: std::time::Duration::from_secs(7),
        },
    );
    let outcomes = handler.handle_all(vec![(command, Origin::Internal)]).await;
    assert_eq!(outcomes, [Outcome::Done]);
    let moved = ports
        .checks()
        .into_iter()
        .filter(|(c, _)| c.service == "ads")
        .map(|(_, at)| at)
        .min()
        .unwrap();
    assert_eq!(
        moved,
        dsr_domain::Clock::now(&*clock) + Duration::seconds(7)
    );
    let ads = store
        .obligations(again)
        .await
        .unwrap()
        .into_iter()
        .find(|o| o.service == "ads")
        .unwrap();
    assert_eq!(ads.status, ObligationStatus::Sent, "still waiting");
}

#[tokio::test]
async fn an_escalated_obligation_sent_again_by_an_operator_and_then_answered_moves_its_request_on()
{
    use dsr_domain::erasure::{OperatorAction, OperatorDecision};
    let f = fixture();
    let id = f.only_billing_unanswered().await;
    // billing: two sends at most, then escalated, and the watchdog stops.
    f.erasures
        .check(&ObligationDue::new(id, &svc("billing"), 1))
        .await
        .unwrap();
    assert_eq!(
        f.erasures
            .check(&ObligationDue::new(id, &svc("billing"), 2))
            .await
            .unwrap(),
        Handled::Escalated
    );
    let now = dsr_domain::Clock::now(&*f.clock);
    let resend = OperatorAction::new(
        id,
        &svc("billing"),
        OperatorDecision::Resend,
        "jane@ops",
        now,
        "u1",
    );
    // Only through the service: a holder cannot have itself re-sent or resolved.
    assert!(matches!(
        f.erasures
            .operator_action(&resend, &Origin::Broker("svc-billing".into()))
            .await,
        Err(ErasureError::Rejected(_))
    ));
    assert_eq!(
        f.erasures
            .operator_action(&resend, &Origin::Internal)
            .await
            .unwrap(),
        Handled::Resent { attempt: 3 }
    );
    let sent: Vec<_> = f
        .ports
        .commands()
        .into_iter()
        .filter(|c| c.service == "billing")
        .collect();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2].idempotency_key, sent[0].idempotency_key);
    assert_eq!(sent[2].message_id, format!("erase:{id}:billing:3"));
    assert!(
        f.ports
            .checks()
            .iter()
            .any(|(c, _)| c.service == "billing" && c.attempt == 3),
        "the new attempt has its own watchdog check"
    );
    f.assert_audited(id, "operator_resent:billing:by:jane@ops")
        .await;
    // The holder answers this time: the erasure moves on to telling the subject.
    f.confirm(id, "billing").await.unwrap();
    assert_eq!(f.state(id).await, RequestState::Notifying);
    // A decision on an answered obligation changes nothing.
    assert_eq!(
        f.erasures
            .operator_action(&resend, &Origin::Internal)
            .await
            .unwrap(),
        Handled::Nothing(dsr_domain::erasure::Skipped::AlreadyAnswered)
    );
}

#[tokio::test]
async fn an_obligation_resolved_by_an_operator_moves_the_request_on_marked_as_settled_by_hand() {
    use dsr_domain::erasure::{ConfirmationOutcome as Outcome, OperatorAction, OperatorDecision};
    let f = fixture();
    let id = f.only_billing_unanswered().await;
    let now = dsr_domain::Clock::now(&*f.clock);
    let action = |operator: &str| {
        OperatorAction::new(
            id,
            &svc("billing"),
            OperatorDecision::Resolve,
            operator,
            now,
            "u2",
        )
    };
    for (bad, why) in [
        (action("jane@ops"), "erased` or `not_found"),
        (
            action("jane@ops").resolved(Outcome::Failed, "ticket 7"),
            "erased` or `not_found",
        ),
        (
            action("jane@ops").resolved(Outcome::Erased, "   "),
            "evidence",
        ),
        (
            action("jane doe").resolved(Outcome::Erased, "ticket 7"),
            "operator must be named",
        ),
    ] {
        match f.erasures.operator_action(&bad, &Origin::Internal).await {
            Err(ErasureError::Rejected(reason)) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    // The erase-last service waits for the notice: no operator sends it early.
    let early = OperatorAction::new(
        id,
        &svc("email"),
        OperatorDecision::Resend,
        "jane@ops",
        now,
        "u3",
    );
    assert!(matches!(
        f.erasures.operator_action(&early, &Origin::Internal).await,
        Err(ErasureError::Rejected(reason)) if reason.contains("erased last")
    ));
    let resolved = action("jane@ops").resolved(
        Outcome::Erased,
        "vendor ticket SUP-4711: rows deleted by their DBA",
    );
    assert_eq!(
        f.erasures
            .operator_action(&resolved, &Origin::Internal)
            .await
            .unwrap(),
        Handled::Recorded
    );
    let billing = f.obligation(id, "billing").await;
    assert_eq!(billing.status, ObligationStatus::Confirmed);
    let receipt: serde_json::Value =
        serde_json::from_str(billing.receipt.as_deref().unwrap()).unwrap();
    assert_eq!(receipt["manual"], true);
    assert_eq!(receipt["operator"], "jane@ops");
    assert_eq!(
        receipt["evidence"],
        "vendor ticket SUP-4711: rows deleted by their DBA"
    );
    assert!(dsr_domain::erasure::settled_by_hand(
        billing.receipt.as_deref()
    ));
    assert_eq!(f.state(id).await, RequestState::Notifying);
    f.assert_audited(id, "operator_resolved:billing:confirmed:by:jane@ops")
        .await;
}

const KEYED_BY_OTHER_IDENTIFIERS: &str = r#"
identity_sources:
  - { kind: http, url: "https://profile.internal/users/{subject}/identifiers", fields: { email: /email, phone: /phone } }
services:
  - name: billing
    broker_user: svc-billing
    erase: { via: { kind: rabbitmq, routing_key: erasure.billing } }
  - name: ads
    identifiers: [email]
    erase: { via: { kind: http, url: "https://ads.example/people/{subject}" } }
  - name: callcentre
    broker_user: svc-callcentre
    identifiers: [phone, user_id]
    erase: { via: { kind: rabbitmq, routing_key: erasure.callcentre } }
"#;

#[tokio::test]
async fn each_holder_is_sent_the_identifiers_it_keys_by_and_one_the_subject_lacks_is_not_applicable(
) {
    let f = fixture_with(KEYED_BY_OTHER_IDENTIFIERS);
    let profile = "http profile.internal";
    // The profile service is down: nothing is sent, the fan-out is tried again.
    let id = f.erasure().await;
    assert!(matches!(
        f.erasures.fan_out(id).await,
        Err(ErasureError::Identities(reason)) if reason == "identity source http profile.internal: HTTP 503"
    ));
    assert!(f.ports.commands().is_empty());
    // It knows erin's e-mail address, and no phone number.
    f.identities.knows(
        profile,
        "erin",
        &[("email", "erin@example.com"), ("nickname", "e")],
    );
    f.ports.answers.lock().unwrap().insert(
        svc("ads"),
        Delivery::Answered {
            status: ObligationStatus::Confirmed,
            receipt: "{}".into(),
        },
    );
    f.erasures.fan_out(id).await.unwrap();
    let commands = f.ports.commands();
    let sent = |service: &str| {
        commands
            .iter()
            .find(|c| c.service == service)
            .cloned()
            .unwrap_or_else(|| panic!("no command to {service}"))
    };
    let ads = sent("ads");
    assert_eq!(ads.subject.as_str(), "erin@example.com");
    let kinds = |c: &dsr_domain::erasure::ErasureCommand| {
        c.identifiers
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(&ads),
        ["email=erin@example.com"],
        "the vendor keyed by e-mail gets the e-mail, not the user id"
    );
    let billing = sent("billing");
    assert_eq!(billing.subject.as_str(), "erin");
    assert_eq!(kinds(&billing), ["user_id=erin"]);
    assert!(
        commands.iter().all(|c| c.service != "callcentre"),
        "nothing is sent to a holder keyed by an identifier the subject lacks"
    );
    let callcentre = f.obligation(id, "callcentre").await;
    assert_eq!(callcentre.status, ObligationStatus::NotApplicable);
    let receipt: serde_json::Value =
        serde_json::from_str(callcentre.receipt.as_deref().unwrap()).unwrap();
    assert_eq!(
        receipt["not_applicable"],
        "keys its data by phone, which no identity source knows for this subject"
    );
    // Resolved once, kept as keyed hashes in the trail and never raw.
    let trail = f.trail(id).await;
    let resolved: Vec<&String> = trail
        .iter()
        .filter(|e| e.starts_with("identities_resolved:"))
        .collect();
    assert_eq!(resolved.len(), 1, "{trail:?}");
    let hash = SubjectHasher::new("a-test-key-of-16-bytes")
        .hash(&SubjectId::parse("erin@example.com").unwrap());
    assert_eq!(
        resolved[0],
        &format!("identities_resolved:email={hash},phone=none")
    );
    assert!(trail.iter().all(|e| !e.contains("erin@")), "{trail:?}");
    // A re-send uses what was kept: the profile service is not asked again.
    let asked = f.identities.asked.lock().unwrap().len();
    f.clock.advance(chrono::Duration::days(4));
    let check = f
        .ports
        .checks()
        .into_iter()
        .find(|(due, _)| due.service == "billing")
        .unwrap()
        .0;
    f.erasures.check(&check).await.unwrap();
    let resent = f.ports.commands();
    assert_eq!(resent.last().unwrap().service, "billing");
    assert_eq!(resent.last().unwrap().subject.as_str(), "erin");
    assert_eq!(f.identities.asked.lock().unwrap().len(), asked);
    // Billing answers; the not-applicable holder does not hold the request up, and its
    // certificate says why nothing was erased there.
    f.confirm(id, "billing").await.unwrap();
    assert_eq!(f.state(id).await, RequestState::Completed);
    let request = f.store.get(id).await.unwrap().unwrap();
    let certificate = dsr_domain::erasure::certificate::Certificate::of(
        &request,
        &f.store.obligations(id).await.unwrap(),
        None,
        Utc::now(),
    )
    .unwrap();
    let outcomes: Vec<(&str, &str)> = certificate
        .holders
        .iter()
        .map(|h| (h.service.as_str(), h.outcome.as_str()))
        .collect();
    assert!(
        outcomes.contains(&("callcentre", "not_applicable"))
            && outcomes.contains(&("ads", "erased")),
        "{outcomes:?}"
    );
}
