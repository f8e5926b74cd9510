//! The request store on DynamoDB: one table, conditional writes and transactions.
//!
//! Items (see template.yaml `RequestsTable`):
//! - `pk = REQ#<id>, sk = META`: the request; indexed by `subject_hash` (GSI `BySubject`) and by
//!   `state` + `due_at` (GSI `ByStateDue`).
//! - `pk = SUBJ#<hash>, sk = OPEN#<kind>`: the guard that makes "one open request per subject
//!   and kind" a transactional condition.
//! - `pk = IDEM#<hash>#<key>, sk = IDEM`: an `Idempotency-Key` seen for that subject (TTL 24 h).
//! - `pk = REQ#<id>, sk = EVT#<time>#<event>`: the append-only audit trail, no personal data.
//! - `pk = REQ#<id>, sk = OBL#<service>`: an erasure obligation (below).

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, SecondsFormat, Utc};
use dsr_domain::erasure::{Obligation, ObligationStatus, ObligationStore};
use dsr_domain::ports::{LeaseOutcome, TransitionOutcome};
use dsr_domain::{
    AuditEvent, CreateOutcome, IdempotencyKey, Lease, ReportInfo, Request, RequestId, RequestKind,
    RequestState, RequestStore, StoreError, SubjectHash, SubjectId,
};
use std::collections::HashMap;

type Item = HashMap<String, AttributeValue>;

pub const BY_SUBJECT_INDEX: &str = "BySubject";
pub const BY_STATE_DUE_INDEX: &str = "ByStateDue";
const IDEMPOTENCY_TTL_HOURS: i64 = 24;
/// `pk = STATS, sk = SUBMITTED`: requests ever accepted, per kind.
const STATS_PK: &str = "STATS";
const SUBMITTED_SK: &str = "SUBMITTED";

#[derive(Clone, Debug)]
pub struct DynamoRequestStore {
    client: Client,
    table: String,
    /// Recorded in audit events: which function did it.
    actor: String,
}

impl DynamoRequestStore {
    pub fn new(client: Client, table: impl Into<String>, actor: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            actor: actor.into(),
        }
    }

    fn audit_event(
        &self,
        id: RequestId,
        event: &str,
        at: DateTime<Utc>,
    ) -> Result<TransactWriteItem, StoreError> {
        let at = timestamp(at);
        let put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(format!("REQ#{id}")))
            .item("sk", s(format!("EVT#{at}#{event}")))
            .item("event", s(event))
            .item("at", s(at))
            .item("actor", s(&self.actor))
            .build()
            .map_err(unavailable)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Writes the request's state, attempts, error and report, releases any lease, and
    /// releases the open-request guard when the request stops being open; all under
    /// `condition`. Returns false when the condition failed.
    async fn write_transition(
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
            .key("pk", s(request_pk(request.id)))
            .key("sk", s("META"))
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
                .key("pk", s(guard_pk(subject)))
                .key("sk", s(guard_sk(request.kind)))
                .build()
                .map_err(unavailable)?;
            items.push(TransactWriteItem::builder().delete(release).build());
        }
        items.push(self.audit_event(request.id, request.state.as_str(), request.updated_at)?);
        self.transact(items).await
    }

    /// Every item of request `id` whose sort key starts with `prefix`, read consistently.
    async fn items_under(&self, id: RequestId, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(request_pk(id)))
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
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool, StoreError> {
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

    async fn get_item(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
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
    async fn explain_conflict(
        &self,
        request: &Request,
        subject: &SubjectHash,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Option<CreateOutcome>, StoreError> {
        if let Some(key) = idempotency_key {
            if let Some(item) = self.get_item(idempotency_pk(subject, key), "IDEM").await? {
                return Ok(Some(CreateOutcome::IdempotentReplay(request_id_attr(
                    &item,
                )?)));
            }
        }
        let guard = self
            .get_item(guard_pk(subject), &guard_sk(request.kind))
            .await?;
        guard
            .map(|item| request_id_attr(&item).map(CreateOutcome::OpenRequestExists))
            .transpose()
    }

    async fn query_all(
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

impl RequestStore for DynamoRequestStore {
    async fn create(
        &self,
        request: &Request,
        subject: &SubjectHash,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<CreateOutcome, StoreError> {
        let not_there = "attribute_not_exists(pk)";
        let mut meta = request_item(request, subject);
        meta.insert("pk".into(), s(request_pk(request.id)));
        meta.insert("sk".into(), s("META"));
        let mut items = vec![
            put(&self.table, meta, Some(not_there))?,
            put(
                &self.table,
                HashMap::from([
                    ("pk".into(), s(guard_pk(subject))),
                    ("sk".into(), s(guard_sk(request.kind))),
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
                    ("pk".into(), s(idempotency_pk(subject, key))),
                    ("sk".into(), s("IDEM")),
                    ("request_id".into(), s(request.id.to_string())),
                    (
                        "expires_at".into(),
                        AttributeValue::N(expires.timestamp().to_string()),
                    ),
                ]),
                Some(not_there),
            )?);
        }
        items.push(self.audit_event(request.id, "submitted", request.received_at)?);
        // The "submitted" counter the reconciliation checks the counts by state against.
        let counter = Update::builder()
            .table_name(&self.table)
            .key("pk", s(STATS_PK))
            .key("sk", s(SUBMITTED_SK))
            .update_expression("ADD #kind :one")
            .expression_attribute_names("#kind", request.kind.as_str())
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(unavailable)?;
        items.push(TransactWriteItem::builder().update(counter).build());

        // A cancelled transaction says *that* a condition failed; the item it failed on says
        // which request wins. A guard can vanish between the two (the open request was just
        // cancelled), in which case trying again is right.
        for _ in 0..3 {
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
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
        Err(StoreError::Unavailable(
            "submission kept conflicting with a request that disappeared".into(),
        ))
    }

    async fn get(&self, id: RequestId) -> Result<Option<Request>, StoreError> {
        self.get_item(request_pk(id), "META")
            .await?
            .map(|item| request_from_item(&item))
            .transpose()
    }

    async fn list_for_subject(&self, subject: &SubjectHash) -> Result<Vec<Request>, StoreError> {
        self.query_all(
            BY_SUBJECT_INDEX,
            "subject_hash = :h",
            &[],
            &[(":h", s(subject.as_str()))],
            true,
            usize::MAX,
        )
        .await
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
            .key("pk", s(request_pk(id)))
            .key("sk", s("META"))
            .update_expression(
                "SET #state = :working, lease_owner = :owner, lease_expires_at = :expires, \
                 updated_at = :now ADD fencing_token :one",
            )
            // From `received`, or over a dead worker whose lease ran out.
            .condition_expression(
                "#state = :received OR (#state = :working AND lease_expires_at < :now)",
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
                let event = format!("lease#{}#{owner}", request.fencing_token);
                self.record_event(id, &event, now).await?;
                Ok(LeaseOutcome::Acquired(Box::new(request)))
            }
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                let current = self.get(id).await?;
                Ok(match current {
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

    async fn record_event(
        &self,
        id: RequestId,
        event: &str,
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

    async fn mark_enqueued(&self, id: RequestId, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(request_pk(id)))
            .key("sk", s("META"))
            .update_expression("SET enqueued_at = :at")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":at", s(timestamp(at)))
            .send()
            .await
            .map_err(unavailable)?;
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

    async fn submitted(&self, kind: RequestKind) -> Result<u64, StoreError> {
        Ok(
            match self.get_item(STATS_PK.to_owned(), SUBMITTED_SK).await? {
                Some(item) => number_attr(&item, kind.as_str())?.unwrap_or(0),
                None => 0,
            },
        )
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
            .key("pk", s(request_pk(id)))
            .key("sk", s("META"))
            .condition_expression(format!(
                "attribute_exists(pk) AND attribute_not_exists(deadline_extended_at) AND #state IN ({})",
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
                &format!("deadline_extended:{}m", extension.months),
                extension.extended_at,
            )?,
        ];
        self.transact(items).await
    }

    async fn audit_trail(&self, id: RequestId) -> Result<Vec<AuditEvent>, StoreError> {
        self.items_under(id, "EVT#")
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

fn put(table: &str, item: Item, condition: Option<&str>) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .set_condition_expression(condition.map(str::to_owned))
        .build()
        .map_err(unavailable)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

fn request_pk(id: RequestId) -> String {
    format!("REQ#{id}")
}

fn guard_pk(subject: &SubjectHash) -> String {
    format!("SUBJ#{subject}")
}

fn guard_sk(kind: RequestKind) -> String {
    format!("OPEN#{kind}")
}

fn idempotency_pk(subject: &SubjectHash, key: &IdempotencyKey) -> String {
    format!("IDEM#{subject}#{}", key.as_str())
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: u32) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Fixed-width UTC timestamps sort as strings, which the `ByStateDue` index relies on.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn unavailable(err: impl std::error::Error) -> StoreError {
    // The SDK's Display is terse ("service error"); the debug chain names the cause.
    StoreError::Unavailable(format!(
        "{}",
        aws_sdk_dynamodb::error::DisplayErrorContext(err)
    ))
}

fn request_item(request: &Request, subject: &SubjectHash) -> Item {
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
    item.insert(
        "fencing_token".into(),
        AttributeValue::N(request.fencing_token.to_string()),
    );
    item
}

fn request_id_attr(item: &Item) -> Result<RequestId, StoreError> {
    let raw = string_attr(item, "request_id")?;
    raw.parse()
        .map_err(|e: dsr_domain::RequestIdError| corrupt(item, e.to_string()))
}

fn request_from_item(item: &Item) -> Result<Request, StoreError> {
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
        subject: SubjectId::parse(string_attr(item, "subject")?)
            .map_err(|e| corrupt(item, e.to_string()))?,
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

/// A timestamp attribute that may be absent.
fn optional_time(item: &Item, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| corrupt(item, format!("{name}: {e}")))
        })
        .transpose()
}

fn number_attr<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(raw)) => raw
            .parse()
            .map(Some)
            .map_err(|_| corrupt(item, format!("`{name}` is not a number"))),
        Some(_) => Err(corrupt(item, format!("`{name}` is not a number"))),
    }
}

fn string_attr<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| corrupt(item, format!("missing string attribute `{name}`")))
}

fn corrupt(item: &Item, reason: String) -> StoreError {
    let id = item
        .get("pk")
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default();
    StoreError::Corrupt { id, reason }
}

// ------------------------------------------------------------------ obligations
//
// `pk = REQ#<id>, sk = OBL#<service>`: one per holder of an erasure request, next to the
// request so that one query reads them all and a transaction can fence them with the request.

fn obligation_sk(service: &str) -> String {
    format!("OBL#{service}")
}

fn obligation_from_item(item: &Item) -> Result<Obligation, StoreError> {
    let optional_time = |name: &str| optional_time(item, name);
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    Ok(Obligation {
        request_id: string_attr(item, "request_id")?
            .parse()
            .map_err(|e: dsr_domain::RequestIdError| corrupt(item, e.to_string()))?,
        service: string_attr(item, "service")?.to_owned(),
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
    })
}

impl DynamoRequestStore {
    /// An update of one obligation that may fail its condition: `Ok(false)` then.
    async fn update_obligation(
        &self,
        request_id: RequestId,
        service: &str,
        update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) -> Result<bool, StoreError> {
        match update
            .table_name(&self.table)
            .key("pk", s(request_pk(request_id)))
            .key("sk", s(obligation_sk(service)))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(err))
                if err.err().is_conditional_check_failed_exception() =>
            {
                Ok(false)
            }
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
                .key("pk", s(request_pk(request_id)))
                .key("sk", s("META"))
                .condition_expression("fencing_token = :token")
                .expression_attribute_values(":token", AttributeValue::N(fencing_token.to_string()))
                .build()
                .map_err(unavailable)?;
            let mut items = vec![TransactWriteItem::builder().condition_check(fence).build()];
            for obligation in chunk {
                let item = HashMap::from([
                    ("pk".to_owned(), s(request_pk(request_id))),
                    ("sk".to_owned(), s(obligation_sk(&obligation.service))),
                    ("request_id".to_owned(), s(request_id.to_string())),
                    ("service".to_owned(), s(&obligation.service)),
                    ("status".to_owned(), s(obligation.status.as_str())),
                    (
                        "erase_last".to_owned(),
                        AttributeValue::Bool(obligation.last),
                    ),
                    ("attempts".to_owned(), n(obligation.attempts)),
                ]);
                items.push(put(&self.table, item, Some("attribute_not_exists(pk)"))?);
            }
            match self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
            {
                Ok(_) => {}
                Err(SdkError::ServiceError(err))
                    if matches!(
                        err.err(),
                        TransactWriteItemsError::TransactionCanceledException(_)
                    ) =>
                {
                    // Fenced out, or a concurrent planner wrote some first: either way the
                    // caller re-reads the obligations (and its commit will be fenced).
                    return Err(StoreError::Unavailable(format!(
                        "obligations of {request_id} not written: fenced out or written concurrently"
                    )));
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
        all.extend(missing.into_iter().cloned());
        Ok(all)
    }

    async fn obligations(&self, request_id: RequestId) -> Result<Vec<Obligation>, StoreError> {
        self.items_under(request_id, "OBL#")
            .await?
            .iter()
            .map(obligation_from_item)
            .collect()
    }

    async fn record_send(
        &self,
        request_id: RequestId,
        service: &str,
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
        service: &str,
        status: ObligationStatus,
        receipt: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
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
        self.update_obligation(request_id, service, update).await
    }

    async fn escalate(
        &self,
        request_id: RequestId,
        service: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let update = self
            .client
            .update_item()
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(escalated_at)")
            .update_expression("SET escalated_at = :at")
            .expression_attribute_values(":at", s(timestamp(at)));
        self.update_obligation(request_id, service, update).await
    }
}
