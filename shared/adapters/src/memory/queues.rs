//! The work queues and report links in memory.

use super::locked;
use dsr_domain::{QueueError, RequestMessage, StoreError, WorkQueue};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Records every message; can be switched to fail, to test what happens when SQS is down.
#[derive(Default)]
pub struct InMemoryWorkQueue {
    sent: Mutex<Vec<RequestMessage>>,
    unavailable: AtomicBool,
}

impl InMemoryWorkQueue {
    pub fn sent(&self) -> Vec<RequestMessage> {
        locked(&self.sent).clone()
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }
}

impl WorkQueue for InMemoryWorkQueue {
    async fn enqueue(&self, message: &RequestMessage) -> Result<(), QueueError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(QueueError {
                request_id: message.request_id,
                kind: message.kind,
                cause: "queue unavailable (simulated)".into(),
            });
        }
        locked(&self.sent).push(message.clone());
        Ok(())
    }
}

/// Links of the form `memory://<key>?ttl=<seconds>`, for handler tests.
#[derive(Default)]
pub struct InMemoryReportLinks;

impl dsr_domain::ReportLinks for InMemoryReportLinks {
    async fn link(&self, key: &str, ttl: std::time::Duration) -> Result<String, StoreError> {
        Ok(format!("memory://{key}?ttl={}", ttl.as_secs()))
    }
}
