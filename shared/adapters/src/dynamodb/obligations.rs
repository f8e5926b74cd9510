//! Erasure obligations: `pk = REQ#<id>, sk = OBL#<service>`, one per service of an erasure
//! request, next to the request so that one query reads them all and a transaction can fence
//! them with the request.

use super::item::*;
use super::keys;
use super::store::DynamoRequestStore;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use chrono::{DateTime, Utc};
use dsr_domain::erasure::{AnswerRecorded, Obligation, ObligationStatus, ObligationStore};
use dsr_domain::{Audited, RequestId, ServiceName, StoreError};
use std::collections::HashMap;

fn obligation_from_item(item: &Item) -> Result<Obligation, StoreError> {
    let optional_time = |name: &str| optional_time(item, name);
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    Ok(Obligation {
        request_id: string_attr(item, "request_id")?
            .parse()
            .map_err(|e: dsr_domain::RequestIdError| corrupt(item, e.to_string()))?,
        service: ServiceName::parse(string_attr(item, "service")?)
            .map_err(|e| corrupt(item, e.to_string()))?,
        status: string_attr(item, "status")?
            .parse()
            .map_err(|e| corrupt(item, e))?,
        last: matches!(item.get("erase_last"), Some(AttributeValue::Bool(true))),
        attempts: number_attr(item, "attempts")?.unwrap_or(0),
        sent_at: optional_time("sent_at")?,
        confirmed_at: optional_time("confirmed_at")?,
        receipt: text("receipt"),
        last_error: text("last_error"),
        escalated_at: optional_time("escalated_at")?,
        release_at: optional_time("release_at")?,
        reopened: number_attr(item, "reopened")?.unwrap_or(0),
    })
}

impl DynamoRequestStore {
    /// An update of one obligation that may fail its condition: `Ok(false)` then.
    async fn update_obligation(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) -> Result<bool, StoreError> {
        match update
            .table_name(&self.table)
            .key("pk", s(keys::request(request_id)))
            .key("sk", s(keys::obligation(service)))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if conditional_failed(&err) => Ok(false),
            Err(err) => Err(unavailable(err)),
        }
    }
}

impl ObligationStore for DynamoRequestStore {
    async fn plan(
        &self,
        request_id: RequestId,
        obligations: &[Obligation],
        fencing_token: u64,
    ) -> Result<Vec<Obligation>, StoreError> {
        let mut all = self.obligations(request_id).await?;
        let missing: Vec<&Obligation> = obligations
            .iter()
            .filter(|o| !all.iter().any(|e| e.service == o.service))
            .collect();
        // A transaction holds at most 100 items: the fence check plus 99 obligations.
        for chunk in missing.chunks(99) {
            let fence = aws_sdk_dynamodb::types::ConditionCheck::builder()
                .table_name(&self.table)
                .key("pk", s(keys::request(request_id)))
                .key("sk", s(keys::META))
                .condition_expression("fencing_token = :token")
                .expression_attribute_values(":token", AttributeValue::N(fencing_token.to_string()))
                .build()
                .map_err(unavailable)?;
            let mut items = vec![TransactWriteItem::builder().condition_check(fence).build()];
            for obligation in chunk {
                let item = HashMap::from([
                    ("pk".to_owned(), s(keys::request(request_id))),
                    ("sk".to_owned(), s(keys::obligation(&obligation.service))),
                    ("request_id".to_owned(), s(request_id.to_string())),
                    ("service".to_owned(), s(obligation.service.as_str())),
                    ("status".to_owned(), s(obligation.status.as_str())),
                    (
                        "erase_last".to_owned(),
                        AttributeValue::Bool(obligation.last),
                    ),
                    ("attempts".to_owned(), n(obligation.attempts)),
                ]);
                items.push(put(&self.table, item, Some("attribute_not_exists(pk)"))?);
            }
            if !self.transact(items).await? {
                // Fenced out, or a concurrent planner wrote some first: either way the caller
                // re-reads the obligations (and its commit will be fenced).
                return Err(StoreError::Unavailable(
                    format!(
                        "obligations of {request_id} not written: fenced out or written concurrently"
                    )
                    .into(),
                ));
            }
        }
        all.extend(missing.into_iter().cloned());
        Ok(all)
    }

    async fn obligations(&self, request_id: RequestId) -> Result<Vec<Obligation>, StoreError> {
        self.items_under(request_id, keys::OBLIGATION_PREFIX)
            .await?
            .iter()
            .map(obligation_from_item)
            .collect()
    }

    async fn record_send(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        attempt: u32,
        status: ObligationStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut update = self
            .client
            .update_item()
            .condition_expression("attempts = :before AND NOT (#st IN (:confirmed, :not_found))")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":before", n(attempt.saturating_sub(1)))
            .expression_attribute_values(":attempts", n(attempt))
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":confirmed", s("confirmed"))
            .expression_attribute_values(":not_found", s("not_found"))
            .expression_attribute_values(":at", s(timestamp(at)));
        update = match error {
            Some(error) => update
                .update_expression(
                    "SET attempts = :attempts, #st = :status, sent_at = :at, last_error = :err",
                )
                .expression_attribute_values(
                    ":err",
                    s(error.chars().take(500).collect::<String>()),
                ),
            None => update.update_expression(
                "SET attempts = :attempts, #st = :status, sent_at = :at REMOVE last_error",
            ),
        };
        self.update_obligation(request_id, service, update).await
    }

    async fn record_answer(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        status: ObligationStatus,
        receipt: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<AnswerRecorded>, StoreError> {
        // A failure answer counts once per send; a success once ever.
        let condition = if status == ObligationStatus::Failed {
            "attribute_exists(pk) AND #st IN (:pending, :sent)"
        } else {
            "attribute_exists(pk) AND NOT (#st IN (:confirmed, :not_found))"
        };
        let mut update = self
            .client
            .update_item()
            .condition_expression(condition)
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":receipt", s(receipt))
            .expression_attribute_values(":at", s(timestamp(at)));
        update = if status == ObligationStatus::Failed {
            update
                .update_expression("SET #st = :status, receipt = :receipt, answered_at = :at")
                .expression_attribute_values(":pending", s("pending"))
                .expression_attribute_values(":sent", s("sent"))
        } else {
            update
                .update_expression(
                    "SET #st = :status, receipt = :receipt, confirmed_at = :at REMOVE last_error",
                )
                .expression_attribute_values(":confirmed", s("confirmed"))
                .expression_attribute_values(":not_found", s("not_found"))
        };
        // The send time comes back with the write (for the confirmation latency): no read
        // before the conditional write.
        let written = update
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .table_name(&self.table)
            .key("pk", s(keys::request(request_id)))
            .key("sk", s(keys::obligation(service)))
            .send()
            .await;
        match written {
            Ok(answer) => Ok(Some(AnswerRecorded {
                sent_at: match answer.attributes {
                    Some(old) => optional_time(&old, "sent_at")?,
                    None => None,
                },
            })),
            Err(err) if conditional_failed(&err) => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn replace_receipt(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        receipt: &str,
    ) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET receipt = :receipt")
            .expression_attribute_values(":receipt", s(receipt));
        self.update_obligation(request_id, service, update).await?;
        Ok(())
    }

    async fn escalate(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        attempts: u32,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // The mark and its audit line in one transaction: a crash between two writes would
        // leave an escalation no trail shows (a redelivery finds it escalated and writes none).
        let mark = aws_sdk_dynamodb::types::Update::builder()
            .table_name(&self.table)
            .key("pk", s(keys::request(request_id)))
            .key("sk", s(keys::obligation(service)))
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(escalated_at) \
                 AND attempts = :attempts AND NOT (#st IN (:confirmed, :not_found))",
            )
            .update_expression("SET escalated_at = :at")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":attempts", n(attempts))
            .expression_attribute_values(":confirmed", s("confirmed"))
            .expression_attribute_values(":not_found", s("not_found"))
            .expression_attribute_values(":at", s(timestamp(at)))
            .build()
            .map_err(unavailable)?;
        let line = self.audit_event(request_id, &Audited::Escalated { service }, at)?;
        self.transact(vec![
            TransactWriteItem::builder().update(mark).build(),
            line,
        ])
        .await
    }

    async fn reopen(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        records: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // Open again only what was done; the mark and its audit line in one transaction.
        let open = aws_sdk_dynamodb::types::Update::builder()
            .table_name(&self.table)
            .key("pk", s(keys::request(request_id)))
            .key("sk", s(keys::obligation(service)))
            .condition_expression("attribute_exists(pk) AND #st IN (:confirmed, :not_found)")
            .update_expression(
                "SET #st = :failed, last_error = :why, reopened = if_not_exists(reopened, :zero) + :one",
            )
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":confirmed", s("confirmed"))
            .expression_attribute_values(":not_found", s("not_found"))
            .expression_attribute_values(":failed", s("failed"))
            .expression_attribute_values(":why", s(dsr_domain::erasure::reopen_note(records)))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(unavailable)?;
        let line = self.audit_event(request_id, &Audited::Reopened { service, records }, at)?;
        self.transact(vec![
            TransactWriteItem::builder().update(open).build(),
            line,
        ])
        .await
    }

    async fn set_release(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        at: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::request(request_id)))
            .key("sk", s(keys::obligation(service)))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET release_at = if_not_exists(release_at, :at)")
            .expression_attribute_values(":at", s(timestamp(at)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(unavailable)?;
        optional_time(&out.attributes.unwrap_or_default(), "release_at")?
            .ok_or_else(|| StoreError::Unavailable("release time not written".into()))
    }
}
