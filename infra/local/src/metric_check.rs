//! Holds every metric the functions emit in the local stack to the catalog
//! (`dsr_domain::metrics::CATALOG`), which the template's alarms and dashboard are tested
//! against: a metric renamed in the code, a dimension added, or a function emitting what the
//! catalog does not say it emits, is found by any test that makes it happen. In Lambda each
//! function is its own process and its sink knows its name; here every function shares one
//! process, so each invocation runs with its function's name in a task-local.

use crate::event_source::SqsFunction;
use dsr_domain::metrics::{self, Metric, MetricSink};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

tokio::task_local! {
    static FUNCTION: &'static str;
}

/// The function (catalog name) whose invocation is running here, if any.
pub fn current() -> Option<&'static str> {
    FUNCTION.try_with(|f| *f).ok()
}

/// The catalog's name for a function of the template (`ConfirmFunction` → `confirm`).
pub fn catalog_name(logical_id: &str) -> Option<&'static str> {
    Some(match logical_id {
        "IntakeFunction" => "intake",
        "ReportFunction" => "report",
        "ErasureFunction" => "erasure",
        "ConfirmFunction" => "confirm",
        "SweepFunction" => "sweep",
        "DispatchFunction" => "dispatch",
        "BridgeOutboundFunction" | "BridgeInboundFunction" => "bridge",
        "OpsPageFunction" => "ops-page",
        _ => return None,
    })
}

/// Runs `work` as the template's function `logical_id` emits.
pub async fn as_function<F: Future>(logical_id: &str, work: F) -> F::Output {
    match catalog_name(logical_id) {
        Some(function) => FUNCTION.scope(function, work).await,
        None => work.await,
    }
}

/// A queue-fed function whose every invocation runs as `logical_id`.
pub fn attributed(logical_id: &str, handler: SqsFunction) -> SqsFunction {
    let logical_id = logical_id.to_owned();
    Arc::new(move |event| {
        let handler = handler.clone();
        let logical_id = logical_id.clone();
        Box::pin(async move { as_function(&logical_id, handler(event)).await })
    })
}

/// The sink that checks; what it found stays until read.
#[derive(Default)]
pub struct CatalogCheck {
    violations: Mutex<Vec<String>>,
}

impl MetricSink for CatalogCheck {
    fn record(&self, metric: &Metric) {
        // Work a function spawned off its invocation has no name: its name and dimensions are
        // still checked.
        let function = FUNCTION.try_with(|f| *f).ok();
        if let Err(why) = metrics::conforms(metric, function) {
            let mut found = self.violations.lock().unwrap_or_else(|p| p.into_inner());
            if !found.contains(&why) {
                tracing::warn!(problem = %why, "a metric the catalog does not declare");
                found.push(why);
            }
        }
    }
}

fn check() -> &'static Arc<CatalogCheck> {
    static CHECK: OnceLock<Arc<CatalogCheck>> = OnceLock::new();
    CHECK.get_or_init(|| {
        let check = Arc::new(CatalogCheck::default());
        // A test that installed its own sink (to read what was emitted) keeps it.
        metrics::install_unless_installed(check.clone());
        check
    })
}

/// Installs the check as the process's sink, unless one is installed (a test's own).
pub fn install() {
    check();
}

/// Every emission so far that the catalog does not declare (one line each, deduplicated).
pub fn violations() -> Vec<String> {
    check()
        .violations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_emission_is_checked_as_the_function_it_ran_in() {
        install();
        as_function("ConfirmFunction", async {
            metrics::emit(Metric::count(metrics::names::ESCALATIONS, 1).with("Service", "ads"));
        })
        .await;
        assert!(violations().is_empty(), "{:?}", violations());
        as_function("IntakeFunction", async {
            metrics::emit(Metric::count(metrics::names::ESCALATIONS, 1).with("Service", "ads"));
        })
        .await;
        assert_eq!(
            violations(),
            vec![format!(
                "Escalations emitted by intake, the catalog says only {:?}",
                ["confirm"]
            )]
        );
    }
}
