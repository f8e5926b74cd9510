//! Every queue message: whatever arrives on any of the service's SQS queues is either read as
//! its contract's message or refused with a reason; what is read is handled without a panic
//! (routing on the outbound queue, admission on the schedule-requests queue).
#![no_main]

use dsr_domain::delayed::{DispatchPolicy, ScheduleRequest};
use dsr_domain::erasure::ConfirmationsMessage;
use dsr_domain::messages::{parse, Origin, QueueMessage};
use dsr_domain::RequestMessage;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn policy() -> &'static DispatchPolicy {
    static POLICY: OnceLock<DispatchPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        DispatchPolicy::new(
            Some("callers: [{name: billing, broker_user: svc-billing, destinations: [{exchange: billing.retries, routing_key: 'retry.#'}]}]"),
            "gdpr",
            vec!["https://sqs.local/confirmations".into()],
        )
        .expect("a valid policy")
    })
}

fn refused_with_a_reason<M: QueueMessage>(body: &str) -> Option<M> {
    match parse::<M>(body) {
        Ok(message) => Some(message),
        Err(reason) => {
            assert!(!reason.is_empty(), "a refusal names its reason");
            None
        }
    }
}

fuzz_target!(|body: &str| {
    let _ = refused_with_a_reason::<RequestMessage>(body);
    let _ = refused_with_a_reason::<ConfirmationsMessage>(body);
    if let Some(request) = refused_with_a_reason::<ScheduleRequest>(body) {
        for origin in [
            Origin::Internal,
            Origin::Broker("svc-billing".into()),
            Origin::Broker("mallory".into()),
        ] {
            if let Ok(dsr_domain::delayed::Admitted::Schedule(message)) =
                policy().admit(&origin, request.clone())
            {
                let _ = dsr_domain::delayed::unschedulable(message.deliver_at, chrono::Utc::now());
            }
        }
    }
    if let Some(outbound) = refused_with_a_reason::<dsr_bridge::OutboundMessage>(body) {
        let _ = dsr_bridge::route(&outbound, "gdpr.events");
    }
});
