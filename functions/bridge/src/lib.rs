//! The RabbitMQ bridge: the only component that speaks AMQP (lapin).
//!
//! Outbound (this module): messages on the SQS `outbound` queue are published to RabbitMQ topic
//! exchanges, persistent, with their message id, under publisher confirms; an SQS message is
//! acknowledged (deleted) only after the broker confirmed it. Two shapes travel there
//! (`docs/messages.schema.json`): a `RabbitEnvelope` names its exchange and routing key; a
//! `DomainEvent` goes to the events exchange with its type as the routing key.

pub mod inbound;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use dsr_domain::metrics::{self, Metric};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use std::collections::HashSet;
use tokio::sync::Mutex;

pub const RABBITMQ_URL: &str = "RABBITMQ_URL";

/// The request a message is about, for the logs' correlation id ("" when it names none).
pub fn request_id_in(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_default();
    value["request_id"]
        .as_str()
        .or_else(|| value["payload"]["request_id"].as_str())
        .unwrap_or_default()
        .to_owned()
}
pub const EVENTS_EXCHANGE: &str = "EVENTS_EXCHANGE";
pub const DEFAULT_EVENTS_EXCHANGE: &str = "gdpr.events";

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The message can never be published: it breaks the contract.
    #[error("malformed outbound message: {0}")]
    Malformed(String),
    /// The broker is unreachable or refused; worth retrying.
    #[error("broker: {0}")]
    Broker(String),
}

/// Where one outbound message goes, and what is published.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub body: Vec<u8>,
}

/// Reads an outbound SQS body as one of the documented shapes.
pub fn route(body: &str, events_exchange: &str) -> Result<Publication, BridgeError> {
    let value: Value =
        serde_json::from_str(body).map_err(|e| BridgeError::Malformed(e.to_string()))?;
    let text = |name: &str| -> Result<String, BridgeError> {
        value[name]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| BridgeError::Malformed(format!("no `{name}`")))
    };
    if value["version"] != 1 {
        return Err(BridgeError::Malformed(format!(
            "unknown version {}",
            value["version"]
        )));
    }
    if value.get("exchange").is_some() {
        // A RabbitEnvelope (delayed dispatch, commands): publish its payload as it is.
        return Ok(Publication {
            exchange: text("exchange")?,
            routing_key: value["routing_key"].as_str().unwrap_or_default().to_owned(),
            message_id: text("message_id")?,
            body: serde_json::to_vec(&value["payload"])
                .map_err(|e| BridgeError::Malformed(e.to_string()))?,
        });
    }
    // A DomainEvent: the whole event, routed by its type.
    Ok(Publication {
        exchange: events_exchange.to_owned(),
        routing_key: text("type")?,
        message_id: text("message_id")?,
        body: body.as_bytes().to_vec(),
    })
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
pub(crate) async fn open_confirming(url: &str) -> Result<(Connection, Channel), BridgeError> {
    let broker = |e: lapin::Error| BridgeError::Broker(e.to_string());
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(broker)?;
    let channel = conn.create_channel().await.map_err(broker)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker)?;
    Ok((conn, channel))
}

/// A confirming channel, (re)opened on demand: a broker restart costs one failed batch, which
/// SQS delivers again.
pub struct Publisher {
    url: String,
    events_exchange: String,
    channel: Mutex<Option<(Connection, Channel, HashSet<String>)>>,
}

impl Publisher {
    pub fn new(url: impl Into<String>, events_exchange: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            events_exchange: events_exchange.into(),
            channel: Mutex::new(None),
        }
    }

    pub fn events_exchange(&self) -> &str {
        &self.events_exchange
    }

    pub async fn publish(&self, publication: &Publication) -> Result<(), BridgeError> {
        let broker = |e: lapin::Error| BridgeError::Broker(e.to_string());
        let mut guard = self.channel.lock().await;
        let healthy = guard.as_ref().is_some_and(|(conn, channel, _)| {
            conn.status().connected() && channel.status().connected()
        });
        if !healthy {
            let (conn, channel) = open_confirming(&self.url).await?;
            *guard = Some((conn, channel, HashSet::new()));
        }
        let Some((_, channel, declared)) = guard.as_mut() else {
            return Err(BridgeError::Broker("no channel".into()));
        };
        if !declared.contains(&publication.exchange) {
            declare_topic_exchange(channel, &publication.exchange)
                .await
                .map_err(broker)?;
            declared.insert(publication.exchange.clone());
        }
        let confirm = channel
            .basic_publish(
                publication.exchange.as_str().into(),
                publication.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &publication.body,
                BasicProperties::default()
                    .with_message_id(publication.message_id.as_str().into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await
            .map_err(broker)?
            .await
            .map_err(broker)?;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err(BridgeError::Broker(
                "the broker did not confirm the message".into(),
            ))
        }
    }

    /// The outbound Lambda handler: each record is acknowledged only once the broker confirmed
    /// it; a malformed record fails alone and reaches the outbound DLQ through SQS's redrive.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let published = match route(
                record.body.as_deref().unwrap_or_default(),
                &self.events_exchange,
            ) {
                Ok(publication) => self.publish(&publication).await.map(|()| publication),
                Err(err) => Err(err),
            };
            match published {
                Ok(publication) => {
                    tracing::info!(
                        request_id = %request_id_in(record.body.as_deref().unwrap_or_default()),
                        message_id = %publication.message_id,
                        exchange = %publication.exchange,
                        routing_key = %publication.routing_key,
                        "published to RabbitMQ"
                    );
                    metrics::emit(Metric::count("BridgePublished", 1));
                }
                Err(err) => {
                    tracing::warn!(sqs_message_id = %id, reason = %err, "outbound message not published");
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = id;
                    response.batch_item_failures.push(failure);
                }
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_and_events_are_routed_and_garbage_is_refused() {
        let envelope = r#"{"version":1,"message_id":"k1","exchange":"gdpr.commands","routing_key":"email.erase","payload":{"a":1}}"#;
        let p = route(envelope, "gdpr.events").unwrap();
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
        let p = route(event, "gdpr.events").unwrap();
        assert_eq!(
            (p.exchange.as_str(), p.routing_key.as_str()),
            ("gdpr.events", "report_ready")
        );
        assert_eq!(p.body, event.as_bytes());

        for bad in [
            "not json",
            r#"{"version":2,"type":"x","message_id":"m"}"#,
            r#"{"version":1,"type":"x"}"#,
        ] {
            assert!(
                matches!(route(bad, "e"), Err(BridgeError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
