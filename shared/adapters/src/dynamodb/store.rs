//! The requests table's store: its client and the reads and writes every part of it shares
//! (transactions, consistent reads, paged queries, audit events).

use super::item::*;
use super::keys;
use super::requests::{request_from_item, request_id_attr};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use dsr_domain::hops::{HopLog, HopMark};
use dsr_domain::{
    Audited, CreateOutcome, IdempotencyKey, Request, RequestId, StoreError, SubjectHash,
};

#[derive(Clone, Debug)]
pub struct DynamoRequestStore {
    pub(super) client: Client,
    pub(super) table: String,
    /// Recorded in audit events: which function did it.
    actor: String,
    /// Where this component counts the hops it takes (`None`: it counts none, as in tests
    /// that only read and write requests).
    pub(super) hops: Option<super::DynamoHopLog>,
}

impl DynamoRequestStore {
    pub fn new(client: Client, table: impl Into<String>, actor: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            actor: actor.into(),
            hops: None,
        }
    }

    /// Counts hops in `hops`: the click of every new request in its submission's
    /// transaction, and whatever the component counts through [`HopLog`].
    pub fn counting_hops(mut self, hops: super::DynamoHopLog) -> Self {
        self.hops = Some(hops);
        self
    }

    pub(super) fn audit_event(
        &self,
        id: RequestId,
        event: &Audited<'_>,
        at: DateTime<Utc>,
    ) -> Result<TransactWriteItem, StoreError> {
        let at = timestamp(at);
        let event = event.to_string();
        let put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(keys::request(id)))
            .item("sk", s(keys::event(&at, &event)))
            .item("event", s(&event))
            .item("at", s(at))
            .item("actor", s(&self.actor))
            .build()
            .map_err(unavailable)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Writes the request's state, attempts, error and report, releases any lease, and
    /// releases the open-request guard when the request stops being open; all under
    /// `condition`. Returns false when the condition failed.
    pub(super) async fn write_transition(
        &self,
        request: &Request,
        subject: &SubjectHash,
        was_open: bool,
        condition: &str,
        condition_value: (&str, AttributeValue),
    ) -> Result<bool, StoreError> {
        let mut set = vec!["#state = :to", "updated_at = :at", "attempts = :attempts"];
        let mut remove = vec!["lease_owner", "lease_expires_at"];
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(keys::request(request.id)))
            .key("sk", s(keys::META))
            .condition_expression(condition)
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(condition_value.0, condition_value.1)
            .expression_attribute_values(":to", s(request.state.as_str()))
            .expression_attribute_values(":at", s(timestamp(request.updated_at)))
            .expression_attribute_values(":attempts", n(request.attempts));
        match &request.last_error {
            Some(error) => {
                set.push("last_error = :err");
                update = update.expression_attribute_values(":err", s(error));
            }
            None => remove.push("last_error"),
        }
        match &request.report {
            Some(report) => {
                set.extend([
                    "report_key = :rkey",
                    "report_size = :rsize",
                    "report_sha256 = :rsha",
                    "report_expires_at = :rexp",
                ]);
                update = update
                    .expression_attribute_values(":rkey", s(&report.key))
                    .expression_attribute_values(
                        ":rsize",
                        AttributeValue::N(report.size.to_string()),
                    )
                    .expression_attribute_values(":rsha", s(&report.sha256))
                    .expression_attribute_values(":rexp", s(timestamp(report.expires_at)));
            }
            None => remove.extend([
                "report_key",
                "report_size",
                "report_sha256",
                "report_expires_at",
            ]),
        }
        let update = update
            .update_expression(format!(
                "SET {} REMOVE {}",
                set.join(", "),
                remove.join(", ")
            ))
            .build()
            .map_err(unavailable)?;
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        if was_open && !request.state.is_open() {
            let release = Delete::builder()
                .table_name(&self.table)
                .key("pk", s(keys::guard(subject)))
                .key("sk", s(keys::guard_sort(request.kind)))
                .build()
                .map_err(unavailable)?;
            items.push(TransactWriteItem::builder().delete(release).build());
        }
        items.push(self.audit_event(
            request.id,
            &Audited::MovedTo(request.state),
            request.updated_at,
        )?);
        self.transact(items).await
    }

    /// Every item of request `id` whose sort key starts with `prefix`, read consistently.
    pub(super) async fn items_under(
        &self,
        id: RequestId,
        prefix: &str,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(keys::request(id)))
                .expression_attribute_values(":prefix", s(prefix))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(items),
            }
        }
    }

    /// Runs a transaction; `Ok(false)` when one of its conditions failed.
    pub(super) async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool, StoreError> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(err))
                if matches!(
                    err.err(),
                    TransactWriteItemsError::TransactionCanceledException(_)
                ) =>
            {
                Ok(false)
            }
            Err(err) => Err(unavailable(err)),
        }
    }

    pub(super) async fn get_item(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }

    /// After a cancelled create: which condition stopped it, and which request it points at.
    pub(super) async fn explain_conflict(
        &self,
        request: &Request,
        subject: &SubjectHash,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Option<CreateOutcome>, StoreError> {
        if let Some(key) = idempotency_key {
            if let Some(item) = self
                .get_item(keys::idempotency(subject, key), keys::IDEMPOTENCY)
                .await?
            {
                return Ok(Some(CreateOutcome::IdempotentReplay(request_id_attr(
                    &item,
                )?)));
            }
        }
        let guard = self
            .get_item(keys::guard(subject), &keys::guard_sort(request.kind))
            .await?;
        guard
            .map(|item| request_id_attr(&item).map(CreateOutcome::OpenRequestExists))
            .transpose()
    }

    pub(super) async fn query_all(
        &self,
        index: &str,
        key_condition: &str,
        names: &[(&str, &str)],
        values: &[(&str, AttributeValue)],
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        let mut found = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(key_condition)
                .scan_index_forward(!newest_first)
                .set_exclusive_start_key(start.take());
            for (k, v) in names {
                query = query.expression_attribute_names(*k, *v);
            }
            for (k, v) in values {
                query = query.expression_attribute_values(*k, v.clone());
            }
            let remaining = limit.saturating_sub(found.len()).min(1000);
            let out = query
                .limit(i32::try_from(remaining).unwrap_or(1000))
                .send()
                .await
                .map_err(unavailable)?;
            for item in out.items() {
                found.push(request_from_item(item)?);
            }
            match out.last_evaluated_key {
                Some(key) if found.len() < limit => start = Some(key),
                _ => return Ok(found),
            }
        }
    }
}

/// The component's hops go to its hop log, if it has one.
impl HopLog for DynamoRequestStore {
    async fn mark(&self, mark: &HopMark) -> Result<(), StoreError> {
        match &self.hops {
            Some(hops) => hops.mark(mark).await,
            None => Ok(()),
        }
    }

    async fn window(
        &self,
        kind: dsr_domain::RequestKind,
        hour: DateTime<Utc>,
    ) -> Result<Vec<HopMark>, StoreError> {
        match &self.hops {
            Some(hops) => hops.window(kind, hour).await,
            None => Ok(Vec::new()),
        }
    }
}
