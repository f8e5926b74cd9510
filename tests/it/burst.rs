//! A burst of requests through the local API, all at once (bounded concurrency, loopback):
//! every one reaches its end, once. Small here (inside `make test`); `make bench` runs it with
//! `BURST_REQUESTS=10000` and writes its figures for docs/performance.md: the submission rate,
//! the time to drain, and how the machine's CPU was shared between the service's process (the
//! API, every function and the holders, in this test's process) and the emulator's and the
//! broker's.

use crate::chaos::{assert_every_effect_once, explain_the_unfinished, scale, settle};
use crate::erasure::{rig, RigSettings};
use dsr_domain::RequestState;
use futures::StreamExt;
use std::time::{Duration, Instant};

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name, which may hold spaces, in parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields of the line, the 12th and 13th after ')'.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|t| t.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds so far of this process, of the emulator's (moto or LocalStack) and of the
/// broker's (RabbitMQ's Erlang VM).
fn cpu_by_party() -> [f64; 3] {
    let (mut emulator, mut broker) = (0.0, 0.0);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("moto_server") || cmdline.contains("localstack") {
            emulator += cpu_seconds(&pid);
        } else if cmdline.contains("beam.smp") || cmdline.contains("rabbitmq") {
            broker += cpu_seconds(&pid);
        }
    }
    [cpu_seconds("self"), emulator, broker]
}

#[tokio::test]
async fn a_burst_of_requests_through_the_api_all_finish_and_every_effect_happens_once() {
    let requests = scale("BURST_REQUESTS", 30);
    // Every n-th request is an erasure (five holders, about six times an access request's
    // calls); 0 for access requests only.
    let erasure_every = scale("BURST_ERASURE_EVERY", 10);
    let concurrency = scale("BURST_CONCURRENCY", 32);
    let rig = rig(RigSettings {
        // Lambda's SQS event source starts with five concurrent batches per queue.
        workers: 5,
        ..RigSettings::default()
    })
    .await;
    let run = crate::helpers::unique_name();
    let subjects: Vec<(String, &str)> = (0..requests)
        .map(|i| {
            let kind = if erasure_every > 0 && i % erasure_every == erasure_every - 1 {
                "erasure"
            } else {
                "access"
            };
            (format!("burst-{run}-{i}"), kind)
        })
        .collect();
    let cpu_before = cpu_by_party();
    let started = Instant::now();
    let submitted: Vec<(String, &str, u32)> = futures::stream::iter(&subjects)
        .map(|(subject, kind)| async {
            let (id, retries) = crate::chaos::submit_until_accepted(&rig, subject, kind).await;
            (id, *kind, retries)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let submitting = started.elapsed();
    let retries: u32 = submitted.iter().map(|(_, _, r)| r).sum();
    let (access, erasures): (Vec<_>, Vec<_>) =
        submitted.iter().partition(|(_, kind, _)| *kind == "access");
    let access: Vec<String> = access.into_iter().map(|(id, _, _)| id.clone()).collect();
    let erasures: Vec<String> = erasures.into_iter().map(|(id, _, _)| id.clone()).collect();
    let all: Vec<String> = access.iter().chain(&erasures).cloned().collect();
    let unique: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(
        unique.len(),
        requests,
        "one request per submission, none twice"
    );

    let states = settle(&rig, &all, Duration::from_secs(300 + 2 * requests as u64)).await;
    let drained = started.elapsed();
    let cpu_after = cpu_by_party();
    let done = states
        .values()
        .filter(|s| matches!(s, RequestState::Completed | RequestState::ReportReady))
        .count();
    let [ours, emulator, broker] = [0, 1, 2].map(|i| cpu_after[i] - cpu_before[i]);
    let total = (ours + emulator + broker).max(f64::EPSILON);
    let figures = serde_json::json!({
        "requests": requests,
        "access": access.len(),
        "erasures": erasures.len(),
        "concurrency": concurrency,
        "client_retries": retries,
        "submitted_per_second": requests as f64 / submitting.as_secs_f64(),
        "submitting_seconds": submitting.as_secs_f64(),
        "drained_seconds": drained.as_secs_f64(),
        "done": done,
        "lost": requests - done,
        "cpu_seconds": {"service": ours, "emulator": emulator, "broker": broker},
    });
    println!(
        "burst: {requests} requests ({} access, {} erasure), {concurrency} at a time | submitted in {:.1} s ({:.0}/s, {retries} client retries) | all finished after {:.0} s | {done} done, {} lost | CPU: service {ours:.0} s ({:.0} %), emulator {emulator:.0} s ({:.0} %), broker {broker:.0} s ({:.0} %)",
        access.len(),
        erasures.len(),
        submitting.as_secs_f64(),
        requests as f64 / submitting.as_secs_f64(),
        drained.as_secs_f64(),
        requests - done,
        100.0 * ours / total,
        100.0 * emulator / total,
        100.0 * broker / total,
    );
    crate::helpers::write_bench_figures("burst.json", &figures);
    explain_the_unfinished(&rig, &states).await;
    assert!(ours > 0.0 && emulator > 0.0, "CPU was measured: {figures}");
    assert_every_effect_once(&rig, &access, &erasures, &states).await;
}
