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
    // Every metric also rolls up to the function alone: alarms watch that one.
    let mut sets = vec![dimensions.clone()];
    if dimensions.len() > 1 {
        sets.push(vec!["Function".to_owned()]);
    }
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": sets,
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
            crate::config::Env::from_process()
                .optional(crate::config::vars::METRICS_NAMESPACE)
                .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
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

/// Checks one line against the EMF specification's rules; `Err` says which is broken. Used by
/// the tests on every line the functions print.
pub fn validate(line: &str) -> Result<(), String> {
    let root: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let root = root.as_object().ok_or("not a JSON object")?;
    let aws = root
        .get("_aws")
        .and_then(Value::as_object)
        .ok_or("no _aws object")?;
    aws.get("Timestamp")
        .and_then(Value::as_i64)
        .filter(|t| *t > 0)
        .ok_or("_aws.Timestamp is not a positive integer (ms since the epoch)")?;
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty())
        .ok_or("_aws.CloudWatchMetrics is not a non-empty array")?;
    const UNITS: [&str; 27] = [
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    ];
    for directive in directives {
        let namespace = directive["Namespace"]
            .as_str()
            .ok_or("a directive has no Namespace")?;
        if namespace.is_empty() || namespace.len() > 255 {
            return Err("Namespace must be 1-255 characters".into());
        }
        for set in directive["Dimensions"]
            .as_array()
            .ok_or("Dimensions is not an array")?
        {
            let set = set.as_array().ok_or("a dimension set is not an array")?;
            if set.len() > 30 {
                return Err("more than 30 dimensions in a set".into());
            }
            for name in set {
                let name = name.as_str().ok_or("a dimension name is not a string")?;
                if !root.get(name).is_some_and(Value::is_string) {
                    return Err(format!("dimension {name} has no string member at the root"));
                }
            }
        }
        let metrics = directive["Metrics"]
            .as_array()
            .filter(|m| !m.is_empty() && m.len() <= 100)
            .ok_or("Metrics must hold 1-100 definitions")?;
        for metric in metrics {
            let name = metric["Name"].as_str().ok_or("a metric has no Name")?;
            if !root.get(name).is_some_and(Value::is_number) {
                return Err(format!("metric {name} has no number member at the root"));
            }
            if let Some(unit) = metric.get("Unit") {
                if !unit.as_str().is_some_and(|u| UNITS.contains(&u)) {
                    return Err(format!("metric {name} has an unknown unit {unit}"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_valid_emf_with_a_per_function_rollup() {
        let buffer = Buffer::default();
        let sink = EmfSink::new("GdprDsr/test", "report", Box::new(buffer.clone()));
        sink.record(&Metric::count("RequestsCompleted", 1).with("Kind", "access"));
        sink.record(&Metric::bytes("ReportBytes", 2048));
        sink.record(&Metric::seconds("ConfirmationLatency", 1.5).with("Service", "billing"));
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for line in &lines {
            validate(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        }
        let first: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["RequestsCompleted"], 1.0);
        assert_eq!(first["Kind"], "access");
        assert_eq!(
            first["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function", "Kind"], ["Function"]])
        );
        let bytes: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(
            bytes["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"],
            "Bytes"
        );
        assert_eq!(
            bytes["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function"]])
        );
    }

    #[test]
    fn the_validator_refuses_what_cloudwatch_would_drop() {
        let good = document("ns", "f", &Metric::count("X", 1), 1_700_000_000_000);
        assert!(validate(&good.to_string()).is_ok());
        for (path, value) in [
            ("/_aws/Timestamp", json!("yesterday")),
            ("/X", json!("one")),
            ("/Function", json!(7)),
            ("/_aws/CloudWatchMetrics/0/Metrics/0/Unit", json!("Parsecs")),
            ("/_aws/CloudWatchMetrics/0/Namespace", json!("")),
        ] {
            let mut bad = good.clone();
            *bad.pointer_mut(path).unwrap() = value;
            assert!(validate(&bad.to_string()).is_err(), "{path}");
        }
    }
}
