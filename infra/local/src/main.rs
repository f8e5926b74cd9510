//! `dsr-local`: provision the local stack, run it, or issue a token for it.

use anyhow::Result;
use clap::{Parser, Subcommand};
use dsr_local::stack::{self, LocalSettings, LocalStack};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "The GDPR Data Subject Rights service, locally")]
struct Cli {
    /// The SAM template the stack is provisioned from.
    #[arg(
        long,
        env = "DSR_TEMPLATE",
        default_value = "template.yaml",
        global = true
    )]
    template: PathBuf,
    /// Prefix of every local resource name.
    #[arg(
        long,
        env = "DSR_STACK_NAME",
        default_value = "dsr-local",
        global = true
    )]
    stack: String,
    /// Secret that local tokens are signed with.
    #[arg(long, env = "DSR_LOCAL_JWT_SECRET", default_value = dsr_local::jwt::LOCAL_JWT_SECRET, global = true, hide_default_value = true)]
    jwt_secret: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the template's tables, queues and buckets in the emulator, and print them.
    Provision,
    /// Provision, then serve the API and run the queue consumers and the sweep until Ctrl-C.
    Run {
        #[arg(long, env = "DSR_LISTEN", default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// Seconds between sweeps (EventBridge Scheduler's job in AWS).
        #[arg(long, env = "DSR_SWEEP_SECONDS", default_value_t = 10)]
        sweep_seconds: u64,
        /// Where the demo's fake services (orders API, access-log search index) listen.
        #[arg(long, env = "DSR_DEMO_LISTEN", default_value = "127.0.0.1:3001")]
        demo_listen: SocketAddr,
        /// A service registry (YAML or JSON) instead of the demo's, for every function: the
        /// same variable the functions read in AWS. `SERVICE_REGISTRY` holds one inline.
        #[arg(long, env = "SERVICE_REGISTRY_FILE")]
        registry_file: Option<PathBuf>,
    },
    /// Print a bearer token for a subject; the token is the last line.
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: i64,
    },
}

/// The registry `make run` was given (`SERVICE_REGISTRY_FILE` or `SERVICE_REGISTRY`, as the
/// functions read them), checked before anything starts: a typo is named with its line.
fn custom_registry(
    file: Option<PathBuf>,
    env: &dsr_adapters::config::Env,
) -> Result<Option<String>> {
    use dsr_adapters::config::vars;
    if env.optional("DSR_REGISTRY_FILE").is_some() {
        anyhow::bail!(
            "DSR_REGISTRY_FILE is no longer read: name your registry with {} (as the functions do)",
            vars::SERVICE_REGISTRY_FILE
        );
    }
    let (source, text) = match (env.optional(vars::SERVICE_REGISTRY), file) {
        (Some(inline), _) => (vars::SERVICE_REGISTRY.to_owned(), inline),
        (None, Some(path)) => (
            path.display().to_string(),
            std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
        ),
        (None, None) => return Ok(None),
    };
    let registry = dsr_domain::registry::ServiceRegistry::parse(&text)
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    dsr_local::broker_users::ensure(&registry);
    Ok(Some(text))
}

#[tokio::main]
async fn main() -> Result<()> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,aws_config=warn,aws_smithy_runtime=warn".into())
    };
    // `DSR_LOG_FORMAT=json`: the structured lines the functions write in Lambda.
    let env = dsr_adapters::config::Env::from_process();
    if env
        .optional(dsr_adapters::config::vars::DSR_LOG_FORMAT)
        .as_deref()
        == Some("json")
    {
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_env_filter(filter())
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter()).init();
    }
    let cli = Cli::parse();
    let mut settings = LocalSettings::new(&cli.template, &cli.stack);
    settings.jwt_secret = cli.jwt_secret.clone();
    let aws = dsr_adapters::config::aws().await;

    match cli.command {
        Command::Provision => {
            let stack = LocalStack::provision(&aws, &settings).await?;
            let mut names: Vec<_> = stack.context.resources.iter().collect();
            names.sort_by_key(|(id, _)| id.as_str());
            for (id, resource) in names {
                println!(
                    "{id:32} {}",
                    resource.url.as_ref().unwrap_or(&resource.name)
                );
            }
        }
        Command::Run {
            listen,
            sweep_seconds,
            demo_listen,
            registry_file,
        } => {
            settings.listen = listen;
            settings.sweep_every = Duration::from_secs(sweep_seconds.max(1));
            settings.demo = Some(demo_listen);
            settings.registry = custom_registry(registry_file, &env)?;
            // The walk-through's other system publishes as the local broker's `guest`.
            settings
                .parameters
                .entry("RequestSubmitters".to_owned())
                .or_insert_with(|| "guest".to_owned());
            let running = stack::start(&aws, &settings).await?;
            println!(
                "dsr-local ready: API on http://{} (stack `{}`); demo user `alice` has data in every source; get a token with `make token SUB=alice`; Ctrl-C stops",
                running.http_addr, settings.stack_name
            );
            tokio::signal::ctrl_c().await?;
            println!("stopping: letting in-flight work finish");
            running.shutdown().await;
            println!("stopped");
        }
        Command::Token { sub, ttl_seconds } => {
            // Issuer and audience come from the template's authorizer, as the runner checks them.
            let template = dsr_local::template::Template::load(&settings.template)?;
            let mut parameters = template.parameter_defaults();
            parameters.extend(settings.parameters.clone());
            let context = dsr_local::template::StackContext {
                parameters,
                ..Default::default()
            };
            let authorizer = stack::template_authorizer(&template, &context, &settings.jwt_secret)?;
            eprintln!("token for subject `{sub}`, valid {ttl_seconds} s:");
            println!("{}", authorizer.issue(&sub, ttl_seconds));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::custom_registry;
    use dsr_adapters::config::Env;

    #[test]
    fn make_run_reads_the_registry_the_functions_read_and_names_a_typo_s_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.yaml");
        let good = "services:\n  - name: a\n    collect: {kind: s3, bucket: b, prefix: \"u/{subject}/\"}\n";
        std::fs::write(&path, good).unwrap();
        let read = custom_registry(Some(path.clone()), &Env::default()).unwrap();
        assert_eq!(read.as_deref(), Some(good));
        let inline =
            "services: [{name: b, collect: {kind: s3, bucket: b, prefix: \"v/{subject}/\"}}]";
        let env = Env::from_pairs([("SERVICE_REGISTRY", inline)]);
        assert_eq!(
            custom_registry(Some(path.clone()), &env)
                .unwrap()
                .as_deref(),
            Some(inline)
        );
        assert_eq!(custom_registry(None, &Env::default()).unwrap(), None);

        std::fs::write(&path, good.replace("bucket:", "buckt:")).unwrap();
        let typo = custom_registry(Some(path.clone()), &Env::default())
            .unwrap_err()
            .to_string();
        assert!(
            typo.contains("registry.yaml") && typo.contains("line 3") && typo.contains("`buckt`"),
            "{typo}"
        );
        let old = Env::from_pairs([("DSR_REGISTRY_FILE", "/tmp/r.yaml")]);
        let refused = custom_registry(None, &old).unwrap_err().to_string();
        assert!(refused.contains("SERVICE_REGISTRY_FILE"), "{refused}");
    }
}
