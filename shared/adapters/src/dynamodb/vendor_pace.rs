//! A third party's rate limit, held across every function instance: one item per vendor in the
//! requests table (`pk = PACE#<service>, sk = PACE`) with the time its next call may start.
//! A call takes the next free slot with a conditional write on the value it read (the generic
//! cell rate algorithm without bursts: calls are spaced `1 / max_per_second` apart, whichever
//! instance makes them). A slot further away than a call may wait is not taken: the command is
//! deferred through delayed dispatch instead of holding a function instance.

use super::item::conditional_failed;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use dsr_domain::ports::StoreError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the limiter gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Start the call then (now, or within the most a call may wait).
    At(SystemTime),
    /// The next free slot is this far away: try again then.
    Later(Duration),
}

/// The sort key of a vendor's pace item.
const SORT: &str = "PACE";

#[derive(Clone, Debug)]
pub struct DynamoVendorPace {
    client: Client,
    table: String,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl DynamoVendorPace {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Takes `vendor`'s next slot (`per_second` calls a second at most, across instances), if
    /// it is at most `most_wait` away.
    pub async fn take(
        &self,
        vendor: &str,
        per_second: u32,
        most_wait: Duration,
    ) -> Result<Slot, StoreError> {
        let spacing = (1000 / u64::from(per_second.max(1))).max(1);
        let pk = format!("PACE#{vendor}");
        let at = |ms: u64| Slot::At(UNIX_EPOCH + Duration::from_millis(ms));
        // The common case, a vendor not called within the last spacing: one conditional write
        // takes the slot at once, without reading first.
        let now = millis(SystemTime::now());
        let free = "attribute_not_exists(next_call_ms) OR next_call_ms <= :now";
        if self
            .claim(&pk, now + spacing, free, Some((":now", now)))
            .await?
        {
            return Ok(at(now));
        }
        // Taken for now: read when the next slot is, and take that one (contention between
        // instances only ever moves it on: a handful of tries).
        for _ in 0..16 {
            let read = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("pk", AttributeValue::S(pk.clone()))
                .key("sk", AttributeValue::S(SORT.into()))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
            let next = read
                .item()
                .and_then(|item| item.get("next_call_ms"))
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<u64>().ok());
            let now = millis(SystemTime::now());
            let slot = next.unwrap_or(0).max(now);
            let wait = Duration::from_millis(slot - now);
            if wait > most_wait {
                return Ok(Slot::Later(wait));
            }
            let claimed = match next {
                Some(seen) => {
                    self.claim(
                        &pk,
                        slot + spacing,
                        "next_call_ms = :seen",
                        Some((":seen", seen)),
                    )
                    .await?
                }
                None => {
                    self.claim(
                        &pk,
                        slot + spacing,
                        "attribute_not_exists(next_call_ms)",
                        None,
                    )
                    .await?
                }
            };
            if claimed {
                return Ok(at(slot));
            }
        }
        // Many instances at once: the slot went to others each time; come back a little later.
        Ok(Slot::Later(Duration::from_millis(spacing * 16)))
    }

    /// Sets the vendor's next free time to `next` if `condition` (with its one value) holds:
    /// whether it did.
    async fn claim(
        &self,
        pk: &str,
        next: u64,
        condition: &str,
        value: Option<(&str, u64)>,
    ) -> Result<bool, StoreError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.to_owned()))
            .key("sk", AttributeValue::S(SORT.into()))
            .update_expression("SET next_call_ms = :next")
            .condition_expression(condition)
            .expression_attribute_values(":next", AttributeValue::N(next.to_string()));
        if let Some((name, value)) = value {
            update = update.expression_attribute_values(name, AttributeValue::N(value.to_string()));
        }
        match update.send().await {
            Ok(_) => Ok(true),
            Err(err) if conditional_failed(&err) => Ok(false),
            Err(err) => Err(StoreError::Unavailable(Box::new(err))),
        }
    }
}
