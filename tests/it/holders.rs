//! Holders that speak only AMQP, in access reports: the report function sends `export_subject`
//! over the real broker (through the outbound bridge), the holders answer on the
//! confirmations exchange — one with its records in the answer, one by uploading them to the
//! presigned S3 URL of the command — and the report holds what each holds. Every message on
//! the way is held to `docs/messages.schema.json`.

use crate::contract::assert_message;
use crate::erasure::{rig, spy_on, RigSettings};
use crate::helpers::{eventually, unique_name};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn a_holder_that_speaks_only_amqp_appears_in_the_access_report_by_answer_or_by_upload() {
    let rig = rig(RigSettings {
        over_amqp: vec!["billing", "viewing-history"],
        ..RigSettings::default()
    })
    .await;
    rig.services
        .service("viewing-history")
        .behaviour
        .uploads_exports
        .store(true, Ordering::SeqCst);
    let commands = spy_on(&rig.namespace, "commands", "export.#", "spy-exports").await;
    let answers = spy_on(&rig.namespace, "confirmations", "export.#", "spy-answers").await;
    let subject = format!("reader-{}", unique_name());
    rig.services.seed(&subject);

    let reply = rig.app.submit(&subject, "access").await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let view = rig
        // What each source gave is written just after the report's commit.
        .wait_for(&subject, &id, Duration::from_secs(60), |v| {
            v["state"] == "failed"
                || (v["state"] == "report_ready"
                    && v["sources"]
                        .as_array()
                        .is_some_and(|s| s.iter().all(|s| s["status"] == "collected")))
        })
        .await;
    assert_eq!(view["state"], "report_ready", "{view:#}");
    let source = |name: &str| {
        view["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {view:#}"))
    };
    for name in ["billing", "viewing-history"] {
        assert_eq!(source(name)["status"], "collected", "{view:#}");
        assert_eq!(source(name)["records"], 2, "{view:#}");
    }

    // The report holds their records, as they hold them.
    let files = crate::report::download(&rig.app, &subject, &id).await;
    let counts = crate::report::record_counts(&crate::report::json_file(&files, "manifest.json"));
    for name in ["billing", "viewing-history", "profile"] {
        assert!(
            counts.iter().any(|(n, c)| n == name && *c == 2),
            "{name}: {counts:?}"
        );
    }
    let uploaded = String::from_utf8_lossy(&files["sources/viewing-history/records.json"]);
    assert!(uploaded.contains("viewing-history"), "{uploaded}");

    // One command each, answered once each (by answer and by upload), all as documented.
    let commands: Vec<Value> = commands.lock().unwrap().clone();
    let mut asked: Vec<&str> = commands
        .iter()
        .map(|c| c["service"].as_str().unwrap())
        .collect();
    asked.sort();
    assert_eq!(asked, ["billing", "viewing-history"], "{commands:#?}");
    for command in &commands {
        assert_eq!(command["type"], "export_subject");
        assert_eq!(command["request_id"], id.as_str());
        assert_eq!(command["subject"], subject.as_str());
        assert_message(command);
        crate::asyncapi::assert_on_channel("commands", command);
        crate::asyncapi::assert_on_channel("holderQueue", command);
    }
    let answered = eventually(Duration::from_secs(5), async || {
        answers.lock().unwrap().len() >= 2
    })
    .await;
    assert!(answered);
    let answers: Vec<Value> = answers.lock().unwrap().clone();
    let mut outcomes: Vec<(&str, &str)> = answers
        .iter()
        .map(|a| {
            (
                a["service"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [("billing", "records"), ("viewing-history", "uploaded")]
    );
    for answer in &answers {
        assert_message(answer);
        crate::asyncapi::assert_on_channel("confirmations", answer);
    }

    // What the holders answered was staging: gone with the report made.
    let s3 = dsr_adapters::s3::client(&crate::helpers::aws().await);
    let bucket = rig.app.stack.context.resources["ReportsBucket"]
        .name
        .clone();
    let gone = eventually(Duration::from_secs(10), async || {
        s3.list_objects_v2()
            .bucket(&bucket)
            .prefix(format!("staging/{id}/"))
            .send()
            .await
            .unwrap()
            .key_count()
            .unwrap_or_default()
            == 0
    })
    .await;
    assert!(gone, "staging removed");
}

/// The example holders of docs/holders.md, in Python (pika, run as the guide says) and in Rust
/// (lapin), registered in a registry of their own as the guide says, against the whole local
/// stack: read over RabbitMQ into a report, erased, confirmed, and empty afterwards.
#[tokio::test]
async fn the_example_holders_of_the_guide_work_against_the_local_stack_on_the_first_try() {
    let namespace = unique_name();
    let registry = "services:
  - name: ledger-py
    description: The Python example holder.
    broker_user: dsr-example-py
    collect: { kind: rabbitmq, routing_key: export.ledger-py }
    erase: { via: { kind: rabbitmq, routing_key: erasure.ledger-py } }
  - name: ledger-rs
    description: The Rust example holder.
    broker_user: dsr-example-rs
    collect: { kind: rabbitmq, routing_key: export.ledger-rs }
    erase: { via: { kind: rabbitmq, routing_key: erasure.ledger-rs } }
";
    // What `make run` does with a custom registry: its broker users exist locally.
    dsr_local::broker_users::ensure(
        &dsr_domain::registry::ServiceRegistry::parse(registry).unwrap(),
    );
    let ns = namespace.clone();
    let app = crate::helpers::spawn_app_with(move |s| {
        s.consume_work_queues = true;
        s.registry = Some(registry.to_owned());
        s.dispatch_every = Duration::from_millis(500);
        s.parameters.insert("RabbitMqNamespace".into(), ns);
        s.parameters
            .insert("ErasureGraceSeconds".into(), "1".into());
    })
    .await;
    let subject = format!("guide-{}", unique_name());
    // A second subject for dsr-holder-check, which erases what it finds.
    let checked = format!("checked-{}", unique_name());

    // Python, as the guide runs it.
    let venv = std::env::var("DSR_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/gdpr-dsr/venv", std::env::var("HOME").unwrap()));
    let store = tempfile::tempdir().unwrap();
    let _python = tokio::process::Command::new(format!("{venv}/bin/python"))
        .arg(crate::helpers::repo_path("docs/holders/python/holder.py"))
        .args(["--seed", &subject, &checked])
        .env(
            "AMQP_URL",
            "amqp://dsr-example-py:dsr-example-py@127.0.0.1:5672/%2f",
        )
        .env("RABBITMQ_NAMESPACE", &namespace)
        .env("HOLDER_SERVICE", "ledger-py")
        .env("HOLDER_BROKER_USER", "dsr-example-py")
        .env("HOLDER_DB", store.path().join("ledger-py.sqlite3"))
        .kill_on_drop(true)
        .spawn()
        .expect("the venv's python (make test installs pika into it)");
    // Rust, as its main does.
    let rust_store: &'static dsr_example_holder::Store = Box::leak(Box::default());
    rust_store.seed(&subject);
    rust_store.seed(&checked);
    let rust = tokio::spawn(dsr_example_holder::serve(
        dsr_example_holder::Settings {
            amqp_url: "amqp://dsr-example-rs:dsr-example-rs@127.0.0.1:5672/%2f".into(),
            namespace: namespace.clone(),
            service: "ledger-rs".into(),
            broker_user: "dsr-example-rs".into(),
        },
        rust_store,
    ));
    let conn = lapin::Connection::connect(
        crate::bridge::LOCAL_BROKER,
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let queues = [
        format!("{namespace}.svc.ledger-py"),
        format!("{namespace}.svc.ledger-rs"),
    ];
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    assert!(
        crate::helpers::consumed(&conn, &queues, Duration::from_secs(30)).await,
        "the holders consume their queues"
    );

    // dsr-holder-check, as a holder team runs it, passes both.
    let parsed = dsr_domain::registry::ServiceRegistry::parse(registry).unwrap();
    for service in ["ledger-py", "ledger-rs"] {
        let checks = dsr_holder_check::run(&check_settings(&namespace, service, &checked), &parsed)
            .await
            .unwrap();
        let table = dsr_holder_check::table(&checks);
        println!("{service}:\n{table}");
        assert!(dsr_holder_check::all_passed(&checks), "{service}:\n{table}");
        assert!(
            checks.iter().all(|c| c.passed == Some(true)),
            "nothing skipped:\n{table}"
        );
        assert!(checks[1].detail.contains("2 records"), "{table}");
    }

    let records = async |kind_id: &str| -> Value {
        let mut last = Value::Null;
        let done = eventually(Duration::from_secs(60), async || {
            last = app
                .get(&subject, &format!("/v1/requests/{kind_id}"))
                .await
                .body;
            last["state"] == "failed"
                || (last["state"] == "report_ready"
                    && last["sources"]
                        .as_array()
                        .is_some_and(|s| s.iter().all(|s| s["status"] == "collected")))
        })
        .await;
        assert!(done && last["state"] == "report_ready", "{last:#}");
        last
    };
    let count = |view: &Value, name: &str| {
        view["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["records"].as_u64())
    };
    let before = app.submit(&subject, "access").await;
    let before = records(before.body["id"].as_str().unwrap()).await;
    assert_eq!(count(&before, "ledger-py"), Some(2), "{before:#}");
    assert_eq!(count(&before, "ledger-rs"), Some(2), "{before:#}");

    let erasure = app.submit(&subject, "erasure").await;
    let erasure = erasure.body["id"].as_str().unwrap().to_owned();
    let mut last = Value::Null;
    let completed = eventually(Duration::from_secs(60), async || {
        last = app
            .get(&subject, &format!("/v1/requests/{erasure}"))
            .await
            .body;
        last["state"] == "completed"
    })
    .await;
    assert!(completed, "{last:#}");
    let confirmed: Vec<&str> = last["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "confirmed")
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(
        confirmed,
        ["dsr-reports", "ledger-py", "ledger-rs"],
        "{last:#}"
    );
    assert!(rust_store.records.lock().unwrap().is_empty());

    let after = app.submit(&subject, "access").await;
    assert_eq!(after.status, 202, "{}", after.body);
    let after = records(after.body["id"].as_str().unwrap()).await;
    assert_eq!(count(&after, "ledger-py"), Some(0), "{after:#}");
    assert_eq!(count(&after, "ledger-rs"), Some(0), "{after:#}");
    rust.abort();
}

fn check_settings(namespace: &str, service: &str, subject: &str) -> dsr_holder_check::Settings {
    dsr_holder_check::Settings {
        amqp_url: crate::bridge::LOCAL_BROKER.into(),
        namespace: namespace.into(),
        service: service.into(),
        subject: subject.into(),
        within: Duration::from_secs(10),
        upload_listen: "127.0.0.1:0".parse().unwrap(),
        upload_base_url: None,
    }
}

/// `dsr-holder-check` against the demo's holders (each as it is) and against broken ones: one
/// that acts on a command twice and loses what it cannot read, one that answers without its
/// broker user. The table says which check failed and why.
#[tokio::test]
async fn dsr_holder_check_passes_the_demo_holders_and_fails_broken_ones_with_a_clear_table() {
    let namespace = unique_name();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let services = dsr_local::erasing_services::start(
        crate::bridge::LOCAL_BROKER,
        &namespace,
        "127.0.0.1:0".parse().unwrap(),
        stopped,
    )
    .await
    .unwrap();
    let registry = dsr_domain::registry::ServiceRegistry::parse(&format!(
        "services:\n{}",
        services.registry_entries(60, 3, &["billing", "profile", "viewing-history"])
    ))
    .unwrap();
    let behaviour = |name: &str| &services.service(name).behaviour;
    behaviour("viewing-history")
        .uploads_exports
        .store(true, Ordering::SeqCst);
    behaviour("billing")
        .not_idempotent
        .store(true, Ordering::SeqCst);
    behaviour("billing")
        .acks_unreadable
        .store(true, Ordering::SeqCst);
    behaviour("profile")
        .anonymous_answers
        .store(true, Ordering::SeqCst);
    let subject = format!("checked-{}", unique_name());
    services.seed(&subject);
    let check = async |service: &str| {
        let checks =
            dsr_holder_check::run(&check_settings(&namespace, service, &subject), &registry)
                .await
                .unwrap();
        let table = dsr_holder_check::table(&checks);
        println!("{service}:\n{table}");
        (checks, table)
    };
    let row = |checks: &[dsr_holder_check::Check], name: &str| {
        checks
            .iter()
            .find(|c| c.name.starts_with(name))
            .cloned()
            .unwrap_or_else(|| panic!("no row {name}"))
    };

    // As they are: every check passes (email is erased over RabbitMQ but read over HTTP).
    let (checks, table) = check("viewing-history").await;
    assert!(dsr_holder_check::all_passed(&checks), "{table}");
    assert!(
        row(&checks, "export_subject answered")
            .detail
            .contains("2 records (uploaded)"),
        "{table}"
    );
    let (checks, table) = check("email").await;
    assert!(dsr_holder_check::all_passed(&checks), "{table}");
    assert_eq!(
        row(&checks, "export_subject answered").passed,
        None,
        "{table}"
    );

    // Acts twice on one idempotency key, and acknowledges what it cannot read.
    let (checks, table) = check("billing").await;
    assert!(!dsr_holder_check::all_passed(&checks), "{table}");
    assert_eq!(
        row(&checks, "erase_subject confirmed").passed,
        Some(true),
        "{table}"
    );
    let twice = row(&checks, "the same erase_subject again");
    assert_eq!(twice.passed, Some(false), "{table}");
    assert!(twice.detail.contains("acted on twice"), "{table}");
    let lost = row(&checks, "what it cannot read");
    assert_eq!(lost.passed, Some(false), "{table}");
    assert!(lost.detail.contains("0 of 2"), "{table}");
    assert!(table.contains("| FAIL "), "{table}");

    // Answers without its broker user: none of its answers counts.
    let (checks, table) = check("profile").await;
    for name in ["export_subject answered", "erase_subject confirmed"] {
        let failed = row(&checks, name);
        assert_eq!(failed.passed, Some(false), "{table}");
        assert!(failed.detail.contains("not its broker user"), "{table}");
    }
}

/// The guide shows the example holders exactly as the tests run them.
#[test]
fn the_guide_shows_the_example_holders_as_they_are_tested() {
    let guide = std::fs::read_to_string(crate::helpers::repo_path("docs/holders.md")).unwrap();
    for file in [
        "docs/holders/python/holder.py",
        "docs/holders/rust/src/lib.rs",
        "docs/holders/rust/src/main.rs",
    ] {
        let code = std::fs::read_to_string(crate::helpers::repo_path(file)).unwrap();
        assert!(
            guide.contains(&code),
            "docs/holders.md does not show {file} as it is"
        );
    }
}
