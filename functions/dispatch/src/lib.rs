//! The dispatch function: delayed dispatch as a service (see `dsr_domain::delayed`).
//!
//! Two kinds of invocation reach it:
//! - an SQS batch from `schedule-requests`: `schedule` and `cancel` requests from the service
//!   itself, and from the platform services its configuration allows (RabbitMQ's `schedule`
//!   messages arrive here through the bridge, stamped with the publisher's broker user). Each
//!   caller works in its own key namespace and may deliver only where the [`DispatchPolicy`]
//!   lets it; anything else is dead-lettered with the reason;
//! - an EventBridge Scheduler wake-up, one-time (`{"wake": key}`) or the recurring safety-net
//!   sweep: either way everything due is sent.

use aws_lambda_events::sqs::SqsEvent;
use dsr_adapters::batch::{Outcome, QueueDriver, RecordHandler};
use dsr_adapters::config::{vars, ConfigError, Env};
use dsr_adapters::dynamodb::DynamoDelayedStore;
use dsr_adapters::scheduler::SchedulerWakeUps;
use dsr_adapters::sqs::SqsDestinationSender;
pub use dsr_domain::delayed::ScheduleRequest;
use dsr_domain::delayed::{
    Admitted, DelayedStore, DispatchPolicy, Dispatcher, ScheduleOutcome, Sender, WakeUps,
};
use dsr_domain::messages::Origin;
use dsr_domain::Clock;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

pub type CloudDispatcher<C> =
    Dispatcher<DynamoDelayedStore, SchedulerWakeUps, SqsDestinationSender, C>;

/// The function as Lambda runs it.
pub type Handler = Dispatch<CloudDispatcher<dsr_domain::SystemClock>>;

/// Builds the function from its configuration: the same wiring in Lambda and the local stack.
pub fn build(aws: &aws_config::SdkConfig, env: &Env) -> Result<Handler, ConfigError> {
    build_with_clock(aws, env, dsr_domain::SystemClock)
}

/// [`build`] with another clock (tests move time forward).
pub fn build_with_clock<C: Clock>(
    aws: &aws_config::SdkConfig,
    env: &Env,
    clock: C,
) -> Result<Dispatch<CloudDispatcher<C>>, ConfigError> {
    Ok(Dispatch::new(
        dispatcher(aws, env, clock)?,
        policy(env)?,
        aws_sdk_sqs::Client::new(aws),
        env.required(vars::SCHEDULE_REQUESTS_QUEUE_URL)?,
        env.optional(vars::DEAD_LETTER_QUEUE_URL),
    ))
}

/// Who may schedule what: the service's own queues (the watchdog's checks, resumed collections), and the configured callers.
pub fn policy(env: &Env) -> Result<DispatchPolicy, ConfigError> {
    DispatchPolicy::new(
        env.optional(vars::DELAYED_DISPATCH_CALLERS).as_deref(),
        env.optional(vars::RABBITMQ_NAMESPACE)
            .unwrap_or_else(|| "gdpr".into()),
        vec![
            env.required(vars::CONFIRMATIONS_QUEUE_URL)?,
            env.required(vars::ACCESS_REQUESTS_QUEUE_URL)?,
        ],
    )
    .map_err(|e| ConfigError::unusable(vars::DELAYED_DISPATCH_CALLERS, e))
}

/// The dispatcher alone, over the cloud adapters.
pub fn dispatcher<C: Clock>(
    aws: &aws_config::SdkConfig,
    env: &Env,
    clock: C,
) -> Result<CloudDispatcher<C>, ConfigError> {
    Ok(Dispatcher {
        store: DynamoDelayedStore::new(
            aws_sdk_dynamodb::Client::new(aws),
            env.required(vars::DELAYED_MESSAGES_TABLE)?,
        ),
        wake_ups: SchedulerWakeUps::new(
            aws_sdk_scheduler::Client::new(aws),
            env.required(vars::SCHEDULE_GROUP)?,
            env.required(vars::DISPATCH_TARGET_ARN)?,
            env.required(vars::SCHEDULER_ROLE_ARN)?,
            env.required(vars::SCHEDULER_DLQ_ARN)?,
        ),
        sender: SqsDestinationSender::new(
            aws_sdk_sqs::Client::new(aws),
            env.required(vars::OUTBOUND_QUEUE_URL)?,
        ),
        clock,
        settings: Default::default(),
    })
}

/// Schedule requests on their queue, and wake-ups.
pub struct Dispatch<D> {
    pub requests: QueueDriver<ScheduleRequests<D>>,
}

impl<S: DelayedStore, W: WakeUps, X: Sender, C: Clock> Dispatch<Dispatcher<S, W, X, C>> {
    pub fn new(
        dispatcher: Dispatcher<S, W, X, C>,
        policy: DispatchPolicy,
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        dead_letter_queue_url: Option<String>,
    ) -> Self {
        let handler = ScheduleRequests {
            dispatcher,
            policy,
            due_now: AtomicBool::new(false),
        };
        Self {
            requests: QueueDriver::new("dispatch", handler, sqs, queue_url, dead_letter_queue_url),
        }
    }

    pub fn dispatcher(&self) -> &Dispatcher<S, W, X, C> {
        &self.requests.handler.dispatcher
    }

    /// The Lambda handler.
    pub async fn handle_lambda(
        &self,
        event: lambda_runtime::LambdaEvent<Value>,
    ) -> Result<Value, lambda_runtime::Error> {
        let deadline = (event.context.deadline > 0).then(|| event.context.deadline());
        self.handle(event.payload, deadline).await
    }

    /// One invocation, whatever woke it. Returns what Lambda should answer: the batch response
    /// for SQS, a summary for the scheduler.
    pub async fn handle(
        &self,
        event: Value,
        deadline: Option<SystemTime>,
    ) -> Result<Value, lambda_runtime::Error> {
        if event.get("Records").is_some() {
            let batch: SqsEvent = serde_json::from_value(event)?;
            return Ok(serde_json::to_value(
                self.requests.handle(batch, deadline).await,
            )?);
        }
        let report = self.dispatcher().dispatch_due().await?;
        // Woken every minute (every 2 s locally): only sweeps that found something are news.
        if report.due > 0 {
            tracing::info!(
                due = report.due,
                sent = report.sent,
                skipped = report.skipped,
                failed = report.failed,
                "dispatch sweep"
            );
        }
        if report.failed > 0 {
            // Failing makes the scheduler retry (and, in the end, dead-letter) the wake-up.
            return Err(format!("{} due messages could not be sent", report.failed).into());
        }
        Ok(json!({ "due": report.due, "sent": report.sent, "skipped": report.skipped }))
    }
}

/// One message of `schedule-requests`: schedule or cancel a delayed message.
pub struct ScheduleRequests<D> {
    dispatcher: D,
    policy: DispatchPolicy,
    /// Something in this batch was due at once: send it without waiting for the sweep.
    due_now: AtomicBool,
}

impl<S: DelayedStore, W: WakeUps, X: Sender, C: Clock> RecordHandler
    for ScheduleRequests<Dispatcher<S, W, X, C>>
{
    type Message = ScheduleRequest;

    async fn handle(&self, request: ScheduleRequest, origin: &Origin) -> Outcome {
        let taken = match self.policy.admit(origin, request) {
            Err(refused) => {
                tracing::warn!(%origin, reason = %refused, "schedule request refused");
                return Outcome::Reject(refused);
            }
            Ok(Admitted::Schedule(message)) => {
                let now = self.dispatcher.clock.now();
                if let Some(refused) = dsr_domain::delayed::unschedulable(message.deliver_at, now) {
                    tracing::warn!(%origin, reason = %refused, "schedule request refused");
                    return Outcome::Reject(refused);
                }
                if message.deliver_at <= now {
                    self.due_now.store(true, Ordering::SeqCst);
                }
                match self.dispatcher.schedule(&message).await {
                    Ok(ScheduleOutcome::KeySpent) => {
                        let refused = format!(
                            "key `{}` was already delivered with another message; a key is used once (remembered 7 days after delivery): schedule under a new key",
                            message.key.as_str()
                        );
                        tracing::warn!(%origin, reason = %refused, "schedule request refused");
                        return Outcome::Reject(refused);
                    }
                    other => other.map(|_| ()),
                }
            }
            Ok(Admitted::Cancel(key)) => self.dispatcher.cancel(&key).await.map(|_| ()),
        };
        match taken {
            Ok(()) => Outcome::Done,
            Err(err) => {
                tracing::warn!(error = %err, "schedule request not taken; will retry");
                Outcome::Retry(Some(dsr_adapters::batch::RETRY_SOON))
            }
        }
    }

    async fn after_batch(&self) {
        if self.due_now.swap(false, Ordering::SeqCst) {
            if let Err(err) = self.dispatcher.dispatch_due().await {
                tracing::warn!(error = %err, "immediate dispatch failed; the sweep will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests;
