use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = dsr_ops::Cli::parse();
    let aws = dsr_adapters::config::aws().await;
    let env = dsr_adapters::config::from_process_with_secrets(&aws).await?;
    let ops = dsr_ops::Ops::connect(&aws, &cli.target, &env).await?;
    ops.run(&cli.command, &mut std::io::stdout(), &mut std::io::stderr())
        .await
}
