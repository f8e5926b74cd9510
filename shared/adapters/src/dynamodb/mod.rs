//! The request store on DynamoDB: one table, conditional writes and transactions.
//!
//! Items (see template.yaml `RequestsTable`):
//! - `pk = REQ#<id>, sk = META`: the request; indexed by `subject_hash` (GSI `BySubject`) and by
//!   `state` + `due_at` (GSI `ByStateDue`).
//! - `pk = SUBJ#<hash>, sk = OPEN#<kind>`: the guard that makes "one open request per subject
//!   and kind" a transactional condition.
//! - `pk = IDEM#<hash>#<key>, sk = IDEM`: an `Idempotency-Key` seen for that subject (TTL 24 h).
//! - `pk = REQ#<id>, sk = EVT#<time>#<event>`: the append-only audit trail, no personal data.
//! - `pk = REQ#<id>, sk = OBL#<service>`: an erasure obligation.
//! - `pk = PACE#<service>, sk = PACE`: when a third party's next call may start (its rate
//!   limit, shared by every instance: [`DynamoVendorPace`]).
//!
//! The delayed-dispatch store and the hop log have tables of their own ([`DynamoDelayedStore`],
//! [`DynamoHopLog`]). [`keys`] is the
//! one place that knows how keys are spelled; tests use it too.

mod delayed;
pub mod hops;
mod item;
pub mod keys;
mod obligations;
mod requests;
mod store;
mod vendor_pace;

pub use delayed::{DynamoDelayedStore, BY_STATUS_DUE_INDEX};
pub use hops::DynamoHopLog;
pub use keys::{BY_STATE_DUE_INDEX, BY_SUBJECT_INDEX};
pub use store::DynamoRequestStore;
pub use vendor_pace::{DynamoVendorPace, Slot};
