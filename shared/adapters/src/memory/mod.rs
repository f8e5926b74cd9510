//! In-memory adapters with the same semantics as the cloud ones (conditional writes included),
//! for unit tests of handlers and use cases. Not for production: nothing survives a restart,
//! and no Lambda binary links them (feature `memory`).

mod delayed;
mod erasure;
mod queues;
mod reports;
mod requests;

pub use delayed::{InMemoryDelayedStore, RecordingDispatchPorts};
pub use erasure::RecordingErasurePorts;
pub use queues::{InMemoryReportLinks, InMemoryWorkQueue};
pub use reports::{FakeSources, InMemoryReportStore, RecordingOutbox, RecordingResumes};
pub use requests::InMemoryRequestStore;

/// A lock that survives a thread that panicked while holding it: test doubles should not cascade failures.
fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
