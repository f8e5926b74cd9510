//! What each step costs in AWS calls, counted by a recording proxy (the fault proxy with no
//! faults) in front of the emulator: the functions reach AWS only through it.

use crate::helpers::{spawn_app_with, TestApp};
use dsr_local::call_count::Calls;
use dsr_local::fault_proxy::{self, FaultProxy, Faults};
use std::collections::BTreeMap;
use std::time::Duration;

async fn recorded_app() -> (TestApp, FaultProxy) {
    recorded_app_with(|_| {}).await
}

async fn recorded_app_with(
    adjust: impl FnOnce(&mut dsr_local::stack::LocalSettings),
) -> (TestApp, FaultProxy) {
    let emulator =
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into());
    let proxy = fault_proxy::start(&emulator, Faults::default())
        .await
        .unwrap();
    let url = proxy.url();
    let app = spawn_app_with(|s| {
        s.functions_endpoint = Some(url);
        adjust(s);
    })
    .await;
    // The sweep and the reconciliation run once at start (then hourly here): wait them out,
    // so that what is counted next is the request's alone.
    let mut seen = u64::MAX;
    loop {
        let now = proxy
            .counts
            .calls
            .load(std::sync::atomic::Ordering::Relaxed);
        if now == seen {
            break;
        }
        seen = now;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    (app, proxy)
}

fn calls(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// The submit path is the two calls a submission cannot do without: the transaction that
/// stores the request (with its guards, its audit line and its count) and the work message.
/// The announcement, the "enqueued" mark and the per-subject limit's read are off it.
#[tokio::test]
async fn a_submission_makes_two_aws_calls_a_transaction_and_the_work_message() {
    let (app, proxy) = recorded_app().await;
    for (subject, kind) in [("calls-a", "access"), ("calls-e", "erasure")] {
        let token = app.token(subject);
        // A first submission of the subject warms what the function caches (its secrets).
        proxy.counts.reset_operations();
        let reply = app
            .send(
                reqwest::Method::POST,
                "/v1/requests",
                Some(&token),
                Some(&format!(r#"{{"type":"{kind}"}}"#)),
                &[],
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        assert_eq!(
            proxy.counts.operations(),
            calls(&[("DynamoDB.TransactWriteItems", 1), ("SQS.SendMessage", 1)]),
            "{kind}"
        );
    }
}

/// The per-subject limit is held by the transaction itself: a used slot fails it, the slots
/// are read, and with none free the answer is 429 with the time the oldest frees up. An open
/// request still answers as itself (200), before the limit.
#[tokio::test]
async fn the_access_limit_is_held_by_the_submission_and_read_only_when_a_slot_is_taken() {
    let (app, proxy) = recorded_app_with(|s| {
        s.parameters
            .insert("AccessRequestsPerDay".into(), "1".into());
    })
    .await;
    let token = app.token("quota-q");
    let submit = || {
        app.send(
            reqwest::Method::POST,
            "/v1/requests",
            Some(&token),
            Some(r#"{"type":"access"}"#),
            &[],
        )
    };
    let first = submit().await;
    assert_eq!(first.status, 202, "{}", first.body);
    let id = first.body["id"].as_str().unwrap().to_owned();
    // Open: the same request again, whatever the limit says.
    assert_eq!(submit().await.status, 200);
    let cancelled = app
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/requests/{id}"),
            Some(&token),
            None,
            &[],
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    proxy.counts.reset_operations();
    let refused = submit().await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let retry_after = refused.retry_after();
    assert!(
        (24 * 3600 - 120..=24 * 3600).contains(&retry_after),
        "when the first request's day is over: {retry_after}"
    );
    let made = proxy.counts.operations();
    assert_eq!(
        made.get("DynamoDB.TransactWriteItems"),
        Some(&1),
        "{made:?}"
    );
    assert_eq!(
        made.get("DynamoDB.Query"),
        Some(&1),
        "the slots, once: {made:?}"
    );
    assert_eq!(made.get("SQS.SendMessage"), None, "{made:?}");
}

/// The calls made for requests (see [`per_request`]), once no function makes more.
async fn settled(counter: &dsr_local::call_count::CallCounter) -> Calls {
    let mut last = Calls::new();
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now: Calls = counter
            .snapshot()
            .into_iter()
            .filter(|((f, o), _)| per_request(f, o))
            .collect();
        if now == last {
            return last;
        }
        last = now;
    }
}

/// The functions that run on a timer whatever the traffic (their cost is per minute, not per
/// request), and the dispatch function's own search for due messages on its timer.
fn per_request(function: &str, operation: &str) -> bool {
    match function {
        "-" | "sweep" => false,
        "dispatch" => operation != "DynamoDB.Query",
        _ => true,
    }
}

/// What one data subject request costs in AWS calls from its submission to its end, by the
/// function that made each call: an access request (one source) and an erasure (five holders:
/// four over RabbitMQ, one vendor API). Written to `$DSR_BENCH_OUT/cost.json` when set, for
/// `make bench` to price (docs/performance.md).
#[tokio::test]
async fn what_an_access_request_and_an_erasure_cost_in_aws_calls() {
    use dsr_domain::{RequestState, RequestStore};
    let counter = dsr_local::call_count::CallCounter::default();
    let rig = crate::erasure::rig(crate::erasure::RigSettings {
        grace_seconds: 1,
        call_counter: Some(counter.clone()),
        ..Default::default()
    })
    .await;
    let store = dsr_adapters::wiring::request_store(
        &crate::helpers::aws().await,
        &rig.app.stack.env("ErasureFunction").unwrap(),
        "test",
    )
    .unwrap();
    let mut figures = serde_json::Map::new();
    for kind in ["access", "erasure"] {
        let subject = format!("cost-{kind}-{}", crate::helpers::unique_name());
        rig.services.seed(&subject);
        counter.reset();
        let reply = rig.app.submit(&subject, kind).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        let id: dsr_domain::RequestId = reply.body["id"].as_str().unwrap().parse().unwrap();
        // Watched from outside the functions (the user's own reads are not the request's).
        let finished = crate::helpers::eventually(Duration::from_secs(90), async || {
            store.get(id).await.ok().flatten().is_some_and(|r| {
                r.state
                    == if kind == "access" {
                        RequestState::ReportReady
                    } else {
                        RequestState::Completed
                    }
            })
        })
        .await;
        assert!(finished, "{kind} {id} did not complete");
        // The last effects (the announcement, its count) land after the state.
        let last = settled(&counter).await;
        let total: u64 = last.values().map(|t| t.calls).sum();
        let calls: Vec<serde_json::Value> = last
            .iter()
            .map(|((function, operation), t)| {
                serde_json::json!({"function": function, "operation": operation, "calls": t.calls, "units": t.units})
            })
            .collect();
        eprintln!("{kind}: {total} calls");
        for c in &calls {
            eprintln!("  {c}");
        }
        // What every request of the kind cannot do without, and a ceiling well above what it
        // takes today: a new call on the path shows here before it shows on the bill.
        let called = |function: &str, operation: &str| {
            last.get(&(function.to_owned(), operation.to_owned()))
                .map_or(0, |t| t.calls)
        };
        assert_eq!(called("intake", "DynamoDB.TransactWriteItems"), 1, "{kind}");
        let ceiling = if kind == "access" { 40 } else { 150 };
        assert!(total <= ceiling, "{kind}: {total} calls");
        figures.insert(
            kind.to_owned(),
            serde_json::json!({"calls": calls, "total": total}),
        );
    }
    crate::helpers::write_bench_figures("cost.json", &figures);
}

/// No read before a conditional write: a confirmation is recorded by one conditional write that
/// returns the obligation as it stood (for the latency metric), and the watchdog's delayed
/// messages, new keys every one, are created by one conditional put. What the confirm function
/// still reads is the request and its obligations once, after the write (to move it on); the
/// fan-out reads them once too.
#[tokio::test]
async fn an_answer_and_a_new_delayed_message_are_each_written_without_a_read_first() {
    use std::sync::atomic::Ordering;
    let counter = dsr_local::call_count::CallCounter::default();
    let rig = crate::erasure::rig(crate::erasure::RigSettings {
        confirm_within_seconds: 3600,
        call_counter: Some(counter.clone()),
        ..Default::default()
    })
    .await;
    // Only billing answers: the request waits for the others, so the confirm function handles
    // one answer and nothing else.
    for silent in ["profile", "viewing-history"] {
        let service = rig.services.service(silent);
        service.behaviour.silent.store(true, Ordering::SeqCst);
    }
    let subject = format!("one-answer-{}", crate::helpers::unique_name());
    let id = rig.submit_erasure(&subject).await;
    rig.wait_for(&subject, &id, Duration::from_secs(60), |view| {
        view["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["service"] == "billing" && s["status"] == "confirmed")
    })
    .await;
    let last = settled(&counter).await;
    let called = |function: &str, operation: &str| {
        last.get(&(function.to_owned(), operation.to_owned()))
            .map_or(0, |t| t.calls)
    };
    let confirm: BTreeMap<String, u64> = last
        .iter()
        .filter(|((f, _), _)| f == "confirm")
        .map(|((_, o), t)| (o.clone(), t.calls))
        .collect();
    assert_eq!(
        confirm,
        calls(&[
            // The answer, and its count.
            ("DynamoDB.UpdateItem", 2),
            // Its audit line.
            ("DynamoDB.PutItem", 1),
            // Moving on: the request and its obligations, read after the answer is in.
            ("DynamoDB.GetItem", 1),
            ("DynamoDB.Query", 1),
        ]),
        "the confirm function, for one answer"
    );
    // One check per command sent (billing, profile, viewing-history, the vendor's), each a
    // new key: created, never read first.
    assert_eq!(called("dispatch", "DynamoDB.PutItem"), 4, "{last:?}");
    assert_eq!(called("dispatch", "DynamoDB.GetItem"), 0, "{last:?}");
    // The fan-out reads the request once, to move it on after its commit: the answers that
    // came with their commands (the service's own copies, the vendor's) do not try to move
    // on a request the fan-out still holds.
    assert_eq!(called("erasure", "DynamoDB.GetItem"), 1, "{last:?}");
}
