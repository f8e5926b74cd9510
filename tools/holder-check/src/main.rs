//! `dsr-holder-check`: runs the conformance checks of docs/holders.md against one holder and
//! prints a pass/fail table; exits 1 if a check failed. The registry comes from
//! `SERVICE_REGISTRY_FILE` (or `SERVICE_REGISTRY`), as for the functions and `make run`.

use clap::Parser;
use dsr_holder_check::{all_passed, run, table, Settings};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "Checks a holder of personal data against the DSR service's contract"
)]
struct Cli {
    /// The holder's name in the service registry.
    #[arg(long)]
    service: String,
    /// A subject the holder holds test data about (it is erased).
    #[arg(long, default_value = "dsr-holder-check")]
    subject: String,
    /// The broker, as a user that may publish commands and read answers.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// The deployment's RabbitMQ namespace.
    #[arg(long, env = "RABBITMQ_NAMESPACE", default_value = "gdpr")]
    namespace: String,
    /// Seconds the holder may take for each answer.
    #[arg(long, default_value_t = 30)]
    within: u64,
    /// Where uploads of large exports are taken.
    #[arg(long, default_value = "127.0.0.1:0")]
    upload_listen: SocketAddr,
    /// The URL the holder reaches that listener at, if not `http://<upload-listen>`.
    #[arg(long)]
    upload_base_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let registry = dsr_adapters::registry::load(&dsr_adapters::config::Env::from_process())?;
    let settings = Settings {
        amqp_url: cli.amqp_url,
        namespace: cli.namespace,
        service: cli.service,
        subject: cli.subject,
        within: Duration::from_secs(cli.within.max(1)),
        upload_listen: cli.upload_listen,
        upload_base_url: cli.upload_base_url,
    };
    println!(
        "dsr-holder-check: `{}` on namespace `{}`, subject `{}`",
        settings.service, settings.namespace, settings.subject
    );
    let checks = run(&settings, &registry).await?;
    print!("{}", table(&checks));
    if !all_passed(&checks) {
        std::process::exit(1);
    }
    Ok(())
}
