//! The work queues on SQS: one queue per request kind.

use aws_sdk_sqs::Client;
use dsr_domain::{QueueError, RequestKind, RequestMessage, WorkQueue};

#[derive(Clone, Debug)]
pub struct SqsWorkQueue {
    client: Client,
    access_queue_url: String,
    erasure_queue_url: String,
}

impl SqsWorkQueue {
    pub fn new(
        client: Client,
        access_queue_url: impl Into<String>,
        erasure_queue_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            access_queue_url: access_queue_url.into(),
            erasure_queue_url: erasure_queue_url.into(),
        }
    }

    fn queue_url(&self, kind: RequestKind) -> &str {
        match kind {
            RequestKind::Access => &self.access_queue_url,
            RequestKind::Erasure => &self.erasure_queue_url,
        }
    }
}

impl WorkQueue for SqsWorkQueue {
    async fn enqueue(&self, message: &RequestMessage) -> Result<(), QueueError> {
        let fail = |cause: dsr_domain::ports::Cause| QueueError {
            request_id: message.request_id,
            kind: message.kind,
            cause,
        };
        let body = serde_json::to_string(message).map_err(|e| fail(Box::new(e)))?;
        self.client
            .send_message()
            .queue_url(self.queue_url(message.kind))
            .message_body(body)
            .send()
            .await
            .map_err(|e| fail(Box::new(e)))?;
        Ok(())
    }
}

/// The `outbound` queue: events and commands for the rest of the platform.
#[derive(Clone, Debug)]
pub struct SqsOutbox {
    client: Client,
    queue_url: String,
    /// Where notices to the subject go (as commands: not to the events exchange).
    commands_exchange: String,
}

impl SqsOutbox {
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        commands_exchange: impl Into<String>,
    ) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            commands_exchange: commands_exchange.into(),
        }
    }

    async fn send(&self, body: String) -> Result<(), dsr_domain::ports::ChannelError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| dsr_domain::ports::ChannelError(Box::new(e)))?;
        Ok(())
    }
}

/// The SQS message attribute carrying the publisher's broker user, set by the bridge on every
/// message it forwards from RabbitMQ (and by nothing else).
pub const BROKER_USER_ATTRIBUTE: &str = "broker_user";

/// Delivers delayed messages: to an SQS queue directly, or to RabbitMQ through the outbound
/// queue (the bridge publishes the envelope). The key travels as `message_id` either way.
#[derive(Clone, Debug)]
pub struct SqsDestinationSender {
    client: Client,
    outbound_queue_url: String,
}

impl SqsDestinationSender {
    pub fn new(client: Client, outbound_queue_url: impl Into<String>) -> Self {
        Self {
            client,
            outbound_queue_url: outbound_queue_url.into(),
        }
    }
}

impl dsr_domain::delayed::Sender for SqsDestinationSender {
    async fn send(
        &self,
        destination: &dsr_domain::delayed::Destination,
        message_id: &str,
        payload: &serde_json::Value,
    ) -> Result<(), dsr_domain::delayed::DispatchError> {
        use dsr_domain::delayed::{Destination, DispatchError};
        let (queue_url, body) = match destination {
            Destination::Sqs { queue_url } => (queue_url.as_str(), payload.to_string()),
            Destination::Rabbitmq {
                exchange,
                routing_key,
            } => (
                self.outbound_queue_url.as_str(),
                serde_json::json!({
                    "version": 1,
                    "message_id": message_id,
                    "exchange": exchange,
                    "routing_key": routing_key,
                    "payload": payload,
                })
                .to_string(),
            ),
        };
        self.client
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .message_attributes(
                "message_id",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(message_id)
                    .build()
                    .map_err(|e| DispatchError(Box::new(e)))?,
            )
            .send()
            .await
            .map_err(|e| DispatchError(Box::new(e)))?;
        Ok(())
    }
}

impl dsr_domain::ports::EventOutbox for SqsOutbox {
    async fn publish(
        &self,
        event: &dsr_domain::messages::DomainEvent,
    ) -> Result<(), dsr_domain::ports::ChannelError> {
        use dsr_domain::ports::ChannelError;
        let body = serde_json::to_string(event).map_err(|e| ChannelError(Box::new(e)))?;
        self.send(body).await
    }

    /// An envelope for the bridge: the notice, to the commands exchange under `notice.<type>`,
    /// with a receipt asked for: the erasure's grace period runs from the broker's confirmation.
    async fn tell(
        &self,
        notice: &dsr_domain::messages::SubjectNotice,
    ) -> Result<(), dsr_domain::ports::ChannelError> {
        let mut body = serde_json::json!({
            "version": 1,
            "message_id": notice.message_id,
            "exchange": self.commands_exchange,
            "routing_key": notice.routing_key(),
            "payload": notice,
            "receipt": true,
        });
        // The bridge counts the notice once the broker confirmed it: the subject was told.
        if let Some(hop) = notice.hop() {
            body["count"] = serde_json::json!(hop);
        }
        self.send(body.to_string()).await
    }
}

/// The watchdog's checks, scheduled with the delayed-dispatch service (its `schedule-requests`
/// queue) for delivery to the `confirmations` queue.
#[derive(Clone, Debug)]
pub struct SqsCheckScheduler {
    client: Client,
    schedule_requests_queue_url: String,
    confirmations_queue_url: String,
    /// The report function's queue, where a verification is asked for.
    access_requests_queue_url: String,
}

impl SqsCheckScheduler {
    pub fn new(
        client: Client,
        schedule_requests_queue_url: impl Into<String>,
        confirmations_queue_url: impl Into<String>,
        access_requests_queue_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            schedule_requests_queue_url: schedule_requests_queue_url.into(),
            confirmations_queue_url: confirmations_queue_url.into(),
            access_requests_queue_url: access_requests_queue_url.into(),
        }
    }
}

/// Sends `body` to `queue_url` as one of the service's own messages.
async fn send_own(
    client: &Client,
    queue_url: &str,
    body: String,
) -> Result<(), dsr_domain::erasure::ChannelError> {
    client
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .send()
        .await
        .map_err(|e| dsr_domain::erasure::ChannelError(Box::new(e)))?;
    Ok(())
}

/// A collection waiting on its sources, handed to the delayed-dispatch service (its
/// `schedule-requests` queue) for delivery to the `access-requests` queue when it is due.
#[derive(Clone, Debug)]
pub struct SqsCollectionResumes {
    client: Client,
    schedule_requests_queue_url: String,
    access_requests_queue_url: String,
}

impl SqsCollectionResumes {
    pub fn new(
        client: Client,
        schedule_requests_queue_url: impl Into<String>,
        access_requests_queue_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            schedule_requests_queue_url: schedule_requests_queue_url.into(),
            access_requests_queue_url: access_requests_queue_url.into(),
        }
    }
}

impl dsr_domain::report::CollectionResumes for SqsCollectionResumes {
    async fn resume_at(
        &self,
        id: dsr_domain::RequestId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        use dsr_domain::delayed::{DelayKey, Destination, ScheduleRequest};
        use dsr_domain::erasure::ChannelError;
        use dsr_domain::messages::QueueMessage;
        let fail = |e: String| ChannelError(format!("resuming {id}: {e}").into());
        // Keyed by the request and the time: a worker that scheduled it and died schedules the
        // same key again (one delivery); a later hand-off has a later time, a key of its own.
        let key = format!("collect:{id}@{}", at.timestamp_millis());
        let message = dsr_domain::RequestMessage::new(id, dsr_domain::RequestKind::Access, at);
        let request = ScheduleRequest::Schedule {
            version: ScheduleRequest::VERSION,
            key: DelayKey::parse(key).map_err(fail)?,
            deliver_at: at,
            destination: Destination::Sqs {
                queue_url: self.access_requests_queue_url.clone(),
            },
            payload: serde_json::to_value(&message).map_err(|e| fail(e.to_string()))?,
        };
        let body = serde_json::to_string(&request).map_err(|e| fail(e.to_string()))?;
        send_own(&self.client, &self.schedule_requests_queue_url, body).await
    }
}

/// Operators' decisions, onto the `confirmations` queue (the CLI and the operations page send
/// them; the confirm function carries them out).
#[derive(Clone, Debug)]
pub struct SqsOperatorDecisions {
    client: Client,
    confirmations_queue_url: String,
}

impl SqsOperatorDecisions {
    pub fn new(client: Client, confirmations_queue_url: impl Into<String>) -> Self {
        Self {
            client,
            confirmations_queue_url: confirmations_queue_url.into(),
        }
    }
}

impl dsr_domain::erasure::OperatorDecisions for SqsOperatorDecisions {
    async fn ask(
        &self,
        action: &dsr_domain::erasure::OperatorAction,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        use dsr_domain::erasure::{ChannelError, ConfirmationsMessage};
        let body = serde_json::to_string(&ConfirmationsMessage::OperatorAction(action.clone()))
            .map_err(|e| ChannelError(Box::new(e)))?;
        send_own(&self.client, &self.confirmations_queue_url, body).await
    }
}

/// Verification results, onto the `confirmations` queue (the report function sends them).
#[derive(Clone, Debug)]
pub struct SqsVerificationResults {
    client: Client,
    confirmations_queue_url: String,
}

impl SqsVerificationResults {
    pub fn new(client: Client, confirmations_queue_url: impl Into<String>) -> Self {
        Self {
            client,
            confirmations_queue_url: confirmations_queue_url.into(),
        }
    }
}

impl dsr_domain::report::verify::VerificationResults for SqsVerificationResults {
    async fn send(
        &self,
        result: &dsr_domain::erasure::ErasureVerified,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        use dsr_domain::erasure::ChannelError;
        // `ConfirmationsMessage::ErasureVerified`'s shape, tagged by hand: serialising the whole
        // enum would link every confirmations message into the report function.
        let mut body = serde_json::to_value(result).map_err(|e| ChannelError(Box::new(e)))?;
        body["type"] = serde_json::Value::from("erasure_verified");
        send_own(
            &self.client,
            &self.confirmations_queue_url,
            body.to_string(),
        )
        .await
    }
}

impl dsr_domain::erasure::CheckScheduler for SqsCheckScheduler {
    async fn schedule(
        &self,
        check: &dsr_domain::erasure::ObligationDue,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        use dsr_domain::delayed::{DelayKey, Destination, ScheduleRequest};
        use dsr_domain::erasure::{ChannelError, ConfirmationsMessage};
        use dsr_domain::messages::QueueMessage;
        let fail = |e: String| ChannelError(format!("scheduling {}: {e}", check.message_id).into());
        // Keyed by the check and its time: a step that scheduled it and then crashed schedules
        // it again, later, under a key of its own (a delivered key takes no other message).
        // Two checks of one attempt are harmless: each acts only on the attempt it names.
        let key = format!("{}@{}", check.message_id, at.timestamp_millis());
        let request = ScheduleRequest::Schedule {
            version: ScheduleRequest::VERSION,
            key: DelayKey::parse(key).map_err(fail)?,
            deliver_at: at,
            destination: Destination::Sqs {
                queue_url: self.confirmations_queue_url.clone(),
            },
            payload: serde_json::to_value(ConfirmationsMessage::ObligationDue(check.clone()))
                .map_err(|e| fail(e.to_string()))?,
        };
        let body = serde_json::to_string(&request).map_err(|e| fail(e.to_string()))?;
        send_own(&self.client, &self.schedule_requests_queue_url, body).await
    }

    async fn verify(
        &self,
        ask: &dsr_domain::erasure::VerifyErasure,
    ) -> Result<(), dsr_domain::erasure::ChannelError> {
        let body = serde_json::to_string(ask)
            .map_err(|e| dsr_domain::erasure::ChannelError(Box::new(e)))?;
        send_own(&self.client, &self.access_requests_queue_url, body).await
    }
}

/// Moves a message that can never succeed to a dead-letter queue with the reason as the
/// `reason` attribute, instead of letting it be retried `maxReceiveCount` times. `Err` means
/// it was not moved: the caller leaves the message on its queue (SQS's redrive moves it later).
pub async fn dead_letter(
    client: &Client,
    dead_letter_queue_url: &str,
    body: &str,
    reason: &str,
) -> Result<(), String> {
    let reason: String = reason.chars().take(1024).collect();
    tracing::error!(%reason, "message dead-lettered");
    client
        .send_message()
        .queue_url(dead_letter_queue_url)
        .message_body(body)
        .message_attributes(
            "reason",
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(reason)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .send()
        .await
        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
    Ok(())
}
