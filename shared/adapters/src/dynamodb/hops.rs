//! The hop log on DynamoDB: a table of its own (`HopsTable` in template.yaml), written by each
//! component as it takes a hop, never derived from the requests table.
//!
//! - `pk = <kind>#<hour>` (`access#2026-11-30T10`): one window, read in one query.
//! - `sk = <hop>#<request>[#<service>]`, or `submitted#<click>` for a click: one item per hop
//!   of a request. Every hop is its own item, so no item is hot; a repeated hop (a redelivery)
//!   updates its item (`times`, `last_at`) and counts once.
//! - `expires_at`: the table's TTL, [`RETENTION_DAYS`] after the hop.

use super::item::*;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use dsr_domain::hops::{Click, ClickOutcome, Hop, HopLog, HopMark};
use dsr_domain::{RequestKind, ServiceName, StoreError};

/// How long hop marks are kept: long enough to compare any window of a request's legal
/// deadline (one month, extensible by two).
pub const RETENTION_DAYS: i64 = 100;

#[derive(Clone, Debug)]
pub struct DynamoHopLog {
    client: Client,
    table: String,
}

/// The window's partition key.
pub fn window_key(kind: RequestKind, hour: DateTime<Utc>) -> String {
    format!("{}#{}", kind.as_str(), hour.format("%Y-%m-%dT%H"))
}

impl DynamoHopLog {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn expires_at(at: DateTime<Utc>) -> AttributeValue {
        AttributeValue::N(
            (at + chrono::Duration::days(RETENTION_DAYS))
                .timestamp()
                .to_string(),
        )
    }

    /// A new request's click, as one more item of the submission's transaction: accepted and
    /// counted together, or neither.
    pub fn created(&self, mark: &HopMark) -> Result<TransactWriteItem, StoreError> {
        let mut item = Item::from([
            ("pk".into(), s(window_key(mark.kind, mark.hour()))),
            ("sk".into(), s(mark.key())),
            ("request".into(), s(mark.request.to_string())),
            ("first_at".into(), s(timestamp(mark.first_at))),
            ("last_at".into(), s(timestamp(mark.last_at))),
            ("times".into(), n(1)),
            ("expires_at".into(), Self::expires_at(mark.first_at)),
        ]);
        if let Some(click) = mark.click {
            item.insert("outcome".into(), s(click.outcome.as_str()));
        }
        put(&self.table, item, None)
    }
}

fn mark_from_item(kind: RequestKind, item: &Item) -> Result<HopMark, StoreError> {
    let sk = string_attr(item, "sk")?;
    let mut parts = sk.split('#');
    let hop = parts
        .next()
        .and_then(Hop::parse)
        .ok_or_else(|| corrupt(item, format!("unknown hop in `{sk}`")))?;
    let id = |raw: &str| {
        raw.parse()
            .map_err(|e: dsr_domain::RequestIdError| corrupt(item, e.to_string()))
    };
    let request = id(string_attr(item, "request")?)?;
    let first_at =
        optional_time(item, "first_at")?.ok_or_else(|| corrupt(item, "no first_at".into()))?;
    let mut mark = HopMark::new(kind, hop, request, first_at);
    mark.last_at = optional_time(item, "last_at")?.unwrap_or(first_at);
    mark.times = number_attr(item, "times")?.unwrap_or(1);
    mark.erase_last = matches!(item.get("erase_last"), Some(AttributeValue::Bool(true)));
    if let Some(AttributeValue::S(service)) = item.get("service") {
        mark.service = Some(ServiceName::parse(service).map_err(|e| corrupt(item, e.to_string()))?);
    }
    if hop == Hop::Submitted {
        let click = id(parts.next().unwrap_or_default())?;
        let outcome = item
            .get("outcome")
            .and_then(|v| v.as_s().ok())
            .and_then(|raw| ClickOutcome::parse(raw))
            .ok_or_else(|| corrupt(item, "a click without its outcome".into()))?;
        mark.click = Some(Click { id: click, outcome });
    }
    Ok(mark)
}

impl HopLog for DynamoHopLog {
    async fn mark(&self, mark: &HopMark) -> Result<(), StoreError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(window_key(mark.kind, mark.hour())))
            .key("sk", s(mark.key()))
            .expression_attribute_values(":request", s(mark.request.to_string()))
            .expression_attribute_values(":first", s(timestamp(mark.first_at)))
            .expression_attribute_values(":last", s(timestamp(mark.last_at)))
            .expression_attribute_values(":expires", Self::expires_at(mark.last_at))
            .expression_attribute_values(":one", n(1))
            // Attribute names that may be reserved words are always written as placeholders.
            .expression_attribute_names("#request", "request")
            .expression_attribute_names("#times", "times");
        let mut set = vec![
            "#request = :request",
            "first_at = if_not_exists(first_at, :first)",
            "last_at = :last",
            "expires_at = :expires",
        ];
        if let Some(service) = &mark.service {
            set.push("#service = :service");
            update = update.expression_attribute_names("#service", "service");
            update = update.expression_attribute_values(":service", s(service.as_str()));
        }
        if mark.erase_last {
            set.push("erase_last = :last_service");
            update =
                update.expression_attribute_values(":last_service", AttributeValue::Bool(true));
        }
        if let Some(click) = mark.click {
            set.push("#outcome = :outcome");
            update = update.expression_attribute_names("#outcome", "outcome");
            update = update.expression_attribute_values(":outcome", s(click.outcome.as_str()));
        }
        update
            .update_expression(format!("SET {} ADD #times :one", set.join(", ")))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn window(
        &self,
        kind: RequestKind,
        hour: DateTime<Utc>,
    ) -> Result<Vec<HopMark>, StoreError> {
        let mut marks = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :window")
                .expression_attribute_values(":window", s(window_key(kind, hour)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            for item in page.items() {
                marks.push(mark_from_item(kind, item)?);
            }
            match page.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(marks),
            }
        }
    }
}
