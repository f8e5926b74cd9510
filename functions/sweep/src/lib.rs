//! The sweep function: woken on a schedule (EventBridge), it re-sends the work message of every
//! accepted request whose message never reached its queue or was lost, so that a `202` always
//! leads somewhere even when SQS was down at the moment of submission.

use dsr_adapters::config::{vars, ConfigError, Env};
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_adapters::s3::S3ReportStore;
use dsr_adapters::sqs::SqsWorkQueue;
use dsr_adapters::wiring;
use dsr_domain::erasure::ObligationStore;
use dsr_domain::report::ReportStore;
use dsr_domain::requests::reconcile::{ReconcileSettings, Reconciliation};
use dsr_domain::{
    Clock, RequestStore, Requests, SweepReport, SweepSettings, SystemClock, WorkQueue,
};
use lambda_runtime::Error;

/// The function as Lambda runs it: the request use cases, where reports are kept, and its two
/// schedules' settings.
pub struct Sweep<S, Q, C, R> {
    pub requests: Requests<S, Q, C>,
    pub reports: R,
    /// How long a finished request keeps the raw subject id (then only its keyed hash).
    pub retention: chrono::Duration,
    pub sweep: SweepSettings,
    pub reconcile: ReconcileSettings,
}

pub type Handler = Sweep<DynamoRequestStore, SqsWorkQueue, SystemClock, S3ReportStore>;

/// Builds the function from its configuration: the same wiring in Lambda and the local stack.
pub fn build(aws: &aws_config::SdkConfig, env: &Env) -> Result<Handler, ConfigError> {
    Ok(Sweep {
        requests: wiring::requests(aws, env, "sweep")?,
        reports: S3ReportStore::new(
            dsr_adapters::s3::client(aws),
            env.required(vars::REPORTS_BUCKET)?,
        ),
        retention: env.days(vars::REQUEST_RETENTION_DAYS, chrono::Duration::days(90))?,
        sweep: settings(env)?,
        reconcile: reconcile_settings(env)?,
    })
}

/// Reconciliation settings from the environment, defaults for anything unset.
pub use dsr_adapters::wiring::reconcile_settings;

/// Sweep settings from the environment, defaults for anything unset.
pub fn settings(env: &Env) -> Result<SweepSettings, ConfigError> {
    let defaults = SweepSettings::default();
    Ok(SweepSettings {
        unqueued_grace: env.seconds(vars::SWEEP_UNQUEUED_GRACE_SECONDS, defaults.unqueued_grace)?,
        stale_after: env.seconds(vars::SWEEP_STALE_AFTER_SECONDS, defaults.stale_after)?,
        ..defaults
    })
}

impl<S, Q, C, R> Sweep<S, Q, C, R>
where
    S: RequestStore + ObligationStore,
    Q: WorkQueue,
    C: Clock,
    R: ReportStore,
{
    /// Two schedules wake the function: every minute the sweep; every 15 minutes
    /// `{"task": "reconcile"}`, which also takes the raw subject id out of finished requests
    /// past their retention.
    pub async fn handle(&self, event: serde_json::Value) -> Result<(), Error> {
        if event["task"] == "reconcile" {
            reconcile(&self.requests, self.reconcile).await?;
            let forgotten = self
                .requests
                .forget_finished_subjects(self.retention, self.sweep.batch_limit)
                .await?;
            if forgotten > 0 {
                tracing::info!(forgotten, "subject ids removed from finished requests");
            }
            Ok(())
        } else {
            handle(&self.requests, &self.reports, self.sweep)
                .await
                .map(|_| ())
        }
    }
}

/// The scheduled reconciliation (`{"task": "reconcile"}`): counts in sync, stuck requests
/// re-driven, deadlines at risk. Everything it finds goes out as metrics and log lines.
pub async fn reconcile<S, Q, C>(
    requests: &Requests<S, Q, C>,
    settings: ReconcileSettings,
) -> Result<Reconciliation, Error>
where
    S: RequestStore,
    Q: WorkQueue,
    C: Clock,
{
    let found = requests.reconcile(settings).await?;
    tracing::info!(
        in_sync = found.all_in_sync(),
        deadline_at_risk = found.deadline_at_risk.len(),
        deadline_missed = found.deadline_missed.len(),
        stuck = found.stuck.len(),
        redriven = found.redriven.len(),
        "reconciliation"
    );
    Ok(found)
}

/// One sweep. The event carries nothing we need: the schedule only says "now".
pub async fn handle<S, Q, C, R>(
    requests: &Requests<S, Q, C>,
    reports: &R,
    settings: SweepSettings,
) -> Result<SweepReport, Error>
where
    S: RequestStore,
    Q: WorkQueue,
    C: Clock,
    R: ReportStore,
{
    let mut report = requests.sweep_lost_messages(settings).await?;
    report.expired = requests
        .expire_reports(reports, settings.batch_limit)
        .await?;
    if report.reenqueued + report.failed + report.expired > 0 {
        tracing::info!(
            examined = report.examined,
            reenqueued = report.reenqueued,
            failed = report.failed,
            expired = report.expired,
            "sweep re-sent lost work messages or expired reports"
        );
    } else {
        tracing::debug!(examined = report.examined, "sweep found nothing lost");
    }
    if report.failed > 0 {
        // Failing the invocation makes the schedule's retry policy and alarms see it.
        return Err(format!("{} lost messages could not be re-sent", report.failed).into());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};
    use dsr_adapters::memory::{
        InMemoryReportStore, InMemoryRequestStore, InMemoryWorkQueue, RecordingOutbox,
    };
    use dsr_domain::messages::EventType;
    use dsr_domain::{FixedClock, RequestId, RequestKind, SubjectHasher, SubjectId};
    use std::sync::Arc;

    #[tokio::test]
    async fn resends_only_messages_that_never_left_and_fails_while_the_queue_is_down() {
        let clock = Arc::new(FixedClock::at(
            Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap(),
        ));
        let queue = Arc::new(InMemoryWorkQueue::default());
        let requests = Requests::new(
            InMemoryRequestStore::default(),
            queue.clone(),
            clock.clone(),
            SubjectHasher::new("sixteen-byte-key"),
        );
        let alice = SubjectId::parse("alice").unwrap();
        let bob = SubjectId::parse("bob").unwrap();
        requests
            .submit(&alice, RequestKind::Access, None)
            .await
            .unwrap();
        queue.set_unavailable(true);
        let lost = requests
            .submit(&bob, RequestKind::Erasure, None)
            .await
            .unwrap();
        assert_eq!(queue.sent().len(), 1);

        let settings = SweepSettings::default();
        let report = handle(&requests, &InMemoryReportStore::default(), settings).await;
        assert!(report.is_ok(), "nothing is old enough to resend yet");
        assert_eq!(queue.sent().len(), 1);

        clock.advance(settings.unqueued_grace + Duration::seconds(1));
        assert!(
            handle(&requests, &InMemoryReportStore::default(), settings)
                .await
                .is_err(),
            "queue still down"
        );

        queue.set_unavailable(false);
        let report = handle(&requests, &InMemoryReportStore::default(), settings)
            .await
            .unwrap();
        assert_eq!((report.examined, report.reenqueued), (2, 1));
        let sent = queue.sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].request_id, lost.request().id);

        let report = handle(&requests, &InMemoryReportStore::default(), settings)
            .await
            .unwrap();
        assert_eq!(
            report.reenqueued, 0,
            "a recorded message is not sent again early"
        );
    }

    #[tokio::test]
    async fn reports_past_their_retention_expire() {
        let clock = Arc::new(FixedClock::at(
            Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap(),
        ));
        let store = Arc::new(InMemoryRequestStore::default());
        let requests = Requests::new(
            store.clone(),
            InMemoryWorkQueue::default(),
            clock.clone(),
            SubjectHasher::new("sixteen-byte-key"),
        );
        let alice = SubjectId::parse("alice").unwrap();
        let mut request = requests
            .submit(&alice, RequestKind::Access, None)
            .await
            .unwrap()
            .request()
            .clone();
        let hash = requests.subject_hash(&alice);
        request
            .transition_to(dsr_domain::RequestState::Collecting, clock.now())
            .unwrap();
        store
            .save_transition(&request, &hash, dsr_domain::RequestState::Received)
            .await
            .unwrap();
        request
            .transition_to(dsr_domain::RequestState::ReportReady, clock.now())
            .unwrap();
        let key = format!("reports/{}/attempt-1/report.zip", request.id);
        request.report = Some(dsr_domain::ReportInfo {
            key: key.clone(),
            size: 1,
            sha256: "00".into(),
            expires_at: clock.now() + Duration::days(30),
        });
        store.commit_fenced(&request, &hash, 0).await.unwrap();
        let reports = InMemoryReportStore::default();
        reports.put(&key, b"zip".to_vec());
        reports.put("reports/someone-elses/report.zip", b"zip".to_vec());

        assert_eq!(
            handle(&requests, &reports, SweepSettings::default())
                .await
                .unwrap()
                .expired,
            0
        );
        clock.advance(Duration::days(30));
        assert_eq!(
            handle(&requests, &reports, SweepSettings::default())
                .await
                .unwrap()
                .expired,
            1
        );
        let state = store.get(request.id).await.unwrap().unwrap().state;
        assert_eq!(state, dsr_domain::RequestState::Expired);
        assert_eq!(
            reports.objects(),
            ["reports/someone-elses/report.zip"],
            "the service deleted the report itself"
        );
    }

    #[test]
    fn settings_come_from_the_environment_with_defaults() {
        let settings =
            super::settings(&Env::from_pairs([(vars::SWEEP_STALE_AFTER_SECONDS, "60")])).unwrap();
        assert_eq!(settings.stale_after, Duration::seconds(60));
        assert_eq!(
            settings.unqueued_grace,
            SweepSettings::default().unqueued_grace
        );
        let soon = Env::from_pairs([(vars::SWEEP_UNQUEUED_GRACE_SECONDS, "soon")]);
        assert!(super::settings(&soon).is_err());
        let days = Env::from_pairs([(vars::DEADLINE_WARNING_DAYS, "10")]);
        assert_eq!(
            reconcile_settings(&days).unwrap().warning,
            Duration::days(10)
        );
    }

    #[tokio::test]
    async fn reconciliation_counts_flags_deadlines_and_redrives_a_request_whose_worker_died() {
        use dsr_domain::requests::reconcile::ReconcileSettings;
        use dsr_domain::{LeaseOutcome, RequestState};
        let clock = Arc::new(FixedClock::at(
            Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap(),
        ));
        let store = Arc::new(InMemoryRequestStore::default());
        let queue = Arc::new(InMemoryWorkQueue::default());
        let requests = Requests::new(
            store.clone(),
            queue.clone(),
            clock.clone(),
            SubjectHasher::new("sixteen-byte-key"),
        );
        let old = requests
            .submit(&SubjectId::parse("old").unwrap(), RequestKind::Access, None)
            .await
            .unwrap();
        // A worker takes it and dies: its lease runs out, the message is gone.
        let taken = store
            .acquire_lease(
                old.request().id,
                "dead-worker",
                RequestState::Collecting,
                clock.now(),
                Duration::minutes(16),
            )
            .await
            .unwrap();
        assert!(matches!(taken, LeaseOutcome::Acquired(_)));
        clock.advance(Duration::days(25));
        let young = requests
            .submit(
                &SubjectId::parse("young").unwrap(),
                RequestKind::Erasure,
                None,
            )
            .await
            .unwrap();
        let sent_before = queue.sent().len();

        let found = reconcile(&requests, ReconcileSettings::default())
            .await
            .unwrap();
        assert!(found.all_in_sync(), "{found:?}");
        assert_eq!(
            found.count(RequestKind::Access, RequestState::Collecting),
            1
        );
        assert_eq!(found.count(RequestKind::Erasure, RequestState::Received), 1);
        assert_eq!(
            found.deadline_at_risk,
            [old.request().id],
            "25 of ~30 days used"
        );
        assert!(found.deadline_missed.is_empty());
        assert_eq!(found.redriven, [old.request().id]);
        assert_eq!(queue.sent().len(), sent_before + 1);
        assert_eq!(queue.sent().last().unwrap().request_id, old.request().id);
        assert!(!found.stuck.iter().any(|(id, _)| *id == young.request().id));

        clock.advance(Duration::days(25));
        let found = requests
            .reconcile(ReconcileSettings::default())
            .await
            .unwrap();
        assert_eq!(found.deadline_missed, [old.request().id]);
        assert_eq!(found.deadline_at_risk, [young.request().id]);
    }

    type Carols = Requests<InMemoryRequestStore, InMemoryWorkQueue, Arc<FixedClock>>;

    /// Carol's request of `kind`, received at the clock's time.
    async fn carols_request(clock: &Arc<FixedClock>, kind: RequestKind) -> (Carols, RequestId) {
        let requests = Requests::new(
            InMemoryRequestStore::default(),
            InMemoryWorkQueue::default(),
            clock.clone(),
            SubjectHasher::new("sixteen-byte-key"),
        );
        let id = requests
            .submit(&SubjectId::parse("carol").unwrap(), kind, None)
            .await
            .unwrap()
            .request()
            .id;
        (requests, id)
    }

    #[tokio::test]
    async fn a_deadline_is_extended_once_by_at_most_two_months_with_a_reason_and_the_subject_is_told(
    ) {
        let clock = Arc::new(FixedClock::at(
            Utc.with_ymd_and_hms(2026, 1, 31, 9, 0, 0).unwrap(),
        ));
        let (requests, id) = carols_request(&clock, RequestKind::Access).await;
        let outbox = RecordingOutbox::default();
        let carol = SubjectId::parse("carol").unwrap();
        for (months, reason) in [(3, "too long"), (0, "none"), (1, "  ")] {
            assert!(matches!(
                requests.extend_deadline(id, months, reason, &outbox).await,
                Err(dsr_domain::RequestError::CannotExtend(_))
            ));
        }
        assert!(outbox.notices().is_empty());
        let reason = "12 services hold data; complex request";
        let extended = requests
            .extend_deadline(id, 2, reason, &outbox)
            .await
            .unwrap();
        // 31 January + one month = 28 February; two further months = 28 April.
        let due = Utc.with_ymd_and_hms(2026, 4, 28, 9, 0, 0).unwrap();
        assert_eq!(extended.due_at, due);
        let extension = extended.deadline_extension.unwrap();
        assert_eq!(extension.months, 2);
        // Told: the email service gets the subject, the platform the keyed hash only.
        let notices = outbox.notices();
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].notice, EventType::DeadlineExtended);
        assert_eq!(notices[0].subject, carol);
        assert_eq!(
            notices[0].message_id,
            format!("notice:deadline_extended:{id}")
        );
        assert_eq!(notices[0].detail["reason"], reason);
        assert_eq!(notices[0].detail["months"], 2);
        assert_eq!(notices[0].detail["due_at"], serde_json::json!(due));
        let events = outbox.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, EventType::DeadlineExtended);
        assert!(!serde_json::to_string(&events[0]).unwrap().contains("carol"));
        assert!(matches!(
            requests.extend_deadline(id, 1, "again", &outbox).await,
            Err(dsr_domain::RequestError::CannotExtend(reason)) if reason.contains("once")
        ));
        assert_eq!(
            outbox.notices().len(),
            1,
            "a refused extension tells nobody"
        );
    }

    #[tokio::test]
    async fn no_extension_once_the_first_deadline_passed() {
        let clock = Arc::new(FixedClock::at(
            Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap(),
        ));
        let (requests, id) = carols_request(&clock, RequestKind::Erasure).await;
        let outbox = RecordingOutbox::default();
        // Received 2 March at 09:00, due 2 April at 09:00: at that moment it is too late.
        clock.advance(Duration::days(31));
        let refused = requests
            .extend_deadline(id, 2, "asked for too late", &outbox)
            .await;
        assert!(
            matches!(&refused, Err(dsr_domain::RequestError::CannotExtend(why)) if why.contains("passed")),
            "{refused:?}"
        );
        assert!(outbox.notices().is_empty() && outbox.events().is_empty());
        let unchanged = requests
            .show(&SubjectId::parse("carol").unwrap(), id)
            .await
            .unwrap();
        assert!(unchanged.deadline_extension.is_none());
    }

    #[tokio::test]
    async fn an_extension_the_subject_was_not_told_of_is_told_when_the_operator_repeats_it() {
        let clock = Arc::new(FixedClock::at(
            Utc.with_ymd_and_hms(2026, 5, 4, 9, 0, 0).unwrap(),
        ));
        let (requests, id) = carols_request(&clock, RequestKind::Access).await;
        let outbox = RecordingOutbox::default();
        outbox
            .failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let failed = requests
            .extend_deadline(id, 1, "a vendor's export", &outbox)
            .await;
        assert!(
            matches!(
                &failed,
                Err(dsr_domain::RequestError::ExtensionNotTold { .. })
            ),
            "{failed:?}"
        );
        outbox
            .failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // Another extension is refused; the same one tells the subject.
        assert!(matches!(
            requests
                .extend_deadline(id, 2, "a vendor's export", &outbox)
                .await,
            Err(dsr_domain::RequestError::CannotExtend(_))
        ));
        requests
            .extend_deadline(id, 1, "a vendor's export", &outbox)
            .await
            .unwrap();
        requests
            .extend_deadline(id, 1, "a vendor's export", &outbox)
            .await
            .unwrap();
        let notices = outbox.notices();
        assert_eq!(notices.len(), 2);
        assert_eq!(
            notices[0].message_id, notices[1].message_id,
            "one message id, however often told"
        );
    }
}
