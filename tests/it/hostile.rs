//! Hostile input at every door, from the corpus kept in `tests/hostile/corpus.json` (written by
//! `tests/hostile/generate.py`): API bodies, headers and tokens (expired, forged, `alg: none`,
//! another subject's ids and cursors), ids, and SQS and AMQP bodies (truncated, wrong types,
//! huge, unknown versions, invalid UTF-8). The service's promise for each: no panic, no 5xx; a
//! 4xx with a JSON body naming the problem, or the message dead-lettered with its reason.

use crate::bridge::LOCAL_BROKER;
use crate::helpers::{eventually, queue_depth};
use base64::Engine;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn corpus() -> Vec<Value> {
    let text = std::fs::read_to_string(crate::helpers::repo_path("tests/hostile/corpus.json"))
        .expect("the corpus is in the repository");
    let corpus: Value = serde_json::from_str(&text).unwrap();
    corpus["cases"].as_array().unwrap().clone()
}

/// Counts panics on any thread of this test's process (nextest runs each test alone).
fn count_panics() -> Arc<AtomicUsize> {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    panics
}

/// How many messages a broker queue holds; `None` when it does not exist. A fresh channel
/// each time: the broker closes a channel whose passive declare failed.
async fn broker_queue_depth(conn: &Connection, queue: &str) -> Option<usize> {
    let channel = conn.create_channel().await.ok()?;
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .ok()?;
    let _ = channel.close(200, "counted".into()).await;
    Some(declared.message_count() as usize)
}

/// The case's body as bytes, with its placeholders filled in.
fn body_of(case: &Value, fill: &dyn Fn(&str) -> String) -> Option<Vec<u8>> {
    let mut bytes = if let Some(text) = case["body"].as_str() {
        fill(text).into_bytes()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(case["body_base64"].as_str()?)
            .unwrap()
    };
    if let Some(pad) = case.get("pad") {
        let run = pad["char"]
            .as_str()
            .unwrap()
            .repeat(usize::try_from(pad["count"].as_u64().unwrap()).unwrap());
        // In a base64 body the run stands for latin-1 bytes.
        let run: Vec<u8> = if case.get("body").is_some() {
            run.into_bytes()
        } else {
            run.chars().map(|c| c as u8).collect()
        };
        let at = bytes.windows(5).position(|w| w == b"@PAD@").unwrap();
        bytes.splice(at..at + 5, run);
    }
    Some(bytes)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The `Authorization` header a token spec stands for.
fn authorization(app: &crate::helpers::TestApp, spec: &Value) -> Option<String> {
    if spec.is_null() {
        return None;
    }
    let scheme = spec["scheme"].as_str().unwrap_or("Bearer");
    if let Some(subject) = spec["as"].as_str() {
        return Some(format!("{scheme} {}", app.token(subject)));
    }
    if let Some(raw) = spec["raw"].as_str() {
        return Some(format!("{scheme} {raw}"));
    }
    let now = chrono::Utc::now().timestamp();
    let mut claims = spec["claims"].clone();
    for value in claims.as_object_mut().unwrap().values_mut() {
        let Some(text) = value.as_str() else { continue };
        *value = match text {
            "$issuer" => json!(app.authorizer.issuer()),
            "$audience" => json!(app.authorizer.audience()),
            t if t.starts_with("$now+") => json!(now + t[5..].parse::<i64>().unwrap()),
            t if t.starts_with("$now-") => json!(now - t[5..].parse::<i64>().unwrap()),
            _ => continue,
        };
    }
    let token = match (spec["alg"].as_str(), spec["secret"].as_str()) {
        (Some("none"), _) => format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            b64url(claims.to_string().as_bytes())
        ),
        (Some("HS512"), _) => app
            .authorizer
            .sign_with(dsr_local::jwt::Algorithm::HS512, &claims),
        (_, Some("other")) => dsr_local::jwt::JwtAuthorizer::new(
            "another-secret-entirely",
            app.authorizer.issuer(),
            app.authorizer.audience(),
        )
        .sign(&claims),
        _ => app.authorizer.sign(&claims),
    };
    let token = match spec["truncate"].as_u64() {
        Some(n) => token[..token.len() - usize::try_from(n).unwrap()].to_owned(),
        None => token,
    };
    Some(format!("{scheme} {token}"))
}

#[tokio::test]
async fn every_hostile_input_is_refused_with_a_reason_and_nothing_panics_or_answers_5xx() {
    let panics = count_panics();
    let rig = crate::erasure::rig(crate::erasure::RigSettings::default()).await;
    let app = &rig.app;
    let ns = rig.namespace.clone();

    // What the placeholders stand for: bob's own request and cursor, which mallory may not use.
    let bob_access = app.submit("bob", "access").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.submit("bob", "erasure").await;
    let page = app.get("bob", "/v1/requests?limit=1").await;
    let bob_cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
    let confirmations_queue = app.queue_url("ConfirmationsQueue");
    let fill = |text: &str| {
        text.replace("$bob_request", &bob_access)
            .replace("$bob_cursor", &bob_cursor)
            .replace("$confirmations_queue", &confirmations_queue)
            .replace("$ns", &ns)
    };

    let cases = corpus();
    assert!(cases.len() >= 200, "the corpus holds {} cases", cases.len());
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    // The bridge binds its queues before it consumes: publish only once it consumes from both
    // (a message to a queue not yet bound would be dropped by the broker, not by us).
    let queues = [
        format!("{ns}.bridge.confirmations"),
        format!("{ns}.bridge.schedule"),
        format!("{ns}.bridge.requests"),
    ];
    assert!(
        crate::helpers::consumed(
            &conn,
            &[&queues[0], &queues[1], &queues[2]],
            std::time::Duration::from_secs(30)
        )
        .await,
        "the bridge consumes {queues:?}"
    );
    let probe = crate::helpers::confirming_channel(&conn).await;
    let mut problems = Vec::new();
    let mut sent_to: HashMap<String, usize> = HashMap::new();
    let mut amqp_cases = 0;
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        match case["channel"].as_str().unwrap() {
            "api" => {
                let method: reqwest::Method = case["method"].as_str().unwrap().parse().unwrap();
                let path = fill(case["path"].as_str().unwrap());
                let mut request = app.http.request(method, format!("{}{path}", app.base));
                if let Some(header) = authorization(app, &case["token"]) {
                    request = request.header("authorization", header);
                }
                if let Some(headers) = case["headers"].as_object() {
                    for (k, v) in headers {
                        request = request.header(k, v.as_str().unwrap());
                    }
                }
                if let Some(body) = body_of(case, &fill) {
                    request = request.body(body);
                }
                let response = request.send().await.expect("the API answers");
                let status = response.status().as_u16();
                let text = response.text().await.unwrap();
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let expected = case["expect_status"].as_u64().unwrap();
                let code_ok = case["expect_code"]
                    .as_str()
                    .is_none_or(|code| body["error"]["code"] == code);
                if u64::from(status) != expected
                    || !body["error"]["code"].is_string()
                    || !body["error"]["message"].is_string()
                    || !code_ok
                {
                    let shown: String = text.chars().take(200).collect();
                    problems.push(format!("{name}: {status} {shown} (wanted {expected})"));
                }
            }
            "sqs" => {
                let queue = case["queue"].as_str().unwrap();
                let body = String::from_utf8(body_of(case, &fill).unwrap()).unwrap();
                app.sqs
                    .send_message()
                    .queue_url(app.queue_url(queue))
                    .message_body(body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: SQS took it: {e:?}"));
                *sent_to.entry(queue.to_owned()).or_default() += 1;
            }
            "amqp" => {
                amqp_cases += 1;
                let exchange = format!("{ns}.{}", case["exchange"].as_str().unwrap());
                let mut properties = BasicProperties::default()
                    .with_message_id(name.into())
                    .with_delivery_mode(2);
                if let Some(user) = case["user_id"].as_str() {
                    properties = properties.with_user_id(user.into());
                }
                let body = body_of(case, &fill).unwrap();
                let routed = probe
                    .basic_publish(
                        exchange.as_str().into(),
                        "hostile".into(),
                        lapin::options::BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &body,
                        properties,
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                if !matches!(routed, lapin::Confirmation::Ack(None)) {
                    problems.push(format!("{name}: the broker did not take it: {routed:?}"));
                }
            }
            other => panic!("{name}: unknown channel {other}"),
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} cases were not answered as they should be:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );

    // Every queue message ends in its dead-letter queue with a reason; what came over RabbitMQ
    // ends in the broker's dead-letter queue, or (forwarded, then refused by the function) in
    // the confirmations' or schedule requests' one.
    let dead_letter_queues = [
        "AccessRequestsDeadLetterQueue",
        "ErasureRequestsDeadLetterQueue",
        "VendorErasuresDeadLetterQueue",
        "ConfirmationsDeadLetterQueue",
        "ScheduleRequestsDeadLetterQueue",
        "OutboundDeadLetterQueue",
        "SubmissionsDeadLetterQueue",
    ];
    let sqs_cases: usize = sent_to.values().sum();
    let broker_dead = format!("{ns}.bridge.dead-letter");
    let channel = conn.create_channel().await.unwrap();
    let broker_depth = || async { broker_queue_depth(&conn, &broker_dead).await.unwrap_or(0) };
    let depths_now = || async {
        let mut depths = HashMap::new();
        for queue in dead_letter_queues {
            depths.insert(queue, queue_depth(&app.sqs, &app.queue_url(queue)).await);
        }
        depths
    };
    let settled = eventually(std::time::Duration::from_secs(180), async || {
        depths_now().await.values().sum::<usize>() + broker_depth().await >= sqs_cases + amqp_cases
    })
    .await;
    let depths = depths_now().await;
    let broker = broker_depth().await;
    if !settled {
        while let Some(m) = channel
            .basic_get(
                broker_dead.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            println!(
                "broker dead letter: {:?} {}",
                m.properties.message_id(),
                String::from_utf8_lossy(&m.data)
                    .chars()
                    .take(100)
                    .collect::<String>()
            );
        }
        for queue in [
            "ConfirmationsDeadLetterQueue",
            "ScheduleRequestsDeadLetterQueue",
        ] {
            for m in crate::helpers::drain(&app.sqs, &app.queue_url(queue)).await {
                println!(
                    "{queue}: {}",
                    m.body()
                        .unwrap_or_default()
                        .chars()
                        .take(120)
                        .collect::<String>()
                );
            }
        }
        for queue in sent_to.keys() {
            let attributes = app
                .sqs
                .get_queue_attributes()
                .queue_url(app.queue_url(queue))
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                .send()
                .await
                .unwrap();
            println!("{queue}: {:?}", attributes.attributes());
        }
    }
    assert!(
        settled,
        "dead-lettered: {depths:?} + {broker} on the broker; sent {sent_to:?} + {amqp_cases} over RabbitMQ"
    );
    for (queue, sent) in &sent_to {
        let dlq = format!("{}DeadLetterQueue", queue.trim_end_matches("Queue"));
        assert!(
            depths[dlq.as_str()] >= *sent,
            "{queue}: {sent} sent, {depths:?}"
        );
    }
    // Each with its reason.
    for queue in dead_letter_queues {
        for message in crate::helpers::drain(&app.sqs, &app.queue_url(queue)).await {
            let reason = message
                .message_attributes()
                .and_then(|a| a.get("reason"))
                .and_then(|r| r.string_value())
                .unwrap_or_default();
            assert!(
                !reason.is_empty(),
                "{queue}: a dead letter without a reason"
            );
        }
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0, "nothing panicked");
}
