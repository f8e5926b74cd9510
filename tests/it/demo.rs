//! The demo `make run` serves, as the README's walk-through uses it: alice's data in every
//! kind of source and in every service that takes erasure commands, each of them readable and
//! erasable, so her report is full before her erasure and empty after it.

use crate::helpers::{eventually, try_spawn_app_with, unique_name, TestApp};
use dsr_local::demo::DEMO_SUBJECT;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Two free ports in a row: the demo's sources on the first, its erasing services on the next.
fn two_free_ports() -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Whether starting failed because a port was taken.
fn port_taken(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

async fn wait_for_state(app: &TestApp, id: &str, state: &str, within: Duration) -> Value {
    let mut last = Value::Null;
    let reached = eventually(within, async || {
        last = app
            .get(DEMO_SUBJECT, &format!("/v1/requests/{id}"))
            .await
            .body;
        last["state"] == state
    })
    .await;
    assert!(reached, "not {state} within {within:?}: {last:#}");
    last
}

/// The report of access request `id`: records per source, from its manifest, and the sources
/// not applicable with their reason.
async fn records_per_source(
    app: &TestApp,
    id: &str,
) -> (BTreeMap<String, u64>, BTreeMap<String, String>) {
    wait_for_state(app, id, "report_ready", Duration::from_secs(60)).await;
    let files = crate::report::download(app, DEMO_SUBJECT, id).await;
    let manifest = crate::report::json_file(&files, "manifest.json");
    let not_applicable = manifest["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            Some((
                s["name"].as_str()?.to_owned(),
                s["not_applicable"].as_str()?.to_owned(),
            ))
        })
        .collect();
    (
        crate::report::record_counts(&manifest)
            .into_iter()
            .collect(),
        not_applicable,
    )
}

/// The keys the demo's holder `source` (keyed by another identifier) was called with.
async fn keyed_calls(port: u16, source: &str) -> Vec<String> {
    reqwest::get(format!("http://127.0.0.1:{port}/keyed-calls/{source}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_demo_shows_a_full_report_before_an_erasure_and_an_empty_one_after() {
    // The two ports were free a moment ago; a test running beside this one may take one
    // before the demo binds it: then two others.
    let mut tries = 0;
    let (app, port) = loop {
        let port = two_free_ports();
        let started = try_spawn_app_with(|s| {
            s.demo = Some(SocketAddr::from(([127, 0, 0, 1], port)));
            s.demo_export_after = Duration::from_secs(2);
            s.consume_work_queues = true;
            s.dispatch_every = Duration::from_millis(500);
            s.parameters
                .insert("RabbitMqNamespace".into(), unique_name());
            s.parameters
                .insert("ErasureGraceSeconds".into(), "2".into());
        })
        .await;
        match started {
            Ok(app) => break (app, port),
            Err(err) if tries < 5 && port_taken(&err) => tries += 1,
            Err(err) => panic!("the local stack starts: {err:#}"),
        }
    };

    let before = app.submit(DEMO_SUBJECT, "access").await;
    let (before, not_applicable) =
        records_per_source(&app, before.body["id"].as_str().unwrap()).await;
    let every = [
        "access-log",
        "account",
        "ads",
        "billing",
        "call-centre",
        "crm",
        "email",
        "mailing-list",
        "orders",
        "profile",
        "uploads",
        "viewing-history",
    ];
    assert_eq!(
        before.keys().map(String::as_str).collect::<Vec<_>>(),
        every,
        "{before:?}"
    );
    // The call-centre tool keys its data by phone number, and alice has none: not applicable,
    // with the reason, and never asked.
    let reason = "keys its data by phone, which no identity source knows for this subject";
    assert_eq!(
        not_applicable,
        BTreeMap::from([("call-centre".to_owned(), reason.to_owned())])
    );
    assert!(
        before
            .iter()
            .all(|(source, n)| *n > 0 || source == "call-centre"),
        "data everywhere else: {before:?}"
    );
    assert!(keyed_calls(port, "call-centre").await.is_empty());
    // The mailing-list provider, keyed by e-mail, was asked for alice's address and never
    // given her user id.
    assert_eq!(
        keyed_calls(port, "mailing-list").await,
        ["alice@example.com"]
    );

    let erasure = app.submit(DEMO_SUBJECT, "erasure").await;
    let erasure = erasure.body["id"].as_str().unwrap().to_owned();
    let done = wait_for_state(&app, &erasure, "completed", Duration::from_secs(90)).await;
    let services: Vec<&str> = done["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    for source in every {
        assert!(services.contains(&source), "{source} erased: {done:#}");
    }
    let call_centre = done["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "call-centre")
        .unwrap();
    assert_eq!(call_centre["status"], "not_applicable", "{call_centre}");
    assert_eq!(call_centre["reason"], reason, "{call_centre}");
    // Read for the report, erased, read again by the verification: always by e-mail address.
    assert_eq!(
        keyed_calls(port, "mailing-list").await,
        ["alice@example.com"; 3]
    );
    assert!(keyed_calls(port, "call-centre").await.is_empty());

    let after = app.submit(DEMO_SUBJECT, "access").await;
    assert_eq!(after.status, 202, "{}", after.body);
    let (after, _) = records_per_source(&app, after.body["id"].as_str().unwrap()).await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(after.values().all(|n| *n == 0), "nothing left: {after:?}");
}
