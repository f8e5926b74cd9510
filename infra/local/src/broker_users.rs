//! The local broker's users for the services of a custom registry: a service erased over
//! RabbitMQ publishes its confirmations as its own `broker_user`, and a team trying its holder
//! against `make run` should not have to create that user by hand first. Local only (the
//! password is the user name); a real broker's users are its operators' business.

use dsr_domain::registry::ServiceRegistry;
use std::process::Command;

/// Creates every `broker_user` of `registry` the local broker does not know yet, with full
/// rights on `/`. Best effort: without `rabbitmqctl` (a broker elsewhere) it only says so.
pub fn ensure(registry: &ServiceRegistry) {
    let wanted: Vec<&str> = registry
        .services
        .iter()
        .filter_map(|s| s.broker_user.as_deref())
        .filter(|user| *user != "guest")
        .collect();
    if wanted.is_empty() {
        return;
    }
    let Some(existing) = rabbitmqctl(&["list_users", "--no-table-headers"]) else {
        tracing::warn!("no rabbitmqctl here: the registry's broker users must exist already");
        return;
    };
    let known: Vec<&str> = existing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for user in wanted {
        if known.contains(&user) {
            continue;
        }
        // Two stacks starting together may both add it: "already exists" is as good.
        let _ = rabbitmqctl(&["add_user", user, user]);
        match rabbitmqctl(&["set_permissions", "-p", "/", user, ".*", ".*", ".*"]) {
            Some(_) => tracing::info!(%user, "created the local broker user (password = its name)"),
            None => tracing::warn!(%user, "could not create the local broker user"),
        }
    }
}

fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let path = format!(
        "/usr/sbin:/usr/lib/rabbitmq/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .env("PATH", path)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}
