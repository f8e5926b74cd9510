//! Where the service registry comes from: inline in `SERVICE_REGISTRY`, or the file
//! `SERVICE_REGISTRY_FILE`, or the one bundled with the functions (`shared/adapters/registry.yaml`).

use crate::config::{vars, ConfigError, Env};
use dsr_domain::registry::ServiceRegistry;

/// The registry shipped with the functions.
pub const BUNDLED_REGISTRY: &str = include_str!("../registry.yaml");

/// Loads and validates the registry a function was configured with. YAML or JSON.
pub fn load(env: &Env) -> Result<ServiceRegistry, ConfigError> {
    load_named(env).map(|(_, registry)| registry)
}

/// The registry of a function that erases: refused without a service to erase.
pub fn load_erasable(env: &Env) -> Result<ServiceRegistry, ConfigError> {
    let (name, registry) = load_named(env)?;
    registry
        .require_erasable()
        .map_err(|e| ConfigError::unusable(name, e))?;
    Ok(registry)
}

/// The registry of report generation: refused without a source to collect from.
pub fn load_collectable(env: &Env) -> Result<ServiceRegistry, ConfigError> {
    let (name, registry) = load_named(env)?;
    registry
        .require_collectable()
        .map_err(|e| ConfigError::unusable(name, e))?;
    Ok(registry)
}

fn load_named(env: &Env) -> Result<(&'static str, ServiceRegistry), ConfigError> {
    let (name, text) = match (
        env.optional(vars::SERVICE_REGISTRY),
        env.optional(vars::SERVICE_REGISTRY_FILE),
    ) {
        (Some(inline), _) => (vars::SERVICE_REGISTRY, inline),
        (None, Some(path)) => (
            vars::SERVICE_REGISTRY_FILE,
            std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::unusable(vars::SERVICE_REGISTRY_FILE, format!("reading {path}: {e}"))
            })?,
        ),
        (None, None) => (vars::SERVICE_REGISTRY, BUNDLED_REGISTRY.to_owned()),
    };
    ServiceRegistry::parse(&text)
        .map(|registry| (name, registry))
        .map_err(|e| ConfigError::unusable(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_comes_inline_from_a_file_or_bundled() {
        // The bundled registry lists nothing: a deployment must bring its own.
        let bundled = load(&Env::default()).unwrap_err().to_string();
        assert!(bundled.contains("no services are registered"), "{bundled}");
        let inline = load(&Env::from_pairs([(
            vars::SERVICE_REGISTRY,
            "services: [{name: a}]",
        )]))
        .unwrap();
        assert_eq!(inline.services[0].name, "a");
        let missing = load(&Env::from_pairs([(
            vars::SERVICE_REGISTRY_FILE,
            "/nonexistent/registry.yaml",
        )]));
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/registry.yaml"));
        let invalid = load(&Env::from_pairs([(
            vars::SERVICE_REGISTRY,
            "services: [{name: A}]",
        )]))
        .unwrap_err();
        assert!(
            invalid.to_string().contains("SERVICE_REGISTRY"),
            "{invalid}"
        );
    }

    #[test]
    fn each_function_refuses_a_registry_with_nothing_for_it() {
        let only_reads = Env::from_pairs([(
            vars::SERVICE_REGISTRY,
            r#"services: [{name: p, collect: {kind: s3, bucket: b, prefix: "u/{subject}/"}}]"#,
        )]);
        assert!(load_collectable(&only_reads).is_ok());
        let refused = load_erasable(&only_reads).unwrap_err().to_string();
        assert!(
            refused.contains("SERVICE_REGISTRY") && refused.contains("erased nothing"),
            "{refused}"
        );
    }
}
