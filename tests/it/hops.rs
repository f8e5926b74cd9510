//! Counts in sync, over the wire: every function counts the hops it takes in the hop log, and a
//! message lost on purpose at each hop (deleted from its queue on the way to the next function)
//! shows up in the reconciliation as that hop, missing, for that request, and nothing else.

use crate::erasure::{rig, ErasureRig, RigSettings};
use crate::ops::Captured;
use dsr_domain::hops::{self, Allowances, Hop, HopLog, Window};
use dsr_domain::metrics::{Metric, MetricSink};
use dsr_domain::{RequestId, RequestKind, RequestState, RequestStore};
use dsr_local::event_source::Losses;
use dsr_ops::{Command, Ops, Target};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Short allowances, so that a lost message is late within the test.
const IN_FLIGHT_SECONDS: i64 = 20;

fn allowances() -> Allowances {
    Allowances {
        in_flight: chrono::Duration::seconds(IN_FLIGHT_SECONDS),
        report: chrono::Duration::seconds(60),
        answer: chrono::Duration::seconds(IN_FLIGHT_SECONDS),
        grace: chrono::Duration::seconds(2),
    }
}

async fn ops(rig: &ErasureRig) -> Ops {
    let env = dsr_adapters::config::Env::from_pairs([
        ("HOP_IN_FLIGHT_SECONDS", IN_FLIGHT_SECONDS.to_string()),
        ("HOP_ANSWER_SECONDS", IN_FLIGHT_SECONDS.to_string()),
        ("HOP_REPORT_SECONDS", "60".to_owned()),
        ("ERASURE_GRACE_SECONDS", "2".to_owned()),
        ("HOP_WINDOWS", "2".to_owned()),
    ]);
    Ops::connect(
        &crate::helpers::aws().await,
        &Target {
            local_stack: Some(rig.app.stack.context.stack_name.clone()),
            ..Default::default()
        },
        &env,
    )
    .await
    .unwrap()
}

/// `dsr-ops sync`: its output, and the (kind, hop, request, service) it lists as missing; `None`
/// when it could not read the counts at all (an emulator call failing under the parallel
/// suite's load: a failure to read, not a finding, so the caller asks again).
async fn sync(ops: &Ops) -> Option<(String, BTreeSet<(String, String, String, Option<String>)>)> {
    let out = Captured::default();
    let result = ops
        .run(
            &Command::Sync { hours: None },
            &mut out.clone(),
            &mut std::io::sink(),
        )
        .await;
    let text = out.text();
    if text.is_empty() {
        let error = result.expect_err("sync always prints its table");
        eprintln!("dsr-ops sync could not read the counts, asking again: {error:#}");
        return None;
    }
    let missing: BTreeSet<_> = text
        .lines()
        .filter(|l| l.starts_with("MISSING"))
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let service = words
                .get(4)
                .filter(|w| w.starts_with('('))
                .map(|w| w.trim_matches(|c| c == '(' || c == ')').to_owned());
            (
                words[1].to_owned(),
                words[2].to_owned(),
                words[3].to_owned(),
                service,
            )
        })
        .collect();
    assert_eq!(
        result.is_ok(),
        missing.is_empty(),
        "sync fails exactly when something is missing:\n{text}"
    );
    Some((text, missing))
}

/// Which message to lose: one that names the subject (known before the request is submitted,
/// so the loss is in place before anything could pass), or one that names the request (for
/// messages that only follow the submission by a broker round trip or more).
enum Naming {
    /// The next such message, whoever's: only when no other request could send one.
    Next,
    Subject,
    Request,
}

/// Submits a request of `kind` and loses the message for `function` that names it (see
/// [`Naming`]) and contains every one of `needles`; waits until it was lost. Returns the
/// request's id.
async fn submit_losing(
    rig: &ErasureRig,
    losses: &Losses,
    kind: &str,
    function: &str,
    naming: Naming,
    needles: &[&str],
) -> String {
    let before = losses.lost().len();
    let subject = format!("lost-{}", crate::helpers::unique_name());
    let with = |name: &str| {
        let mut all = vec![name];
        all.extend_from_slice(needles);
        losses.lose(function, &all);
    };
    match naming {
        Naming::Next => losses.lose(function, needles),
        Naming::Subject => with(&subject),
        Naming::Request => {}
    }
    let reply = rig.app.submit(&subject, kind).await;
    assert_eq!(
        reply.status,
        reqwest::StatusCode::ACCEPTED,
        "{:?}",
        reply.body
    );
    let id = reply.body["id"].as_str().unwrap().to_owned();
    if let Naming::Request = naming {
        with(&id);
    }
    assert!(
        crate::helpers::eventually(Duration::from_secs(120), async || losses.lost().len()
            > before)
        .await,
        "a message for {function} matching {needles:?} came by"
    );
    let (_, body) = losses.lost().pop().unwrap();
    assert!(
        body.contains(&id) || body.contains(&subject),
        "the message lost is {id}'s: {body}"
    );
    id
}

async fn state(rig: &ErasureRig, id: &str) -> Option<RequestState> {
    let store = dsr_adapters::dynamodb::DynamoRequestStore::new(
        rig.app.dynamodb.clone(),
        rig.app.table(),
        "test",
    );
    store
        .get(id.parse().unwrap())
        .await
        .unwrap()
        .map(|r| r.state)
}

/// The windows the requests were counted in, compared as the reconciliation does.
async fn windows(rig: &ErasureRig, kind: RequestKind, ids: &[&str]) -> Vec<Window> {
    let log = rig.app.hop_log();
    let hours: BTreeSet<_> = ids
        .iter()
        .map(|id| hops::hour_of(id.parse::<RequestId>().unwrap()))
        .collect();
    let mut windows = Vec::new();
    for hour in hours {
        let marks = log.window(kind, hour).await.unwrap();
        windows.push(hops::reconcile(
            kind,
            hour,
            &marks,
            chrono::Utc::now(),
            &allowances(),
        ));
    }
    windows
}

fn total(windows: &[Window], hop: Hop) -> usize {
    windows.iter().map(|w| w.count(hop)).sum()
}

/// Waits until `dsr-ops sync` lists exactly `expected` (work in flight settles, lost messages
/// turn late), and returns its output.
async fn until_missing(
    ops: &Ops,
    expected: &BTreeSet<(String, String, String, Option<String>)>,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let Some((text, missing)) = sync(ops).await else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "dsr-ops sync could not read the counts until the deadline"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        };
        if &missing == expected || tokio::time::Instant::now() > deadline {
            assert_eq!(&missing, expected, "dsr-ops sync:\n{text}");
            return text;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn missing(
    kind: &str,
    hop: Hop,
    id: &str,
    service: Option<&str>,
) -> (String, String, String, Option<String>) {
    (
        kind.to_owned(),
        hop.as_str().to_owned(),
        id.to_owned(),
        service.map(str::to_owned),
    )
}

#[tokio::test]
async fn an_access_message_lost_at_each_hop_is_named_with_its_hop_and_request() {
    let losses = Arc::new(Losses::default());
    let rig = rig(RigSettings {
        losses: Some(losses.clone()),
        ..RigSettings::default()
    })
    .await;
    // The work message, the notice to the subject, the `report_ready` event.
    // The first access request of the run: nothing else is on the work queue yet.
    let unreceived = submit_losing(
        &rig,
        &losses,
        "access",
        "ReportFunction",
        Naming::Next,
        &["access"],
    )
    .await;
    let untold = submit_losing(
        &rig,
        &losses,
        "access",
        "BridgeOutboundFunction",
        Naming::Subject,
        &["notice:report_ready:"],
    )
    .await;
    let unannounced = submit_losing(
        &rig,
        &losses,
        "access",
        "BridgeOutboundFunction",
        Naming::Request,
        &[r#""message_id":"report_ready:"#],
    )
    .await;
    let whole = rig.app.submit("lost-nothing", "access").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let ops = ops(&rig).await;
    let expected = BTreeSet::from([
        missing("access", Hop::Received, &unreceived, None),
        missing("access", Hop::Notified, &untold, None),
        missing("access", Hop::Announced, &unannounced, None),
    ]);
    let text = until_missing(&ops, &expected).await;
    assert_eq!(state(&rig, &whole).await, Some(RequestState::ReportReady));
    assert_eq!(
        state(&rig, &unreceived).await,
        Some(RequestState::Received),
        "nothing took it"
    );

    // The funnel: every hop counted by the function that took it, each request once.
    let w = windows(
        &rig,
        RequestKind::Access,
        &[&unreceived, &untold, &unannounced, &whole],
    )
    .await;
    assert_eq!(total(&w, Hop::Submitted), 4, "{text}");
    assert_eq!(total(&w, Hop::Received), 3);
    assert_eq!(total(&w, Hop::Generated), 3);
    assert_eq!(total(&w, Hop::Notified), 2);
    assert_eq!(total(&w, Hop::Announced), 2);
}

/// Records the metrics emitted in this process (each test is its own process).
#[derive(Default)]
struct Recorded(Mutex<Vec<Metric>>);

impl MetricSink for Recorded {
    fn record(&self, metric: &Metric) {
        self.0.lock().unwrap().push(metric.clone());
    }
}

#[tokio::test]
async fn an_erasure_message_lost_at_each_hop_is_named_with_its_hop_service_and_request() {
    let losses = Arc::new(Losses::default());
    let rig = rig(RigSettings {
        losses: Some(losses.clone()),
        // No watchdog re-send during the test: a lost command or answer stays lost.
        confirm_within_seconds: 600,
        ..RigSettings::default()
    })
    .await;
    let uncommanded = submit_losing(
        &rig,
        &losses,
        "erasure",
        "BridgeOutboundFunction",
        Naming::Subject,
        &["erase:", ":billing:1"],
    )
    .await;
    let unanswered = submit_losing(
        &rig,
        &losses,
        "erasure",
        "ConfirmFunction",
        Naming::Request,
        &["erasure_confirmation", "profile"],
    )
    .await;
    let untold = submit_losing(
        &rig,
        &losses,
        "erasure",
        "BridgeOutboundFunction",
        Naming::Subject,
        &["notice:erasure_notice:"],
    )
    .await;
    let unreleased = submit_losing(
        &rig,
        &losses,
        "erasure",
        "ConfirmFunction",
        Naming::Request,
        &["check:", ":email:0"],
    )
    .await;
    let unannounced = submit_losing(
        &rig,
        &losses,
        "erasure",
        "BridgeOutboundFunction",
        Naming::Request,
        &[r#""message_id":"erasure_completed:"#],
    )
    .await;
    let whole = rig.app.submit("lost-nothing", "erasure").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let ops = ops(&rig).await;
    let expected = BTreeSet::from([
        missing("erasure", Hop::Commanded, &uncommanded, Some("billing")),
        missing("erasure", Hop::Answered, &unanswered, Some("profile")),
        missing("erasure", Hop::Notified, &untold, None),
        missing("erasure", Hop::Released, &unreleased, Some("email")),
        missing("erasure", Hop::Announced, &unannounced, None),
    ]);
    until_missing(&ops, &expected).await;
    assert_eq!(state(&rig, &whole).await, Some(RequestState::Completed));
    assert_eq!(
        state(&rig, &unannounced).await,
        Some(RequestState::Completed),
        "completed, but the platform was never told"
    );

    // The scheduled reconciliation says the same as metrics (the alarm's) and an alert line.
    let recorded = Arc::new(Recorded::default());
    dsr_domain::metrics::install(recorded.clone());
    let out = Captured::default();
    ops.run(
        &Command::Stuck { warning_days: 7 },
        &mut out.clone(),
        &mut std::io::sink(),
    )
    .await
    .unwrap();
    let metrics = recorded.0.lock().unwrap().clone();
    let value = |name: &str, kind: &str, hop: Option<&str>| {
        metrics
            .iter()
            .filter(|m| m.name == name)
            .filter(|m| m.dimensions.contains(&("Kind", kind.to_owned())))
            .filter(|m| hop.is_none_or(|h| m.dimensions.contains(&("Hop", h.to_owned()))))
            .map(|m| m.value)
            .sum::<f64>()
    };
    for hop in [
        Hop::Commanded,
        Hop::Answered,
        Hop::Notified,
        Hop::Released,
        Hop::Announced,
    ] {
        assert_eq!(
            value("HopMismatches", "erasure", Some(hop.as_str())),
            1.0,
            "{hop}"
        );
    }
    assert_eq!(value("HopMismatches", "erasure", Some("received")), 0.0);
    assert_eq!(value("CountsInSync", "erasure", None), 0.0);
    assert_eq!(value("CountsInSync", "access", None), 1.0);
}
