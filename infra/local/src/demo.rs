//! Demo data for `make run`: the demo user `alice` has data in every kind of source the report
//! function collects from, so a new user sees a real report. The sources stand for the
//! platform's own systems: a DynamoDB table (profiles), a bucket of uploads, an orders service
//! and an access-log search index (the fake services). Each of them also erases through its
//! HTTP API (the fake services' `DELETE /erase/{source}/{subject}`), so an erasure leaves a
//! report with nothing in it: what the walk-through shows.

use crate::fake_services::{FakeData, FakeServices};
use anyhow::{anyhow, Result};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

pub const DEMO_SUBJECT: &str = "alice";

pub struct Demo {
    /// The service registry (YAML) pointing at the demo sources.
    pub registry: String,
    pub services: FakeServices,
}

/// Seeds the demo sources of stack `stack_name` and serves the fake services on `listen`.
pub async fn seed(
    aws: &aws_config::SdkConfig,
    stack_name: &str,
    listen: SocketAddr,
    export_after: std::time::Duration,
) -> Result<Demo> {
    let name = |suffix: &str| format!("{stack_name}-demo-{suffix}");
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let table = name("profiles");
    let created = dynamodb
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("user_id")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("user_id")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await;
    if let Err(err) = created {
        if !err
            .as_service_error()
            .is_some_and(|e| e.is_resource_in_use_exception())
        {
            return Err(anyhow!(
                aws_sdk_dynamodb::error::DisplayErrorContext(err).to_string()
            ));
        }
    }
    dynamodb
        .put_item()
        .table_name(&table)
        .item("user_id", AttributeValue::S(DEMO_SUBJECT.into()))
        .item("display_name", AttributeValue::S("Alice Example".into()))
        .item("email", AttributeValue::S("alice@example.com".into()))
        .item("country", AttributeValue::S("NL".into()))
        .item("marketing_opt_in", AttributeValue::Bool(false))
        .send()
        .await
        .map_err(|e| anyhow!(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()))?;

    let s3 = dsr_adapters::s3::client(aws);
    let bucket = name("uploads").to_lowercase();
    if let Err(err) = s3.create_bucket().bucket(&bucket).send().await {
        if !err
            .as_service_error()
            .is_some_and(|e| e.is_bucket_already_owned_by_you())
        {
            return Err(anyhow!(
                aws_sdk_s3::error::DisplayErrorContext(err).to_string()
            ));
        }
    }
    for (key, body) in [
        ("uploads/alice/avatar.txt", "a picture of a cat, in words"),
        (
            "uploads/alice/notes/2026-11.txt",
            "remember to ask for my data",
        ),
    ] {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .map_err(|e| anyhow!(aws_sdk_s3::error::DisplayErrorContext(e).to_string()))?;
    }

    let data = Arc::new(FakeData::default());
    data.orders.lock().unwrap_or_else(|p| p.into_inner()).insert(
        DEMO_SUBJECT.into(),
        vec![
            json!({"order_id": "o-1001", "placed_at": "2026-10-02", "total_eur": 12.5, "items": ["tea"]}),
            json!({"order_id": "o-1002", "placed_at": "2026-11-11", "total_eur": 40.0, "items": ["kettle", "mug"]}),
        ],
    );
    *data.access_logs.lock().unwrap_or_else(|p| p.into_inner()) = (1..=3)
        .map(|i| {
            json!({"event_id": format!("e-{i}"), "timestamp": format!("2026-11-2{i}T08:00:00Z"),
                   "user_id": DEMO_SUBJECT, "ip": format!("198.51.100.{i}"), "path": "/login"})
        })
        .collect();
    // The CRM vendor answers through an asynchronous export that takes a while (minutes in
    // `make run`): the report waits for it over several invocations.
    data.crm.lock().unwrap_or_else(|p| p.into_inner()).insert(
        DEMO_SUBJECT.into(),
        vec![
            json!({"segment": "tea lovers", "since": "2025-03-01"}),
            json!({"consent": "newsletter", "given_at": "2025-03-01T10:00:00Z"}),
        ],
    );
    // The profile service knows alice's e-mail address; she never gave a phone number.
    data.profiles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            DEMO_SUBJECT.into(),
            json!({"user_id": DEMO_SUBJECT, "email": "alice@example.com", "phone": null}),
        );
    // The mailing-list provider knows people by e-mail address, the call-centre tool by phone
    // number (it has someone else's call).
    {
        let mut keyed = data.keyed.lock().unwrap_or_else(|p| p.into_inner());
        keyed.entry("mailing-list".into()).or_default().insert(
            "alice@example.com".into(),
            vec![json!({"list": "tea news", "subscribed_at": "2025-03-01", "opens": 14})],
        );
        keyed.entry("call-centre".into()).or_default().insert(
            "+31201234567".into(),
            vec![json!({"call": "c-77", "at": "2026-10-30T10:12:00Z", "minutes": 4})],
        );
    }
    data.export_ready_after_ms.store(
        u64::try_from(export_after.as_millis()).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::SeqCst,
    );
    // The table's and the bucket's owners erase from them as their services would.
    {
        let mut erasers = data.erasers.lock().unwrap_or_else(|p| p.into_inner());
        let (dynamodb, table) = (dynamodb.clone(), table.clone());
        erasers.insert(
            "account".into(),
            Arc::new(move |subject: String| {
                let (dynamodb, table) = (dynamodb.clone(), table.clone());
                Box::pin(async move {
                    let gone = dynamodb
                        .delete_item()
                        .table_name(&table)
                        .key("user_id", AttributeValue::S(subject))
                        .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
                        .send()
                        .await
                        .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
                    Ok(usize::from(gone.attributes.is_some()))
                }) as futures::future::BoxFuture<'static, Result<usize, String>>
            }),
        );
        let (s3, bucket) = (s3.clone(), bucket.clone());
        erasers.insert(
            "uploads".into(),
            Arc::new(move |subject: String| {
                let (s3, bucket) = (s3.clone(), bucket.clone());
                Box::pin(async move {
                    let listed = s3
                        .list_objects_v2()
                        .bucket(&bucket)
                        .prefix(format!("uploads/{subject}/"))
                        .send()
                        .await
                        .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())?;
                    let keys: Vec<String> = listed
                        .contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_owned))
                        .collect();
                    for key in &keys {
                        s3.delete_object()
                            .bucket(&bucket)
                            .key(key)
                            .send()
                            .await
                            .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())?;
                    }
                    Ok(keys.len())
                }) as futures::future::BoxFuture<'static, Result<usize, String>>
            }),
        );
    }
    let services = FakeServices::start(listen, data).await?;

    let erase = |source: &str| {
        format!(
            r#"{{ via: {{ kind: http, url: "{}", not_found: {{ status: 404, body_contains: no_such_user }}, timeout_ms: 3000 }}, confirm_within_seconds: 60, max_sends: 3 }}"#,
            services.erase_url(source)
        )
    };
    // Identifiers other than the user id: the profile service's API first, the account table
    // after it.
    let registry = format!(
        r#"identity_sources:
  - {{ kind: http, url: "{profile}", fields: {{ email: /email, phone: /phone }}, timeout_ms: 3000 }}
  - {{ kind: dynamodb, table: "{table}", key_attribute: user_id, fields: {{ email: email }} }}
services:
  - name: mailing-list
    description: Our newsletter provider, which knows you by your e-mail address.
    identifiers: [email]
    collect: {{ kind: http, url: "{mailing_list}", records_pointer: /records }}
    erase: {mailing_list_erase}
  - name: call-centre
    description: Notes of your calls to customer support, kept by phone number.
    identifiers: [phone]
    collect: {{ kind: http, url: "{call_centre}", records_pointer: /records }}
    erase: {call_centre_erase}
  - name: account
    description: Your account.
    collect: {{ kind: dynamodb, table: "{table}", key_attribute: user_id }}
    erase: {account}
  - name: orders
    description: Orders you placed.
    collect: {{ kind: http, url: "{orders}", records_pointer: /items }}
    erase: {orders_erase}
  - name: access-log
    description: When and from which IP address you signed in.
    collect: {{ kind: search, url: "{logs}", field: user_id, sort: [timestamp, event_id], page_size: 2 }}
    erase: {logs_erase}
  - name: uploads
    description: Files you uploaded.
    collect: {{ kind: s3, bucket: "{bucket}", prefix: "uploads/{{subject}}/" }}
    erase: {uploads_erase}
  - name: crm
    description: What our CRM vendor holds about you (read through its export).
    collect: {{ kind: export, start_url: "{export_start}", status_url: "{export_status}", result_url: "{export_result}", records_pointer: /records, poll_seconds: {poll} }}
    erase: {crm_erase}
"#,
        profile = services.profile_identifiers_url(),
        mailing_list = services.keyed_url("mailing-list"),
        mailing_list_erase = erase("mailing-list"),
        call_centre = services.keyed_url("call-centre"),
        call_centre_erase = erase("call-centre"),
        export_start = services.export_start_url(),
        export_status = services.export_status_url(),
        export_result = services.export_result_url(),
        poll = (export_after.as_secs() / 3).clamp(1, 30),
        crm_erase = erase("crm"),
        orders = services.orders_url(),
        logs = services.access_logs_url(),
        account = erase("account"),
        orders_erase = erase("orders"),
        logs_erase = erase("access-log"),
        uploads_erase = erase("uploads"),
    );
    Ok(Demo { registry, services })
}
