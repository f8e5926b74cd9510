//! The RabbitMQ bridge: the only component that speaks AMQP (lapin).
//!
//! Outbound (this module): messages on the SQS `outbound` queue are published to RabbitMQ topic
//! exchanges, persistent, with their message id, under publisher confirms; an SQS message is
//! acknowledged (deleted) only after the broker confirmed it. Two shapes travel there
//! (`docs/messages.schema.json`): a `RabbitEnvelope` names its exchange and routing key; a
//! `DomainEvent` goes to the events exchange with its type as the routing key.

pub mod inbound;

use dsr_adapters::batch::{Outcome, QueueDriver, RecordHandler};
use dsr_adapters::config::{vars, ConfigError, Env};
use dsr_adapters::dynamodb::DynamoHopLog;
use dsr_domain::hops::{self, CountAs};
use dsr_domain::messages::{EventType, Origin, QueueMessage};
use dsr_domain::metrics::{self, Metric};
use dsr_domain::RequestId;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;
use tokio::sync::Mutex;

/// The request a message is about, for the logs' correlation id ("" when it names none).
pub fn request_id_in(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_default();
    request_id_of(&value).unwrap_or_default().to_owned()
}

fn request_id_of(value: &Value) -> Option<&str> {
    value["request_id"]
        .as_str()
        .or_else(|| value["payload"]["request_id"].as_str())
}

pub const DEFAULT_NAMESPACE: &str = "gdpr";

/// The bridge's three hosts, built from one configuration.
pub struct Bridge {
    /// The outbound Lambda: the SQS `outbound` queue to RabbitMQ.
    pub outbound: QueueDriver<Publisher>,
    /// The inbound side: RabbitMQ to SQS (the daemon, or the Amazon MQ Lambda).
    pub inbound: inbound::Inbound,
    /// Where the inbound Lambda dead-letters on the broker.
    pub dead_letters: inbound::DeadLetters,
    pub rabbitmq_url: String,
}

/// Builds the bridge from its configuration: the same wiring in Lambda, the daemon and the
/// local stack. Queues a host does not use may be unset.
pub fn build(aws: &aws_config::SdkConfig, env: &Env) -> Result<Bridge, ConfigError> {
    let rabbitmq_url = env.secret(vars::RABBITMQ_URL)?.expose().to_owned();
    let sqs = aws_sdk_sqs::Client::new(aws);
    let topology = inbound::Topology::new(
        &env.optional(vars::RABBITMQ_NAMESPACE)
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
    );
    let namespace = env
        .optional(vars::RABBITMQ_NAMESPACE)
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let events_exchange = env
        .optional(vars::EVENTS_EXCHANGE)
        .unwrap_or_else(|| format!("{namespace}.events"));
    // The exchanges it publishes to: the service's events and commands, and the ones delayed
    // dispatch may deliver to for its callers. An envelope naming any other is dead-lettered.
    let callers = dsr_domain::delayed::DispatchPolicy::new(
        env.optional(vars::DELAYED_DISPATCH_CALLERS).as_deref(),
        namespace.clone(),
        Vec::new(),
    )
    .map_err(|e| ConfigError::unusable(vars::DELAYED_DISPATCH_CALLERS, e))?;
    let mut exchanges: HashSet<String> =
        callers.destination_exchanges().map(str::to_owned).collect();
    exchanges.insert(format!("{namespace}.commands"));
    exchanges.insert(events_exchange.clone());
    // The outbound side declares the inbound topology too: with Amazon MQ no daemon runs, and
    // the platform's services must find the bridge's queues bound before their first answer
    // (which can only follow a command this side published).
    let mut publisher = Publisher::new(rabbitmq_url.clone(), events_exchange)
        .publishing_to(exchanges)
        .declaring(topology.clone());
    if let Some(confirmations) = env.optional(vars::CONFIRMATIONS_QUEUE_URL) {
        publisher = publisher.with_receipts(sqs.clone(), confirmations);
    }
    // The outbound side counts what the broker confirmed; the inbound daemon counts nothing.
    if env.optional(vars::OUTBOUND_QUEUE_URL).is_some() {
        publisher = publisher.counting_hops(DynamoHopLog::new(
            aws_sdk_dynamodb::Client::new(aws),
            env.required(vars::HOPS_TABLE)?,
        ));
    }
    Ok(Bridge {
        outbound: QueueDriver::new(
            "bridge",
            publisher,
            sqs.clone(),
            env.optional(vars::OUTBOUND_QUEUE_URL).unwrap_or_default(),
            env.optional(vars::DEAD_LETTER_QUEUE_URL),
        ),
        dead_letters: inbound::DeadLetters::new(rabbitmq_url.clone(), &topology),
        inbound: inbound::Inbound {
            sqs,
            confirmations_queue_url: env
                .optional(vars::CONFIRMATIONS_QUEUE_URL)
                .unwrap_or_default(),
            schedule_requests_queue_url: env
                .optional(vars::SCHEDULE_REQUESTS_QUEUE_URL)
                .unwrap_or_default(),
            access_requests_queue_url: env
                .optional(vars::ACCESS_REQUESTS_QUEUE_URL)
                .unwrap_or_default(),
            submissions_queue_url: env
                .optional(vars::SUBMISSIONS_QUEUE_URL)
                .unwrap_or_default(),
            topology,
            patience: Patience::default(),
        },
        rabbitmq_url,
    })
}

impl Bridge {
    /// The daemon needs every inbound queue.
    pub fn check_inbound(env: &Env) -> Result<(), ConfigError> {
        env.required(vars::CONFIRMATIONS_QUEUE_URL)?;
        env.required(vars::SCHEDULE_REQUESTS_QUEUE_URL)?;
        env.required(vars::ACCESS_REQUESTS_QUEUE_URL)?;
        Ok(())
    }

    /// The Lambda handler: the outbound queue's batches, or Amazon MQ's.
    pub async fn handle_lambda(
        &self,
        event: lambda_runtime::LambdaEvent<Value>,
    ) -> Result<Value, lambda_runtime::Error> {
        if event.payload.get("rmqMessagesByQueue").is_some() {
            let batch = serde_json::from_value(event.payload)?;
            let forwarded = self.inbound.handle_event(batch, &self.dead_letters).await?;
            return Ok(serde_json::json!({ "forwarded": forwarded }));
        }
        let deadline = (event.context.deadline > 0).then(|| event.context.deadline());
        let batch = serde_json::from_value(event.payload)?;
        Ok(serde_json::to_value(
            self.outbound.handle(batch, deadline).await,
        )?)
    }
}

/// A body on the outbound queue: a `RabbitEnvelope` or a `DomainEvent`
/// (`docs/messages.schema.json`), read as JSON and routed by [`route`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(transparent)]
pub struct OutboundMessage(pub Value);

impl QueueMessage for OutboundMessage {
    const VERSION: u32 = 1;
    const NAME: &'static str = "an outbound envelope or event";
    fn version(&self) -> u32 {
        self.0["version"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0)
    }
    fn request_id(&self) -> Option<RequestId> {
        request_id_of(&self.0)?.parse().ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The message can never be published: it breaks the contract.
    #[error("malformed outbound message: {0}")]
    Malformed(String),
    /// The broker is unreachable or refused; worth retrying.
    #[error("broker: {0}")]
    Broker(String),
    /// The broker took it but no queue is bound to receive it (returned as unroutable).
    #[error(
        "unroutable: no queue is bound to exchange `{exchange}` for routing key `{routing_key}`"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

/// How long an unroutable message is retried before it is dead-lettered (the dead-letter
/// queue's alarm then calls an operator; it is kept there for redrive).
pub const UNROUTABLE_DEAD_LETTER_AFTER: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// Where one outbound message goes, and what is published.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub body: Vec<u8>,
    /// Tell the service once the broker confirmed it (a `published` receipt on its
    /// confirmations queue for this request).
    pub receipt_for: Option<RequestId>,
    /// The hop the broker's confirmation stands for (a command, a notice, an announcement),
    /// counted in the hop log.
    pub count: Option<CountAs>,
}

/// Where an outbound message goes: an envelope names its exchange and routing key; an event
/// goes to the events exchange under its type.
pub fn route(message: &OutboundMessage, events_exchange: &str) -> Result<Publication, BridgeError> {
    let value = &message.0;
    let text = |name: &str| -> Result<String, BridgeError> {
        value[name]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| BridgeError::Malformed(format!("no `{name}`")))
    };
    if value.get("exchange").is_some() {
        // A RabbitEnvelope (delayed dispatch, commands): publish its payload as it is.
        let receipt_for = match value.get("receipt") {
            None | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(
                request_id_of(value)
                    .and_then(|id| id.parse().ok())
                    .ok_or_else(|| {
                        BridgeError::Malformed(
                            "a receipt is asked for a payload without a `request_id`".into(),
                        )
                    })?,
            ),
            Some(_) => return Err(BridgeError::Malformed("`receipt` is not a boolean".into())),
        };
        let count = match value.get("count") {
            None => None,
            Some(count) => Some(
                serde_json::from_value::<CountAs>(count.clone())
                    .map_err(|e| BridgeError::Malformed(format!("`count`: {e}")))?,
            ),
        };
        return Ok(Publication {
            exchange: text("exchange")?,
            routing_key: value["routing_key"].as_str().unwrap_or_default().to_owned(),
            message_id: text("message_id")?,
            body: serde_json::to_vec(&value["payload"])
                .map_err(|e| BridgeError::Malformed(e.to_string()))?,
            receipt_for,
            count,
        });
    }
    // A DomainEvent: the whole event, routed by its type; the request's outcome announced.
    let routing_key = text("type")?;
    let count = EventType::parse(&routing_key).and_then(|event| {
        let request = request_id_of(value)?.parse().ok()?;
        event.hop(request)
    });
    Ok(Publication {
        exchange: events_exchange.to_owned(),
        routing_key,
        message_id: text("message_id")?,
        body: serde_json::to_vec(value).map_err(|e| BridgeError::Malformed(e.to_string()))?,
        receipt_for: None,
        count,
    })
}

/// How long the bridge gives the broker to answer one step (opening a connection, a
/// declaration, an acknowledgement, a publication's confirm), and how often a consumer checks
/// that its connection still answers. A connection can go quiet without closing: a broker
/// restarted while a step was under way (the client library does not always fail the step), a
/// broker host gone behind a firewall. Past the limit the bridge takes the connection for dead
/// and opens a new one; without it one such step stalled the inbound bridge for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// The longest one step may take. Generous: a healthy broker answers in milliseconds, and
    /// one under flow control still within seconds.
    pub answer_within: Duration,
    /// How often a consumer asks the broker something, deliveries or not.
    pub probe_every: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Self {
            answer_within: Duration::from_secs(10),
            probe_every: Duration::from_secs(15),
        }
    }
}

impl Patience {
    /// Runs one broker step, bounded by [`Patience::answer_within`]; `what` names it in the error.
    pub async fn step<T>(
        &self,
        what: &str,
        work: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, BridgeError> {
        match tokio::time::timeout(self.answer_within, work).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => Err(BridgeError::Broker(format!("{what}: {err}"))),
            Err(_) => Err(BridgeError::Broker(format!(
                "{what}: the broker did not answer within {} ms; the connection is taken for dead",
                self.answer_within.as_millis()
            ))),
        }
    }
}

/// Lets go of a connection taken for dead: closed in the background, for as long as the broker
/// may take to answer, so a quiet one does not hold up the next message.
pub fn abandon(conn: Connection, patience: Patience) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            patience.answer_within,
            conn.close(320, "abandoned: stopped answering".into()),
        )
        .await;
    });
}

/// Declares a durable topic exchange (idempotent): durable so that the bindings of the
/// platform's consumers survive broker restarts. Every exchange of the contract is one.
pub async fn declare_topic_exchange(channel: &Channel, name: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// A connection and a channel in publisher-confirm mode: every publish here waits for the
/// broker's ack.
pub async fn open_confirming(
    url: &str,
    patience: Patience,
) -> Result<(Connection, Channel), BridgeError> {
    let conn = patience
        .step(
            "connecting",
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await?;
    match confirming_channel(&conn, patience).await {
        Ok(channel) => Ok((conn, channel)),
        Err(err) => {
            abandon(conn, patience);
            Err(err)
        }
    }
}

/// A channel on `conn` in publisher-confirm mode.
pub async fn confirming_channel(
    conn: &Connection,
    patience: Patience,
) -> Result<Channel, BridgeError> {
    let channel = patience
        .step("opening a channel", conn.create_channel())
        .await?;
    patience
        .step(
            "asking for publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
    Ok(channel)
}

/// A confirming channel, (re)opened on demand. Every message is published `mandatory`: one
/// that no queue is bound to receive comes back from the broker and is retried (alarmed),
/// never acknowledged into nothing. While the broker is away messages wait it out without
/// using up their receives (see [`Outcome::WaitOut`]).
pub struct Publisher {
    url: String,
    events_exchange: String,
    /// The exchanges it declares and publishes to; `None`: any (tests of the bridge alone).
    exchanges: Option<HashSet<String>>,
    channel: Mutex<Option<(Connection, Channel, HashSet<String>)>>,
    /// Where publication receipts go (the service's confirmations queue).
    receipts: Option<(aws_sdk_sqs::Client, String)>,
    unroutable_dead_letter_after: std::time::Duration,
    /// Declared on every new connection before anything is published (the Amazon MQ mode, where
    /// no daemon declares the inbound queues the platform's services publish to).
    topology: Option<inbound::Topology>,
    /// Where the hops the broker confirmed are counted (`None`: not counted, as in tests of
    /// the bridge alone).
    hops: Option<DynamoHopLog>,
    patience: Patience,
}

impl Publisher {
    pub fn new(url: impl Into<String>, events_exchange: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            events_exchange: events_exchange.into(),
            exchanges: None,
            channel: Mutex::new(None),
            receipts: None,
            unroutable_dead_letter_after: UNROUTABLE_DEAD_LETTER_AFTER,
            topology: None,
            hops: None,
            patience: Patience::default(),
        }
    }

    /// How long each step with the broker may take before the connection is taken for dead.
    pub fn with_patience(mut self, patience: Patience) -> Self {
        self.patience = patience;
        self
    }

    /// Counts the hops that publications stand for in `hops`, once the broker confirmed them.
    pub fn counting_hops(mut self, hops: DynamoHopLog) -> Self {
        self.hops = Some(hops);
        self
    }

    /// Sends publication receipts to this queue (the confirmations queue).
    pub fn with_receipts(mut self, sqs: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        self.receipts = Some((sqs, queue_url.into()));
        self
    }

    /// Dead-letters an unroutable message after it was retried this long.
    pub fn with_unroutable_dead_letter_after(mut self, after: std::time::Duration) -> Self {
        self.unroutable_dead_letter_after = after;
        self
    }

    /// Declares the bridge's whole topology (exchanges, inbound queues, bindings) on every new
    /// connection.
    pub fn declaring(mut self, topology: inbound::Topology) -> Self {
        self.topology = Some(topology);
        self
    }

    /// Publishes only to these exchanges (and the events exchange).
    pub fn publishing_to(mut self, exchanges: HashSet<String>) -> Self {
        let mut exchanges = exchanges;
        exchanges.insert(self.events_exchange.clone());
        self.exchanges = Some(exchanges);
        self
    }

    /// Whether it publishes to `exchange`: one of its own or a delayed-dispatch destination,
    /// never one named only by a message (the outbound queue is not a way onto any exchange).
    pub fn publishes_to(&self, exchange: &str) -> bool {
        self.exchanges
            .as_ref()
            .is_none_or(|allowed| allowed.contains(exchange))
    }

    pub fn events_exchange(&self) -> &str {
        &self.events_exchange
    }

    pub async fn publish(&self, publication: &Publication) -> Result<(), BridgeError> {
        let mut guard = self.channel.lock().await;
        let published = self.publish_on(&mut guard, publication).await;
        if matches!(published, Err(BridgeError::Broker(_))) {
            // Whatever failed, the next message starts on a new connection: one that stopped
            // answering would otherwise hold every later message (and a retry of this one).
            if let Some((conn, ..)) = guard.take() {
                abandon(conn, self.patience);
            }
        }
        published
    }

    async fn publish_on(
        &self,
        connection: &mut Option<(Connection, Channel, HashSet<String>)>,
        publication: &Publication,
    ) -> Result<(), BridgeError> {
        let patience = self.patience;
        let healthy = connection.as_ref().is_some_and(|(conn, channel, _)| {
            conn.status().connected() && channel.status().connected()
        });
        if !healthy {
            if let Some((conn, ..)) = connection.take() {
                abandon(conn, patience);
            }
            let (conn, channel) = open_confirming(&self.url, patience).await?;
            if let Some(topology) = &self.topology {
                if let Err(err) = inbound::declare_topology(&channel, topology, patience).await {
                    abandon(conn, patience);
                    return Err(err);
                }
            }
            *connection = Some((conn, channel, HashSet::new()));
        }
        let Some((_, channel, declared)) = connection.as_mut() else {
            return Err(BridgeError::Broker("no channel".into()));
        };
        if !declared.contains(&publication.exchange) {
            patience
                .step(
                    "declaring the exchange",
                    declare_topic_exchange(channel, &publication.exchange),
                )
                .await?;
            declared.insert(publication.exchange.clone());
        }
        let confirm = patience
            .step("publishing under confirm", async {
                channel
                    .basic_publish(
                        publication.exchange.as_str().into(),
                        publication.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &publication.body,
                        BasicProperties::default()
                            .with_message_id(publication.message_id.as_str().into())
                            .with_content_type("application/json".into())
                            .with_delivery_mode(2),
                    )
                    .await?
                    .await
            })
            .await?;
        match confirm {
            lapin::Confirmation::Ack(None) => Ok(()),
            lapin::Confirmation::Ack(Some(_)) | lapin::Confirmation::Nack(Some(_)) => {
                Err(BridgeError::Unroutable {
                    exchange: publication.exchange.clone(),
                    routing_key: publication.routing_key.clone(),
                })
            }
            _ => Err(BridgeError::Broker(
                "the broker did not confirm the message".into(),
            )),
        }
    }

    /// Tells the service that the broker confirmed `publication`.
    async fn send_receipt(
        &self,
        publication: &Publication,
        request_id: RequestId,
    ) -> Result<(), String> {
        let Some((sqs, queue_url)) = &self.receipts else {
            return Err("a receipt is asked for, but the bridge has no confirmations queue (CONFIRMATIONS_QUEUE_URL)".into());
        };
        let receipt = dsr_domain::erasure::ConfirmationsMessage::Published(
            dsr_domain::erasure::Published::new(
                publication.message_id.clone(),
                request_id,
                chrono::Utc::now(),
            ),
        );
        let body = serde_json::to_string(&receipt).map_err(|e| e.to_string())?;
        sqs.send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        Ok(())
    }
}

/// The outbound queue: each message is acknowledged only once the broker confirmed it; a
/// malformed one is dead-lettered with the reason.
impl RecordHandler for Publisher {
    type Message = OutboundMessage;

    async fn handle(&self, message: OutboundMessage, _: &Origin) -> Outcome {
        let publication = match route(&message, &self.events_exchange) {
            Ok(publication) => publication,
            Err(err) => return Outcome::Reject(err.to_string()),
        };
        if !self.publishes_to(&publication.exchange) {
            return Outcome::Reject(format!(
                "exchange `{}` is not one the bridge publishes to (its events and commands exchanges and the delayed-dispatch callers' destinations)",
                publication.exchange
            ));
        }
        match self.publish(&publication).await {
            Ok(()) => {
                tracing::info!(
                    message_id = %publication.message_id,
                    exchange = %publication.exchange,
                    routing_key = %publication.routing_key,
                    "published to RabbitMQ"
                );
                metrics::emit(Metric::count("BridgePublished", 1));
                dsr_domain::kill_point::reached("bridge.published");
                if let Some(request_id) = publication.receipt_for {
                    if let Err(err) = self.send_receipt(&publication, request_id).await {
                        // Published but not told: it is published again (consumers dedupe by
                        // message id) until the receipt is out.
                        tracing::error!(message_id = %publication.message_id, error = %err, "publication receipt not sent");
                        return Outcome::Retry(Some(dsr_adapters::batch::RETRY_SOON));
                    }
                }
                if let (Some(count), Some(log)) = (&publication.count, &self.hops) {
                    if let Err(err) = hops::take(log, count.mark(chrono::Utc::now())).await {
                        // Published but not counted: the same, until it is (the count is
                        // keyed by request and hop, so it lands once).
                        tracing::error!(message_id = %publication.message_id, error = %err, "published hop not counted");
                        return Outcome::Retry(Some(dsr_adapters::batch::RETRY_SOON));
                    }
                }
                Outcome::Done
            }
            Err(err @ BridgeError::Unroutable { .. }) => {
                // The line operators alert on: a holder's queue is not bound, or nobody listens.
                tracing::error!(
                    message_id = %publication.message_id,
                    exchange = %publication.exchange,
                    routing_key = %publication.routing_key,
                    alert = "outbound_unroutable",
                    "{err}"
                );
                metrics::emit(
                    Metric::count("BridgeUnroutable", 1)
                        .with("Exchange", publication.exchange.clone()),
                );
                Outcome::WaitOut {
                    reason: err.to_string(),
                    dead_letter_after: Some(self.unroutable_dead_letter_after),
                }
            }
            Err(err) => {
                // The broker is away: not the message's fault, it waits without limit.
                metrics::emit(Metric::count("BridgeBrokerUnavailable", 1));
                Outcome::WaitOut {
                    reason: err.to_string(),
                    dead_letter_after: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> Result<OutboundMessage, String> {
        dsr_domain::messages::parse::<OutboundMessage>(body)
    }

    #[test]
    fn envelopes_and_events_are_routed_and_garbage_is_refused() {
        let envelope = r#"{"version":1,"message_id":"k1","exchange":"gdpr.commands","routing_key":"email.erase","payload":{"a":1}}"#;
        let p = route(&read(envelope).unwrap(), "gdpr.events").unwrap();
        assert_eq!(
            (
                p.exchange.as_str(),
                p.routing_key.as_str(),
                p.message_id.as_str()
            ),
            ("gdpr.commands", "email.erase", "k1")
        );
        assert_eq!(p.body, br#"{"a":1}"#);

        let event = r#"{"version":1,"message_id":"report_ready:01","type":"report_ready","request_id":"01","subject":"s","occurred_at":"t","detail":{}}"#;
        let p = route(&read(event).unwrap(), "gdpr.events").unwrap();
        assert_eq!(
            (p.exchange.as_str(), p.routing_key.as_str()),
            ("gdpr.events", "report_ready")
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&p.body).unwrap(),
            serde_json::from_str::<Value>(event).unwrap()
        );

        assert!(read("not json").is_err());
        assert!(read(r#"{"version":2,"type":"x","message_id":"m"}"#)
            .unwrap_err()
            .contains("version 2"));
        assert!(matches!(
            route(&read(r#"{"version":1,"type":"x"}"#).unwrap(), "e"),
            Err(BridgeError::Malformed(_))
        ));
    }
}
