//! Operations over the wire: metrics as EMF, reconciliation re-driving a lost message, the
//! operator CLI against a local stack, and no raw subject id in the logs of a full run.

use crate::erasure::{rig, RigSettings};
use crate::helpers::{drain, eventually, queue_depth, spawn_app, unique_name};
use dsr_adapters::emf::{validate, EmfSink};
use dsr_domain::requests::reconcile::ReconcileSettings;
use dsr_domain::{LeaseOutcome, RequestState, RequestStore};
use dsr_ops::{Command, Ops, Target};
use serde_json::Value;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A writer tests can read back.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn ops(stack_name: &str) -> Ops {
    let target = Target {
        local_stack: Some(stack_name.to_owned()),
        ..Default::default()
    };
    Ops::connect(
        &crate::helpers::aws().await,
        &target,
        &dsr_adapters::config::Env::default(),
    )
    .await
    .unwrap()
}

async fn run(ops: &Ops, command: Command) -> Result<String, String> {
    let mut out = Vec::new();
    let mut progress = Vec::new();
    ops.run(&command, &mut out, &mut progress)
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

// Each test runs in its own process (nextest), so a process-wide sink or subscriber sees only
// this test's work.

#[tokio::test]
async fn a_full_run_emits_valid_emf_and_logs_no_raw_subject_id() {
    let metrics = Captured::default();
    dsr_domain::metrics::install(Arc::new(EmfSink::new(
        "GdprDsr/test",
        "local",
        Box::new(metrics.clone()),
    )));
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("info")
        .with_writer(move || writer.clone())
        .init();

    let rig = rig(RigSettings::default()).await;
    let subject = format!("Zoë.Private+{}@example.com", unique_name());
    // The report first: the erasure that follows deletes it (the service's own copy).
    rig.services.seed(&subject);
    let access = rig.app.submit(&subject, "access").await;
    assert_eq!(access.status, 202);
    let access = access.body["id"].as_str().unwrap().to_owned();
    rig.wait_for(&subject, &access, Duration::from_secs(60), |v| {
        v["state"] == "report_ready"
    })
    .await;
    let erasure = rig.submit_erasure(&subject).await;
    rig.wait_for(&subject, &erasure, Duration::from_secs(60), |v| {
        v["state"] == "completed"
    })
    .await;
    rig.app
        .stack
        .requests("SweepFunction", "sweep")
        .unwrap()
        .reconcile(ReconcileSettings::default())
        .await
        .unwrap();

    let lines = metrics.text();
    let mut names = std::collections::HashSet::new();
    for line in lines.lines() {
        validate(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let doc: Value = serde_json::from_str(line).unwrap();
        names.insert(
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for expected in [
        "RequestsSubmitted",
        "RequestsReceived",
        "RequestsCompleted",
        "ReportBytes",
        "ReportDuration",
        "ConfirmationLatency",
        "RequestsInState",
        "CountsInSync",
        "DeadlineAtRisk",
    ] {
        assert!(names.contains(expected), "{expected} not among {names:?}");
    }

    let logs = logs.text();
    assert!(logs.contains(&erasure), "the logs were captured");
    assert!(!logs.contains(&subject), "a raw subject id is in the logs");
    assert!(
        !logs.contains("Zoë.Private"),
        "a raw subject id is in the logs"
    );
}

#[tokio::test]
async fn a_request_whose_worker_died_and_message_was_lost_is_redriven() {
    let app = spawn_app().await;
    let reply = app
        .submit(&format!("lost-{}", unique_name()), "access")
        .await;
    let id: dsr_domain::RequestId = reply.body["id"].as_str().unwrap().parse().unwrap();
    let queue = app.queue_url("AccessRequestsQueue");
    // The message is taken and gone, and the worker holding the lease died.
    assert_eq!(drain(&app.sqs, &queue).await.len(), 1);
    let store =
        dsr_adapters::dynamodb::DynamoRequestStore::new(app.dynamodb.clone(), app.table(), "test");
    let lease = store
        .acquire_lease(
            id,
            "a-worker-that-died",
            RequestState::Collecting,
            chrono::Utc::now(),
            chrono::Duration::milliseconds(1),
        )
        .await
        .unwrap();
    assert!(matches!(lease, LeaseOutcome::Acquired(_)));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let requests = app.stack.requests("SweepFunction", "sweep").unwrap();
    let found = requests
        .reconcile(ReconcileSettings {
            working_stuck_after: chrono::Duration::zero(),
            ..ReconcileSettings::default()
        })
        .await
        .unwrap();
    assert_eq!(found.redriven, [id]);
    assert!(found.all_in_sync(), "{found:?}");
    let again = drain(&app.sqs, &queue).await;
    assert_eq!(again.len(), 1);
    let message: Value = serde_json::from_str(again[0].body().unwrap()).unwrap();
    assert_eq!(message["request_id"], id.to_string());
    assert_eq!(message["message_id"], format!("request:{id}"));
}

#[tokio::test]
async fn the_operator_cli_works_against_the_local_stack() {
    let app = spawn_app().await;
    let stack_name = app.stack.context.stack_name.clone();
    let ops = ops(&stack_name).await;
    let subject = format!("op-{}", unique_name());
    let reply = app.submit(&subject, "access").await;
    let id = reply.body["id"].as_str().unwrap().to_owned();
    app.submit(&format!("op2-{}", unique_name()), "erasure")
        .await;

    let stats = run(&ops, Command::Stats).await.unwrap();
    let access_row = stats.lines().find(|l| l.starts_with("access")).unwrap();
    let cells: Vec<&str> = access_row.split_whitespace().collect();
    assert_eq!(cells[1], "1", "received: {stats}");
    assert_eq!(cells[cells.len() - 2], "1", "total: {stats}");
    assert!(access_row.ends_with("yes"), "{stats}");
    assert!(stats
        .lines()
        .any(|l| l.starts_with("erasure") && l.ends_with("yes")));
    // Nothing took the requests (no workers here), but nothing is late yet either.
    let sync = run(&ops, Command::Sync { hours: Some(2) }).await.unwrap();
    assert!(sync.ends_with("every hop in sync\n"), "{sync}");
    let total = sync
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .unwrap();
    assert_eq!(
        total.split_whitespace().nth(1),
        Some("1"),
        "one submission: {sync}"
    );

    // retry: the work message again (the first one is still there too).
    let queue = app.queue_url("AccessRequestsQueue");
    let out = run(
        &ops,
        Command::Retry {
            ids: vec![id.clone()],
            stuck: false,
        },
    )
    .await
    .unwrap();
    assert!(out.contains(&id), "{out}");
    assert!(
        eventually(Duration::from_secs(5), async || queue_depth(
            &app.sqs, &queue
        )
        .await
            == 2)
        .await
    );

    // extend: once, the user sees it.
    let out = run(
        &ops,
        Command::Extend {
            id: id.clone(),
            months: 2,
            reason: "the request spans 14 systems".into(),
        },
    )
    .await
    .unwrap();
    assert!(out.contains("extended by 2 month(s)"), "{out}");
    let seen = app.get(&subject, &format!("/v1/requests/{id}")).await;
    crate::contract::assert_response("GET", "/v1/requests/{id}", 200, &seen.body);
    assert_eq!(seen.body["deadline_extension"]["months"], 2);
    assert_eq!(
        seen.body["deadline_extension"]["reason"],
        "the request spans 14 systems"
    );
    let due = chrono::DateTime::parse_from_rfc3339(seen.body["due_at"].as_str().unwrap()).unwrap();
    let received =
        chrono::DateTime::parse_from_rfc3339(seen.body["received_at"].as_str().unwrap()).unwrap();
    assert!(
        (due - received).num_days() >= 89,
        "three months in all: {}",
        seen.body
    );
    let twice = run(
        &ops,
        Command::Extend {
            id: id.clone(),
            months: 1,
            reason: "again".into(),
        },
    )
    .await;
    assert!(twice.unwrap_err().contains("once"));

    // show: the timeline.
    let shown = run(&ops, Command::Show { id: id.clone() }).await.unwrap();
    assert!(shown.contains("submitted"), "{shown}");
    assert!(shown.contains("deadline_extended:2m"), "{shown}");
    assert!(
        !shown.contains(&subject),
        "show prints the keyed hash, not the subject"
    );

    // stuck: nothing is near its deadline yet.
    let stuck = run(&ops, Command::Stuck { warning_days: 7 }).await.unwrap();
    assert!(stuck.contains("nothing stuck"), "{stuck}");
    let stuck = run(&ops, Command::Stuck { warning_days: 40 })
        .await
        .unwrap();
    assert!(
        !stuck.contains(&id),
        "the extended one is 3 months out: {stuck}"
    );

    // redrive: back from the dead-letter queue to its source.
    let dlq = app.queue_url("AccessRequestsDeadLetterQueue");
    for n in 0..12 {
        app.sqs
            .send_message()
            .queue_url(&dlq)
            .message_body(format!("{{\"n\": {n}}}"))
            .send()
            .await
            .unwrap();
    }
    drain(&app.sqs, &queue).await;
    let out = run(
        &ops,
        Command::Redrive {
            queue: "AccessRequestsDeadLetterQueue".into(),
        },
    )
    .await
    .unwrap();
    assert!(out.contains("moved 12 message(s)"), "{out}");
    assert_eq!(queue_depth(&app.sqs, &dlq).await, 0);
    assert_eq!(drain(&app.sqs, &queue).await.len(), 12);

    // proof: only of erasures.
    assert!(run(&ops, Command::Proof { id: id.clone() })
        .await
        .unwrap_err()
        .contains("access request"));
}

#[tokio::test]
async fn the_proof_of_erasure_lists_every_obligation_with_its_receipt() {
    let rig = rig(RigSettings::default()).await;
    let subject = format!("proof-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;
    rig.wait_for(&subject, &id, Duration::from_secs(60), |v| {
        v["state"] == "completed"
    })
    .await;
    let ops = ops(&rig.app.stack.context.stack_name).await;
    let proof: Value =
        serde_json::from_str(&run(&ops, Command::Proof { id: id.clone() }).await.unwrap()).unwrap();
    assert_eq!(proof["complete"], true);
    let obligations = proof["obligations"].as_array().unwrap();
    assert_eq!(obligations.len(), 6);
    let own = obligations
        .iter()
        .find(|o| o["service"] == dsr_domain::erasure::OWN_COPIES)
        .unwrap();
    assert_eq!(own["receipt"]["report_objects_deleted"], 0, "{own}");
    for o in obligations {
        assert_eq!(o["status"], "confirmed", "{o}");
        assert!(
            o["confirmed_at"].is_string() && o["sent_at"].is_string(),
            "{o}"
        );
        assert!(o["receipt"].is_object(), "{o}");
    }
    let ads = obligations.iter().find(|o| o["service"] == "ads").unwrap();
    assert_eq!(ads["receipt"]["http_status"], 200);
    let billing = obligations
        .iter()
        .find(|o| o["service"] == "billing")
        .unwrap();
    assert_eq!(billing["receipt"]["records_deleted"], 2);
    assert!(!proof.to_string().contains(&subject));
    assert!(proof["audit_trail"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "completed"));
}

/// template.yaml's resources the operator's commands use, as a stack of their own: what the
/// emulator's CloudFormation can create (it runs no SAM transform).
fn stack_of_the_ops_resources() -> String {
    use serde_yaml_ng::{Mapping, Value};
    let template: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(crate::helpers::repo_path("template.yaml")).unwrap(),
    )
    .unwrap();
    let pick = |section: &str, names: &[&str]| -> Value {
        let mut picked = Mapping::new();
        for name in names {
            let value = template[section][*name].clone();
            assert!(!value.is_null(), "template.yaml has no {section}.{name}");
            picked.insert(Value::from(*name), value);
        }
        Value::Mapping(picked)
    };
    let mut stack = Mapping::new();
    stack.insert(
        "Parameters".into(),
        pick(
            "Parameters",
            &["SecretsPath", "ErasureGraceSeconds", "RabbitMqNamespace"],
        ),
    );
    stack.insert(
        "Resources".into(),
        pick(
            "Resources",
            &[
                "RequestsTable",
                "HopsTable",
                "AccessRequestsQueue",
                "AccessRequestsDeadLetterQueue",
                "ErasureRequestsQueue",
                "ErasureRequestsDeadLetterQueue",
                "OutboundQueue",
                "OutboundDeadLetterQueue",
            ],
        ),
    );
    stack.insert(
        "Outputs".into(),
        pick(
            "Outputs",
            &[
                "RequestsTableName",
                "HopsTableName",
                "AccessRequestsQueueUrl",
                "ErasureRequestsQueueUrl",
                "AccessRequestsDeadLetterQueueUrl",
                "SubjectHashKeyParameter",
                "OutboundQueueUrl",
            ],
        ),
    );
    serde_yaml_ng::to_string(&Value::Mapping(stack)).unwrap()
}

#[tokio::test]
async fn the_cli_operates_a_deployed_stack_found_by_its_name() {
    use aws_sdk_cloudformation::types::Parameter;
    use dsr_domain::{Request, RequestKind, SubjectHasher, SubjectId};
    let aws = crate::helpers::aws().await;
    let cloudformation = aws_sdk_cloudformation::Client::new(&aws);
    let name = format!("dsr-{}", unique_name()).replace('_', "-");
    let secrets = format!("/{name}");
    let created = cloudformation
        .create_stack()
        .stack_name(&name)
        .template_body(stack_of_the_ops_resources())
        .parameters(
            Parameter::builder()
                .parameter_key("SecretsPath")
                .parameter_value(&secrets)
                .build(),
        )
        .parameters(
            Parameter::builder()
                .parameter_key("RabbitMqNamespace")
                .parameter_value("acme-dsr")
                .build(),
        )
        .send()
        .await;
    // The name is this test's alone: "already exists" is the SDK's retry of a create whose
    // answer the busy emulator was too slow to give (seen in CI), not someone else's stack.
    if let Err(err) = created {
        let exists = err
            .as_service_error()
            .is_some_and(|e| e.meta().code() == Some("AlreadyExistsException"));
        assert!(
            exists,
            "{}",
            aws_sdk_cloudformation::error::DisplayErrorContext(err)
        );
    }
    let key = format!("{name}-subject-hash-key-0123456789");
    aws_sdk_ssm::Client::new(&aws)
        .put_parameter()
        .name(format!("{secrets}/subject-hash-key"))
        .value(&key)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let outputs: std::collections::HashMap<String, String> = cloudformation
        .describe_stacks()
        .stack_name(&name)
        .send()
        .await
        .unwrap()
        .stacks()[0]
        .outputs()
        .iter()
        .map(|o| {
            (
                o.output_key().unwrap().to_owned(),
                o.output_value().unwrap().to_owned(),
            )
        })
        .collect();

    let ops = Ops::connect(
        &aws,
        &Target {
            stack: Some(name.clone()),
            ..Default::default()
        },
        &dsr_adapters::config::Env::default(),
    )
    .await
    .unwrap();

    // An erasure in the stack's table: its proof carries the subject's hash under the key the
    // stack's SecretsPath names.
    let store = dsr_adapters::dynamodb::DynamoRequestStore::new(
        aws_sdk_dynamodb::Client::new(&aws),
        outputs["RequestsTableName"].clone(),
        "test",
    );
    let subject = SubjectId::parse("erin@example.com").unwrap();
    let request = Request::receive(RequestKind::Erasure, subject.clone(), chrono::Utc::now());
    let hasher = SubjectHasher::new(&key);
    store
        .create(&request, &hasher.hash(&subject), None, None)
        .await
        .unwrap();
    let stats = run(&ops, Command::Stats).await.unwrap();
    let erasures = stats.lines().find(|l| l.starts_with("erasure")).unwrap();
    assert_eq!(erasures.split_whitespace().nth(1), Some("1"), "{stats}");
    let proof: Value = serde_json::from_str(
        &run(
            &ops,
            Command::Proof {
                id: request.id.to_string(),
            },
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(proof["subject_hash"], hasher.hash(&subject).to_string());

    // An extension tells the subject through the stack's outbound queue, under its namespace.
    run(
        &ops,
        Command::Extend {
            id: request.id.to_string(),
            months: 2,
            reason: "records in 14 systems".into(),
        },
    )
    .await
    .unwrap();
    let told: Vec<Value> = drain(
        &aws_sdk_sqs::Client::new(&aws),
        &outputs["OutboundQueueUrl"],
    )
    .await
    .iter()
    .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
    .collect();
    let notice = told
        .iter()
        .find(|m| m["routing_key"] == "notice.deadline_extended")
        .unwrap_or_else(|| panic!("the notice: {told:?}"));
    assert_eq!(notice["exchange"], "acme-dsr.commands");
    assert_eq!(notice["payload"]["subject"], "erin@example.com");

    // A dead letter goes back to its queue, the dead-letter queue named by its logical id.
    let sqs = aws_sdk_sqs::Client::new(&aws);
    sqs.send_message()
        .queue_url(&outputs["AccessRequestsDeadLetterQueueUrl"])
        .message_body(r#"{"request_id":"x"}"#)
        .send()
        .await
        .unwrap();
    let out = run(
        &ops,
        Command::Redrive {
            queue: "AccessRequestsDeadLetterQueue".into(),
        },
    )
    .await
    .unwrap();
    assert!(out.starts_with("moved 1 message(s)"), "{out}");
    assert_eq!(
        queue_depth(&sqs, &outputs["AccessRequestsQueueUrl"]).await,
        1
    );

    // A name that is no stack says so.
    let missing = Ops::connect(
        &aws,
        &Target {
            stack: Some(format!("{name}-missing")),
            ..Default::default()
        },
        &dsr_adapters::config::Env::default(),
    )
    .await;
    assert!(
        missing.is_err_and(|e| e.to_string().contains("no stack")),
        "a missing stack is named"
    );
}

#[tokio::test]
async fn an_operator_extends_a_deadline_once_before_it_passes_and_the_subject_is_told() {
    let app = spawn_app().await;
    let ops = ops(&app.stack.context.stack_name).await;
    let subject = format!("ext-{}", unique_name());
    let reply = app.submit(&subject, "erasure").await;
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let outbound = app.queue_url("OutboundQueue");
    drain(&app.sqs, &outbound).await;

    let reason = "a vendor's export takes weeks";
    let out = run(
        &ops,
        Command::Extend {
            id: id.clone(),
            months: 1,
            reason: reason.into(),
        },
    )
    .await
    .unwrap();
    assert!(out.contains("the subject is told"), "{out}");
    let seen = app.get(&subject, &format!("/v1/requests/{id}")).await;
    assert_eq!(seen.body["deadline_extension"]["reason"], reason);

    // On the outbound queue: the notice for the email service (with the subject, to the
    // commands exchange) and the event for the platform (the keyed hash only).
    let mut sent: Vec<Value> = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), async || {
            sent.extend(
                drain(&app.sqs, &outbound)
                    .await
                    .iter()
                    .map(|m| serde_json::from_str::<Value>(m.body().unwrap()).unwrap()),
            );
            sent.len() >= 2
        })
        .await,
        "{sent:?}"
    );
    assert_eq!(sent.len(), 2, "{sent:?}");
    for message in &sent {
        crate::contract::assert_message(message);
    }
    let envelope = sent
        .iter()
        .find(|m| m["routing_key"] == "notice.deadline_extended")
        .expect("the notice");
    assert_eq!(envelope["exchange"], "gdpr.commands");
    let notice = &envelope["payload"];
    crate::contract::assert_message(notice);
    assert_eq!(notice["subject"], subject.as_str());
    assert_eq!(
        notice["message_id"],
        format!("notice:deadline_extended:{id}")
    );
    assert_eq!(notice["detail"]["reason"], reason);
    assert_eq!(notice["detail"]["due_at"], seen.body["due_at"]);
    let event = sent
        .iter()
        .find(|m| m["type"] == "deadline_extended")
        .expect("the event");
    assert_eq!(event["message_id"], format!("deadline_extended:{id}"));
    assert!(!event.to_string().contains(&subject), "{event}");

    // A request whose first deadline passed: refused, nothing recorded, nobody told.
    let store =
        dsr_adapters::dynamodb::DynamoRequestStore::new(app.dynamodb.clone(), app.table(), "test");
    let late_subject = dsr_domain::SubjectId::parse(format!("late-{}", unique_name())).unwrap();
    let late = dsr_domain::Request::receive(
        dsr_domain::RequestKind::Access,
        late_subject.clone(),
        chrono::Utc::now() - chrono::Duration::days(32),
    );
    let hash = app.stack.subject_hasher().unwrap().hash(&late_subject);
    store.create(&late, &hash, None, None).await.unwrap();
    let refused = run(
        &ops,
        Command::Extend {
            id: late.id.to_string(),
            months: 2,
            reason: "asked for too late".into(),
        },
    )
    .await
    .unwrap_err();
    assert!(refused.contains("deadline passed"), "{refused}");
    let unchanged = store.get(late.id).await.unwrap().unwrap();
    assert!(unchanged.deadline_extension.is_none());
    assert_eq!(
        unchanged.due_at.timestamp_millis(),
        late.due_at.timestamp_millis()
    );
    assert!(drain(&app.sqs, &outbound).await.is_empty(), "nobody told");
}

/// A rig whose billing holder stays silent (until told otherwise), and two erasures (of
/// subjects named after `names`) escalated at billing: (subject, request id) each.
pub async fn escalated_at_billing(
    names: [&str; 2],
) -> (
    crate::erasure::ErasureRig,
    Arc<dsr_local::erasing_services::ErasingService>,
    [(String, String); 2],
) {
    let rig = rig(RigSettings {
        confirm_within_seconds: 2,
        max_sends: 1,
        grace_seconds: 1,
        ..RigSettings::default()
    })
    .await;
    let billing = rig.services.service("billing").clone();
    billing
        .behaviour
        .silent
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let run_id = unique_name();
    let mut erasures = Vec::new();
    for name in names {
        let subject = format!("{name}-{run_id}");
        let id = rig.submit_erasure(&subject).await;
        erasures.push((subject, id));
    }
    let billing_escalated = |view: &Value| {
        view["services"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["service"] == "billing"))
            .is_some_and(|s| s["escalated"] == true)
    };
    for (subject, id) in &erasures {
        rig.wait_for(subject, id, Duration::from_secs(60), billing_escalated)
            .await;
    }
    let Ok(erasures) = <[(String, String); 2]>::try_from(erasures) else {
        unreachable!("two names, two erasures")
    };
    (rig, billing, erasures)
}

/// An escalation is not a dead end. Two erasures whose billing holder stayed silent until it
/// was escalated: for one, the operator has the command sent again (the holder answers this
/// time); for the other, the operator records the answer obtained by other means (the data
/// deleted by hand). Both complete; the second's proof marks billing as settled by hand.
#[tokio::test]
async fn an_operator_resends_to_an_escalated_holder_or_resolves_it_by_hand_and_both_erasures_complete(
) {
    use crate::erasure::completed;
    use dsr_ops::{OperatorName, Resolution};
    let (rig, billing, [(resent, resent_id), (resolved, resolved_id)]) =
        escalated_at_billing(["resent", "resolved"]).await;
    let ops = ops(&rig.app.stack.context.stack_name).await;
    let jane = || OperatorName {
        name: Some("jane@ops".into()),
    };
    // Not for a holder the request has no obligation for, nor without an answer to record.
    let unknown = run(
        &ops,
        Command::Resend {
            id: resent_id.clone(),
            service: "nobody".into(),
            operator: jane(),
        },
    )
    .await
    .unwrap_err();
    assert!(unknown.contains("no obligation for nobody"), "{unknown}");

    billing
        .behaviour
        .silent
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let out = run(
        &ops,
        Command::Resend {
            id: resent_id.clone(),
            service: "billing".into(),
            operator: jane(),
        },
    )
    .await
    .unwrap();
    // The holder is back: it may answer before the command's wait for the new attempt ends.
    assert!(
        out.contains("command sent again") && out.contains("attempt 2"),
        "{out}"
    );
    let view = rig
        .wait_for(&resent, &resent_id, Duration::from_secs(60), completed)
        .await;
    assert_eq!(billing.records(&resent), 0, "{view:#}");

    // The other one: billing's data deleted by hand, then recorded with the evidence.
    billing.forget(&resolved);
    let out = run(
        &ops,
        Command::Resolve {
            id: resolved_id.clone(),
            service: "billing".into(),
            outcome: Resolution::Erased,
            evidence: "ticket SUP-4711: the rows were deleted by hand".into(),
            operator: jane(),
        },
    )
    .await
    .unwrap();
    assert!(
        out.contains("confirmed, settled by hand by jane@ops"),
        "{out}"
    );
    rig.wait_for(&resolved, &resolved_id, Duration::from_secs(60), completed)
        .await;

    let billing_in = |proof: &Value| {
        proof["obligations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["service"] == "billing")
            .cloned()
            .unwrap()
    };
    let proof = ops.proof(resolved_id.parse().unwrap()).await.unwrap();
    let by_hand = billing_in(&proof);
    assert_eq!(by_hand["settled_by_hand"], true, "{proof:#}");
    assert_eq!(by_hand["receipt"]["operator"], "jane@ops");
    assert_eq!(
        by_hand["receipt"]["evidence"],
        "ticket SUP-4711: the rows were deleted by hand"
    );
    assert!(
        proof["audit_trail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "operator_resolved:billing:confirmed:by:jane@ops"),
        "{proof:#}"
    );
    let proof = ops.proof(resent_id.parse().unwrap()).await.unwrap();
    let answered = billing_in(&proof);
    assert_eq!(answered["settled_by_hand"], false, "{proof:#}");
    assert_eq!(answered["commands_sent"], 2);
    assert!(proof["audit_trail"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "operator_resent:billing:by:jane@ops"));
    // Done is done: acting on a completed erasure is refused with the reason.
    let late = run(
        &ops,
        Command::Resend {
            id: resent_id.clone(),
            service: "billing".into(),
            operator: jane(),
        },
    )
    .await
    .unwrap_err();
    assert!(late.contains("completed: nothing left to act on"), "{late}");
}

/// Support takes a request by e-mail and submits it on the verified subject's behalf: it goes
/// through like the subject's own, the subject sees it in their list with its channel, the
/// audit trail says who took it and how the subject was verified, and the hops agree.
#[tokio::test]
async fn support_submits_an_erasure_on_a_subjects_behalf_and_the_subject_sees_it_with_its_channel()
{
    use crate::erasure::completed;
    use dsr_ops::{Kind, OperatorName};
    let rig = rig(RigSettings::default()).await;
    let ops = ops(&rig.app.stack.context.stack_name).await;
    let subject = format!("by-mail-{}", unique_name());
    rig.services.seed(&subject);
    let submit = |channel: &str, reference: &str| Command::Submit {
        subject: subject.clone(),
        kind: Kind::Erasure,
        channel: channel.into(),
        reference: reference.into(),
        operator: OperatorName {
            name: Some("jane@ops".into()),
        },
    };
    for (channel, reference, why) in [
        ("api", "SUP-9", "support submits requests taken by"),
        ("fax", "SUP-9", "unknown channel `fax`"),
        ("email", "", "needs the reference"),
        ("email", "see <notes>", "plain reference"),
    ] {
        let refused = run(&ops, submit(channel, reference)).await.unwrap_err();
        assert!(refused.contains(why), "{channel} {reference}: {refused}");
    }
    let out = run(&ops, submit("email", "SUP-9")).await.unwrap();
    assert!(out.contains("erasure (received): submitted"), "{out}");
    let id = out.split_whitespace().next().unwrap().to_owned();
    let again = run(&ops, submit("email", "SUP-9")).await.unwrap();
    assert!(
        again.starts_with(&id) && again.contains("already submitted by this command"),
        "{again}"
    );

    let view = rig
        .wait_for(&subject, &id, Duration::from_secs(60), completed)
        .await;
    assert_eq!(view["channel"], "email", "{view:#}");
    let list = rig.app.get(&subject, "/v1/requests").await;
    crate::contract::assert_response("GET", "/v1/requests", 200, &list.body);
    let listed = list.body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(listed["channel"], "email");
    let trail = rig.audit(&id).await;
    assert!(
        trail.contains(&"submitted:email:by:jane@ops:ref:SUP-9".to_owned()),
        "{trail:?}"
    );
    // The subject's own request says so too.
    let own = rig
        .app
        .submit(&format!("own-{}", unique_name()), "access")
        .await;
    assert_eq!(own.body["channel"], "api", "{}", own.body);
    let sync = run(&ops, Command::Sync { hours: Some(2) }).await.unwrap();
    assert!(sync.ends_with("every hop in sync\n"), "{sync}");
}

#[tokio::test]
async fn another_system_submits_over_rabbitmq_and_an_unauthorised_ones_submission_is_dead_lettered()
{
    use crate::bridge::{publish_as, LOCAL_BROKER};
    use crate::erasure::{completed, dead_lettered};
    use dsr_local::erasing_services::{broker_url_as, broker_user};
    use lapin::{Connection, ConnectionProperties};
    let rig = rig(RigSettings {
        // The CRM publishes as `guest` here; nobody else may submit.
        request_submitters: Some("guest".into()),
        ..RigSettings::default()
    })
    .await;
    let exchange = format!("{}.requests", rig.namespace);
    let subject = format!("closed-account-{}", unique_name());
    rig.services.seed(&subject);
    let submit = |message_id: &str| {
        serde_json::json!({"version": 1, "type": "submit_request", "message_id": message_id,
            "subject": subject, "request": "erasure", "reference": "CRM-CASE-42"})
    };
    let message = submit("crm-1");
    crate::contract::assert_message(&message);
    crate::asyncapi::assert_on_channel("requests", &message);
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let crm = crate::helpers::confirming_channel(&conn).await;
    let bridged = format!("{}.bridge.requests", rig.namespace);
    assert!(crate::helpers::consumed(&conn, &[&bridged], Duration::from_secs(30)).await);
    // Published twice (a retry after a lost confirm): one request.
    for _ in 0..2 {
        let body = serde_json::to_vec(&message).unwrap();
        publish_as(&crm, &exchange, "crm-1", &body, Some("guest")).await;
    }
    let mut listed = Value::Null;
    let found = eventually(Duration::from_secs(30), async || {
        listed = rig.app.get(&subject, "/v1/requests").await.body;
        listed["requests"].as_array().is_some_and(|r| !r.is_empty())
    })
    .await;
    assert!(found, "{listed:#}");
    let requests = listed["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "one submission: {listed:#}");
    assert_eq!(requests[0]["channel"], "system");
    let id = requests[0]["id"].as_str().unwrap().to_owned();
    let view = rig
        .wait_for(&subject, &id, Duration::from_secs(60), completed)
        .await;
    assert_eq!(view["channel"], "system", "{view:#}");
    let trail = rig.audit(&id).await;
    assert!(
        trail.contains(&"submitted:system:by:guest:ref:CRM-CASE-42".to_owned()),
        "{trail:?}"
    );

    // Another service, connected as itself, is not a submitter: dead-lettered with the reason,
    // and nothing is submitted.
    let intruder = broker_user("billing");
    let conn = Connection::connect(
        &broker_url_as(LOCAL_BROKER, &intruder),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let other = crate::helpers::confirming_channel(&conn).await;
    let victim = format!("victim-{}", unique_name());
    let forged = serde_json::json!({"version": 1, "type": "submit_request",
        "message_id": "x-1", "subject": victim, "request": "erasure"});
    publish_as(
        &other,
        &exchange,
        "x-1",
        &serde_json::to_vec(&forged).unwrap(),
        Some(&intruder),
    )
    .await;
    let dead = dead_lettered(&rig.app, "SubmissionsDeadLetterQueue", 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].1,
        format!("broker user `{intruder}` may not submit requests (REQUEST_SUBMITTERS)")
    );
    assert!(rig.app.get(&victim, "/v1/requests").await.body["requests"]
        .as_array()
        .unwrap()
        .is_empty());
    let ops = ops(&rig.app.stack.context.stack_name).await;
    let sync = run(&ops, Command::Sync { hours: Some(2) }).await.unwrap();
    assert!(sync.ends_with("every hop in sync\n"), "{sync}");
}
