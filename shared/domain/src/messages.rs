//! Messages this service puts on queues. Contract: `docs/messages.schema.json`.

use crate::request::{RequestId, RequestKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// "Work on this request": put on the queue of its kind (`access-requests` /
/// `erasure-requests`) when a request is accepted, and again by the sweep if it was lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMessage {
    /// Contract version; consumers reject versions they do not know.
    pub version: u32,
    /// Stable per request: a re-sent message carries the same id, so consumers drop duplicates.
    pub message_id: String,
    pub request_id: RequestId,
    pub kind: RequestKind,
    pub sent_at: DateTime<Utc>,
}

impl RequestMessage {
    pub const VERSION: u32 = 1;

    pub fn new(request_id: RequestId, kind: RequestKind, sent_at: DateTime<Utc>) -> Self {
        Self {
            version: Self::VERSION,
            message_id: format!("request:{request_id}"),
            request_id,
            kind,
            sent_at,
        }
    }
}
