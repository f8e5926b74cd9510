//! What the service counts and measures, as a facade like `tracing`'s: use cases call
//! [`emit`]; the process installs one sink at start (in Lambda, CloudWatch Embedded Metric
//! Format lines on stdout: `dsr_adapters::emf`). Without a sink nothing is recorded.
//!
//! Metric names are the dashboard's and the alarms' vocabulary (template.yaml); dimensions are
//! low-cardinality (kind, state, service), never a request or subject.

use std::sync::{Arc, OnceLock, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Seconds,
    Bytes,
    None,
}

impl Unit {
    /// The unit's name in CloudWatch.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Seconds => "Seconds",
            Unit::Bytes => "Bytes",
            Unit::None => "None",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: Unit,
    pub value: f64,
    pub dimensions: Vec<(&'static str, String)>,
}

impl Metric {
    pub fn count(name: &'static str, value: usize) -> Self {
        Self {
            name,
            unit: Unit::Count,
            value: value as f64,
            dimensions: Vec::new(),
        }
    }

    pub fn seconds(name: &'static str, value: f64) -> Self {
        Self {
            name,
            unit: Unit::Seconds,
            value,
            dimensions: Vec::new(),
        }
    }

    pub fn bytes(name: &'static str, value: u64) -> Self {
        Self {
            name,
            unit: Unit::Bytes,
            value: value as f64,
            dimensions: Vec::new(),
        }
    }

    pub fn with(mut self, dimension: &'static str, value: impl Into<String>) -> Self {
        self.dimensions.push((dimension, value.into()));
        self
    }
}

/// Where metrics go.
pub trait MetricSink: Send + Sync {
    fn record(&self, metric: &Metric);
}

fn sink() -> &'static RwLock<Option<Arc<dyn MetricSink>>> {
    static SINK: OnceLock<RwLock<Option<Arc<dyn MetricSink>>>> = OnceLock::new();
    SINK.get_or_init(|| RwLock::new(None))
}

/// Installs the process's sink (replacing any earlier one).
pub fn install(new: Arc<dyn MetricSink>) {
    *sink().write().unwrap_or_else(|p| p.into_inner()) = Some(new);
}

/// Installs `new` unless a sink is installed already; says whether it did.
pub fn install_unless_installed(new: Arc<dyn MetricSink>) -> bool {
    let mut sink = sink().write().unwrap_or_else(|p| p.into_inner());
    if sink.is_some() {
        return false;
    }
    *sink = Some(new);
    true
}

/// Records a metric with the installed sink, if any.
pub fn emit(metric: Metric) {
    if let Some(sink) = sink().read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        sink.record(&metric);
    }
}

/// The names, in one place (the template's alarms and dashboard use the same).
pub mod names {
    pub const REQUESTS_SUBMITTED: &str = "RequestsSubmitted";
    pub const REQUESTS_RECEIVED: &str = "RequestsReceived";
    pub const REQUESTS_COMPLETED: &str = "RequestsCompleted";
    pub const REQUESTS_FAILED: &str = "RequestsFailed";
    pub const REQUESTS_CANCELLED: &str = "RequestsCancelled";
    pub const REPORT_BYTES: &str = "ReportBytes";
    pub const REPORT_DURATION: &str = "ReportDuration";
    pub const CONFIRMATION_LATENCY: &str = "ConfirmationLatency";
    pub const RETRIES: &str = "Retries";
    pub const REDRIVES: &str = "Redrives";
    pub const ESCALATIONS: &str = "Escalations";
    pub const COLD_STARTS: &str = "ColdStarts";
    pub const REQUESTS_IN_STATE: &str = "RequestsInState";
    pub const DEADLINE_AT_RISK: &str = "DeadlineAtRisk";
    pub const DEADLINE_MISSED: &str = "DeadlineMissed";
    pub const COUNTS_IN_SYNC: &str = "CountsInSync";
    pub const HOPS: &str = "Hops";
    pub const HOP_MISMATCHES: &str = "HopMismatches";
    pub const STUCK_REQUESTS: &str = "StuckRequests";
    /// A verification found the subject's data at a service that had answered its command.
    pub const DATA_FOUND_AFTER_ANSWER: &str = "DataFoundAfterAnswer";
    /// A third party said "not now" (429, or 503 with `Retry-After`), or its shared rate limit
    /// was taken: the command goes again through delayed dispatch.
    pub const VENDOR_DEFERRALS: &str = "VendorDeferrals";
}

/// One metric the service emits: its name, the dimensions it carries besides `Function` (every
/// metric has `Function`, and rolls up to `Function` alone), and the functions that emit it.
#[derive(Debug, Clone, Copy)]
pub struct Emitted {
    pub name: &'static str,
    pub dimensions: &'static [&'static str],
    pub functions: &'static [&'static str],
}

const ALL_FUNCTIONS: &[&str] = &[
    "intake", "report", "erasure", "confirm", "sweep", "dispatch", "bridge", "ops-page",
];
const QUEUE_FED: &[&str] = &["report", "erasure", "confirm", "dispatch", "bridge"];

/// Every metric, in one place: the template's alarms and dashboard are held to it by a test.
pub const CATALOG: &[Emitted] = {
    use names::*;
    const fn m(
        name: &'static str,
        dimensions: &'static [&'static str],
        functions: &'static [&'static str],
    ) -> Emitted {
        Emitted {
            name,
            dimensions,
            functions,
        }
    }
    &[
        m(REQUESTS_SUBMITTED, &["Kind"], &["intake"]),
        m(REQUESTS_CANCELLED, &["Kind"], &["intake"]),
        m(REQUESTS_RECEIVED, &["Kind"], &["report", "erasure"]),
        m(REQUESTS_COMPLETED, &["Kind"], &["report", "confirm"]),
        m(REQUESTS_FAILED, &["Kind"], &["report"]),
        m(REPORT_BYTES, &[], &["report"]),
        m(REPORT_DURATION, &[], &["report"]),
        m(CONFIRMATION_LATENCY, &["Service"], &["confirm"]),
        m(RETRIES, &["Kind"], &["report", "confirm"]),
        m(REDRIVES, &["Kind"], &["sweep"]),
        m(ESCALATIONS, &["Service"], &["confirm"]),
        m(DATA_FOUND_AFTER_ANSWER, &["Service"], &["confirm"]),
        m(VENDOR_DEFERRALS, &["Service"], &["erasure", "confirm"]),
        m(COLD_STARTS, &[], ALL_FUNCTIONS),
        m(REQUESTS_IN_STATE, &["Kind", "State"], &["sweep"]),
        m(DEADLINE_AT_RISK, &[], &["sweep"]),
        m(DEADLINE_MISSED, &[], &["sweep"]),
        m(COUNTS_IN_SYNC, &["Kind"], &["sweep"]),
        m(STUCK_REQUESTS, &[], &["sweep"]),
        m(
            HOPS,
            &["Kind", "Hop"],
            &["intake", "report", "erasure", "confirm", "bridge"],
        ),
        m(HOP_MISMATCHES, &["Kind", "Hop"], &["sweep"]),
        m("BridgePublished", &[], &["bridge"]),
        m("BridgeUnroutable", &["Exchange"], &["bridge"]),
        m("BridgeBrokerUnavailable", &[], &["bridge"]),
        m("BridgeForwarded", &[], &["bridge"]),
        m("BridgeDeadLettered", &[], &["bridge"]),
        m("MessagesWaiting", &[], QUEUE_FED),
    ]
};

/// The catalog's entry for `name`.
pub fn emitted(name: &str) -> Option<&'static Emitted> {
    CATALOG.iter().find(|e| e.name == name)
}

/// Whether `metric`, emitted by `function` (the catalog's name for it, when known), is one the
/// catalog declares, with exactly the catalog's dimensions: what the alarms and the dashboard
/// rely on. `Err` names what differs. The local stack holds every emission to it in the tests.
pub fn conforms(metric: &Metric, function: Option<&str>) -> Result<(), String> {
    let entry =
        emitted(metric.name).ok_or_else(|| format!("{} is not in the catalog", metric.name))?;
    let mut carried: Vec<&str> = metric.dimensions.iter().map(|(name, _)| *name).collect();
    carried.sort_unstable();
    let mut declared: Vec<&str> = entry.dimensions.to_vec();
    declared.sort_unstable();
    if carried != declared {
        return Err(format!(
            "{} carries dimensions {carried:?}, the catalog says {declared:?}",
            metric.name
        ));
    }
    match function {
        Some(function) if !entry.functions.contains(&function) => Err(format!(
            "{} emitted by {function}, the catalog says only {:?}",
            metric.name, entry.functions
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emission_conforms_only_with_the_catalogs_name_dimensions_and_function() {
        let hops = Metric::count(names::HOPS, 1)
            .with("Kind", "erasure")
            .with("Hop", "answered");
        assert_eq!(conforms(&hops, Some("confirm")), Ok(()));
        assert_eq!(conforms(&hops, None), Ok(()));
        assert!(conforms(&hops, Some("sweep"))
            .unwrap_err()
            .contains("sweep"));
        let short = Metric::count(names::HOPS, 1).with("Kind", "erasure");
        assert!(conforms(&short, None).unwrap_err().contains("dimensions"));
        let extra = Metric::count(names::COLD_STARTS, 1).with("Kind", "access");
        assert!(conforms(&extra, Some("intake")).is_err());
        let unknown = Metric::count("RequestsSubmited", 1).with("Kind", "access");
        assert!(conforms(&unknown, None)
            .unwrap_err()
            .contains("not in the catalog"));
    }
}
