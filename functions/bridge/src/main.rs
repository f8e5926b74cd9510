//! One binary, three hosts: the outbound Lambda (SQS `outbound` event source), the inbound
//! Lambda (Amazon MQ event source), and `bridge daemon`, the long-lived inbound consumer for a
//! self-managed broker; `bridge declare` declares the RabbitMQ topology (at deploy time).

use dsr_adapters::config;
use dsr_bridge::{inbound::run_daemon, Bridge};
use lambda_runtime::{run, service_fn, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    dsr_adapters::logging::init_for_lambda();
    dsr_adapters::emf::install_for_lambda("bridge");
    // Inside Lambda, from Lambda's variables; `bridge daemon` and `bridge declare` run
    // elsewhere (a container, a deploy step) and find credentials the usual ways.
    let aws = if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        config::aws_in_lambda()
    } else {
        config::aws().await
    };
    // Secrets (the RabbitMQ URL) come from SSM Parameter Store, by the names the environment gives.
    let env = config::from_process_with_secrets(&aws).await?;
    let bridge = dsr_bridge::build(&aws, &env)?;
    if std::env::args().nth(1).as_deref() == Some("declare") {
        // At deploy time: the exchanges and the bridge's inbound queues, before any service
        // publishes to them (the outbound side declares them too, on its first connection).
        let patience = bridge.inbound.patience;
        let (_conn, channel) = dsr_bridge::open_confirming(&bridge.rabbitmq_url, patience).await?;
        dsr_bridge::inbound::declare_topology(&channel, &bridge.inbound.topology, patience).await?;
        tracing::info!("RabbitMQ topology declared");
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("daemon") {
        Bridge::check_inbound(&env)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = stop.send(true);
        });
        run_daemon(bridge.rabbitmq_url, bridge.inbound, stopped).await;
        return Ok(());
    }
    run(service_fn(|event| bridge.handle_lambda(event))).await
}
