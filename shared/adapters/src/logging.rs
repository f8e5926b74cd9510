//! The functions' log lines, as Lambda's advanced logging controls ask for them: JSON when
//! `AWS_LAMBDA_LOG_FORMAT` is `JSON` (the template sets it), the level from
//! `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG` (`info,aws_config=warn` style), else `info`.
//!
//! The runtime's own `init_default_subscriber` does the same with tracing-subscriber's
//! `EnvFilter`, which brings a regular-expression engine into every binary (about 250 KB) for
//! directives no function uses; `Targets` reads the same `target=level` lists without one.

use std::str::FromStr;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The filter the environment asks for; `info` when it asks for nothing readable.
pub fn filter_from(lambda_level: Option<&str>, rust_log: Option<&str>) -> Targets {
    lambda_level
        .or(rust_log)
        .and_then(|directives| Targets::from_str(&directives.to_ascii_lowercase()).ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

/// Installs the process's subscriber, once (a second call changes nothing).
pub fn init_for_lambda() {
    let var = |name: &str| std::env::var(name).ok();
    let filter = filter_from(
        var("AWS_LAMBDA_LOG_LEVEL").as_deref(),
        var("RUST_LOG").as_deref(),
    );
    let json = var("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let lines = tracing_subscriber::fmt::layer()
        .with_target(false)
        .without_time()
        .with_writer(std::io::stdout);
    let _ = if json {
        tracing_subscriber::registry()
            .with(lines.json().with_filter(filter))
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(lines.with_filter(filter))
            .try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn the_lambda_level_wins_then_rust_log_then_info() {
        let f = filter_from(Some("ERROR"), Some("debug"));
        assert!(f.would_enable("dsr", &Level::ERROR));
        assert!(!f.would_enable("dsr", &Level::WARN));

        let f = filter_from(None, Some("info,aws_config=warn"));
        assert!(f.would_enable("dsr_intake", &Level::INFO));
        assert!(!f.would_enable("aws_config::loader", &Level::INFO));
        assert!(f.would_enable("aws_config::loader", &Level::WARN));

        let f = filter_from(None, None);
        assert!(f.would_enable("dsr", &Level::INFO));
        assert!(!f.would_enable("dsr", &Level::DEBUG));

        let f = filter_from(None, Some("not=a=filter"));
        assert!(f.would_enable("dsr", &Level::INFO), "unreadable: info");
    }
}
