//! The key schema of the requests table (see `RequestsTable` in template.yaml).

use dsr_domain::{IdempotencyKey, RequestId, RequestKind, ServiceName, SubjectHash};

/// GSI: a subject's requests, newest first ("my requests").
pub const BY_SUBJECT_INDEX: &str = "BySubject";
/// GSI: requests by state and due date (the sweep, the reconciliation, counts).
pub const BY_STATE_DUE_INDEX: &str = "ByStateDue";

/// The sort key of a request's own item.
pub const META: &str = "META";
/// The sort key of an idempotency key's item.
pub const IDEMPOTENCY: &str = "IDEM";
/// Sort keys of the audit trail start with this.
pub const EVENT_PREFIX: &str = "EVT#";
/// Sort keys of erasure obligations start with this.
pub const OBLIGATION_PREFIX: &str = "OBL#";
/// The partition of a request: its item, audit trail and obligations.
pub fn request(id: RequestId) -> String {
    format!("REQ#{id}")
}

/// The partition of a subject's open-request guards.
pub fn guard(subject: &SubjectHash) -> String {
    format!("SUBJ#{subject}")
}

/// The guard of "one open request of this kind".
pub fn guard_sort(kind: RequestKind) -> String {
    format!("OPEN#{kind}")
}

/// The partition of a subject's quota of requests of one kind: one item per slot.
pub fn quota(subject: &SubjectHash, kind: RequestKind) -> String {
    format!("QUOTA#{subject}#{kind}")
}

/// One slot of a quota: used by one request until the window after it passed.
pub fn quota_slot(slot: u32) -> String {
    format!("SLOT#{slot}")
}

pub fn idempotency(subject: &SubjectHash, key: &IdempotencyKey) -> String {
    format!("IDEM#{subject}#{}", key.as_str())
}

/// One audit event; `at` is a sortable timestamp, so the trail reads in order.
pub fn event(at: &str, event: &str) -> String {
    format!("{EVENT_PREFIX}{at}#{event}")
}

pub fn obligation(service: &ServiceName) -> String {
    format!("{OBLIGATION_PREFIX}{service}")
}
