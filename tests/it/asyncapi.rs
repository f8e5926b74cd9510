//! `docs/asyncapi.yaml`: the AsyncAPI 3 document of every RabbitMQ and SQS channel. It is
//! validated with the AsyncAPI initiative's own parser (Node.js, `make node` installs it), every
//! message of `docs/messages.schema.json` is on a channel, and the messages the code sends are
//! held to the channel they travel on ([`assert_on_channel`], used by the tests that watch them).

use crate::helpers::repo_path;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::OnceLock;

fn asyncapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let text = std::fs::read_to_string(repo_path("docs/asyncapi.yaml")).unwrap();
        serde_yaml_ng::from_str(&text).expect("docs/asyncapi.yaml is YAML")
    })
}

fn messages_schema() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::from_str(
            &std::fs::read_to_string(repo_path("docs/messages.schema.json")).unwrap(),
        )
        .unwrap()
    })
}

/// The `$defs` name each message of `channel` carries (from its payload's reference).
fn payloads_of(channel: &str) -> Vec<String> {
    let doc = asyncapi();
    let messages = doc["channels"][channel]["messages"]
        .as_object()
        .unwrap_or_else(|| panic!("no channel `{channel}` in docs/asyncapi.yaml"));
    messages
        .values()
        .filter_map(|m| m["$ref"].as_str())
        .filter_map(|r| r.strip_prefix("#/components/messages/"))
        .filter_map(|id| doc["components"]["messages"][id]["payload"]["$ref"].as_str())
        .filter_map(|r| r.strip_prefix("./messages.schema.json#/$defs/"))
        .map(str::to_owned)
        .collect()
}

/// Asserts that `message` is one of the messages the AsyncAPI document puts on `channel`.
pub fn assert_on_channel(channel: &str, message: &Value) {
    let schema = messages_schema();
    let mut why = Vec::new();
    for name in payloads_of(channel) {
        let one = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": schema["$defs"],
            "$ref": format!("#/$defs/{name}"),
        });
        let validator = jsonschema::validator_for(&one).expect("the schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(message)
            .map(|e| e.to_string())
            .collect();
        if errors.is_empty() {
            return;
        }
        why.push(format!("not {name}: {errors:?}"));
    }
    panic!("not a message of channel `{channel}`: {why:#?}\n{message:#}");
}

fn parse_with_node(file: &std::path::Path) -> (bool, String) {
    let script = repo_path("infra/asyncapi/validate.mjs");
    assert!(
        repo_path("infra/asyncapi/node_modules/@asyncapi/parser").exists(),
        "the AsyncAPI parser is not installed: run `make node` (make test does)"
    );
    let output = Command::new("node")
        .arg(script)
        .arg(file)
        .output()
        .expect("node runs (make node installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_asyncapi_document_is_valid_for_the_asyncapi_parser() {
    let (valid, said) = parse_with_node(&repo_path("docs/asyncapi.yaml"));
    assert!(valid, "{said}");
    assert!(said.contains("valid: AsyncAPI 3."), "{said}");
    assert!(!said.contains("error:"), "{said}");

    // The same document pointing at a message the schema does not have is refused: the
    // parser follows the references into messages.schema.json.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo_path("docs/messages.schema.json"),
        dir.path().join("messages.schema.json"),
    )
    .unwrap();
    let broken = std::fs::read_to_string(repo_path("docs/asyncapi.yaml"))
        .unwrap()
        .replace("$defs/ExportAnswer", "$defs/ExportAnswers");
    std::fs::write(dir.path().join("asyncapi.yaml"), broken).unwrap();
    let (valid, said) = parse_with_node(&dir.path().join("asyncapi.yaml"));
    assert!(!valid, "{said}");
    assert!(said.contains("ExportAnswers"), "{said}");
}

#[test]
fn every_message_of_the_schema_travels_on_a_documented_channel() {
    let doc = asyncapi();
    let defs = messages_schema()["$defs"].as_object().unwrap();
    let mut carried = std::collections::BTreeSet::new();
    for channel in doc["channels"].as_object().unwrap().keys() {
        for name in payloads_of(channel) {
            assert!(defs.contains_key(&name), "{channel}: no $defs/{name}");
            carried.insert(name);
        }
    }
    let documented: std::collections::BTreeSet<String> = messages_schema()["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["$ref"].as_str())
        .map(|r| r.trim_start_matches("#/$defs/").to_owned())
        .collect();
    let missing: Vec<_> = documented.difference(&carried).collect();
    assert!(missing.is_empty(), "on no channel: {missing:?}");
    // Every operation names a channel of the document.
    for (id, operation) in doc["operations"].as_object().unwrap() {
        let channel = operation["channel"]["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/channels/"))
            .unwrap_or_default();
        assert!(doc["channels"][channel].is_object(), "{id}: {channel}");
    }
}

#[test]
fn a_message_on_the_wrong_channel_is_caught() {
    let answer = json!({
        "type": "export_answer", "version": 1, "message_id": "a", "service": "ledger",
        "request_id": "01JABCDEFGHJKMNPQRSTVWXYZ0", "job": "01JABCDEFGHJKMNPQRSTVWXYZ1",
        "outcome": "not_found"
    });
    assert_on_channel("confirmations", &answer);
    assert_on_channel("accessRequests", &answer);
    let wrong = std::panic::catch_unwind(|| assert_on_channel("commands", &answer));
    assert!(wrong.is_err(), "an answer is not a command");
}
