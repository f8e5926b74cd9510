//! The Data Subject Rights domain.
//!
//! Everything here is plain Rust: no AWS SDK, no AMQP. Adapters in `dsr-adapters` implement the
//! ports declared in [`ports`]; the Lambda functions only translate events into calls to
//! [`requests::Requests`].

pub mod audit;
pub mod clock;
pub mod delayed;
pub mod erasure;
pub mod hops;
pub mod identity;
pub mod kill_point;
pub mod lease;
pub mod messages;
pub mod metrics;
pub mod ports;
pub mod registry;
pub mod report;
pub mod request;
pub mod requests;
pub mod service;
pub mod subject;

pub use clock::{Clock, FixedClock, SystemClock};
pub use messages::RequestMessage;
pub use ports::{
    AuditEvent, Audited, CreateOutcome, LeaseOutcome, QueueError, ReportLinks, RequestStore,
    StoreError, TransitionOutcome, WorkQueue,
};
pub use request::{
    Channel, DeadlineExtension, IdempotencyKey, IllegalTransition, Lease, ReportInfo, Request,
    RequestId, RequestIdError, RequestKind, RequestState, SubmittedVia,
};
pub use requests::{ReportLink, RequestError, Requests, Submission, SweepReport, SweepSettings};
pub use service::{ServiceName, ServiceNameError};
pub use subject::{SubjectHash, SubjectHasher, SubjectId, SubjectIdError};
