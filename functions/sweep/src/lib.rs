//! The sweep function: woken on a schedule (EventBridge), it re-sends the work message of every
//! accepted request whose message never reached its queue or was lost, so that a `202` always
//! leads somewhere even when SQS was down at the moment of submission.

use dsr_domain::{Clock, RequestDesk, RequestStore, SweepReport, SweepSettings, WorkQueue};
use lambda_runtime::Error;

pub const SWEEP_STALE_AFTER_SECONDS: &str = "SWEEP_STALE_AFTER_SECONDS";
pub const SWEEP_UNQUEUED_GRACE_SECONDS: &str = "SWEEP_UNQUEUED_GRACE_SECONDS";

/// Settings from the environment, falling back to the defaults for anything unset.
pub fn settings_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<SweepSettings, String> {
    let mut settings = SweepSettings::default();
    let seconds = |name: &str| -> Result<Option<chrono::Duration>, String> {
        lookup(name)
            .map(|raw| {
                raw.parse::<u32>()
                    .map(|s| chrono::Duration::seconds(i64::from(s)))
                    .map_err(|_| format!("{name} must be a whole number of seconds, not `{raw}`"))
            })
            .transpose()
    };
    if let Some(grace) = seconds(SWEEP_UNQUEUED_GRACE_SECONDS)? {
        settings.unqueued_grace = grace;
    }
    if let Some(stale) = seconds(SWEEP_STALE_AFTER_SECONDS)? {
        settings.stale_after = stale;
    }
    Ok(settings)
}

/// One sweep. The event carries nothing we need: the schedule only says "now".
pub async fn handle<S, Q, C>(
    desk: &RequestDesk<S, Q, C>,
    settings: SweepSettings,
) -> Result<SweepReport, Error>
where
    S: RequestStore,
    Q: WorkQueue,
    C: Clock,
{
    let mut report = desk.sweep_lost_messages(settings).await?;
    report.expired = desk.expire_reports(settings.batch_limit).await?;
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
    use dsr_adapters::memory::{InMemoryRequestStore, InMemoryWorkQueue};
    use dsr_domain::{FixedClock, RequestKind, SubjectHasher, SubjectId};
    use std::sync::Arc;

    #[tokio::test]
    async fn resends_only_messages_that_never_left_and_fails_while_the_queue_is_down() {
        let clock = Arc::new(FixedClock::at(
            Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap(),
        ));
        let queue = Arc::new(InMemoryWorkQueue::default());
        let desk = RequestDesk::new(
            InMemoryRequestStore::default(),
            queue.clone(),
            clock.clone(),
            SubjectHasher::new("sixteen-byte-key"),
        );
        let alice = SubjectId::parse("alice").unwrap();
        let bob = SubjectId::parse("bob").unwrap();
        desk.submit(&alice, RequestKind::Access, None)
            .await
            .unwrap();
        queue.set_unavailable(true);
        let lost = desk.submit(&bob, RequestKind::Erasure, None).await.unwrap();
        assert_eq!(queue.sent().len(), 1);

        let settings = SweepSettings::default();
        let report = handle(&desk, settings).await;
        assert!(report.is_ok(), "nothing is old enough to resend yet");
        assert_eq!(queue.sent().len(), 1);

        clock.advance(settings.unqueued_grace + Duration::seconds(1));
        assert!(handle(&desk, settings).await.is_err(), "queue still down");

        queue.set_unavailable(false);
        let report = handle(&desk, settings).await.unwrap();
        assert_eq!((report.examined, report.reenqueued), (2, 1));
        let sent = queue.sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].request_id, lost.request().id);

        let report = handle(&desk, settings).await.unwrap();
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
        let desk = RequestDesk::new(
            store.clone(),
            InMemoryWorkQueue::default(),
            clock.clone(),
            SubjectHasher::new("sixteen-byte-key"),
        );
        let alice = SubjectId::parse("alice").unwrap();
        let mut request = desk
            .submit(&alice, RequestKind::Access, None)
            .await
            .unwrap()
            .request()
            .clone();
        let hash = desk.subject_hash(&alice);
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
        request.report = Some(dsr_domain::ReportInfo {
            key: "k".into(),
            size: 1,
            sha256: "00".into(),
            expires_at: clock.now() + Duration::days(30),
        });
        store.commit_fenced(&request, &hash, 0).await.unwrap();

        assert_eq!(
            handle(&desk, SweepSettings::default())
                .await
                .unwrap()
                .expired,
            0
        );
        clock.advance(Duration::days(30));
        assert_eq!(
            handle(&desk, SweepSettings::default())
                .await
                .unwrap()
                .expired,
            1
        );
        let state = store.get(request.id).await.unwrap().unwrap().state;
        assert_eq!(state, dsr_domain::RequestState::Expired);
    }

    #[test]
    fn settings_come_from_the_environment_with_defaults() {
        let settings = settings_from_lookup(|name| {
            (name == SWEEP_STALE_AFTER_SECONDS).then(|| "60".to_owned())
        })
        .unwrap();
        assert_eq!(settings.stale_after, Duration::seconds(60));
        assert_eq!(
            settings.unqueued_grace,
            SweepSettings::default().unqueued_grace
        );
        assert!(settings_from_lookup(|_| Some("soon".into())).is_err());
    }
}
