//! Kill points: the steps between two writes where a crash would leave half a job done.
//!
//! The proving ground stops a function's process dead at each of them (SIGKILL: no destructor,
//! no flush, no retry) and checks that, after a restart, every request still completes once.
//! Each step that writes calls [`reached`] with its name, right after the write whose
//! successor has not happened yet.
//!
//! Only builds with the `kill-points` feature (the local stack turns it on) can stop here, and
//! only when `DSR_KILL_AT` names the step: `DSR_KILL_AT=report.uploaded:2` freezes the process
//! the second time a report upload completes, after printing [`MARKER`] and the step's name on
//! stderr; the test that started it then sends the SIGKILL. Lambda builds compile every call
//! away.

/// What a frozen process prints (then the step's name) so that its supervisor kills it.
pub const MARKER: &str = "dsr kill point reached:";

/// The environment variable naming the step to stop at, and on which pass (`step:n`, n ≥ 1).
pub const DSR_KILL_AT: &str = "DSR_KILL_AT";

/// Every kill point, for the proving ground to visit each one.
pub const STEPS: &[&str] = &[
    "intake.stored",
    "report.source_staged",
    "report.uploaded",
    "report.committed",
    "erasure.command_sent",
    "erasure.fanned_out",
    "confirm.answered",
    "confirm.notifying",
    "confirm.notice_queued",
    "confirm.release_set",
    "confirm.verifying",
    "confirm.completion_published",
    "bridge.published",
    "dispatch.delivered",
    "batch.handled",
];

/// The process may be stopped here, if the proving ground asked for `step`.
#[inline(always)]
pub fn reached(step: &'static str) {
    debug_assert!(STEPS.contains(&step), "kill point `{step}` is not listed");
    #[cfg(feature = "kill-points")]
    armed::reached(step);
}

/// Parses `DSR_KILL_AT`: `step:n` (or `step`, meaning the first pass).
pub fn parse(plan: &str) -> Option<(&str, u32)> {
    let plan = plan.trim();
    if plan.is_empty() {
        return None;
    }
    match plan.split_once(':') {
        Some((step, pass)) => Some((step, pass.parse().ok().filter(|n| *n >= 1)?)),
        None => Some((plan, 1)),
    }
}

#[cfg(feature = "kill-points")]
mod armed {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    struct Plan {
        step: String,
        pass: u32,
        passes: AtomicU32,
    }

    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();

    pub fn reached(step: &'static str) {
        let plan = PLAN.get_or_init(|| {
            let planned = std::env::var(super::DSR_KILL_AT).unwrap_or_default();
            super::parse(&planned).map(|(step, pass)| Plan {
                step: step.to_owned(),
                pass,
                passes: AtomicU32::new(0),
            })
        });
        let Some(plan) = plan else { return };
        if plan.step != step || plan.passes.fetch_add(1, Ordering::SeqCst) + 1 != plan.pass {
            return;
        }
        eprintln!("{} {step}", super::MARKER);
        // Frozen, not exiting: the supervisor's SIGKILL is the crash. Blocking this thread
        // also holds whatever the step was doing exactly where it was.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_names_a_step_and_the_pass_to_stop_on() {
        assert_eq!(parse("report.uploaded:2"), Some(("report.uploaded", 2)));
        assert_eq!(parse("intake.stored"), Some(("intake.stored", 1)));
        assert_eq!(parse(""), None);
        assert_eq!(parse("intake.stored:0"), None);
        assert_eq!(parse("intake.stored:x"), None);
    }
}
