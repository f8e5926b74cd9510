//! Erasure's channels, checks and events, recorded.

use super::locked;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Mutex;

/// Records erasure commands, scheduled checks and events; a service can be set to answer like a
/// third-party API (`Answered`) or to fail.
#[derive(Default)]
pub struct RecordingErasurePorts {
    pub commands: Mutex<Vec<dsr_domain::erasure::ErasureCommand>>,
    pub checks: Mutex<Vec<(dsr_domain::erasure::ObligationDue, DateTime<Utc>)>>,
    pub events: Mutex<Vec<dsr_domain::messages::DomainEvent>>,
    pub notices: Mutex<Vec<dsr_domain::messages::SubjectNotice>>,
    /// Per service: what `send` answers instead of `Sent`.
    pub answers: Mutex<HashMap<dsr_domain::ServiceName, dsr_domain::erasure::Delivery>>,
}

impl RecordingErasurePorts {
    pub fn commands(&self) -> Vec<dsr_domain::erasure::ErasureCommand> {
        locked(&self.commands).clone()
    }
    pub fn checks(&self) -> Vec<(dsr_domain::erasure::ObligationDue, DateTime<Utc>)> {
        locked(&self.checks).clone()
    }
    pub fn events(&self) -> Vec<dsr_domain::messages::DomainEvent> {
        locked(&self.events).clone()
    }
    pub fn notices(&self) -> Vec<dsr_domain::messages::SubjectNotice> {
        locked(&self.notices).clone()
    }
}

impl dsr_domain::erasure::ErasureChannel for RecordingErasurePorts {
    async fn send(
        &self,
        command: &dsr_domain::erasure::ErasureCommand,
        _how: &dsr_domain::registry::HowToErase,
    ) -> Result<dsr_domain::erasure::Delivery, dsr_domain::erasure::ChannelError> {
        locked(&self.commands).push(command.clone());
        Ok(self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&command.service)
            .cloned()
            .unwrap_or(dsr_domain::erasure::Delivery::Sent))
    }
}

impl dsr_domain::erasure::CheckScheduler for RecordingErasurePorts {
    async fn schedule(
        &self,
        check: &dsr_domain::erasure::ObligationDue,
        at: DateTime<Utc>,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        locked(&self.checks).push((check.clone(), at));
        Ok(())
    }
}

impl dsr_domain::erasure::EventOutbox for RecordingErasurePorts {
    async fn publish(
        &self,
        event: &dsr_domain::messages::DomainEvent,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        locked(&self.events).push(event.clone());
        Ok(())
    }

    async fn tell(
        &self,
        notice: &dsr_domain::messages::SubjectNotice,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        locked(&self.notices).push(notice.clone());
        Ok(())
    }
}
