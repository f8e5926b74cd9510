//! The benchmark's harness, over the wire: the local Lambda Runtime API runs a function process
//! the way Lambda does (here the Python peer of the intake, under AWS's runtime interface
//! client), and what that process did is what the service sees.

use crate::helpers::{spawn_app, unique_name};
use dsr_local::runtime_api::{Outcome, RuntimeApi};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

fn python() -> String {
    let venv = std::env::var("DSR_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/gdpr-dsr/venv",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    format!("{venv}/bin/python")
}

fn emulator() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// API Gateway's event for `POST /v1/requests` by `subject`.
fn submission(subject: &str) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/v1/requests",
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "accountId": "000000000000", "apiId": "test", "domainName": "127.0.0.1",
            "domainPrefix": "test", "requestId": "r", "routeKey": "$default", "stage": "$default",
            "time": "30/Nov/2026:18:00:00 +0000", "timeEpoch": 0,
            "authorizer": {"jwt": {"claims": {"sub": subject}, "scopes": null}},
            "http": {"method": "POST", "path": "/v1/requests", "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "test"},
        },
        "body": "{\"type\":\"access\"}",
        "isBase64Encoded": false,
    })
}

#[tokio::test]
async fn the_python_peer_run_by_the_local_runtime_api_submits_a_request_the_service_lists() {
    let app = spawn_app().await;
    let api = RuntimeApi::start("PythonPeer").await.unwrap();
    let mut process = Command::new(python())
        .args(["-m", "awslambdaric", "peer_intake.handler"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/bench"))
        .envs(app.stack.environment("IntakeFunction").unwrap())
        // Always the emulator, as Lambda would give them: region and credentials.
        .env("AWS_ENDPOINT_URL", emulator())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_LAMBDA_RUNTIME_API", api.address())
        .env("AWS_LAMBDA_FUNCTION_NAME", "PythonPeer")
        .stdin(Stdio::null())
        .spawn()
        .expect("the project's virtualenv has awslambdaric (infra/local/requirements.txt)");
    let result = async {
        api.init_done(Duration::from_secs(60)).await?;
        let subject = format!("peer-{}", unique_name());
        let invoked = api
            .invoke(&submission(&subject), Duration::from_secs(30))
            .await?;
        anyhow::Ok((subject, invoked))
    }
    .await;
    let _ = process.kill();
    let _ = process.wait();
    let (subject, invoked) = result.unwrap();
    let Outcome::Response(body) = invoked.outcome else {
        panic!("the handler failed: {:?}", invoked.outcome);
    };
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["statusCode"], 202, "{answer}");
    let created: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert!(invoked.took > Duration::ZERO);

    // The same request, through the service's own API: same table, same keyed hash.
    let listed = app.get(&subject, "/v1/requests").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let ids: Vec<&Value> = listed.body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, vec![&created["id"]], "{}", listed.body);
    // And its one-open-request guard holds: the service's intake answers with it.
    let again = app.submit(&subject, "access").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["id"], created["id"]);
}
