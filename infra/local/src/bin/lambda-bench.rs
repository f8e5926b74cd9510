//! Benchmark (not a test): every function's release `bootstrap` run the way Lambda runs it —
//! its own process, talking to a local Runtime API — against the emulator, beside the Python
//! 3.11 + boto3 peer of the intake (`infra/bench/peer_intake.py` under `awslambdaric`), in
//! one run, so every figure can be read as a ratio measured on the same machine.
//!
//! Per function: the `bootstrap`'s size, and its cold start (exec → first `/next`, the end of
//! init) over `--runs` fresh processes. For the intake and the peer: `--events` submissions,
//! alternating between the two in rounds on the same tables, each answered 202: wall time per
//! submission (handed out → answered, as Lambda bills it), CPU time per submission (every
//! thread of the process, from /proc), and the process's peak RSS.
//!
//! Writes `target/bench/lambda.json`; `make bench` turns it into docs/performance.md's table.

use anyhow::{bail, Context, Result};
use clap::Parser;
use dsr_local::runtime_api::{Outcome, RuntimeApi};
use dsr_local::stack::{LocalSettings, LocalStack};
use dsr_local::template::Template;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Where the release builds are: `<dir>/<binary>/bootstrap`, as `cargo lambda build`
    /// lays them out.
    #[arg(long, default_value = "target/lambda")]
    binaries: PathBuf,
    /// Fresh processes per function for the cold start.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Submissions per intake (Rust and the peer each).
    #[arg(long, default_value_t = 300)]
    events: usize,
    /// The Python interpreter with boto3 and awslambdaric.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Measure the cold start of these binaries only (e.g. `--only intake` while profiling);
    /// every function by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Wait this long between starting the intake and submitting to it, for a profiler to
    /// attach (`perf record -g -p <pid>`; the pid is printed).
    #[arg(long, value_parser = humantime_secs, default_value = "0")]
    hold: Duration,
    /// Call the emulator directly. By default the functions and the peer reach it through a
    /// proxy that keeps their connections open, as AWS's endpoints do: the emulator's server
    /// closes the connection after every answer, and a new TCP connection per AWS call (15 %
    /// of the intake's CPU in a profile) is a cost of the emulator, not of the code measured.
    #[arg(long)]
    direct: bool,
    /// Added latency per AWS call for the second measurement of CPU per submission (through a
    /// proxy that delays every call): CPU per event must not grow with the service's latency.
    #[arg(long, default_value_t = 20)]
    slower_ms: u64,
    /// Where the results go.
    #[arg(long, default_value = "target/bench/lambda.json")]
    out: PathBuf,
}

fn humantime_secs(text: &str) -> Result<Duration, String> {
    text.trim_end_matches('s')
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{text}: seconds, as 30 or 30s ({e})"))
}

/// What the process is: a function's `bootstrap`, or the Python peer.
enum Program {
    Bootstrap(PathBuf),
    Peer { python: PathBuf },
}

struct Process {
    child: std::process::Child,
    api: RuntimeApi,
    init: Duration,
}

impl Process {
    async fn start(
        program: &Program,
        name: &str,
        environment: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let api = RuntimeApi::start(name).await?;
        let mut command = match program {
            Program::Bootstrap(path) => std::process::Command::new(path),
            Program::Peer { python } => {
                let mut command = std::process::Command::new(python);
                command
                    .args(["-m", "awslambdaric", "peer_intake.handler"])
                    .current_dir("infra/bench");
                command
            }
        };
        command
            .envs(environment)
            .env("AWS_LAMBDA_RUNTIME_API", api.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut process = Self {
            child,
            api,
            init: Duration::ZERO,
        };
        // Init ends at the first `/next`; a process that exits before it failed its init (a
        // function that cannot start exits, as in Lambda), which is not worth waiting out.
        let (child, api) = (&mut process.child, &process.api);
        let exited = async {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Ok(Some(status)) = child.try_wait() {
                    return status;
                }
            }
        };
        let outcome = tokio::select! {
            done = api.init_done(Duration::from_secs(30)) => done,
            status = exited => Err(anyhow::anyhow!("the process exited during init ({status})")),
        };
        match outcome {
            Ok(at) => {
                process.init = at.duration_since(started);
                Ok(process)
            }
            Err(error) => {
                let _ = process.stop();
                Err(error.context(format!("{name}: init")))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time of every thread of the process so far (`/proc/<pid>/task/*/schedstat`, ns).
    fn cpu(&self) -> Result<Duration> {
        let mut total = 0u64;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let schedstat = std::fs::read_to_string(task?.path().join("schedstat"))?;
            let on_cpu: u64 = schedstat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse().ok())
                .context("unreadable schedstat")?;
            total += on_cpu;
        }
        Ok(Duration::from_nanos(total))
    }

    /// Voluntary context switches of every thread of the process so far.
    fn sleeps(&self) -> Result<u64> {
        let mut total = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let status = std::fs::read_to_string(task?.path().join("status"))?;
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .context("no voluntary_ctxt_switches")?;
        }
        Ok(total)
    }

    fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM")
    }

    fn stop(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// A registry of the size a small platform has: sources of each kind, holders erased over
/// RabbitMQ and a vendor's API, the email service last.
const BENCH_REGISTRY: &str = r#"services:
  - name: profile
    broker_user: svc-profile
    collect: { kind: dynamodb, table: profiles, key_attribute: user_id }
    erase: { via: { kind: rabbitmq, routing_key: erasure.profile } }
  - name: billing
    broker_user: svc-billing
    collect: { kind: http, url: "https://billing.internal/users/{subject}/invoices", records_pointer: /items }
    erase: { via: { kind: rabbitmq, routing_key: erasure.billing } }
  - name: uploads
    broker_user: svc-uploads
    collect: { kind: s3, bucket: user-uploads, prefix: "uploads/{subject}/" }
    erase: { via: { kind: rabbitmq, routing_key: erasure.uploads } }
  - name: ads
    erase:
      via: { kind: http, url: "https://api.vendor.example/users/{subject}", method: DELETE,
             not_found: { status: 404, body_contains: user_not_found } }
  - name: email
    broker_user: svc-email
    erase: { via: { kind: rabbitmq, routing_key: erasure.email }, last: true }
"#;

/// API Gateway's event for `POST /v1/requests` by `subject`.
fn submission(subject: &str) -> Value {
    let now = chrono::Utc::now();
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/v1/requests",
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "127.0.0.1"},
        "requestContext": {
            "accountId": dsr_local::provision::DEFAULT_ACCOUNT_ID,
            "apiId": "bench",
            "authorizer": {"jwt": {"claims": {"sub": subject}, "scopes": null}},
            "domainName": "127.0.0.1",
            "domainPrefix": "bench",
            "http": {"method": "POST", "path": "/v1/requests", "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "lambda-bench"},
            "requestId": ulid::Ulid::new().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
            "timeEpoch": now.timestamp_millis(),
        },
        "body": "{\"type\":\"access\"}",
        "isBase64Encoded": false,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Submissions through one process: their wall times, and the process's CPU per submission.
#[derive(Default)]
struct Submissions {
    walls: Vec<f64>,
    cpu: Duration,
    /// The times the process went to sleep (voluntary context switches).
    sleeps: u64,
}

async fn submit(
    process: &Process,
    label: &str,
    count: usize,
    into: &mut Submissions,
) -> Result<()> {
    let before = process.cpu()?;
    let slept_before = process.sleeps()?;
    for _ in 0..count {
        let subject = format!("bench-{label}-{}", ulid::Ulid::new());
        let invoked = process
            .api
            .invoke(&submission(&subject), Duration::from_secs(30))
            .await?;
        let Outcome::Response(body) = invoked.outcome else {
            bail!("{label}: the submission failed: {:?}", invoked.outcome);
        };
        let answer: Value = serde_json::from_slice(&body)?;
        if answer["statusCode"] != 202 {
            bail!("{label}: the submission was answered {answer}");
        }
        into.walls.push(ms(invoked.took));
    }
    into.cpu += process.cpu()? - before;
    into.sleeps += process.sleeps()? - slept_before;
    Ok(())
}

/// `events` submissions to each of the intake and its peer, alternating in rounds of 50 on
/// the same tables, after a warm-up: each process's first calls load what it loads lazily
/// (the peer's service models, the connection pools), a cold start's cost, not a submission's.
async fn alternate(
    rust: &Process,
    peer: &Process,
    events: usize,
) -> Result<(Submissions, Submissions)> {
    for (process, label) in [(rust, "rust"), (peer, "peer")] {
        submit(process, label, 10, &mut Submissions::default()).await?;
    }
    let (mut ours, mut theirs) = (Submissions::default(), Submissions::default());
    let mut done = 0;
    while done < events {
        let count = 50.min(events - done);
        submit(rust, "rust", count, &mut ours).await?;
        submit(peer, "peer", count, &mut theirs).await?;
        done += count;
    }
    Ok((ours, theirs))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let template = Template::load("template.yaml")?;
    let aws = dsr_adapters::config::aws().await;
    let name = format!("bench{}", ulid::Ulid::new().to_string().to_lowercase());
    let stack = LocalStack::provision(&aws, &LocalSettings::new("template.yaml", &name)).await?;
    // What Lambda gives a function: its region and credentials (here the emulator's).
    let mut aws_environment: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect();
    for (name, default) in [
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
    ] {
        aws_environment
            .entry(name.to_owned())
            .or_insert_with(|| default.to_owned());
    }
    // The platform's registry, as a deployment bundles it: the functions that read it refuse
    // to start without services. The sources and holders are not called at init.
    let emulator = aws_environment["AWS_ENDPOINT_URL"].clone();
    let proxy = |delay: u64| {
        dsr_local::fault_proxy::start(
            &emulator,
            dsr_local::fault_proxy::Faults {
                delay: Duration::from_millis(delay),
                ..Default::default()
            },
        )
    };
    let _keep_alive = if args.direct {
        None
    } else {
        let proxy = proxy(0).await?;
        aws_environment.insert("AWS_ENDPOINT_URL".to_owned(), proxy.url());
        Some(proxy)
    };
    aws_environment.insert("SERVICE_REGISTRY".to_owned(), BENCH_REGISTRY.to_owned());
    let environment = |function: &str| -> Result<BTreeMap<String, String>> {
        let mut all = aws_environment.clone();
        all.extend(stack.environment(function)?);
        Ok(all)
    };

    let mut functions = Vec::new();
    for (logical_id, kind, _) in template.resources() {
        if kind != "AWS::Serverless::Function" {
            continue;
        }
        let binary = template
            .function_binary(&logical_id)
            .with_context(|| format!("{logical_id}: no BuildProperties.Binary"))?;
        functions.push((logical_id, binary));
    }

    let mut results = serde_json::Map::new();
    for (logical_id, binary) in &functions {
        if !args.only.is_empty() && !args.only.contains(binary) {
            continue;
        }
        let path = args.binaries.join(binary).join("bootstrap");
        let size = std::fs::metadata(&path)
            .with_context(|| format!("{}: build it first", path.display()))?
            .len();
        let program = Program::Bootstrap(path);
        let env = environment(logical_id)?;
        let mut inits = Vec::new();
        for _ in 0..args.runs {
            let process = Process::start(&program, logical_id, &env).await?;
            inits.push(ms(process.init));
            process.stop()?;
        }
        eprintln!(
            "{logical_id:<24} {:>6.2} MB  init median {:>6.2} ms  max {:>6.2} ms",
            size as f64 / 1e6,
            median(inits.clone()),
            max(&inits)
        );
        results.insert(
            logical_id.clone(),
            json!({
                "binary": binary,
                "bytes": size,
                "init_ms": {"median": median(inits.clone()), "max": max(&inits), "runs": inits},
                // A secret read from Parameter Store at init: a round trip before the first `/next`.
                "reads_secrets": env.keys().any(|k| k.ends_with(dsr_adapters::config::PARAMETER_SUFFIX)),
            }),
        );
    }

    // The intake and its peer, alternating in rounds on the same tables.
    let intake = functions
        .iter()
        .find(|(_, binary)| binary == "intake")
        .context("no intake function in the template")?;
    let env = environment(&intake.0)?;
    let peer_program = Program::Peer {
        python: args.python.clone(),
    };
    let rust = Process::start(
        &Program::Bootstrap(args.binaries.join("intake").join("bootstrap")),
        &intake.0,
        &env,
    )
    .await?;
    let peer = Process::start(&peer_program, "PythonPeer", &env).await?;
    eprintln!("intake pid {}, peer pid {}", rust.pid(), peer.pid());
    tokio::time::sleep(args.hold).await;
    let mut peer_inits = vec![ms(peer.init)];
    let (ours, theirs) = alternate(&rust, &peer, args.events).await?;
    let (rust_rss, peer_rss) = (rust.peak_rss_kib()?, peer.peak_rss_kib()?);
    rust.stop()?;
    peer.stop()?;
    for _ in 1..args.runs.min(5) {
        let process = Process::start(&peer_program, "PythonPeer", &env).await?;
        peer_inits.push(ms(process.init));
        process.stop()?;
    }
    // The same again with every AWS call slower by `slower_ms`, fresh processes of both.
    let proxy = proxy(args.slower_ms).await?;
    let mut slower_env = env.clone();
    slower_env.insert("AWS_ENDPOINT_URL".to_owned(), proxy.url());
    let rust = Process::start(
        &Program::Bootstrap(args.binaries.join("intake").join("bootstrap")),
        &intake.0,
        &slower_env,
    )
    .await?;
    let peer = Process::start(&peer_program, "PythonPeer", &slower_env).await?;
    let slower_events = args.events.min(100);
    let (ours_slower, theirs_slower) = alternate(&rust, &peer, slower_events).await?;
    rust.stop()?;
    peer.stop()?;
    let cpu_ms = |s: &Submissions| ms(s.cpu) / s.walls.len().max(1) as f64;
    let sleeps = |s: &Submissions| s.sleeps as f64 / s.walls.len().max(1) as f64;
    results.insert(
        "slower".into(),
        json!({
            "added_ms": args.slower_ms,
            "submissions": slower_events,
            "rust": {"cpu_ms_per_submission": cpu_ms(&ours_slower), "sleeps_per_submission": sleeps(&ours_slower), "wall_ms": {"p50": median(ours_slower.walls.clone())}},
            "python_peer": {"cpu_ms_per_submission": cpu_ms(&theirs_slower), "sleeps_per_submission": sleeps(&theirs_slower), "wall_ms": {"p50": median(theirs_slower.walls.clone())}},
        }),
    );
    eprintln!(
        "every call {} ms slower: rust {:.2} ms CPU, {:.1} sleeps (p50 {:.1} ms), peer {:.2} ms CPU, {:.1} sleeps (p50 {:.1} ms)",
        args.slower_ms,
        cpu_ms(&ours_slower),
        sleeps(&ours_slower),
        median(ours_slower.walls.clone()),
        cpu_ms(&theirs_slower),
        sleeps(&theirs_slower),
        median(theirs_slower.walls.clone()),
    );
    let summary = |s: &Submissions, rss: u64| {
        json!({
            "submissions": s.walls.len(),
            "wall_ms": {"p50": median(s.walls.clone()), "max": max(&s.walls)},
            "cpu_ms_per_submission": ms(s.cpu) / s.walls.len() as f64,
            "sleeps_per_submission": s.sleeps as f64 / s.walls.len() as f64,
            "peak_rss_kib": rss,
        })
    };
    results.insert(
        "submissions".into(),
        json!({
            "rust": summary(&ours, rust_rss),
            "python_peer": summary(&theirs, peer_rss),
            "python_peer_init_ms": {"median": median(peer_inits.clone()), "max": max(&peer_inits), "runs": peer_inits},
        }),
    );
    eprintln!(
        "submissions: rust p50 {:.1} ms, {:.2} ms CPU, {:.1} sleeps, {} KiB; peer p50 {:.1} ms, {:.2} ms CPU, {} KiB",
        median(ours.walls.clone()),
        ms(ours.cpu) / ours.walls.len() as f64,
        ours.sleeps as f64 / ours.walls.len() as f64,
        rust_rss,
        median(theirs.walls.clone()),
        ms(theirs.cpu) / theirs.walls.len() as f64,
        peer_rss
    );
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&Value::Object(results))?,
    )?;
    eprintln!("written to {}", args.out.display());
    Ok(())
}
