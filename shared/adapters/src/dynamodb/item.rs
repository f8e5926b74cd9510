//! Reading and writing items: attribute values, timestamps that sort as strings, and the
//! errors a stored item that does not read back becomes. Shared by every store on DynamoDB.

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use chrono::{DateTime, SecondsFormat, Utc};
use dsr_domain::StoreError;
use std::collections::HashMap;

pub type Item = HashMap<String, AttributeValue>;

pub fn put(
    table: &str,
    item: Item,
    condition: Option<&str>,
) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .set_condition_expression(condition.map(str::to_owned))
        .build()
        .map_err(unavailable)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub fn n(value: u32) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Fixed-width UTC timestamps sort as strings, which the `ByStateDue` index relies on.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn unavailable(err: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    // Kept whole: the SDK's Display is terse ("service error"), its causes name the problem.
    StoreError::Unavailable(Box::new(err))
}

/// A timestamp attribute that may be absent.
pub fn optional_time(item: &Item, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| corrupt(item, format!("{name}: {e}")))
        })
        .transpose()
}

pub fn number_attr<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(raw)) => raw
            .parse()
            .map(Some)
            .map_err(|_| corrupt(item, format!("`{name}` is not a number"))),
        Some(_) => Err(corrupt(item, format!("`{name}` is not a number"))),
    }
}

pub fn string_attr<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| corrupt(item, format!("missing string attribute `{name}`")))
}

pub fn corrupt(item: &Item, reason: String) -> StoreError {
    let id = item
        .get("pk")
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default();
    StoreError::Corrupt { id, reason }
}

/// Whether a conditional write was refused because its condition did not hold (as opposed to
/// the store being unreachable).
pub fn conditional_failed<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "ConditionalCheckFailedException")
}
