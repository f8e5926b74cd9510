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
    let link = rig
        .app
        .get(&subject, &format!("/v1/requests/{id}/report"))
        .await;
    let zip = reqwest::get(link.body["url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let files = crate::report::unzip(&zip);
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
