//! Delayed messages in DynamoDB (template.yaml `DelayedMessagesTable`): one item per key,
//! indexed by `status` + `deliver_at` (GSI `ByStatusDue`) so a sweep finds what is due. Every
//! change of status is a conditional write; dispatched and cancelled items expire by TTL.

use super::item::{conditional_failed, s, timestamp, Item};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use dsr_domain::delayed::{
    CancelOutcome, DelayKey, DelayedMessage, DelayedStore, DispatchError, ScheduleOutcome,
};
use std::collections::HashMap;

pub const BY_STATUS_DUE_INDEX: &str = "ByStatusDue";

#[derive(Clone, Debug)]
pub struct DynamoDelayedStore {
    client: Client,
    table: String,
}

impl DynamoDelayedStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    async fn read(&self, key: &DelayKey) -> Result<Option<Item>, DispatchError> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.table)
            .key("key", s(key.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(fail)?
            .item)
    }

    async fn query_due(
        &self,
        status: &str,
        now: &str,
        expired_claims_only: bool,
        limit: usize,
        found: &mut Vec<DelayedMessage>,
    ) -> Result<(), DispatchError> {
        let mut start = None;
        while found.len() < limit {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_STATUS_DUE_INDEX)
                .key_condition_expression("#status = :status AND deliver_at <= :now")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", s(status))
                .expression_attribute_values(":now", s(now))
                .set_exclusive_start_key(start.take());
            if expired_claims_only {
                query = query.filter_expression("claimed_until < :now");
            }
            let page = query.send().await.map_err(fail)?;
            for item in page.items() {
                found.push(message_from_item(item)?);
            }
            match page.last_evaluated_key {
                Some(key) => start = Some(key),
                None => break,
            }
        }
        found.truncate(limit);
        Ok(())
    }
}

impl DelayedStore for DynamoDelayedStore {
    async fn upsert(&self, message: &DelayedMessage) -> Result<ScheduleOutcome, DispatchError> {
        // Most keys are new (every watchdog check has its own): create first, one conditional
        // write and no read; only a key that exists is read.
        let created = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from_message(message)?))
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", "key")
            .send()
            .await;
        match created {
            Ok(_) => return Ok(ScheduleOutcome::Created),
            Err(err) if conditional_failed(&err) => {}
            Err(err) => return Err(fail(err)),
        }
        // The key exists: read, decide, write conditioned on what was read; a concurrent change
        // makes the condition fail and the loop decide again.
        for _ in 0..5 {
            let current = self.read(&message.key).await?;
            let (outcome, condition, seen) = match &current {
                None => (ScheduleOutcome::Created, "attribute_not_exists(#key)", None),
                Some(item) => {
                    let status = string(item, "status")?;
                    if status == "dispatched" || status == "dispatching" {
                        return Ok(if message_from_item(item)? == *message {
                            ScheduleOutcome::AlreadyDispatched
                        } else {
                            ScheduleOutcome::KeySpent
                        });
                    }
                    if status == "scheduled" && message_from_item(item)? == *message {
                        return Ok(ScheduleOutcome::Unchanged);
                    }
                    (
                        ScheduleOutcome::Moved,
                        "#status = :seen_status AND deliver_at = :seen_at",
                        Some((status.to_owned(), string(item, "deliver_at")?.to_owned())),
                    )
                }
            };
            let mut put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item_from_message(message)?))
                .condition_expression(condition);
            put = match &seen {
                None => put.expression_attribute_names("#key", "key"),
                Some((status, at)) => put
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":seen_status", s(status))
                    .expression_attribute_values(":seen_at", s(at)),
            };
            match put.send().await {
                Ok(_) => return Ok(outcome),
                Err(err) if conditional_failed(&err) => continue,
                Err(err) => return Err(fail(err)),
            }
        }
        Err(DispatchError(
            format!(
                "{} kept changing while being scheduled",
                message.key.as_str()
            )
            .into(),
        ))
    }

    async fn cancel(&self, key: &DelayKey) -> Result<CancelOutcome, DispatchError> {
        let forget_at = Utc::now() + chrono::Duration::days(7);
        let cancelled = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("key", s(key.as_str()))
            .update_expression("SET #status = :cancelled, expires_at = :forget")
            .condition_expression("#status = :scheduled")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":cancelled", s("cancelled"))
            .expression_attribute_values(":scheduled", s("scheduled"))
            .expression_attribute_values(
                ":forget",
                AttributeValue::N(forget_at.timestamp().to_string()),
            )
            .send()
            .await;
        match cancelled {
            Ok(_) => Ok(CancelOutcome::Cancelled),
            Err(err) if conditional_failed(&err) => Ok(match self.read(key).await? {
                None => CancelOutcome::NotFound,
                Some(item) if string(&item, "status")? == "cancelled" => CancelOutcome::Cancelled,
                Some(_) => CancelOutcome::AlreadyDispatched,
            }),
            Err(err) => Err(fail(err)),
        }
    }

    async fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DelayedMessage>, DispatchError> {
        let now = timestamp(now);
        let mut found = Vec::new();
        // Claims that ran out first: their sender died between send and mark.
        self.query_due("dispatching", &now, true, limit, &mut found)
            .await?;
        self.query_due("scheduled", &now, false, limit, &mut found)
            .await?;
        Ok(found)
    }

    async fn claim(
        &self,
        message: &DelayedMessage,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, DispatchError> {
        let claimed = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("key", s(message.key.as_str()))
            .update_expression("SET #status = :dispatching, claimed_until = :until")
            .condition_expression(
                "deliver_at = :at AND (#status = :scheduled OR (#status = :dispatching AND claimed_until < :now))",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":dispatching", s("dispatching"))
            .expression_attribute_values(":scheduled", s("scheduled"))
            .expression_attribute_values(":until", s(timestamp(until)))
            .expression_attribute_values(":now", s(timestamp(now)))
            .expression_attribute_values(":at", s(timestamp(message.deliver_at)))
            .send()
            .await;
        match claimed {
            Ok(_) => Ok(true),
            Err(err) if conditional_failed(&err) => Ok(false),
            Err(err) => Err(fail(err)),
        }
    }

    async fn release_claim(
        &self,
        message: &DelayedMessage,
        held_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, DispatchError> {
        // Still `dispatching` (a key whose send may have arrived stays spent), but claimable.
        let released = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("key", s(message.key.as_str()))
            .update_expression("SET claimed_until = :released")
            .condition_expression(
                "#status = :dispatching AND claimed_until = :held AND deliver_at = :at",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":dispatching", s("dispatching"))
            .expression_attribute_values(":held", s(timestamp(held_until)))
            .expression_attribute_values(
                ":released",
                s(timestamp(now - chrono::Duration::milliseconds(1))),
            )
            .expression_attribute_values(":at", s(timestamp(message.deliver_at)))
            .send()
            .await;
        match released {
            Ok(_) => Ok(true),
            Err(err) if conditional_failed(&err) => Ok(false),
            Err(err) => Err(fail(err)),
        }
    }

    async fn mark_dispatched(
        &self,
        message: &DelayedMessage,
        forget_at: DateTime<Utc>,
    ) -> Result<bool, DispatchError> {
        let marked = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("key", s(message.key.as_str()))
            .update_expression(
                "SET #status = :dispatched, expires_at = :forget, dispatched_at = :now REMOVE claimed_until",
            )
            .condition_expression("#status = :dispatching AND deliver_at = :at")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":dispatched", s("dispatched"))
            .expression_attribute_values(":dispatching", s("dispatching"))
            .expression_attribute_values(":at", s(timestamp(message.deliver_at)))
            .expression_attribute_values(":now", s(timestamp(Utc::now())))
            .expression_attribute_values(":forget", AttributeValue::N(forget_at.timestamp().to_string()))
            .send()
            .await;
        match marked {
            Ok(_) => Ok(true),
            Err(err) if conditional_failed(&err) => Ok(false),
            Err(err) => Err(fail(err)),
        }
    }
}

fn fail(err: impl std::error::Error + Send + Sync + 'static) -> DispatchError {
    DispatchError(Box::new(err))
}

fn string<'a>(item: &'a Item, name: &str) -> Result<&'a str, DispatchError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| DispatchError(format!("stored delayed message lacks `{name}`").into()))
}

fn item_from_message(message: &DelayedMessage) -> Result<Item, DispatchError> {
    let destination =
        serde_json::to_string(&message.destination).map_err(|e| DispatchError(e.into()))?;
    let payload = serde_json::to_string(&message.payload).map_err(|e| DispatchError(e.into()))?;
    Ok(HashMap::from([
        ("key".to_owned(), s(message.key.as_str())),
        ("deliver_at".to_owned(), s(timestamp(message.deliver_at))),
        ("status".to_owned(), s("scheduled")),
        ("destination".to_owned(), s(destination)),
        ("payload".to_owned(), s(payload)),
    ]))
}

fn message_from_item(item: &Item) -> Result<DelayedMessage, DispatchError> {
    let parse =
        |e: &dyn std::fmt::Display| DispatchError(format!("stored delayed message: {e}").into());
    Ok(DelayedMessage {
        key: DelayKey::stored(string(item, "key")?).map_err(|e| parse(&e))?,
        deliver_at: DateTime::parse_from_rfc3339(string(item, "deliver_at")?)
            .map_err(|e| parse(&e))?
            .with_timezone(&Utc),
        destination: serde_json::from_str(string(item, "destination")?).map_err(|e| parse(&e))?,
        payload: serde_json::from_str(string(item, "payload")?).map_err(|e| parse(&e))?,
    })
}
