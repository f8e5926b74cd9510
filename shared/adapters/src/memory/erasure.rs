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
    /// Asks to verify an erasure (the report function's queue).
    pub verifications: Mutex<Vec<dsr_domain::erasure::VerifyErasure>>,
    /// Verification results sent (to the confirmations queue).
    pub verified: Mutex<Vec<dsr_domain::erasure::ErasureVerified>>,
    /// Per service: what `send` answers instead of `Sent`.
    pub answers: Mutex<HashMap<dsr_domain::ServiceName, dsr_domain::erasure::Delivery>>,
    /// Batch calls made (`send_batch`), each with its commands.
    pub batches: Mutex<Vec<Vec<dsr_domain::erasure::ErasureCommand>>>,
    /// Per subject: what a batch call says of it instead of "erased".
    pub batch_answers: Mutex<HashMap<String, dsr_domain::erasure::Delivery>>,
    /// Per port operation (`send`, `schedule`, `publish`, `tell`): how many next calls pass,
    /// then how many fail.
    pub failures: Mutex<HashMap<&'static str, (u32, u32)>>,
}

impl RecordingErasurePorts {
    pub fn commands(&self) -> Vec<dsr_domain::erasure::ErasureCommand> {
        locked(&self.commands).clone()
    }
    pub fn batches(&self) -> Vec<Vec<dsr_domain::erasure::ErasureCommand>> {
        locked(&self.batches).clone()
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
    pub fn verifications(&self) -> Vec<dsr_domain::erasure::VerifyErasure> {
        locked(&self.verifications).clone()
    }

    /// Makes the next `times` calls of `operation` fail (an outage of that channel).
    pub fn fail_next(&self, operation: &'static str, times: u32) {
        self.fail_after(operation, 0, times);
    }

    /// Lets the next `passes` calls of `operation` through, then fails `times`.
    pub fn fail_after(&self, operation: &'static str, passes: u32, times: u32) {
        locked(&self.failures).insert(operation, (passes, times));
    }

    fn outage(&self, operation: &'static str) -> Result<(), dsr_domain::erasure::ChannelError> {
        let mut failures = locked(&self.failures);
        match failures.get_mut(operation) {
            Some((passes, _)) if *passes > 0 => {
                *passes -= 1;
                Ok(())
            }
            Some((_, left)) if *left > 0 => {
                *left -= 1;
                Err(dsr_domain::erasure::ChannelError(
                    format!("{operation}: injected outage").into(),
                ))
            }
            _ => Ok(()),
        }
    }
}

impl dsr_domain::erasure::ErasureChannel for RecordingErasurePorts {
    async fn send(
        &self,
        command: &dsr_domain::erasure::ErasureCommand,
        _how: &dsr_domain::registry::HowToErase,
    ) -> Result<dsr_domain::erasure::Delivery, dsr_domain::erasure::ChannelError> {
        self.outage("send")?;
        locked(&self.commands).push(command.clone());
        Ok(self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&command.service)
            .cloned()
            .unwrap_or(dsr_domain::erasure::Delivery::Sent))
    }

    async fn send_batch(
        &self,
        commands: &[dsr_domain::erasure::ErasureCommand],
        _how: &dsr_domain::registry::HowToErase,
    ) -> Result<Vec<dsr_domain::erasure::Delivery>, dsr_domain::erasure::ChannelError> {
        self.outage("send_batch")?;
        locked(&self.batches).push(commands.to_vec());
        let answers = locked(&self.batch_answers);
        Ok(commands
            .iter()
            .map(|c| {
                answers.get(c.subject.as_str()).cloned().unwrap_or(
                    dsr_domain::erasure::Delivery::Answered {
                        status: dsr_domain::erasure::ObligationStatus::Confirmed,
                        receipt: format!("{{\"batch_of\":{}}}", commands.len()),
                    },
                )
            })
            .collect())
    }
}

impl dsr_domain::erasure::CheckScheduler for RecordingErasurePorts {
    async fn schedule(
        &self,
        check: &dsr_domain::erasure::ObligationDue,
        at: DateTime<Utc>,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        self.outage("schedule")?;
        locked(&self.checks).push((check.clone(), at));
        Ok(())
    }

    async fn verify(
        &self,
        ask: &dsr_domain::erasure::VerifyErasure,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        self.outage("verify")?;
        locked(&self.verifications).push(ask.clone());
        Ok(())
    }
}

impl dsr_domain::report::verify::VerificationResults for RecordingErasurePorts {
    async fn send(
        &self,
        result: &dsr_domain::erasure::ErasureVerified,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        self.outage("verified")?;
        locked(&self.verified).push(result.clone());
        Ok(())
    }
}

impl dsr_domain::erasure::EventOutbox for RecordingErasurePorts {
    async fn publish(
        &self,
        event: &dsr_domain::messages::DomainEvent,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        self.outage("publish")?;
        locked(&self.events).push(event.clone());
        Ok(())
    }

    async fn tell(
        &self,
        notice: &dsr_domain::messages::SubjectNotice,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        self.outage("tell")?;
        locked(&self.notices).push(notice.clone());
        Ok(())
    }
}

/// Operators' decisions asked for, oldest first (the confirmations queue, in memory).
#[derive(Default)]
pub struct RecordingDecisions {
    asked: Mutex<Vec<dsr_domain::erasure::OperatorAction>>,
}

impl RecordingDecisions {
    pub fn asked(&self) -> Vec<dsr_domain::erasure::OperatorAction> {
        locked(&self.asked).clone()
    }
}

impl dsr_domain::erasure::OperatorDecisions for RecordingDecisions {
    async fn ask(
        &self,
        action: &dsr_domain::erasure::OperatorAction,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        locked(&self.asked).push(action.clone());
        Ok(())
    }
}
