//! The contracts in docs/ are what the code is held to: responses must match the OpenAPI
//! document, queue messages the JSON Schema.

use crate::helpers::repo_path;
use serde_json::{json, Value};
use std::sync::OnceLock;

fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let text = std::fs::read_to_string(repo_path("docs/openapi.yaml")).unwrap();
        serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml is YAML")
    })
}

fn validate(schema: &Value, instance: &Value, what: &str) {
    let validator = jsonschema::validator_for(schema).expect("the contract schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} breaks the contract: {errors:?}\n{instance:#}"
    );
}

/// Asserts that `status` is documented for the operation and `body` matches its schema.
pub fn assert_response(method: &str, path_template: &str, status: u16, body: &Value) {
    let doc = openapi();
    let operation = &doc["paths"][path_template][method.to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {path_template} is not in the OpenAPI document"
    );
    let mut response = &operation["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path_template} answered {status}, which the OpenAPI document does not list: {body}"
    );
    if let Some(reference) = response["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/responses/");
        response = &doc["components"]["responses"][name];
    }
    let schema = &response["content"]["application/json"]["schema"];
    // Validate against the whole document so that `#/components/...` references resolve.
    let rooted = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    validate(&rooted, body, &format!("{method} {path_template} {status}"));
}

pub fn assert_message(message: &Value) {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    let schema = SCHEMA.get_or_init(|| {
        serde_json::from_str(
            &std::fs::read_to_string(repo_path("docs/messages.schema.json")).unwrap(),
        )
        .unwrap()
    });
    validate(schema, message, "queue message");
}

#[test]
fn the_contracts_reject_what_they_should() {
    // A contract that accepts anything holds nothing: check each one bites.
    let bad_request = json!({"id": "x", "type": "access"});
    let schema = json!({
        "components": openapi()["components"],
        "$ref": "#/components/schemas/Request",
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(!validator.is_valid(&bad_request));

    let message_schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("docs/messages.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&message_schema).unwrap();
    let good = json!({
        "version": 1, "message_id": "request:01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "request_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "kind": "access",
        "sent_at": "2026-11-26T09:00:00.000Z"
    });
    assert!(validator.is_valid(&good));
    let mut unknown_version = good.clone();
    unknown_version["version"] = json!(2);
    assert!(!validator.is_valid(&unknown_version));
}

#[test]
fn the_domain_message_serializes_to_the_documented_shape() {
    let id = dsr_domain::RequestId::new_at(chrono::Utc::now());
    let message =
        dsr_domain::RequestMessage::new(id, dsr_domain::RequestKind::Erasure, chrono::Utc::now());
    assert_message(&serde_json::to_value(&message).unwrap());
}

#[test]
fn the_erasure_messages_serialize_to_the_documented_shapes() {
    use dsr_domain::erasure::{ConfirmationsMessage, ErasureCommand, ObligationDue};
    use dsr_domain::messages::{DomainEvent, SubjectNotice};
    let now = chrono::Utc::now();
    let request = dsr_domain::Request::receive(
        dsr_domain::RequestKind::Erasure,
        dsr_domain::SubjectId::parse("erin").unwrap(),
        now,
    );
    let command = serde_json::to_value(ErasureCommand::new(
        &request,
        &service("viewing-history"),
        dsr_domain::identity::HolderIdentity::user_id(&request.subject),
        2,
        0,
        now,
    ))
    .unwrap();
    assert_message(&command);
    assert_eq!(command["type"], "erase_subject");
    // Opened again by a verification: a new erasure, under a key of its own.
    let again = serde_json::to_value(ErasureCommand::new(
        &request,
        &service("viewing-history"),
        // A holder keyed by e-mail: the subject as it knows them, and no user id.
        dsr_domain::identity::HolderIdentity {
            subject: dsr_domain::SubjectId::parse("erin@example.com").unwrap(),
            identifiers: [(
                dsr_domain::identity::IdentifierKind::parse("email").unwrap(),
                dsr_domain::SubjectId::parse("erin@example.com").unwrap(),
            )]
            .into(),
        },
        3,
        1,
        now,
    ))
    .unwrap();
    assert_message(&again);
    assert_eq!(
        again["idempotency_key"],
        format!("erase:{}:viewing-history:r1", request.id)
    );
    let due =
        ConfirmationsMessage::ObligationDue(ObligationDue::new(request.id, &service("email"), 0));
    assert_message(&serde_json::to_value(due).unwrap());
    // An operator's decisions (the CLI, the operations page).
    use dsr_domain::erasure::{ConfirmationOutcome, OperatorAction, OperatorDecision};
    for action in [
        OperatorAction::new(
            request.id,
            &service("billing"),
            OperatorDecision::Resend,
            "jane@ops",
            now,
            "01KB0000000000000000000009",
        ),
        OperatorAction::new(
            request.id,
            &service("billing"),
            OperatorDecision::Resolve,
            "jane@ops",
            now,
            "01KB0000000000000000000009",
        )
        .resolved(ConfirmationOutcome::NotFound, "ticket SUP-1"),
    ] {
        let value = serde_json::to_value(ConfirmationsMessage::OperatorAction(action)).unwrap();
        assert_eq!(value["type"], "operator_action");
        assert_message(&value);
        crate::asyncapi::assert_on_channel("confirmationsQueue", &value);
    }
    // The verification's ask (the access-requests queue) and its result (confirmations).
    let ask = dsr_domain::erasure::VerifyErasure::new(request.id, now);
    assert_message(&serde_json::to_value(&ask).unwrap());
    let result = ConfirmationsMessage::ErasureVerified(dsr_domain::erasure::ErasureVerified::new(
        &ask,
        now,
        vec![service("viewing-history"), service("billing")],
        vec![dsr_domain::erasure::StillHeld {
            service: service("billing"),
            records: 2,
        }],
    ));
    let result = serde_json::to_value(result).unwrap();
    assert_eq!(result["type"], "erasure_verified");
    assert_message(&result);
    let hash = dsr_domain::SubjectHasher::new("sixteen-byte-key").hash(&request.subject);
    for event in [
        DomainEvent::request_submitted(&request, hash.clone(), now),
        DomainEvent::erasure_notice(request.id, hash.clone(), now, now),
        DomainEvent::erasure_completed(request.id, hash.clone(), 5, now),
    ] {
        let value = serde_json::to_value(&event).unwrap();
        assert_message(&value);
        assert!(
            !value.to_string().contains("erin"),
            "events carry the hash, never the subject: {value}"
        );
        if event.event_type == dsr_domain::messages::EventType::ErasureNotice {
            let notice =
                serde_json::to_value(SubjectNotice::of(&event, request.subject.clone())).unwrap();
            assert_message(&notice);
            assert_eq!(notice["subject"], "erin");
        }
    }
    // A command without its idempotency key is not a command.
    let mut broken = command.clone();
    broken.as_object_mut().unwrap().remove("idempotency_key");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("docs/messages.schema.json")).unwrap(),
    )
    .unwrap();
    assert!(!jsonschema::validator_for(&schema)
        .unwrap()
        .is_valid(&broken));
}

fn service(name: &str) -> dsr_domain::ServiceName {
    dsr_domain::ServiceName::parse(name).unwrap()
}
