//! Inbound: what the platform's services publish on RabbitMQ for us (erasure confirmations,
//! delayed-dispatch schedule requests) is forwarded to SQS. A RabbitMQ message is acknowledged
//! only after SQS accepted it; one that breaks the contract is dead-lettered on the RabbitMQ
//! side (a durable queue, the reason in the `x-reject-reason` header), never dropped.
//!
//! Two hosts for the same code: [`run_daemon`], a long-lived consumer that reconnects with
//! backoff (locally and for a self-managed broker), and [`Inbound::handle_event`], the Lambda
//! handler for the Amazon MQ for RabbitMQ event source.

use crate::{abandon, BridgeError, Patience};
use aws_lambda_events::rabbitmq::RabbitMqEvent;
use base64::Engine;
use dsr_domain::delayed::ScheduleRequest;
use dsr_domain::erasure::ConfirmationsMessage;
use dsr_domain::messages::parse;
use dsr_domain::report::export::ExportAnswer;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::Duration;
use tokio::sync::watch;

/// The RabbitMQ names of one deployment, all under one namespace (`gdpr` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Services publish `erasure_confirmation`s here (topic, any routing key).
    pub confirmations_exchange: String,
    pub confirmations_queue: String,
    /// Services publish delayed-dispatch `schedule`/`cancel` requests here.
    pub schedule_exchange: String,
    pub schedule_queue: String,
    /// Other internal systems publish `submit_request`s here.
    pub requests_exchange: String,
    pub requests_queue: String,
    /// Messages that broke the contract, with the reason.
    pub dead_letter_queue: String,
}

impl Topology {
    pub fn new(namespace: &str) -> Self {
        Self {
            confirmations_exchange: format!("{namespace}.confirmations"),
            confirmations_queue: format!("{namespace}.bridge.confirmations"),
            schedule_exchange: format!("{namespace}.schedule"),
            schedule_queue: format!("{namespace}.bridge.schedule"),
            requests_exchange: format!("{namespace}.requests"),
            requests_queue: format!("{namespace}.bridge.requests"),
            dead_letter_queue: format!("{namespace}.bridge.dead-letter"),
        }
    }

    /// The three queues consumed, and where their messages go.
    fn routes(&self) -> [(&str, InboundKind); 3] {
        [
            (&self.confirmations_queue, InboundKind::Confirmation),
            (&self.schedule_queue, InboundKind::ScheduleRequest),
            (&self.requests_queue, InboundKind::Submission),
        ]
    }

    fn kind_of(&self, queue: &str) -> Option<InboundKind> {
        self.routes()
            .into_iter()
            .find(|(name, _)| *name == queue)
            .map(|(_, kind)| kind)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundKind {
    Confirmation,
    ScheduleRequest,
    Submission,
}

/// The largest body forwarded: SQS takes 256 KiB per message, attributes included.
pub const MAX_FORWARDED_BYTES: usize = 250 * 1024;

/// A message fit to forward: its text, the broker user that published it, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub text: String,
    pub broker_user: String,
    pub to: Forward,
}

/// The SQS queue an inbound message is forwarded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// `erasure_confirmation`: the confirm function.
    Confirmations,
    /// `export_answer` (also published to the confirmations exchange: every answer of a
    /// holder goes there): the report function.
    AccessRequests,
    /// `schedule` / `cancel`: delayed dispatch.
    ScheduleRequests,
    /// `submit_request`: the submissions function (which decides who may submit).
    Submissions,
}

/// Checks an inbound message against its contract (`docs/messages.schema.json`) and against
/// what SQS accepts, and requires the publisher's identity: the `user_id` property, which
/// RabbitMQ refuses unless it is the user the publisher connected as. The text and user to
/// forward, or why the message can never be forwarded.
pub fn validate(kind: InboundKind, body: &[u8], user_id: Option<&str>) -> Result<Checked, String> {
    let broker_user = user_id
        .filter(|u| !u.is_empty())
        .ok_or("no user_id property: publish with user_id set to your broker user (RabbitMQ checks it), so the service knows who sent the message")?
        .to_owned();
    if body.len() > MAX_FORWARDED_BYTES {
        return Err(format!(
            "the body is {} bytes; at most {MAX_FORWARDED_BYTES} are forwarded",
            body.len()
        ));
    }
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    if let Some(bad) = text.chars().find(|c| !sqs_accepts(*c)) {
        return Err(format!(
            "the body holds character U+{:04X}, which SQS does not accept",
            u32::from(bad)
        ));
    }
    let to = match kind {
        InboundKind::Confirmation if is_export_answer(text) => {
            parse::<ExportAnswer>(text)?.check_shape()?;
            Forward::AccessRequests
        }
        InboundKind::Confirmation => match parse::<ConfirmationsMessage>(text)? {
            ConfirmationsMessage::ErasureConfirmation(_) => Forward::Confirmations,
            _ => {
                return Err(
                    "only erasure_confirmation and export_answer messages are accepted here"
                        .to_owned(),
                )
            }
        },
        InboundKind::ScheduleRequest => {
            parse::<ScheduleRequest>(text)?;
            Forward::ScheduleRequests
        }
        InboundKind::Submission => {
            parse::<dsr_domain::messages::SubmitRequest>(text)?;
            Forward::Submissions
        }
    };
    Ok(Checked {
        text: text.to_owned(),
        broker_user,
        to,
    })
}

/// Whether a body says it is an `export_answer` (its `type`), before it is read as one.
fn is_export_answer(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type", default)]
        kind: Option<String>,
    }
    serde_json::from_str::<Typed>(text)
        .ok()
        .and_then(|t| t.kind)
        .as_deref()
        == Some(ExportAnswer::KIND)
}

/// The characters an SQS message body may hold (XML 1.0's).
fn sqs_accepts(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Forwards valid inbound messages to their SQS queues.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub sqs: aws_sdk_sqs::Client,
    pub confirmations_queue_url: String,
    pub schedule_requests_queue_url: String,
    /// Where holders' export answers go (the report function's queue).
    pub access_requests_queue_url: String,
    /// Where other systems' `submit_request`s go (the submissions function's queue).
    pub submissions_queue_url: String,
    pub topology: Topology,
    /// How long a broker step may take, and how often the daemon checks its connection.
    pub patience: Patience,
}

impl Inbound {
    async fn forward(&self, checked: Checked, message_id: Option<&str>) -> Result<(), BridgeError> {
        let attribute = |value: &str| {
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| BridgeError::Broker(e.to_string()))
        };
        let queue_url = match checked.to {
            Forward::Confirmations => &self.confirmations_queue_url,
            Forward::AccessRequests => &self.access_requests_queue_url,
            Forward::ScheduleRequests => &self.schedule_requests_queue_url,
            Forward::Submissions => &self.submissions_queue_url,
        };
        let mut send = self
            .sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(checked.text)
            // Who published it, as RabbitMQ verified: the consumers decide what it may do.
            .message_attributes(
                dsr_adapters::sqs::BROKER_USER_ATTRIBUTE,
                attribute(&checked.broker_user)?,
            );
        if let Some(id) = message_id.filter(|id| !id.is_empty()) {
            send = send.message_attributes("message_id", attribute(id)?);
        }
        send.send().await.map_err(|e| {
            BridgeError::Broker(format!(
                "SQS did not take the message: {}",
                aws_sdk_sqs::error::DisplayErrorContext(e)
            ))
        })?;
        Ok(())
    }

    /// The Lambda handler for the Amazon MQ event source. The event source has no partial batch
    /// response: if SQS refuses one message the whole batch fails and is delivered again, which
    /// the keyed consumers downstream absorb. Malformed messages are dead-lettered on the
    /// broker through `dead_letters` (this function's own connection).
    pub async fn handle_event(
        &self,
        event: RabbitMqEvent,
        dead_letters: &DeadLetters,
    ) -> Result<usize, BridgeError> {
        let mut forwarded = 0;
        for (queue_and_vhost, messages) in event.messages_by_queue {
            // Keys look like `queue::vhost`.
            let queue = queue_and_vhost
                .split_once("::")
                .map_or(queue_and_vhost.as_str(), |(q, _)| q);
            for message in messages {
                let message_id = message.basic_properties.message_id.clone();
                let user_id = message.basic_properties.user_id.clone();
                let body = match &message.data {
                    Some(data) => base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .map_err(|e| format!("the data is not base64: {e}")),
                    None => Err("no data".to_owned()),
                };
                let checked = body.and_then(|body| match self.topology.kind_of(queue) {
                    Some(kind) => validate(kind, &body, user_id.as_deref()),
                    None => Err(format!("the bridge does not consume queue `{queue}`")),
                });
                match checked {
                    Ok(checked) => {
                        self.forward(checked, message_id.as_deref()).await?;
                        forwarded += 1;
                    }
                    Err(reason) => {
                        let raw = message
                            .data
                            .as_deref()
                            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                            .unwrap_or_default();
                        dead_letters
                            .publish(&raw, queue, &reason, message_id.as_deref())
                            .await?;
                    }
                }
            }
        }
        Ok(forwarded)
    }
}

/// Publishes rejected messages to the dead-letter queue, under publisher confirms.
pub struct DeadLetters {
    url: String,
    queue: String,
    channel: tokio::sync::Mutex<Option<(Connection, Channel)>>,
    patience: Patience,
}

impl DeadLetters {
    pub fn new(url: impl Into<String>, topology: &Topology) -> Self {
        Self {
            url: url.into(),
            queue: topology.dead_letter_queue.clone(),
            channel: tokio::sync::Mutex::new(None),
            patience: Patience::default(),
        }
    }

    async fn publish(
        &self,
        body: &[u8],
        from_queue: &str,
        reason: &str,
        message_id: Option<&str>,
    ) -> Result<(), BridgeError> {
        let patience = self.patience;
        let mut guard = self.channel.lock().await;
        let healthy = guard
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
        if !healthy {
            if let Some((conn, _)) = guard.take() {
                abandon(conn, patience);
            }
            let (conn, channel) = crate::open_confirming(&self.url, patience).await?;
            if let Err(err) = declare_dead_letter_queue(&channel, &self.queue, patience).await {
                abandon(conn, patience);
                return Err(err);
            }
            *guard = Some((conn, channel));
        }
        let Some((_, channel)) = guard.as_ref() else {
            return Err(BridgeError::Broker("no channel".into()));
        };
        let published = dead_letter(
            channel,
            &self.queue,
            body,
            from_queue,
            reason,
            message_id,
            patience,
        )
        .await;
        if published.is_err() {
            // The next one starts on a new connection (see `Patience`).
            if let Some((conn, _)) = guard.take() {
                abandon(conn, patience);
            }
        }
        published
    }
}

async fn declare_dead_letter_queue(
    channel: &Channel,
    queue: &str,
    patience: Patience,
) -> Result<(), BridgeError> {
    patience
        .step(
            "declaring the dead-letter queue",
            channel.queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            ),
        )
        .await?;
    Ok(())
}

async fn dead_letter(
    channel: &Channel,
    dead_letter_queue: &str,
    body: &[u8],
    from_queue: &str,
    reason: &str,
    message_id: Option<&str>,
    patience: Patience,
) -> Result<(), BridgeError> {
    let reason: String = reason.chars().take(1024).collect();
    tracing::warn!(queue = from_queue, message_id = message_id.unwrap_or_default(), %reason, "inbound message dead-lettered");
    dsr_domain::metrics::emit(dsr_domain::metrics::Metric::count("BridgeDeadLettered", 1));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-reject-reason".into(),
        AMQPValue::LongString(reason.as_str().into()),
    );
    headers.insert(
        "x-original-queue".into(),
        AMQPValue::LongString(from_queue.into()),
    );
    let mut properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(id) = message_id {
        properties = properties.with_message_id(id.into());
    }
    let confirm = patience
        .step("dead-lettering under confirm", async {
            channel
                .basic_publish(
                    "".into(),
                    dead_letter_queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await?
                .await
        })
        .await?;
    if confirm.is_ack() {
        Ok(())
    } else {
        Err(BridgeError::Broker(
            "the broker refused the dead letter".into(),
        ))
    }
}

/// Declares what the bridge consumes: durable topic exchanges, durable queues bound to them
/// with `#`, and the dead-letter queue. Idempotent; run on every (re)connection.
pub async fn declare_topology(
    channel: &Channel,
    topology: &Topology,
    patience: Patience,
) -> Result<(), BridgeError> {
    for (exchange, queue) in [
        (
            &topology.confirmations_exchange,
            &topology.confirmations_queue,
        ),
        (&topology.schedule_exchange, &topology.schedule_queue),
        (&topology.requests_exchange, &topology.requests_queue),
    ] {
        patience
            .step(
                "declaring an exchange",
                crate::declare_topic_exchange(channel, exchange),
            )
            .await?;
        patience
            .step(
                "declaring a queue",
                channel.queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                ),
            )
            .await?;
        patience
            .step(
                "binding a queue",
                channel.queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
    }
    declare_dead_letter_queue(channel, &topology.dead_letter_queue, patience).await
}

/// The long-lived inbound bridge: consumes until `stopped` turns true, reconnecting with
/// exponential backoff (0.5 s doubling to 30 s) whenever the broker goes away. Unacknowledged
/// messages return to their queue when a connection dies, so a restart loses nothing.
pub async fn run_daemon(url: String, inbound: Inbound, mut stopped: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let session = consume(&url, &inbound, &mut backoff);
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            result = session => {
                if let Err(err) = result {
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "inbound bridge disconnected; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn consume(url: &str, inbound: &Inbound, backoff: &mut Duration) -> Result<(), BridgeError> {
    let patience = inbound.patience;
    let conn = patience
        .step(
            "connecting",
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await?;
    let consumed = consume_on(&conn, inbound, backoff).await;
    // It only ends in an error: the connection goes, whether it still answers or not.
    abandon(conn, patience);
    consumed
}

async fn consume_on(
    conn: &Connection,
    inbound: &Inbound,
    backoff: &mut Duration,
) -> Result<(), BridgeError> {
    let patience = inbound.patience;
    let channel = patience
        .step("opening a channel", conn.create_channel())
        .await?;
    declare_topology(&channel, &inbound.topology, patience).await?;
    // Dead letters go out on their own confirming channel.
    let rejects = crate::confirming_channel(conn, patience).await?;
    // Bounded in-flight work: SQS latency, not memory, limits throughput.
    patience
        .step(
            "setting the prefetch",
            channel.basic_qos(32, BasicQosOptions::default()),
        )
        .await?;
    let mut streams = Vec::new();
    for (queue, kind) in inbound.topology.routes() {
        let consumer = patience
            .step(
                "starting to consume",
                channel.basic_consume(
                    queue.into(),
                    format!("dsr-bridge-{}", ulid::Ulid::new()).as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        let queue = queue.to_owned();
        streams.push(consumer.map(move |d| (queue.clone(), kind, d)).boxed());
    }
    tracing::info!(
        confirmations = %inbound.topology.confirmations_queue,
        schedule = %inbound.topology.schedule_queue,
        requests = %inbound.topology.requests_queue,
        "inbound bridge consuming"
    );
    *backoff = Duration::from_millis(500);
    let mut deliveries = futures::stream::select_all(streams);
    let mut probes = tokio::time::interval(patience.probe_every);
    probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probes.tick().await;
    loop {
        let next = tokio::select! {
            next = deliveries.next() => next,
            _ = probes.tick() => {
                // No delivery may mean nothing to do, or a connection that went quiet without
                // closing: ask the broker something (that the queue is still there), bounded.
                if !conn.status().connected() {
                    return Err(BridgeError::Broker("the connection closed".into()));
                }
                patience
                    .step(
                        "checking the connection",
                        channel.queue_declare(
                            inbound.topology.confirmations_queue.as_str().into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        ),
                    )
                    .await?;
                continue;
            }
        };
        let Some((queue, kind, delivery)) = next else {
            break;
        };
        let delivery = delivery.map_err(|e| BridgeError::Broker(e.to_string()))?;
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        let user_id = delivery
            .properties
            .user_id()
            .as_ref()
            .map(|u| u.to_string());
        match validate(kind, &delivery.data, user_id.as_deref()) {
            Ok(checked) => match inbound.forward(checked, message_id.as_deref()).await {
                Ok(()) => {
                    patience
                        .step("acknowledging", delivery.ack(BasicAckOptions::default()))
                        .await?;
                    tracing::info!(
                        request_id = %crate::request_id_in(std::str::from_utf8(&delivery.data).unwrap_or_default()),
                        message_id = message_id.as_deref().unwrap_or_default(),
                        queue = %queue,
                        "forwarded to SQS"
                    );
                    dsr_domain::metrics::emit(dsr_domain::metrics::Metric::count(
                        "BridgeForwarded",
                        1,
                    ));
                }
                Err(err) => {
                    // SQS is down: give the message back and slow down.
                    tracing::warn!(error = %err, queue = %queue, "could not forward to SQS; requeued");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    patience
                        .step(
                            "requeueing",
                            delivery.nack(BasicNackOptions {
                                requeue: true,
                                ..BasicNackOptions::default()
                            }),
                        )
                        .await?;
                }
            },
            Err(reason) => {
                dead_letter(
                    &rejects,
                    &inbound.topology.dead_letter_queue,
                    &delivery.data,
                    &queue,
                    &reason,
                    message_id.as_deref(),
                    patience,
                )
                .await?;
                patience
                    .step("acknowledging", delivery.ack(BasicAckOptions::default()))
                    .await?;
            }
        }
    }
    Err(BridgeError::Broker("the consumer stream ended".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documented_messages_pass() {
        let validate = |kind, body: &[u8]| validate(kind, body, Some("svc-billing"));
        let ok = br#"{"type":"erasure_confirmation","version":1,"message_id":"m","request_id":"01JABCDEFGHJKMNPQRSTVWXYZ0","service":"billing","outcome":"erased","receipt":{"rows":3}}"#;
        assert_eq!(
            validate(InboundKind::Confirmation, ok).unwrap().broker_user,
            "svc-billing"
        );
        let due = br#"{"type":"obligation_due","version":1,"message_id":"m","request_id":"01JABCDEFGHJKMNPQRSTVWXYZ0","service":"billing","attempt":1}"#;
        assert!(validate(InboundKind::Confirmation, due)
            .unwrap_err()
            .contains("only erasure_confirmation"));
        let v2 = String::from_utf8_lossy(ok).replace("\"version\":1", "\"version\":2");
        assert!(validate(InboundKind::Confirmation, v2.as_bytes())
            .unwrap_err()
            .contains("version 2"));
        assert!(validate(InboundKind::Confirmation, b"{oops")
            .unwrap_err()
            .contains("not a confirmation"));
        let schedule = br#"{"action":"cancel","version":1,"key":"k1"}"#;
        assert!(validate(InboundKind::ScheduleRequest, schedule).is_ok());
        assert!(validate(InboundKind::ScheduleRequest, ok).is_err());
        assert!(validate(InboundKind::ScheduleRequest, &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn a_holders_export_answer_goes_to_the_report_function() {
        let validate = |body: &str| {
            validate(
                InboundKind::Confirmation,
                body.as_bytes(),
                Some("svc-ledger"),
            )
        };
        let answer = r#"{"type":"export_answer","version":1,"message_id":"a1","request_id":"01JABCDEFGHJKMNPQRSTVWXYZ0","service":"ledger","job":"01JABCDEFGHJKMNPQRSTVWXYZ1","outcome":"records","records":[{"entry":1}]}"#;
        assert_eq!(validate(answer).unwrap().to, Forward::AccessRequests);
        let confirmation = r#"{"type":"erasure_confirmation","version":1,"message_id":"m","request_id":"01JABCDEFGHJKMNPQRSTVWXYZ0","service":"billing","outcome":"erased"}"#;
        assert_eq!(validate(confirmation).unwrap().to, Forward::Confirmations);
        for (bad, why) in [
            (answer.replace("01JABCDEFGHJKMNPQRSTVWXYZ1", "../x"), "job"),
            (
                answer.replace("\"records\",\"records\"", "\"failed\",\"records\""),
                "carries no records",
            ),
            (
                answer.replace(
                    "\"outcome\":\"records\",\"records\":[{\"entry\":1}]",
                    "\"outcome\":\"failed\"",
                ),
                "reason",
            ),
            (answer.replace("\"job\"", "\"jobs\""), "unknown field"),
        ] {
            let refused = validate(&bad).unwrap_err();
            assert!(refused.contains(why), "{bad}: {refused}");
        }
    }

    #[test]
    fn only_what_sqs_takes_from_a_known_publisher_is_forwarded() {
        let ok = br#"{"action":"cancel","version":1,"key":"k1"}"#;
        let anonymous = validate(InboundKind::ScheduleRequest, ok, None).unwrap_err();
        assert!(anonymous.contains("no user_id"), "{anonymous}");
        let huge = format!(
            r#"{{"action":"cancel","version":1,"key":"k1","pad":"{}"}}"#,
            "x".repeat(MAX_FORWARDED_BYTES)
        );
        let too_big =
            validate(InboundKind::ScheduleRequest, huge.as_bytes(), Some("u")).unwrap_err();
        assert!(
            too_big.contains("at most 256000 are forwarded"),
            "{too_big}"
        );
        let nonchar = "{\"action\":\"cancel\",\"version\":1,\"key\":\"k\u{FFFF}\"}";
        let refused =
            validate(InboundKind::ScheduleRequest, nonchar.as_bytes(), Some("u")).unwrap_err();
        assert!(refused.contains("U+FFFF"), "{refused}");
    }

    #[test]
    fn every_name_lives_under_the_namespace() {
        let t = Topology::new("acme");
        assert_eq!(
            t.kind_of("acme.bridge.confirmations"),
            Some(InboundKind::Confirmation)
        );
        assert_eq!(
            t.kind_of("acme.bridge.schedule"),
            Some(InboundKind::ScheduleRequest)
        );
        assert_eq!(t.kind_of("acme.bridge.dead-letter"), None);
    }
}
