//! CloudWatch Embedded Metric Format: each metric is one JSON line on stdout, which Lambda's
//! log pipeline turns into a CloudWatch metric (no API call, no agent). Spec:
//! <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>.
//!
//! Hand-written rather than a metrics-facade exporter: one line per event keeps each function's
//! dimension right when the local stack hosts every function in one process, and the format is
//! a small documented JSON shape that a test checks line by line.

use dsr_domain::metrics::{Metric, MetricSink};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::sync::Mutex;

pub const METRICS_NAMESPACE: &str = "METRICS_NAMESPACE";
pub const DEFAULT_NAMESPACE: &str = "GdprDsr";

/// One EMF document for `metric`, emitted by `function` at `timestamp_ms`.
pub fn document(namespace: &str, function: &str, metric: &Metric, timestamp_ms: i64) -> Value {
    let mut dimensions = vec!["Function".to_owned()];
    let mut root = Map::new();
    root.insert("Function".into(), Value::String(function.to_owned()));
    for (name, value) in &metric.dimensions {
        dimensions.push((*name).to_owned());
        root.insert((*name).to_owned(), Value::String(value.clone()));
    }
    root.insert(metric.name.to_owned(), json!(metric.value));
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dimensions],
                "Metrics": [{"Name": metric.name, "Unit": metric.unit.as_str()}],
            }],
        }),
    );
    Value::Object(root)
}

/// Writes EMF lines to stdout (in Lambda) or any writer (tests, files).
pub struct EmfSink {
    namespace: String,
    function: String,
    out: Mutex<Box<dyn Write + Send>>,
}

impl EmfSink {
    pub fn new(
        namespace: impl Into<String>,
        function: impl Into<String>,
        out: Box<dyn Write + Send>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            function: function.into(),
            out: Mutex::new(out),
        }
    }

    /// The sink a Lambda function installs: stdout, the namespace from `METRICS_NAMESPACE`.
    pub fn stdout(function: &str) -> Self {
        Self::new(
            std::env::var(METRICS_NAMESPACE).unwrap_or_else(|_| DEFAULT_NAMESPACE.into()),
            function,
            Box::new(std::io::stdout()),
        )
    }
}

impl MetricSink for EmfSink {
    fn record(&self, metric: &Metric) {
        let line = document(
            &self.namespace,
            &self.function,
            metric,
            chrono::Utc::now().timestamp_millis(),
        );
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // A metric that cannot be written is not worth failing the work for.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Installs the stdout EMF sink for `function` and counts its cold start.
pub fn install_for_lambda(function: &str) {
    dsr_domain::metrics::install(std::sync::Arc::new(EmfSink::stdout(function)));
    dsr_domain::metrics::emit(Metric::count(dsr_domain::metrics::names::COLD_STARTS, 1));
}
