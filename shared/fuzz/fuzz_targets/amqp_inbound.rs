//! What the platform's services publish to the bridge over RabbitMQ (confirmations, schedule
//! requests): any bytes, any `user_id`. Forwarded only when it is the contract, fits SQS and
//! names its publisher; otherwise refused with a reason.
#![no_main]

use dsr_bridge::inbound::{validate, InboundKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, Option<String>, &[u8])| {
    let (schedule, user_id, body) = input;
    let kind = if schedule {
        InboundKind::ScheduleRequest
    } else {
        InboundKind::Confirmation
    };
    match validate(kind, body, user_id.as_deref()) {
        Ok(checked) => {
            assert!(checked.text.len() <= dsr_bridge::inbound::MAX_FORWARDED_BYTES);
            assert!(!checked.broker_user.is_empty());
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
