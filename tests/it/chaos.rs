//! The proving ground's scenarios. Each runs small here (inside `make test`) and at full size
//! under `make chaos` (sizes from the environment, see `docs/reliability.md`), and prints one
//! `chaos:` line with its figures.

use crate::erasure::{rig, ErasureRig, RigSettings};
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_domain::{RequestId, RequestState, RequestStore};
use dsr_local::erasing_services::AMQP_SERVICES;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A size from the environment (`make chaos` sets the full ones).
pub fn scale(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Submits through the API as a careful client does: on a 5xx it tries again with the same
/// `Idempotency-Key`, so that a retry never makes a second request.
pub async fn submit_until_accepted(rig: &ErasureRig, subject: &str, kind: &str) -> (String, u32) {
    let key = format!("chaos-{subject}-{kind}");
    for attempt in 1..=30 {
        let reply = rig
            .app
            .send(
                reqwest::Method::POST,
                "/v1/requests",
                Some(&rig.app.token(subject)),
                Some(&format!(r#"{{"type":"{kind}"}}"#)),
                &[("idempotency-key", &key)],
            )
            .await;
        if reply.status.is_success() {
            return (reply.body["id"].as_str().unwrap().to_owned(), attempt - 1);
        }
        assert!(
            reply.status.is_server_error(),
            "{subject}: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
    }
    panic!("{subject}: the API kept failing");
}

/// Waits until every request is in a terminal state (or a ready report); returns the states.
/// Asks about one open request at a time (the oldest not yet finished), and about all of them
/// only at the end: polling every request twice a second was half of what the emulator served
/// in a 200-request run, and slowed the very work it waited for.
pub async fn settle(
    rig: &ErasureRig,
    ids: &[String],
    within: Duration,
) -> HashMap<String, RequestState> {
    let store = DynamoRequestStore::new(rig.app.dynamodb.clone(), rig.app.table(), "chaos");
    let deadline = Instant::now() + within;
    let finished = |s: &RequestState| s.is_terminal() || *s == RequestState::ReportReady;
    let mut open: std::collections::VecDeque<&String> = ids.iter().collect();
    while let Some(id) = open.front() {
        let request: RequestId = id.parse().unwrap();
        match store.get(request).await {
            Ok(Some(found)) if finished(&found.state) => {
                open.pop_front();
                continue;
            }
            _ if Instant::now() > deadline => break,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let mut states = HashMap::new();
    for id in ids {
        if let Ok(Some(found)) = store.get(id.parse().unwrap()).await {
            states.insert(id.clone(), found.state);
        }
    }
    states
}

/// Prints what the requests that did not finish went through, for whoever reads the failure.
pub async fn explain_the_unfinished(rig: &ErasureRig, states: &HashMap<String, RequestState>) {
    let store = DynamoRequestStore::new(rig.app.dynamodb.clone(), rig.app.table(), "chaos");
    for (id, state) in states {
        if matches!(state, RequestState::Completed | RequestState::ReportReady) {
            continue;
        }
        let request = store.get(id.parse().unwrap()).await.unwrap().unwrap();
        let obligations = dsr_domain::erasure::ObligationStore::obligations(&store, request.id)
            .await
            .unwrap_or_default();
        println!(
            "unfinished {id}: {state} attempts {} error {:?} lease {:?}\n  audit {:?}\n  obligations {:?}",
            request.attempts,
            request.last_error,
            request.lease,
            rig.audit(id).await,
            obligations
                .iter()
                .map(|o| (o.service.to_string(), o.status, o.attempts, o.release_at))
                .collect::<Vec<_>>()
        );
    }
}

/// What the holders, the bucket and the dead-letter queues say after a run: every effect once.
pub async fn assert_every_effect_once(
    rig: &ErasureRig,
    access: &[String],
    erasures: &[String],
    states: &HashMap<String, RequestState>,
) {
    for id in erasures {
        assert_eq!(
            states.get(id),
            Some(&RequestState::Completed),
            "erasure {id}"
        );
        for name in AMQP_SERVICES {
            let service = rig.services.service(name);
            assert_eq!(service.erasures_of(id).len(), 1, "{name} erased {id} once");
        }
        let email = rig.services.service("email");
        let notices = email.notices_of(id);
        assert_eq!(notices.len(), 1, "one notice for {id}");
        assert!(
            notices[0] <= email.erasures_of(id)[0],
            "{id}: the subject was told before their email address was erased"
        );
    }
    let s3 = dsr_adapters::s3::client(&crate::helpers::aws().await);
    let bucket = rig.app.stack.context.resources["ReportsBucket"]
        .name
        .clone();
    for id in access {
        assert_eq!(
            states.get(id),
            Some(&RequestState::ReportReady),
            "access {id}"
        );
        let prefix = format!("reports/{id}/");
        let objects = s3
            .list_objects_v2()
            .bucket(&bucket)
            .prefix(&prefix)
            .send()
            .await
            .unwrap();
        assert_eq!(objects.contents().len(), 1, "one report for {id}");
    }
    let uploads = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "no unfinished upload left");
    for queue in [
        "AccessRequestsDeadLetterQueue",
        "ErasureRequestsDeadLetterQueue",
        "ConfirmationsDeadLetterQueue",
        "ScheduleRequestsDeadLetterQueue",
        "OutboundDeadLetterQueue",
    ] {
        let dead: Vec<String> = crate::helpers::drain(&rig.app.sqs, &rig.app.queue_url(queue))
            .await
            .iter()
            .map(|m| {
                let reason = m
                    .message_attributes()
                    .and_then(|a| a.get("reason"))
                    .and_then(|r| r.string_value())
                    .unwrap_or("(no reason: the queue's redrive)");
                let body: String = m.body().unwrap_or_default().chars().take(160).collect();
                format!("{reason}: {body}")
            })
            .collect();
        assert!(dead.is_empty(), "{queue} is empty:\n{}", dead.join("\n"));
    }
}

#[tokio::test]
async fn with_aws_failing_a_fifth_of_all_calls_every_request_completes_and_every_effect_happens_once(
) {
    let requests = scale("CHAOS_REQUESTS", 24);
    let rate: f64 = std::env::var("CHAOS_FAULT_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.2);
    let emulator =
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into());
    let proxy = dsr_local::fault_proxy::start(
        &emulator,
        dsr_local::fault_proxy::Faults {
            rate,
            max_latency: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let rig = rig(RigSettings {
        functions_endpoint: Some(proxy.url()),
        // The safety net for a work message whose sending failed after the request was
        // stored (every minute in AWS).
        sweep_every: Some(Duration::from_secs(5)),
        // Lambda's SQS event source starts with five concurrent batches per queue.
        workers: 5,
        // A worker that could not give its lease up (every try of it faulted) is, to the
        // others, a dead one: its request is taken over when the lease runs out. The report's
        // lease is 16 minutes, twice this proof's window; as in the crash proof, a shorter one
        // lets the take-over happen inside it.
        // Likewise a request a worker handed back whose message then failed to come back
        // (its "come back in N s" faulted three times over, leaving it to the queue's
        // 90-minute timeout): the reconciliation re-drives it once stuck, after an hour in a
        // deployment, after two minutes here (it runs every minute locally).
        // And a request still `received` whose message went missing (the sweep re-sends it
        // after 30 minutes in a deployment): after two minutes here.
        overrides: vec![
            ("REPORT_LEASE_SECONDS", "120".into()),
            ("STUCK_AFTER_SECONDS", "120".into()),
            ("SWEEP_STALE_AFTER_SECONDS", "120".into()),
        ],
        ..RigSettings::default()
    })
    .await;
    let started = Instant::now();
    let run = crate::helpers::unique_name();
    let mut access = Vec::new();
    let mut erasures = Vec::new();
    let mut client_retries = 0;
    // Submitted a few at a time, as users do, not one after the other.
    let subjects: Vec<(String, &str)> = (0..requests)
        .map(|i| {
            let kind = if i % 2 == 0 { "access" } else { "erasure" };
            (format!("chaos-{run}-{i}"), kind)
        })
        .collect();
    for chunk in subjects.chunks(8) {
        let submitted = futures::future::join_all(
            chunk
                .iter()
                .map(|(subject, kind)| submit_until_accepted(&rig, subject, kind)),
        )
        .await;
        for ((_, kind), (id, retries)) in chunk.iter().zip(submitted) {
            client_retries += retries;
            if *kind == "access" {
                access.push(id);
            } else {
                erasures.push(id);
            }
        }
    }
    let all: Vec<String> = access.iter().chain(&erasures).cloned().collect();
    // Generous: against moto (one thread serving every call) its throughput, not the faults,
    // sets the pace of the big runs (about 20 calls a second through the proxy, ~125 calls per
    // request).
    let states = settle(&rig, &all, Duration::from_secs(300 + 8 * requests as u64)).await;
    let done = states
        .values()
        .filter(|s| matches!(s, RequestState::Completed | RequestState::ReportReady))
        .count();
    println!(
        "chaos: aws faults | {requests} requests ({} access, {} erasure) | fault rate {rate} | {} calls, {} faults injected (5xx {}, throttled {}, reset before {}, reset after {}, 5xx after {}, slow {}) | {client_retries} client retries | {done} done, {} lost | {:.0} s",
        access.len(),
        erasures.len(),
        proxy.counts.calls.load(std::sync::atomic::Ordering::Relaxed),
        proxy.counts.total(),
        proxy.counts.of(dsr_local::fault_proxy::Fault::ServerError),
        proxy.counts.of(dsr_local::fault_proxy::Fault::Throttled),
        proxy.counts.of(dsr_local::fault_proxy::Fault::ResetBefore),
        proxy.counts.of(dsr_local::fault_proxy::Fault::ResetAfter),
        proxy.counts.of(dsr_local::fault_proxy::Fault::ServerErrorAfter),
        proxy.counts.of(dsr_local::fault_proxy::Fault::Slow),
        requests - done,
        started.elapsed().as_secs_f64(),
    );
    explain_the_unfinished(&rig, &states).await;
    assert!(proxy.counts.total() > 0, "faults were injected");
    assert_every_effect_once(&rig, &access, &erasures, &states).await;
}

#[tokio::test]
async fn every_message_delivered_three_times_to_eight_workers_has_one_effect() {
    let requests = scale("CHAOS_DUPLICATED_REQUESTS", 8);
    let rig = rig(RigSettings {
        workers: 8,
        deliveries: 3,
        // No watchdog re-send during the run: every command seen is a duplicate, not a retry.
        confirm_within_seconds: 600,
        ..RigSettings::default()
    })
    .await;
    // The services answer every command twice, and have RabbitMQ deliver every command again.
    for name in AMQP_SERVICES {
        let behaviour = &rig.services.service(name).behaviour;
        behaviour
            .duplicate_confirmations
            .store(true, std::sync::atomic::Ordering::SeqCst);
        behaviour
            .redeliver_once
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let started = Instant::now();
    let run = crate::helpers::unique_name();
    let (mut access, mut erasures) = (Vec::new(), Vec::new());
    for chunk in (0..requests).collect::<Vec<_>>().chunks(8) {
        let submitted = futures::future::join_all(chunk.iter().map(|i| {
            let kind = if i % 2 == 0 { "access" } else { "erasure" };
            let subject = format!("dup-{run}-{i}");
            let rig = &rig;
            async move { (kind, submit_until_accepted(rig, &subject, kind).await.0) }
        }))
        .await;
        for (kind, id) in submitted {
            if kind == "access" {
                access.push(id);
            } else {
                erasures.push(id);
            }
        }
    }
    let all: Vec<String> = access.iter().chain(&erasures).cloned().collect();
    // Paced by the emulator: each erasure command comes back as about twelve confirmations
    // (three publications, each delivered twice, each answered twice), every batch of them
    // handled three times, and moto answers from one thread (docs/reliability.md).
    let states = settle(&rig, &all, Duration::from_secs(240 + 20 * requests as u64)).await;
    explain_the_unfinished(&rig, &states).await;
    // One command per holder and request: every delivery of it carries the same message id.
    let mut deliveries = 0;
    for id in &erasures {
        for name in AMQP_SERVICES {
            let service = rig.services.service(name);
            let seen: Vec<String> = service
                .commands
                .lock()
                .unwrap()
                .iter()
                .filter(|m| m.contains(id.as_str()))
                .cloned()
                .collect();
            deliveries += seen.len();
            let distinct: std::collections::HashSet<&String> = seen.iter().collect();
            assert_eq!(distinct.len(), 1, "{name}: one command for {id}: {seen:?}");
        }
    }
    let done = states
        .values()
        .filter(|s| matches!(s, RequestState::Completed | RequestState::ReportReady))
        .count();
    println!(
        "chaos: duplicates | {requests} requests ({} access, {} erasure) | 8 workers per function, every batch to 3 at once; every confirmation published twice, every command redelivered | {deliveries} command deliveries for {} commands | {done} done, {} lost | {:.0} s",
        access.len(),
        erasures.len(),
        erasures.len() * AMQP_SERVICES.len(),
        requests - done,
        started.elapsed().as_secs_f64()
    );
    assert_every_effect_once(&rig, &access, &erasures, &states).await;
}
