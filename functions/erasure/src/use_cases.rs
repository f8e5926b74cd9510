//! The erasure use cases with in-memory ports and a clock the tests move.

use chrono::{Duration, TimeZone, Utc};
use dsr_adapters::memory::{InMemoryReportStore, InMemoryRequestStore, RecordingErasurePorts};
use dsr_domain::erasure::{
    Confirmation, ConfirmationOutcome, Delivery, ErasureError, ErasureSettings, Erasures, Handled,
    ObligationDue, ObligationStatus, ObligationStore, OWN_COPIES,
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
    let store = Arc::new(InMemoryRequestStore::default());
    let ports = Arc::new(RecordingErasurePorts::default());
    let clock = Arc::new(FixedClock::at(
        Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap(),
    ));
    let registry: ServiceRegistry = serde_yaml_ng::from_str(REGISTRY).unwrap();
    let reports = InMemoryReportStore::default();
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
    };
    Fixture {
        erasures,
        store,
        ports,
        clock,
        reports,
    }
}

impl Fixture {
    async fn erasure(&self) -> RequestId {
        let request = Request::receive(
            RequestKind::Erasure,
            SubjectId::parse("erin").unwrap(),
            dsr_domain::Clock::now(&*self.clock),
        );
        let hash = SubjectHasher::new("a-test-key-of-16-bytes").hash(&request.subject);
        self.store.create(&request, &hash, None).await.unwrap();
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
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, EventType::ErasureNotice);
    // Broadcast with the hash only; the subject id goes to the notifying service alone.
    assert!(!serde_json::to_string(&events[0]).unwrap().contains("erin"));
    let notices = f.ports.notices();
    assert_eq!(notices.len(), 1);
    assert_eq!(
        (notices[0].notice, notices[0].subject.as_str()),
        (EventType::ErasureNotice, "erin")
    );
    assert_eq!(notices[0].routing_key(), "notice.erasure_notice");
    let release = f
        .ports
        .checks()
        .into_iter()
        .find(|(c, _)| c.service == "email")
        .unwrap();
    assert_eq!(release.0.attempt, 0);
    assert_eq!(
        release.1,
        dsr_domain::Clock::now(&*f.clock) + Duration::hours(72)
    );
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
    assert_eq!(events.len(), 2);
    // Confirming again changes nothing.
    assert!(matches!(
        f.confirm(id, "email").await.unwrap(),
        Handled::Nothing(_)
    ));
    assert_eq!(f.ports.events().len(), 2);
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
        self.store.create(&request, &hash, None).await.unwrap();
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
    for service in ["billing", "profile", "ads"] {
        f.store
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
    assert_eq!(f.ports.events()[0].event_type, EventType::ErasureNotice);
}

fn svc(name: &str) -> dsr_domain::ServiceName {
    dsr_domain::ServiceName::parse(name).unwrap()
}
