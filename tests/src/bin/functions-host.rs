//! The crash proof's target: every function of one local stack in a process of its own, so that
//! a test can SIGKILL it at a kill point (`DSR_KILL_AT`) and start it again, while the holders,
//! the broker and the emulator live on outside it.
//!
//! Its settings come as JSON in `DSR_HOST_SETTINGS` (see [`HostSettings`]); it prints
//! `functions ready: http://<address>` once the API listens, then serves until killed.

use anyhow::{Context, Result};
use dsr_local::stack::{self, LocalSettings};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// What the line announcing the API starts with.
const READY: &str = "functions ready:";

#[derive(Deserialize)]
struct HostSettings {
    template: PathBuf,
    stack: String,
    parameters: HashMap<String, String>,
    registry: String,
    /// Variables every function sees instead of the template's.
    #[serde(default)]
    environment: std::collections::BTreeMap<String, String>,
    sweep_millis: u64,
    dispatch_millis: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let host: HostSettings = serde_json::from_str(
        &std::env::var("DSR_HOST_SETTINGS").context("DSR_HOST_SETTINGS is not set")?,
    )
    .context("DSR_HOST_SETTINGS")?;
    let mut settings = LocalSettings::new(&host.template, &host.stack);
    settings.listen = "127.0.0.1:0".parse()?;
    settings.parameters.extend(host.parameters);
    settings.registry = Some(host.registry);
    settings.overrides = host.environment;
    settings.consume_work_queues = true;
    settings.sweep_every = Duration::from_millis(host.sweep_millis);
    settings.dispatch_every = Duration::from_millis(host.dispatch_millis);
    let aws = dsr_adapters::config::aws().await;
    let running = stack::start(&aws, &settings).await?;
    println!("{READY} http://{}", running.http_addr);
    std::future::pending::<()>().await;
    Ok(())
}
