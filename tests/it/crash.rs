//! Crashes: the process hosting every function is killed (SIGKILL: no destructor, no flush, no
//! retry) at each step that writes, and started again. Every request must still complete, with
//! no orphan S3 object and no effect twice.
//!
//! The functions run in `functions-host`, a process of their own built with the kill points
//! (`dsr_domain::kill_point`); the holders, the broker, the emulator and the client live on in
//! this one. A kill point freezes the host and says so on stderr; this test then kills it.
//! Queues hide a message for 8 s and leases last 8 s here (minutes in the template), so the
//! restart finds what the dead process held within seconds instead of a function timeout.

use crate::chaos::{assert_every_effect_once, explain_the_unfinished, settle};
use crate::erasure::{rig, ErasureRig, RigSettings};
use crate::helpers::{repo_path, unique_name};
use dsr_domain::kill_point;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

const HOST: &str = env!("CARGO_BIN_EXE_functions-host");
/// How long a received message stays hidden, and a lease lasts, in these runs.
const REDELIVERY_SECONDS: u32 = 8;

/// The host process, and what it said on stderr.
struct Host {
    child: Arc<tokio::sync::Mutex<Child>>,
    api: String,
    /// The kill point it froze at, once it did (it is killed at once).
    killed: Option<oneshot::Receiver<String>>,
    said: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

impl Host {
    async fn start(settings: &serde_json::Value, kill_at: Option<&str>) -> Host {
        let mut command = Command::new(HOST);
        command
            .env("DSR_HOST_SETTINGS", settings.to_string())
            .env(
                "RUST_LOG",
                std::env::var("CRASH_HOST_LOG")
                    .unwrap_or_else(|_| "warn,aws_config=error,aws_smithy_runtime=error".into()),
            )
            .env_remove(kill_point::DSR_KILL_AT)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(plan) = kill_at {
            command.env(kill_point::DSR_KILL_AT, plan);
        }
        let mut child = command.spawn().expect("functions-host starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let child = Arc::new(tokio::sync::Mutex::new(child));
        let said = Arc::new(Mutex::new(Vec::new()));

        let (frozen, killed) = oneshot::channel();
        let (to_kill, heard) = (child.clone(), said.clone());
        tokio::spawn(async move {
            let mut frozen = Some(frozen);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(step) = line.strip_prefix(kill_point::MARKER) {
                    // The crash itself: the host stands frozen at the step until this.
                    let _ = to_kill.lock().await.start_kill();
                    if let Some(frozen) = frozen.take() {
                        let _ = frozen.send(step.trim().to_owned());
                    }
                }
                heard.lock().unwrap().push(line);
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let api = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = line.strip_prefix("functions ready:") {
                    return Some(address.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(api) = api else {
            panic!(
                "functions-host did not start:\n{}",
                said.lock().unwrap().join("\n")
            );
        };
        // Its stdout stays drained, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Host {
            child,
            api,
            killed: kill_at.map(|_| killed),
            said,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
        }
    }

    /// Submits with an idempotency key; `None` when the host did not answer (it died).
    async fn submit(&self, rig: &ErasureRig, subject: &str, kind: &str) -> Option<String> {
        let reply = self
            .http
            .post(format!("{}/v1/requests", self.api))
            .bearer_auth(rig.app.token(subject))
            .header("idempotency-key", format!("crash-{subject}"))
            .json(&serde_json::json!({ "type": kind }))
            .send()
            .await
            .ok()?;
        let status = reply.status();
        let body: serde_json::Value = reply.json().await.ok()?;
        assert!(
            status.is_success() || status.is_server_error(),
            "{subject}: {status} {body}"
        );
        Some(body["id"].as_str()?.to_owned())
    }

    /// Waits for the host to reach its kill point and be killed; returns the step.
    async fn killed_within(&mut self, within: Duration) -> String {
        let killed = self
            .killed
            .take()
            .expect("a host started with a kill point");
        let step = match tokio::time::timeout(within, killed).await {
            Ok(Ok(step)) => step,
            _ => panic!(
                "the host never reached its kill point; it said:\n{}",
                self.said.lock().unwrap().join("\n")
            ),
        };
        let status = self.child.lock().await.wait().await.unwrap();
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
        step
    }
}

/// The stack's queues hide a received message for `seconds` (a Lambda that dies mid-batch
/// leaves its messages hidden for the queue's visibility timeout).
async fn redeliver_after(rig: &ErasureRig, seconds: u32) {
    for resource in rig.app.stack.context.resources.values() {
        if let Some(url) = &resource.url {
            rig.app
                .sqs
                .set_queue_attributes()
                .queue_url(url)
                .attributes(
                    aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                    seconds.to_string(),
                )
                .send()
                .await
                .unwrap();
        }
    }
    // A long poll already waiting took the old timeout when it began (one second, locally).
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Access and erasure requests (four; `CRASH_REQUESTS` under `make chaos`), with the host
/// killed on `pass` of `step`.
async fn killed_at(step: &str, pass: u32) {
    let rig = rig(RigSettings {
        consume_work_queues: false,
        ..RigSettings::default()
    })
    .await;
    let context = &rig.app.stack.context;
    let settings = serde_json::json!({
        "template": repo_path("template.yaml"),
        "stack": context.stack_name,
        "parameters": context.parameters,
        "registry": rig.registry,
        "environment": {
            "REPORT_LEASE_SECONDS": REDELIVERY_SECONDS.to_string(),
            // Every collected source is staged at once, so that staging has its kill point.
            "REPORT_STAGE_AFTER_SECONDS": "0",
            "ERASURE_LEASE_SECONDS": REDELIVERY_SECONDS.to_string(),
        },
        "sweep_millis": 2000,
        "dispatch_millis": 500,
    });
    let started = Instant::now();
    let mut host = Host::start(&settings, Some(&format!("{step}:{pass}"))).await;
    // After the host provisioned (which sets the template's timeouts again).
    redeliver_after(&rig, REDELIVERY_SECONDS).await;
    let run = unique_name();
    let planned: Vec<(String, &str)> = (0..crate::chaos::scale("CRASH_REQUESTS", 4))
        .map(|i| {
            let kind = if i % 2 == 0 { "access" } else { "erasure" };
            (format!("crash-{run}-{i}"), kind)
        })
        .collect();
    let mut ids = Vec::new();
    for (subject, kind) in &planned {
        ids.push(host.submit(&rig, subject, kind).await);
    }
    let reached = host.killed_within(Duration::from_secs(120)).await;
    assert_eq!(reached, step);
    let killed_after = started.elapsed();

    let restarted = Instant::now();
    let host = Host::start(&settings, None).await;
    redeliver_after(&rig, REDELIVERY_SECONDS).await;
    // The client tries again what was not answered, under the same idempotency key.
    for (id, (subject, kind)) in ids.iter_mut().zip(&planned) {
        for _ in 0..20 {
            if id.is_some() {
                break;
            }
            *id = host.submit(&rig, subject, kind).await;
            if id.is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let ids: Vec<String> = ids
        .into_iter()
        .map(|id| id.expect("accepted after the restart"))
        .collect();
    let of_kind = |wanted: &str| -> Vec<String> {
        ids.iter()
            .zip(&planned)
            .filter(|(_, (_, kind))| *kind == wanted)
            .map(|(id, _)| id.clone())
            .collect()
    };
    let (access, erasures) = (of_kind("access"), of_kind("erasure"));
    let states = settle(&rig, &ids, Duration::from_secs(180)).await;
    println!(
        "crash: {step}:{pass} | killed {:.1} s in | {} of {} done {:.0} s after the restart",
        killed_after.as_secs_f64(),
        states
            .values()
            .filter(|s| matches!(
                s,
                dsr_domain::RequestState::Completed | dsr_domain::RequestState::ReportReady
            ))
            .count(),
        ids.len(),
        restarted.elapsed().as_secs_f64()
    );
    explain_the_unfinished(&rig, &states).await;
    if states.len() < ids.len()
        || states
            .values()
            .any(|s| !s.is_terminal() && *s != dsr_domain::RequestState::ReportReady)
    {
        println!(
            "the restarted host said:\n{}",
            host.said.lock().unwrap().join("\n")
        );
    }
    assert_every_effect_once(&rig, &access, &erasures, &states).await;
    drop(host);
}

/// One test per kill point (and pass), so that a failure names the step.
macro_rules! crashes {
    ($($name:ident => $step:literal : $pass:literal,)*) => {
        const VISITED: &[&str] = &[$($step),*];
        $(
            #[tokio::test]
            async fn $name() {
                killed_at($step, $pass).await;
            }
        )*
    };
}

crashes! {
    killed_after_storing_a_request_before_its_work_message => "intake.stored": 2,
    killed_after_a_source_was_staged_before_the_next => "report.source_staged": 2,
    killed_after_a_report_upload_before_its_commit => "report.uploaded": 1,
    killed_after_a_report_commit_before_its_announcement => "report.committed": 1,
    killed_between_sending_an_erasure_command_and_recording_it => "erasure.command_sent": 3,
    killed_after_the_fan_out_committed_before_moving_on => "erasure.fanned_out": 1,
    killed_after_recording_an_answer_before_moving_on => "confirm.answered": 2,
    killed_after_moving_to_notifying_before_telling_the_subject => "confirm.notifying": 1,
    killed_after_queueing_the_notice => "confirm.notice_queued": 1,
    killed_after_setting_the_release_before_scheduling_it => "confirm.release_set": 1,
    killed_after_moving_to_verifying_before_asking_for_it => "confirm.verifying": 1,
    killed_after_announcing_completion_before_completing => "confirm.completion_published": 1,
    killed_after_a_broker_confirmed_before_the_receipt_and_delete => "bridge.published": 3,
    killed_after_a_delayed_send_before_marking_it => "dispatch.delivered": 1,
    killed_after_a_batch_was_handled_before_its_messages_were_deleted => "batch.handled": 4,
}

#[test]
fn every_kill_point_is_visited() {
    let mut visited = VISITED.to_vec();
    visited.sort();
    let mut steps = kill_point::STEPS.to_vec();
    steps.sort();
    assert_eq!(visited, steps);
}
