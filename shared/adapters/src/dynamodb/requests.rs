//! Requests, their guards, idempotency keys and audit trail.

use super::item::*;
use super::keys::{self, BY_STATE_DUE_INDEX, BY_SUBJECT_INDEX};
use super::store::DynamoRequestStore;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use dsr_domain::hops::{ClickOutcome, HopMark};
use dsr_domain::ports::{LeaseOutcome, Quota, TransitionOutcome};
use dsr_domain::{
    AuditEvent, Audited, CreateOutcome, IdempotencyKey, Lease, ReportInfo, Request, RequestId,
    RequestKind, RequestState, RequestStore, StoreError, SubjectHash, SubjectId,
};
use std::collections::HashMap;

const IDEMPOTENCY_TTL_HOURS: i64 = 24;

impl RequestStore for DynamoRequestStore {
    async fn create(
        &self,
        request: &Request,
        subject: &SubjectHash,
        idempotency_key: Option<&IdempotencyKey>,
        quota: Option<Quota>,
    ) -> Result<CreateOutcome, StoreError> {
        let not_there = "attribute_not_exists(pk)";
        let mut meta = request_item(request, subject);
        meta.insert("pk".into(), s(keys::request(request.id)));
        meta.insert("sk".into(), s(keys::META));
        let mut items = vec![
            put(&self.table, meta, Some(not_there))?,
            put(
                &self.table,
                HashMap::from([
                    ("pk".into(), s(keys::guard(subject))),
                    ("sk".into(), s(keys::guard_sort(request.kind))),
                    ("request_id".into(), s(request.id.to_string())),
                ]),
                Some(not_there),
            )?,
        ];
        if let Some(key) = idempotency_key {
            let expires = request.received_at + chrono::Duration::hours(IDEMPOTENCY_TTL_HOURS);
            items.push(put(
                &self.table,
                HashMap::from([
                    ("pk".into(), s(keys::idempotency(subject, key))),
                    ("sk".into(), s(keys::IDEMPOTENCY)),
                    ("request_id".into(), s(request.id.to_string())),
                    (
                        "expires_at".into(),
                        AttributeValue::N(expires.timestamp().to_string()),
                    ),
                ]),
                Some(not_there),
            )?);
        }
        let submitted = match &request.submitted_via {
            None => Audited::Submitted,
            Some(via) => Audited::SubmittedVia {
                channel: via.channel,
                by: &via.by,
                reference: via.reference.as_deref(),
            },
        };
        items.push(self.audit_event(request.id, &submitted, request.received_at)?);
        // The click that created the request is counted in the same transaction: a request
        // exists if and only if its submission was counted.
        if let Some(hops) = &self.hops {
            items.push(hops.created(&HopMark::click(
                request.kind,
                request.id,
                request.id,
                ClickOutcome::Created,
                request.received_at,
            ))?);
        }
        // The quota: `max` slot items per subject and kind, each used by one request for a
        // window. The first try takes a slot at random (no read: most subjects have all of
        // them free); a slot in use fails the transaction, and the slots are read to pick a
        // free one or to say when the next frees.
        let quota_at = items.len();
        if let Some(quota) = quota {
            items.push(self.quota_slot(
                request,
                subject,
                quota,
                fastrand::u32(..quota.max.max(1)),
            )?);
        }

        // A cancelled transaction says *that* a condition failed; the item it failed on says
        // which request wins. A guard can vanish between the two (the open request was just
        // cancelled), in which case trying again is right.
        for _ in 0..4 {
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            match sent {
                Ok(_) => return Ok(CreateOutcome::Created),
                Err(SdkError::ServiceError(err))
                    if matches!(
                        err.err(),
                        TransactWriteItemsError::TransactionCanceledException(_)
                    ) =>
                {
                    if let Some(outcome) = self
                        .explain_conflict(request, subject, idempotency_key)
                        .await?
                    {
                        return Ok(outcome);
                    }
                    if let Some(quota) = quota {
                        match self.free_slot(request, subject, quota).await? {
                            Ok(slot) => {
                                items[quota_at] = self.quota_slot(request, subject, quota, slot)?;
                            }
                            Err(lifts_at) => return Ok(CreateOutcome::QuotaUsed { lifts_at }),
                        }
                    }
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
        Err(StoreError::Unavailable(
            "submission kept conflicting with a request that disappeared".into(),
        ))
    }

    async fn get(&self, id: RequestId) -> Result<Option<Request>, StoreError> {
        self.get_item(keys::request(id), keys::META)
            .await?
            .map(|item| request_from_item(&item))
            .transpose()
    }

    async fn list_for_subject(&self, subject: &SubjectHash) -> Result<Vec<Request>, StoreError> {
        self.page_for_subject(subject, None, usize::MAX).await
    }

    async fn page_for_subject(
        &self,
        subject: &SubjectHash,
        before: Option<RequestId>,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        let mut values = vec![(":h", s(subject.as_str()))];
        if let Some(before) = before {
            values.push((":before", s(before.to_string())));
        }
        let condition = if before.is_some() {
            "subject_hash = :h AND id < :before"
        } else {
            "subject_hash = :h"
        };
        self.query_all(BY_SUBJECT_INDEX, condition, &[], &values, true, limit)
            .await
    }

    async fn forget_subject(
        &self,
        id: RequestId,
        state: RequestState,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let forgotten = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::request(id)))
            .key("sk", s(keys::META))
            .update_expression("REMOVE subject, identities SET subject_forgotten_at = :at")
            .condition_expression("#state = :state AND attribute_exists(subject)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":state", s(state.as_str()))
            .expression_attribute_values(":at", s(timestamp(at)))
            .send()
            .await;
        match forgotten {
            Ok(_) => Ok(true),
            Err(err) if conditional_failed(&err) => Ok(false),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn save_transition(
        &self,
        request: &Request,
        subject: &SubjectHash,
        from: RequestState,
    ) -> Result<TransitionOutcome, StoreError> {
        let written = self
            .write_transition(
                request,
                subject,
                from.is_open(),
                "#state = :from",
                (":from", s(from.as_str())),
            )
            .await?;
        Ok(if written {
            TransitionOutcome::Applied
        } else {
            TransitionOutcome::StateChanged
        })
    }

    async fn acquire_lease(
        &self,
        id: RequestId,
        owner: &str,
        working: RequestState,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::request(id)))
            .key("sk", s(keys::META))
            .update_expression(
                "SET #state = :working, lease_owner = :owner, lease_expires_at = :expires, \
                 updated_at = :now ADD fencing_token :one",
            )
            // From `received`, or over a dead worker whose lease ran out, or one that gave
            // its lease up after a failed attempt (no lease at all).
            .condition_expression(
                "#state = :received OR (#state = :working AND \
                 (attribute_not_exists(lease_expires_at) OR lease_expires_at < :now))",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":working", s(working.as_str()))
            .expression_attribute_values(":received", s(RequestState::Received.as_str()))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":expires", s(timestamp(now + ttl)))
            .expression_attribute_values(":now", s(timestamp(now)))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match updated {
            Ok(out) => {
                let request = request_from_item(&out.attributes.unwrap_or_default())?;
                self.lease_taken(&request, owner, now).await;
                Ok(LeaseOutcome::Acquired(Box::new(request)))
            }
            Err(err) if conditional_failed(&err) => {
                let current = self.get(id).await?;
                Ok(match current {
                    // Ours already: an earlier try of this call took it and its answer was
                    // lost (the SDK's retry then found the lease held), or this worker gave up
                    // on it without handing it back. A worker works on one message at a time,
                    // so it takes the lease over, with a new token.
                    Some(Request {
                        state,
                        lease: Some(lease),
                        fencing_token,
                        ..
                    }) if state == working && lease.owner == owner => {
                        match self
                            .retake_lease(id, owner, fencing_token, now, ttl)
                            .await?
                        {
                            Some(request) => LeaseOutcome::Acquired(Box::new(request)),
                            None => LeaseOutcome::Held {
                                until: lease.expires_at,
                            },
                        }
                    }
                    Some(Request {
                        state,
                        lease: Some(lease),
                        ..
                    }) if state == working => LeaseOutcome::Held {
                        until: lease.expires_at,
                    },
                    other => LeaseOutcome::NotWorkable(other.map(|r| r.state)),
                })
            }
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn commit_fenced(
        &self,
        request: &Request,
        subject: &SubjectHash,
        token: u64,
    ) -> Result<TransitionOutcome, StoreError> {
        // A leased request is in a working state, and every working state is open.
        let written = self
            .write_transition(
                request,
                subject,
                true,
                "fencing_token = :token",
                (":token", AttributeValue::N(token.to_string())),
            )
            .await?;
        Ok(if written {
            TransitionOutcome::Applied
        } else {
            TransitionOutcome::Fenced
        })
    }

    async fn save_sources(
        &self,
        id: RequestId,
        token: u64,
        sources: &[dsr_domain::report::progress::SourceProgress],
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let json =
            serde_json::to_string(sources).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let written = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::request(id)))
            .key("sk", s(keys::META))
            .update_expression("SET sources = :sources, updated_at = :at")
            .condition_expression("fencing_token = :token")
            .expression_attribute_values(":sources", s(json))
            .expression_attribute_values(":at", s(timestamp(at)))
            .expression_attribute_values(":token", AttributeValue::N(token.to_string()))
            .send()
            .await;
        match written {
            Ok(_) => Ok(true),
            Err(err) if conditional_failed(&err) => Ok(false),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn record_identities(
        &self,
        id: RequestId,
        token: u64,
        identities: &dsr_domain::identity::Identities,
        audit: &Audited<'_>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let found: HashMap<String, AttributeValue> = identities
            .0
            .iter()
            .map(|(kind, value)| (kind.as_str().to_owned(), s(value.as_str())))
            .collect();
        let keep = Update::builder()
            .table_name(&self.table)
            .key("pk", s(keys::request(id)))
            .key("sk", s(keys::META))
            .update_expression("SET identities = :found")
            .condition_expression("fencing_token = :token AND attribute_not_exists(identities)")
            .expression_attribute_values(":found", AttributeValue::M(found))
            .expression_attribute_values(":token", AttributeValue::N(token.to_string()))
            .build()
            .map_err(unavailable)?;
        self.transact(vec![
            TransactWriteItem::builder().update(keep).build(),
            self.audit_event(id, audit, at)?,
        ])
        .await
    }

    async fn record_event(
        &self,
        id: RequestId,
        event: &Audited<'_>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let item = self.audit_event(id, event, at)?;
        let put = item
            .put
            .ok_or_else(|| StoreError::Unavailable("no audit put".into()))?;
        self.client
            .put_item()
            .table_name(put.table_name)
            .set_item(Some(put.item))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn mark_enqueued(
        &self,
        id: RequestId,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::request(id)))
            .key("sk", s(keys::META))
            .condition_expression("attribute_exists(pk)");
        let update = match at {
            Some(at) => update
                .update_expression("SET enqueued_at = :at")
                .expression_attribute_values(":at", s(timestamp(at))),
            None => update.update_expression("REMOVE enqueued_at"),
        };
        update.send().await.map_err(unavailable)?;
        Ok(())
    }

    async fn in_state(
        &self,
        state: RequestState,
        limit: usize,
    ) -> Result<Vec<Request>, StoreError> {
        self.query_all(
            BY_STATE_DUE_INDEX,
            "#state = :s",
            &[("#state", "state")],
            &[(":s", s(state.as_str()))],
            false,
            limit,
        )
        .await
    }

    async fn count(&self, kind: RequestKind, state: RequestState) -> Result<usize, StoreError> {
        let mut total = 0usize;
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_STATE_DUE_INDEX)
                .key_condition_expression("#state = :s")
                .filter_expression("#kind = :k")
                .expression_attribute_names("#state", "state")
                .expression_attribute_names("#kind", "kind")
                .expression_attribute_values(":s", s(state.as_str()))
                .expression_attribute_values(":k", s(kind.as_str()))
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            total += usize::try_from(out.count).unwrap_or(0);
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(total),
            }
        }
    }

    async fn extend_deadline(
        &self,
        id: RequestId,
        due_at: DateTime<Utc>,
        extension: &dsr_domain::DeadlineExtension,
    ) -> Result<bool, StoreError> {
        let open: Vec<&str> = RequestState::ALL
            .iter()
            .filter(|state| state.is_open())
            .map(|state| state.as_str())
            .collect();
        let placeholders: Vec<String> = (0..open.len()).map(|i| format!(":open{i}")).collect();
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(keys::request(id)))
            .key("sk", s(keys::META))
            .condition_expression(format!(
                "attribute_exists(pk) AND attribute_not_exists(deadline_extended_at) AND due_at > :at AND #state IN ({})",
                placeholders.join(", ")
            ))
            .update_expression(
                "SET due_at = :due, deadline_extended_at = :at, deadline_extension_months = :months, deadline_extension_reason = :reason",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":due", s(timestamp(due_at)))
            .expression_attribute_values(":at", s(timestamp(extension.extended_at)))
            .expression_attribute_values(":months", n(extension.months))
            .expression_attribute_values(":reason", s(&extension.reason));
        for (placeholder, state) in placeholders.iter().zip(&open) {
            update = update.expression_attribute_values(placeholder.as_str(), s(*state));
        }
        let items = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(unavailable)?)
                .build(),
            self.audit_event(
                id,
                &Audited::DeadlineExtended {
                    months: extension.months,
                },
                extension.extended_at,
            )?,
        ];
        self.transact(items).await
    }

    async fn audit_trail(&self, id: RequestId) -> Result<Vec<AuditEvent>, StoreError> {
        self.items_under(id, keys::EVENT_PREFIX)
            .await?
            .iter()
            .map(|item| {
                Ok(AuditEvent {
                    at: optional_time(item, "at")?
                        .ok_or_else(|| corrupt(item, "missing `at`".into()))?,
                    event: string_attr(item, "event")?.to_owned(),
                    actor: string_attr(item, "actor").unwrap_or_default().to_owned(),
                })
            })
            .collect()
    }
}

pub(super) fn request_item(request: &Request, subject: &SubjectHash) -> Item {
    let mut item = HashMap::from([
        ("id".to_owned(), s(request.id.to_string())),
        ("kind".to_owned(), s(request.kind.as_str())),
        ("subject".to_owned(), s(request.subject.as_str())),
        ("subject_hash".to_owned(), s(subject.as_str())),
        ("state".to_owned(), s(request.state.as_str())),
        ("received_at".to_owned(), s(timestamp(request.received_at))),
        ("due_at".to_owned(), s(timestamp(request.due_at))),
        ("updated_at".to_owned(), s(timestamp(request.updated_at))),
        ("attempts".to_owned(), n(request.attempts)),
    ]);
    if let Some(error) = &request.last_error {
        item.insert("last_error".into(), s(error));
    }
    if let Some(at) = request.enqueued_at {
        item.insert("enqueued_at".into(), s(timestamp(at)));
    }
    if let Some(via) = &request.submitted_via {
        item.insert("channel".into(), s(via.channel.as_str()));
        item.insert("submitted_by".into(), s(&via.by));
        if let Some(reference) = &via.reference {
            item.insert("channel_reference".into(), s(reference));
        }
    }
    item.insert(
        "fencing_token".into(),
        AttributeValue::N(request.fencing_token.to_string()),
    );
    item
}

pub(super) fn request_id_attr(item: &Item) -> Result<RequestId, StoreError> {
    let raw = string_attr(item, "request_id")?;
    raw.parse()
        .map_err(|e: dsr_domain::RequestIdError| corrupt(item, e.to_string()))
}

pub(super) fn request_from_item(item: &Item) -> Result<Request, StoreError> {
    let time = |name: &str| -> Result<DateTime<Utc>, StoreError> {
        DateTime::parse_from_rfc3339(string_attr(item, name)?)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| corrupt(item, format!("{name}: {e}")))
    };
    let optional_time = |name: &str| optional_time(item, name);
    Ok(Request {
        id: string_attr(item, "id")?
            .parse()
            .map_err(|e: dsr_domain::RequestIdError| corrupt(item, e.to_string()))?,
        kind: string_attr(item, "kind")?
            .parse()
            .map_err(|e| corrupt(item, e))?,
        // Gone once the request's retention passed (only its keyed hash stays).
        subject: match item.get("subject") {
            None => SubjectId::redacted(),
            Some(_) => SubjectId::parse(string_attr(item, "subject")?)
                .map_err(|e| corrupt(item, e.to_string()))?,
        },
        state: string_attr(item, "state")?
            .parse()
            .map_err(|e| corrupt(item, e))?,
        received_at: time("received_at")?,
        due_at: time("due_at")?,
        updated_at: time("updated_at")?,
        attempts: number_attr(item, "attempts")?.unwrap_or(0),
        last_error: item.get("last_error").and_then(|v| v.as_s().ok()).cloned(),
        enqueued_at: optional_time("enqueued_at")?,
        lease: match (item.get("lease_owner"), optional_time("lease_expires_at")?) {
            (Some(AttributeValue::S(owner)), Some(expires_at)) => Some(Lease {
                owner: owner.clone(),
                expires_at,
            }),
            _ => None,
        },
        fencing_token: number_attr(item, "fencing_token")?.unwrap_or(0),
        deadline_extension: match optional_time("deadline_extended_at")? {
            Some(extended_at) => Some(dsr_domain::DeadlineExtension {
                months: number_attr(item, "deadline_extension_months")?.unwrap_or(0),
                reason: item
                    .get("deadline_extension_reason")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default(),
                extended_at,
            }),
            None => None,
        },
        submitted_via: match item.get("channel") {
            Some(AttributeValue::S(channel)) => Some(dsr_domain::SubmittedVia {
                channel: channel.parse().map_err(|e: String| corrupt(item, e))?,
                by: string_attr(item, "submitted_by")?.to_owned(),
                reference: item
                    .get("channel_reference")
                    .and_then(|v| v.as_s().ok())
                    .cloned(),
            }),
            _ => None,
        },
        identities: match item.get("identities") {
            Some(AttributeValue::M(found)) => Some(dsr_domain::identity::Identities(
                found
                    .iter()
                    .filter_map(|(kind, value)| {
                        let kind =
                            dsr_domain::identity::IdentifierKind::parse(kind.as_str()).ok()?;
                        let value = SubjectId::parse(value.as_s().ok()?.as_str()).ok()?;
                        Some((kind, value))
                    })
                    .collect(),
            )),
            _ => None,
        },
        // Written as one JSON document: read and written whole, by the lease holder only.
        sources: match item.get("sources") {
            Some(AttributeValue::S(json)) => {
                serde_json::from_str(json).map_err(|e| corrupt(item, format!("sources: {e}")))?
            }
            _ => Vec::new(),
        },
        report: match item.get("report_key") {
            Some(AttributeValue::S(key)) => Some(ReportInfo {
                key: key.clone(),
                size: number_attr(item, "report_size")?.unwrap_or(0),
                sha256: string_attr(item, "report_sha256")?.to_owned(),
                expires_at: time("report_expires_at")?,
            }),
            _ => None,
        },
    })
}

impl DynamoRequestStore {
    /// Takes over a lease this same owner holds, fenced on the token it was seen with.
    async fn retake_lease(
        &self,
        id: RequestId,
        owner: &str,
        seen_token: u64,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<Request>, StoreError> {
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(keys::request(id)))
            .key("sk", s(keys::META))
            .update_expression(
                "SET lease_expires_at = :expires, updated_at = :now ADD fencing_token :one",
            )
            .condition_expression("lease_owner = :owner AND fencing_token = :seen")
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":seen", AttributeValue::N(seen_token.to_string()))
            .expression_attribute_values(":expires", s(timestamp(now + ttl)))
            .expression_attribute_values(":now", s(timestamp(now)))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match updated {
            Ok(out) => {
                let request = request_from_item(&out.attributes.unwrap_or_default())?;
                self.lease_taken(&request, owner, now).await;
                Ok(Some(request))
            }
            Err(err) if conditional_failed(&err) => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    /// The audit line of a lease taken. The lease is taken either way: failing the worker for
    /// a lost audit line would strand the request under a lease nobody works on.
    async fn lease_taken(&self, request: &Request, owner: &str, now: DateTime<Utc>) {
        let event = Audited::LeaseTaken {
            token: request.fencing_token,
            owner,
        };
        if let Err(err) = self.record_event(request.id, &event, now).await {
            tracing::warn!(request_id = %request.id, error = %err, "lease taken, its audit line not written");
        }
    }
}

impl DynamoRequestStore {
    /// The write that uses quota slot `slot` for `request`: only if the slot is free (never
    /// used, or used before the window).
    fn quota_slot(
        &self,
        request: &Request,
        subject: &SubjectHash,
        quota: Quota,
        slot: u32,
    ) -> Result<TransactWriteItem, StoreError> {
        let used_at = request.received_at.timestamp_millis();
        let since = (request.received_at - quota.window).timestamp_millis();
        let put = aws_sdk_dynamodb::types::Put::builder()
            .table_name(&self.table)
            .set_item(Some(HashMap::from([
                ("pk".into(), s(keys::quota(subject, request.kind))),
                ("sk".into(), s(keys::quota_slot(slot))),
                ("request_id".into(), s(request.id.to_string())),
                ("used_at".into(), AttributeValue::N(used_at.to_string())),
                // Gone by itself a day after it freed up.
                (
                    "expires_at".into(),
                    AttributeValue::N(
                        (request.received_at + quota.window + chrono::Duration::days(1))
                            .timestamp()
                            .to_string(),
                    ),
                ),
            ])))
            .condition_expression("attribute_not_exists(pk) OR used_at <= :since")
            .expression_attribute_values(":since", AttributeValue::N(since.to_string()))
            .build()
            .map_err(unavailable)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// A free slot of the subject's quota, or (`Err`) when the first of them frees up.
    async fn free_slot(
        &self,
        request: &Request,
        subject: &SubjectHash,
        quota: Quota,
    ) -> Result<Result<u32, DateTime<Utc>>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(keys::quota(subject, request.kind)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        let since = (request.received_at - quota.window).timestamp_millis();
        let mut used: HashMap<u32, i64> = HashMap::new();
        for item in out.items() {
            let slot = item
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .and_then(|sk| sk.strip_prefix("SLOT#"))
                .and_then(|n| n.parse::<u32>().ok());
            let at = item
                .get("used_at")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<i64>().ok());
            if let (Some(slot), Some(at)) = (slot, at) {
                used.insert(slot, at);
            }
        }
        let mut free: Vec<u32> = (0..quota.max)
            .filter(|slot| used.get(slot).is_none_or(|at| *at <= since))
            .collect();
        if !free.is_empty() {
            // Concurrent submissions of one subject spread over the free slots.
            return Ok(Ok(free.swap_remove(fastrand::usize(..free.len()))));
        }
        let oldest = (0..quota.max)
            .filter_map(|slot| used.get(&slot).copied())
            .min()
            .unwrap_or(since);
        Ok(Err(DateTime::from_timestamp_millis(oldest)
            .unwrap_or(request.received_at)
            + quota.window))
    }
}
