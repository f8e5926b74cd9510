//! `example-holder`: the example holder as a program. Configured from the environment:
//! `AMQP_URL` (as the holder's own broker user), `RABBITMQ_NAMESPACE` (default `gdpr`),
//! `HOLDER_SERVICE` (its registry name), `HOLDER_BROKER_USER`; `HOLDER_SEED` names a subject
//! to put example records about (to try it out).

use dsr_example_holder::{serve, Settings, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let var = |name: &str| std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is not set"));
    let settings = Settings {
        amqp_url: var("AMQP_URL")?,
        namespace: var("RABBITMQ_NAMESPACE").unwrap_or_else(|_| "gdpr".into()),
        service: var("HOLDER_SERVICE")?,
        broker_user: var("HOLDER_BROKER_USER")?,
    };
    let store = Store::default();
    if let Ok(subject) = var("HOLDER_SEED") {
        store.seed(&subject);
    }
    println!("{}: serving its queue", settings.service);
    serve(settings, &store).await;
    Ok(())
}
