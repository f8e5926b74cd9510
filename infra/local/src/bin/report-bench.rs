//! Benchmark (not a test): peak memory and time of one access report of a given size.
//!
//! `make bench` runs it for 20 MB and 200 MB in separate processes. The subject's data is
//! incompressible bytes in S3 (the size of the report) plus a few thousand records in the
//! search index; the report function collects it, zips it and uploads it in parts. Peak RSS is
//! read from /proc after the peak of seeding is reset, so it is the report's alone.

use anyhow::{Context, Result};
use dsr_domain::{RequestKind, SubjectId};
use dsr_local::fake_services::{incompressible, FakeData, FakeServices};
use dsr_local::stack::{LocalSettings, LocalStack};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

const CHUNK: usize = 8 * 1024 * 1024;

fn peak_rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

#[tokio::main]
async fn main() -> Result<()> {
    let megabytes: usize = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "200".into())
        .parse()
        .context("usage: report-bench <megabytes>")?;
    let aws = dsr_adapters::config::aws().await;
    let name = format!("bench{}", ulid::Ulid::new().to_string().to_lowercase());
    let settings = LocalSettings::new("template.yaml", &name);
    let stack = LocalStack::provision(&aws, &settings).await?;
    let subject = SubjectId::parse("bench-subject").map_err(anyhow::Error::msg)?;

    // Seed: the size in S3, 8 MB objects; 5,000 records in the search index.
    let s3 = dsr_adapters::s3::client(&aws);
    let bucket = format!("{name}-uploads");
    s3.create_bucket().bucket(&bucket).send().await?;
    let mut left = megabytes * 1024 * 1024;
    let mut part = 0u64;
    while left > 0 {
        let size = left.min(CHUNK);
        s3.put_object()
            .bucket(&bucket)
            .key(format!("u/{}/blob-{part:04}.bin", subject.as_str()))
            .body(incompressible(size, part + 1).into())
            .send()
            .await?;
        left -= size;
        part += 1;
    }
    let data = Arc::new(FakeData::default());
    *data.access_logs.lock().unwrap_or_else(|p| p.into_inner()) = (0..5000)
        .map(|i| json!({"id": format!("e{i:05}"), "ts": i, "user": subject.as_str(), "ip": "192.0.2.1"}))
        .collect();
    let fake = FakeServices::start("127.0.0.1:0".parse()?, data).await?;
    let registry = format!(
        "services:\n  - name: uploads\n    collect: {{ kind: s3, bucket: \"{bucket}\", prefix: \"u/{{subject}}/\" }}\n  - name: access-log\n    collect: {{ kind: search, url: \"{}\", field: user, sort: [ts, id], page_size: 500 }}\n",
        fake.access_logs_url()
    );

    let requests = stack.requests("IntakeFunction", "bench")?;
    let id = requests
        .submit(&subject, RequestKind::Access, None)
        .await?
        .request()
        .id;
    let reports = stack.report(Some(&registry))?.handler.reports;

    // Forget seeding's peak: from here on the peak is the report's.
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let before = peak_rss_kib()?;
    let started = Instant::now();
    let outcome = reports
        .generate(id)
        .await
        .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let elapsed = started.elapsed();
    let peak = peak_rss_kib()?;
    let dsr_domain::report::WorkOutcome::Completed(report) = outcome else {
        anyhow::bail!("the report did not complete: {outcome:?}");
    };
    println!(
        "report of {megabytes} MB of source data: zip {:.1} MB in {:.1} s ({:.1} MB/s); peak RSS {:.1} MiB (before: {:.1} MiB)",
        report.size as f64 / 1e6,
        elapsed.as_secs_f64(),
        report.size as f64 / 1e6 / elapsed.as_secs_f64(),
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
    );
    Ok(())
}
