//! Wakes the dispatch function at a message's due time with an EventBridge Scheduler one-time
//! schedule (`at(...)`, deleted after it fires), in the service's own schedule group, with a
//! retry policy and a dead-letter queue.

use aws_sdk_scheduler::types::{
    ActionAfterCompletion, DeadLetterConfig, FlexibleTimeWindow, FlexibleTimeWindowMode,
    RetryPolicy, Target,
};
use aws_sdk_scheduler::Client;
use chrono::{DateTime, Utc};
use dsr_domain::delayed::{DelayKey, DispatchError, WakeUps};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug)]
pub struct SchedulerWakeUps {
    client: Client,
    group: String,
    /// The dispatch function.
    target_arn: String,
    /// The role the scheduler assumes to invoke it.
    role_arn: String,
    dead_letter_arn: String,
}

impl SchedulerWakeUps {
    pub fn new(
        client: Client,
        group: impl Into<String>,
        target_arn: impl Into<String>,
        role_arn: impl Into<String>,
        dead_letter_arn: impl Into<String>,
    ) -> Self {
        Self {
            client,
            group: group.into(),
            target_arn: target_arn.into(),
            role_arn: role_arn.into(),
            dead_letter_arn: dead_letter_arn.into(),
        }
    }

    /// Schedule names are at most 64 characters of `[0-9a-zA-Z-_.]`: derived from the key.
    pub fn schedule_name(key: &DelayKey) -> String {
        let digest = hex::encode(Sha256::digest(key.as_str().as_bytes()));
        format!("dsr-delay-{}", &digest[..40])
    }

    fn target(&self, key: &DelayKey) -> Result<Target, DispatchError> {
        Target::builder()
            .arn(&self.target_arn)
            .role_arn(&self.role_arn)
            .input(serde_json::json!({ "wake": key.as_str() }).to_string())
            .retry_policy(
                RetryPolicy::builder()
                    .maximum_retry_attempts(10)
                    .maximum_event_age_in_seconds(86_400)
                    .build(),
            )
            .dead_letter_config(
                DeadLetterConfig::builder()
                    .arn(&self.dead_letter_arn)
                    .build(),
            )
            .build()
            .map_err(fail)
    }
}

fn fail(err: impl std::error::Error + Send + Sync + 'static) -> DispatchError {
    DispatchError(Box::new(err))
}

impl WakeUps for SchedulerWakeUps {
    async fn wake_at(&self, key: &DelayKey, at: DateTime<Utc>) -> Result<(), DispatchError> {
        let name = Self::schedule_name(key);
        let expression = format!("at({})", at.format("%Y-%m-%dT%H:%M:%S"));
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(fail)?;
        let created = self
            .client
            .create_schedule()
            .name(&name)
            .group_name(&self.group)
            .schedule_expression(&expression)
            .schedule_expression_timezone("UTC")
            .flexible_time_window(window.clone())
            .action_after_completion(ActionAfterCompletion::Delete)
            .target(self.target(key)?)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            // Rescheduled: move the existing wake-up.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conflict_exception()) =>
            {
                self.client
                    .update_schedule()
                    .name(&name)
                    .group_name(&self.group)
                    .schedule_expression(&expression)
                    .schedule_expression_timezone("UTC")
                    .flexible_time_window(window)
                    .action_after_completion(ActionAfterCompletion::Delete)
                    .target(self.target(key)?)
                    .send()
                    .await
                    .map_err(fail)?;
                Ok(())
            }
            Err(err) => Err(fail(err)),
        }
    }

    async fn forget(&self, key: &DelayKey) -> Result<(), DispatchError> {
        let deleted = self
            .client
            .delete_schedule()
            .name(Self::schedule_name(key))
            .group_name(&self.group)
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(fail(err)),
        }
    }
}
