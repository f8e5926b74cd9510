//! Access reports end to end: sources over the wire (DynamoDB and S3 in the emulator, an HTTP
//! service and a search index served by the fake services), the report in S3, the download.

use crate::contract::{assert_message, assert_response};
use crate::helpers::{drain, queue_depth, spawn_app, unique_name, TestApp};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use dsr_adapters::dynamodb::DynamoRequestStore;
use dsr_domain::report::WorkOutcome;
use dsr_domain::{RequestId, RequestState, RequestStore};
use dsr_local::event_source::{deliver_once, SqsFunction};
use dsr_local::fake_services::{incompressible, FakeData, FakeServices};
use dsr_report::CloudReports;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const SUBJECT: &str = "subject-7@example.com";

/// One app plus one instance of every kind of source, seeded for SUBJECT.
struct Fixture {
    app: TestApp,
    fake: FakeServices,
    s3: aws_sdk_s3::Client,
    registry: String,
    profile: Value,
    orders: Vec<Value>,
    logs: Vec<Value>,
    files: Vec<(String, Vec<u8>)>,
}

async fn fixture_with(files: Vec<(String, Vec<u8>)>) -> Fixture {
    fixture_running(files, None).await
}

/// How a test changes the fixture's registry, knowing where the fake services listen.
type RegistryChange = dyn Fn(&FakeServices, String) -> String;

/// The fixture; with `running`, its stack runs every function on its queues (delayed dispatch
/// included), with the fixture's registry changed by `running`.
async fn fixture_running(
    files: Vec<(String, Vec<u8>)>,
    running: Option<&RegistryChange>,
) -> Fixture {
    let aws = crate::helpers::aws().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
    let name = unique_name();

    let table = format!("{name}-profiles");
    dynamodb
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("uid")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("uid")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    dynamodb
        .put_item()
        .table_name(&table)
        .item("uid", AttributeValue::S(SUBJECT.into()))
        .item("name", AttributeValue::S("Seven <b>Example</b>".into()))
        .item("age", AttributeValue::N("42".into()))
        .item("tags", AttributeValue::Ss(vec!["a".into()]))
        .send()
        .await
        .unwrap();
    let profile = json!({"uid": SUBJECT, "name": "Seven <b>Example</b>", "age": 42, "tags": ["a"]});

    let s3 = dsr_adapters::s3::client(&aws);
    let bucket = format!("{name}-uploads");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    for (file, body) in &files {
        s3.put_object()
            .bucket(&bucket)
            .key(format!("u/{SUBJECT}/{file}"))
            .body(body.clone().into())
            .send()
            .await
            .unwrap();
    }
    s3.put_object()
        .bucket(&bucket)
        .key("u/someone-else/x.txt")
        .body(b"not yours".to_vec().into())
        .send()
        .await
        .unwrap();

    let data = Arc::new(FakeData::default());
    let orders = vec![
        json!({"order": 1, "total": 9.5}),
        json!({"order": 2, "total": -1, "note": "=HYPERLINK(\"x\")"}),
    ];
    data.orders
        .lock()
        .unwrap()
        .insert(SUBJECT.into(), orders.clone());
    let logs: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("e{i}"), "ts": 1000 + i, "user": SUBJECT, "ip": format!("192.0.2.{i}")}))
        .collect();
    let mut all_logs = logs.clone();
    all_logs.push(json!({"id": "x", "ts": 1, "user": "someone-else", "ip": "203.0.113.9"}));
    *data.access_logs.lock().unwrap() = all_logs;
    let fake = FakeServices::start("127.0.0.1:0".parse().unwrap(), data)
        .await
        .unwrap();

    let registry = format!(
        r#"services:
  - name: profile
    description: Profile
    collect: {{ kind: dynamodb, table: "{table}", key_attribute: uid }}
  - name: orders
    description: Orders
    collect: {{ kind: http, url: "{orders}", records_pointer: /items, max_attempts: 1, timeout_ms: 5000 }}
  - name: access-log
    description: Sign-ins
    collect: {{ kind: search, url: "{logs}", field: user, sort: [ts, id], page_size: 2 }}
  - name: uploads
    description: Uploads
    collect: {{ kind: s3, bucket: "{bucket}", prefix: "u/{{subject}}/" }}
  - name: newsletter
    description: Holds nothing to report
"#,
        orders = fake.orders_url(),
        logs = fake.access_logs_url(),
    );
    let (app, registry) = match running {
        None => (spawn_app().await, registry),
        Some(change) => {
            // The erasure function, running too, needs a service to erase.
            let registry = change(&fake, registry)
                + "  - name: mailer\n    broker_user: svc-mailer\n    erase: { via: { kind: rabbitmq, routing_key: erasure.mailer } }\n";
            let settings = registry.clone();
            let app = crate::helpers::spawn_app_with(move |s| {
                s.consume_work_queues = true;
                s.registry = Some(settings);
                s.dispatch_every = Duration::from_millis(200);
            })
            .await;
            (app, registry)
        }
    };
    Fixture {
        app,
        fake,
        s3,
        registry,
        profile,
        orders,
        logs,
        files,
    }
}

async fn fixture() -> Fixture {
    fixture_with(vec![
        ("photo.bin".into(), incompressible(3000, 7)),
        ("docs/cv.txt".into(), b"curriculum vitae".to_vec()),
    ])
    .await
}

impl Fixture {
    /// The report function as the template wires it, with short retries and small parts.
    fn function(&self) -> dsr_report::Handler {
        let mut function = self.app.stack.report(Some(&self.registry)).unwrap();
        let settings = &mut function.handler.reports.settings;
        settings.retry_base = chrono::Duration::seconds(1);
        settings.source_retry.backoff_seconds = 1;
        settings.part_size = 5 * 1024 * 1024;
        function
    }

    /// Its use case alone.
    fn worker(&self) -> CloudReports {
        self.function().handler.reports
    }

    fn sqs_function(&self, function: dsr_report::Handler) -> SqsFunction {
        dsr_local::stack::queue_function(&self.app.stack, "ReportFunction", function)
    }

    async fn submit(&self) -> RequestId {
        let reply = self.app.submit(SUBJECT, "access").await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        reply.body["id"].as_str().unwrap().parse().unwrap()
    }

    async fn request(&self, id: RequestId) -> dsr_domain::Request {
        DynamoRequestStore::new(self.app.dynamodb.clone(), self.app.table(), "test")
            .get(id)
            .await
            .unwrap()
            .unwrap()
    }

    fn bucket(&self) -> String {
        self.app.stack.context.resources["ReportsBucket"]
            .name
            .clone()
    }

    /// Finished objects and unfinished uploads under the request's prefix.
    async fn leftovers(&self, id: RequestId) -> (Vec<String>, usize) {
        let prefix = format!("reports/{id}/");
        let objects = self
            .s3
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(&prefix)
            .send()
            .await
            .unwrap();
        let uploads = self
            .s3
            .list_multipart_uploads()
            .bucket(self.bucket())
            .prefix(&prefix)
            .send()
            .await
            .unwrap();
        (
            objects
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect(),
            uploads.uploads().len(),
        )
    }

    async fn download(&self, id: RequestId) -> Vec<u8> {
        let reply = self
            .app
            .get(SUBJECT, &format!("/v1/requests/{id}/report"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_response("GET", "/v1/requests/{id}/report", 200, &reply.body);
        let url = reply.body["url"].as_str().unwrap();
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.unwrap().to_vec()
    }
}

/// Records per source, in the manifest's order.
pub fn record_counts(manifest: &Value) -> Vec<(String, u64)> {
    manifest["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["record_count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The files of `subject`'s report of request `id`, downloaded as its owner would.
pub async fn download(
    app: &crate::helpers::TestApp,
    subject: &str,
    id: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let link = app.get(subject, &format!("/v1/requests/{id}/report")).await;
    let zip = reqwest::get(link.body["url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    unzip(&zip)
}

pub fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a valid zip");
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).unwrap();
            let mut content = Vec::new();
            file.read_to_end(&mut content).unwrap();
            (file.name().unwrap().to_string(), content)
        })
        .collect()
}

pub fn json_file(files: &std::collections::BTreeMap<String, Vec<u8>>, name: &str) -> Value {
    serde_json::from_slice(&files[name]).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test]
async fn a_report_holds_every_source_and_downloads_with_matching_hashes() {
    let f = fixture().await;
    let id = f.submit().await;
    let function = f.sqs_function(f.function());
    let source = f.app.stack.event_source("ReportFunction").unwrap();
    assert_eq!(source.batch_size, 1, "as the template declares");
    let delivered = deliver_once(&f.app.sqs, &source, &function).await.unwrap();
    assert_eq!((delivered.received, delivered.succeeded), (1, 1));

    let request = f.request(id).await;
    assert_eq!(request.state, RequestState::ReportReady);
    let report = request.report.clone().unwrap();
    let zip = f.download(id).await;
    assert_eq!(zip.len() as u64, report.size);
    assert_eq!(hex::encode(Sha256::digest(&zip)), report.sha256);

    let files = unzip(&zip);
    let manifest = json_file(&files, "manifest.json");
    assert_eq!(manifest["request_id"], id.to_string());
    assert_ne!(manifest["subject_hash"], SUBJECT);
    for source in manifest["sources"].as_array().unwrap() {
        for file in source["files"].as_array().unwrap() {
            let path = file["path"].as_str().unwrap();
            let content = files
                .get(path)
                .unwrap_or_else(|| panic!("{path} is in the zip"));
            assert_eq!(
                hex::encode(Sha256::digest(content)),
                file["sha256"],
                "{path}"
            );
            assert_eq!(
                content.len() as u64,
                file["size"].as_u64().unwrap(),
                "{path}"
            );
        }
    }
    let counts = record_counts(&manifest);
    assert_eq!(
        counts,
        [
            ("profile".into(), 1),
            ("orders".into(), 2),
            ("access-log".into(), 5),
            ("uploads".into(), 2)
        ]
    );

    assert_eq!(
        json_file(&files, "sources/profile/records.json"),
        json!([f.profile])
    );
    assert_eq!(
        json_file(&files, "sources/orders/records.json"),
        json!(f.orders)
    );
    assert_eq!(
        json_file(&files, "sources/access-log/records.json"),
        json!(f.logs),
        "all pages, in order"
    );
    for (name, body) in &f.files {
        assert_eq!(
            &files[&format!("sources/uploads/files/{name}")],
            body,
            "{name} copied as it was"
        );
    }
    assert!(!files.keys().any(|k| k.contains("someone-else")));
    let csv = String::from_utf8(files["sources/orders/records.csv"].clone()).unwrap();
    assert!(csv.starts_with("order,total,note\n1,9.5,\n2,-1,"), "{csv}");
    assert!(csv.contains("'=HYPERLINK"), "formulas are defused: {csv}");
    let html = String::from_utf8(files["index.html"].clone()).unwrap();
    assert!(
        html.contains("Seven &lt;b&gt;Example&lt;/b&gt;"),
        "data is escaped in the page"
    );
    assert!(html.contains("<h2>access-log</h2>"));

    let events: Vec<Value> = drain(&f.app.sqs, &f.app.queue_url("OutboundQueue"))
        .await
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    for event in &events {
        assert_message(event);
    }
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["request_submitted", "report_ready"], "{events:?}");
    let event = events.iter().find(|e| e["type"] == "report_ready").unwrap();
    assert_eq!(event["request_id"].as_str(), Some(id.to_string().as_str()));
    assert!(
        !event.to_string().contains(SUBJECT),
        "the broadcast names nobody: {event}"
    );
    // The subject is told through the notifying service, as a command.
    let notice = events
        .iter()
        .find(|e| e["routing_key"] == "notice.report_ready")
        .unwrap_or_else(|| panic!("no notice: {events:?}"));
    assert_eq!(notice["payload"]["subject"], SUBJECT);
    assert_message(&notice["payload"]);

    let (objects, uploads) = f.leftovers(id).await;
    assert_eq!((objects, uploads), (vec![report.key.clone()], 0));

    // A duplicate of the message changes nothing but re-announces the same event.
    assert_eq!(
        f.worker().generate(id).await.unwrap(),
        WorkOutcome::NothingToDo(Some(RequestState::ReportReady))
    );
    assert_eq!(f.request(id).await.report, Some(report));
    let again = drain(&f.app.sqs, &f.app.queue_url("OutboundQueue")).await;
    let again: Vec<Value> = again
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    let again = again.iter().find(|e| e["type"] == "report_ready").unwrap();
    assert_eq!(again["message_id"], event["message_id"]);
}

/// Where each source of a request stands, as its owner sees it on `GET /v1/requests/{id}`.
async fn progress(f: &Fixture, id: RequestId) -> Vec<(String, String)> {
    let reply = f.app.get(SUBJECT, &format!("/v1/requests/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_response("GET", "/v1/requests/{id}", 200, &reply.body);
    reply.body["sources"]
        .as_array()
        .map(|sources| {
            sources
                .iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap().to_owned(),
                        s["status"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Objects staged for request `id`.
async fn staged(f: &Fixture, id: RequestId) -> Vec<String> {
    f.s3.list_objects_v2()
        .bucket(f.bucket())
        .prefix(format!("staging/{id}/"))
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

/// Whether what was staged for `id` is gone within a few seconds: the worker removes it just
/// after its commit, which the test may see first.
async fn staging_goes(f: &Fixture, id: RequestId) -> bool {
    crate::helpers::eventually(Duration::from_secs(10), async || {
        staged(f, id).await.is_empty()
    })
    .await
}

#[tokio::test]
async fn a_source_failing_once_is_retried_alone_and_the_others_are_not_collected_again() {
    let f = fixture().await;
    let id = f.submit().await;
    f.fake.data.failing_order_calls.store(1, Ordering::SeqCst);
    let worker = f.worker();
    match worker.generate(id).await.unwrap() {
        WorkOutcome::Waiting { errors, until } => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            let error = errors[0].to_string();
            assert!(error.contains("orders") && error.contains("500"), "{error}");
            assert!(until <= chrono::Utc::now() + chrono::Duration::seconds(1));
        }
        other => panic!("expected the collection to wait, got {other:?}"),
    }
    let request = f.request(id).await;
    assert_eq!(
        (request.state, request.attempts, request.lease),
        (RequestState::Collecting, 0, None)
    );
    let orders = request
        .sources
        .iter()
        .find(|s| s.service.as_str() == "orders")
        .unwrap();
    assert_eq!(orders.attempts, 1);
    assert!(orders.error.as_deref().unwrap().contains("500"));
    // The owner sees where each source stands.
    assert_eq!(
        progress(&f, id).await,
        [
            ("profile".into(), "collected".into()),
            ("orders".into(), "pending".into()),
            ("access-log".into(), "collected".into()),
            ("uploads".into(), "collected".into()),
        ]
    );
    let staged_now = staged(&f, id).await;
    assert!(
        staged_now
            .iter()
            .any(|k| k.contains("/uploads/") && k.ends_with("/files/1")),
        "every collected source is staged durably: {staged_now:?}"
    );
    assert!(!staged_now.iter().any(|k| k.contains("/orders/")));
    assert_eq!(
        f.leftovers(id).await,
        (vec![], 0),
        "no report, nor half a one"
    );
    let status = f
        .app
        .get(SUBJECT, &format!("/v1/requests/{id}/report"))
        .await;
    assert_eq!(status.status, StatusCode::CONFLICT);
    assert_response("GET", "/v1/requests/{id}/report", 409, &status.body);
    // The hand-off went to delayed dispatch, for delivery to the access-requests queue.
    let handed = drain(&f.app.sqs, &f.app.queue_url("ScheduleRequestsQueue")).await;
    assert_eq!(handed.len(), 1);
    let schedule: Value = serde_json::from_str(handed[0].body().unwrap()).unwrap();
    assert_message(&schedule);
    assert_eq!(
        schedule["destination"]["queue_url"],
        f.app.queue_url("AccessRequestsQueue")
    );
    assert_eq!(schedule["payload"]["request_id"], id.to_string());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let WorkOutcome::Completed(report) = worker.generate(id).await.unwrap() else {
        panic!("the second invocation completes");
    };
    let request = f.request(id).await;
    assert_eq!(
        (request.state, request.attempts, request.last_error),
        (RequestState::ReportReady, 0, None)
    );
    assert_eq!(
        f.fake.data.order_calls.load(Ordering::SeqCst),
        2,
        "orders asked twice"
    );
    assert_eq!(
        staged(&f, id).await,
        Vec::<String>::new(),
        "staging removed"
    );
    let files = unzip(&f.download(id).await);
    assert_eq!(
        files["sources/uploads/files/docs/cv.txt"],
        b"curriculum vitae"
    );
    assert_eq!(report.key, format!("reports/{id}/2/report.zip"));
}

#[tokio::test]
async fn a_source_failing_for_good_fails_the_request_into_the_dlq_with_nothing_left() {
    // The whole stack runs: the hand-offs go through delayed dispatch and come back.
    let f = fixture_running(
        Vec::new(),
        Some(&|_: &FakeServices, registry: String| {
            registry.replace(
                "max_attempts: 1, timeout_ms: 5000 }",
                "max_attempts: 1, timeout_ms: 5000 }\n    collect_retry: { attempts: 3, backoff_seconds: 1 }",
            )
        }),
    )
    .await;
    f.fake.data.orders_down.store(true, Ordering::SeqCst);
    let id = f.submit().await;
    let failed = crate::helpers::eventually(Duration::from_secs(60), async || {
        f.request(id).await.state == RequestState::Failed
    })
    .await;
    assert!(failed, "state: {:?}", f.request(id).await);
    assert_eq!(
        f.fake.data.order_calls.load(Ordering::SeqCst),
        3,
        "three attempts of its own, a second and two seconds apart"
    );
    let request = f.request(id).await;
    assert!(request.last_error.unwrap().contains("after 3 attempts"));
    assert_eq!(
        progress(&f, id)
            .await
            .iter()
            .find(|(n, _)| n == "orders")
            .unwrap()
            .1,
        "failed"
    );
    let dead = crate::helpers::eventually(Duration::from_secs(10), async || {
        queue_depth(
            &f.app.sqs,
            &f.app.queue_url("AccessRequestsDeadLetterQueue"),
        )
        .await
            == 1
    })
    .await;
    assert!(dead, "the request's last message is dead-lettered");
    assert_eq!(f.leftovers(id).await, (vec![], 0));
    assert!(staging_goes(&f, id).await, "staging removed");
    let reply = f
        .app
        .get(SUBJECT, &format!("/v1/requests/{id}/report"))
        .await;
    assert_eq!(
        (reply.status, reply.body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("report_not_ready"))
    );
    // The guard was released: the subject may ask again.
    assert_eq!(
        f.app.submit(SUBJECT, "access").await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn a_report_whose_export_takes_three_invocations_is_assembled_once_every_source_is_in() {
    let f = fixture_running(
        Vec::new(),
        Some(&|fake: &FakeServices, registry: String| {
            registry.replace(
                "  - name: newsletter",
                &format!(
                    "  - name: crm\n    description: What our CRM vendor holds\n    collect: {{ kind: export, start_url: \"{}\", status_url: \"{}\", result_url: \"{}\", records_pointer: /records, poll_seconds: 1 }}\n  - name: newsletter",
                    fake.export_start_url(),
                    fake.export_status_url(),
                    fake.export_result_url()
                ),
            )
        }),
    )
    .await;
    // Ready two and a half seconds after its start: polled at least twice before.
    let data = &f.fake.data;
    data.export_ready_after_ms.store(2500, Ordering::SeqCst);
    data.crm.lock().unwrap().insert(
        SUBJECT.into(),
        vec![json!({"segment": "loyal"}), json!({"consent": "email"})],
    );
    let id = f.submit().await;
    let mut seen_exporting = false;
    let ready = crate::helpers::eventually(Duration::from_secs(60), async || {
        seen_exporting |= progress(&f, id)
            .await
            .contains(&("crm".into(), "exporting".into()));
        f.request(id).await.state == RequestState::ReportReady
    })
    .await;
    assert!(ready, "{:?}", f.request(id).await);
    assert!(seen_exporting, "GET showed the export under way");
    let polls = data.export_polls.load(Ordering::SeqCst);
    assert_eq!(data.export_starts.load(Ordering::SeqCst), 1);
    assert!(
        polls >= 2,
        "started, polled while running, polled done: {polls} polls"
    );
    assert_eq!(data.export_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(
        data.order_calls.load(Ordering::SeqCst),
        1,
        "the quick sources were collected once, in the first invocation"
    );
    let files = unzip(&f.download(id).await);
    let manifest = json_file(&files, "manifest.json");
    let counts = record_counts(&manifest);
    assert!(counts.contains(&("crm".into(), 2)), "{counts:?}");
    assert!(counts.contains(&("orders".into(), 2)), "{counts:?}");
    assert!(staging_goes(&f, id).await, "staging removed");
}

#[tokio::test]
async fn two_workers_at_once_make_one_report_and_a_late_worker_is_fenced_out() {
    let f = fixture().await;
    let id = f.submit().await;
    f.fake.data.order_delay_ms.store(1500, Ordering::SeqCst);
    let (a, b) = (f.worker(), f.worker());
    let (ra, rb) = tokio::join!(a.generate(id), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.generate(id).await
    });
    assert!(matches!(ra.unwrap(), WorkOutcome::Completed(_)));
    assert!(
        matches!(rb.unwrap(), WorkOutcome::Busy { .. }),
        "the second backs off"
    );
    let (objects, _) = f.leftovers(id).await;
    assert_eq!(objects.len(), 1);

    // Now a worker slower than its lease: another takes over and the slow one cannot commit.
    let f = fixture().await;
    let id = f.submit().await;
    f.fake.data.order_delay_ms.store(2500, Ordering::SeqCst);
    let mut slow = f.worker();
    slow.worker.lease_ttl = chrono::Duration::seconds(1);
    let fresh = f.worker();
    let (slow_outcome, fresh_outcome) = tokio::join!(slow.generate(id), async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        fresh.generate(id).await
    });
    assert_eq!(slow_outcome.unwrap(), WorkOutcome::FencedOut);
    let WorkOutcome::Completed(report) = fresh_outcome.unwrap() else {
        panic!("the new lease owner completes")
    };
    let request = f.request(id).await;
    assert_eq!(
        (request.fencing_token, request.report.as_ref()),
        (2, Some(&report))
    );
    assert_eq!(
        f.leftovers(id).await,
        (vec![report.key], 0),
        "exactly one report, the fenced one's is gone"
    );

    // The fence itself: a write with the old token is refused by the store.
    let store = DynamoRequestStore::new(f.app.dynamodb.clone(), f.app.table(), "test");
    let mut stale = request.clone();
    stale.state = RequestState::Failed;
    let hash = f.app.stack.subject_hasher().unwrap().hash(&request.subject);
    assert_eq!(
        store.commit_fenced(&stale, &hash, 1).await.unwrap(),
        dsr_domain::TransitionOutcome::Fenced
    );
    assert_eq!(f.request(id).await.state, RequestState::ReportReady);
}

#[tokio::test]
async fn a_worker_killed_mid_upload_is_cleaned_up_by_the_next_attempt() {
    // 12 MB that does not compress: at least three 5 MiB parts.
    let f = fixture_with(vec![(
        "video.bin".into(),
        incompressible(12 * 1024 * 1024, 3),
    )])
    .await;
    let id = f.submit().await;
    let mut doomed = f.worker();
    // Long enough to stage the sources and begin the report before it runs out.
    doomed.worker.lease_ttl = chrono::Duration::seconds(8);
    let doomed = tokio::spawn(async move { doomed.generate(id).await });

    // Kill it as soon as it has started writing the report: the upload exists, the object not.
    let bucket = f.bucket();
    let prefix = format!("reports/{id}/");
    let mut uploading = false;
    for _ in 0..1200 {
        let uploads =
            f.s3.list_multipart_uploads()
                .bucket(&bucket)
                .prefix(&prefix)
                .send()
                .await
                .unwrap();
        if !uploads.uploads().is_empty() {
            uploading = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(uploading, "the worker started uploading");
    doomed.abort();
    let _ = doomed.await;
    assert_eq!(
        f.request(id).await.state,
        RequestState::Collecting,
        "left as a dead worker leaves it"
    );
    let (objects, uploads) = f.leftovers(id).await;
    assert_eq!(
        (objects.len(), uploads),
        (0, 1),
        "half a report exists only as an unfinished upload"
    );
    assert_eq!(
        f.app
            .get(SUBJECT, &format!("/v1/requests/{id}/report"))
            .await
            .status,
        StatusCode::CONFLICT
    );

    let next = f.worker();
    assert!(
        matches!(next.generate(id).await.unwrap(), WorkOutcome::Busy { .. }),
        "the lease is still live"
    );
    let lease = f.request(id).await.lease.unwrap();
    let left = (lease.expires_at - chrono::Utc::now())
        .num_milliseconds()
        .max(0) as u64;
    tokio::time::sleep(Duration::from_millis(left + 200)).await;
    let WorkOutcome::Completed(report) = next.generate(id).await.unwrap() else {
        panic!("the next attempt completes")
    };
    assert_eq!(
        f.leftovers(id).await,
        (vec![report.key.clone()], 0),
        "the dead attempt's parts are gone"
    );
    let files = unzip(&f.download(id).await);
    assert_eq!(files["sources/uploads/files/video.bin"], f.files[0].1);
}

#[tokio::test]
async fn only_the_owner_gets_a_link_and_an_expired_report_gives_none() {
    let f = fixture().await;
    let id = f.submit().await;
    assert!(matches!(
        f.worker().generate(id).await.unwrap(),
        WorkOutcome::Completed(_)
    ));
    let path = format!("/v1/requests/{id}/report");
    let stranger = f.app.get("someone-else", &path).await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);
    assert_response("GET", "/v1/requests/{id}/report", 404, &stranger.body);
    assert_eq!(f.app.get(SUBJECT, &path).await.status, StatusCode::OK);
    assert_eq!(f.app.get(SUBJECT, &path).await.status, StatusCode::OK);
    let trail = f
        .app
        .dynamodb
        .query()
        .table_name(f.app.table())
        .key_condition_expression("pk = :pk AND begins_with(sk, :evt)")
        .expression_attribute_values(
            ":pk",
            AttributeValue::S(dsr_adapters::dynamodb::keys::request(id)),
        )
        .expression_attribute_values(
            ":evt",
            AttributeValue::S(dsr_adapters::dynamodb::keys::EVENT_PREFIX.into()),
        )
        .send()
        .await
        .unwrap();
    let issued = trail
        .items()
        .iter()
        .filter(|item| {
            item.get("event")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                == Some("report_link_issued")
        })
        .count();
    assert_eq!(issued, 2, "every link handed out is in the audit trail");

    // The retention period passes.
    f.app
        .dynamodb
        .update_item()
        .table_name(f.app.table())
        .key(
            "pk",
            AttributeValue::S(dsr_adapters::dynamodb::keys::request(id)),
        )
        .key(
            "sk",
            AttributeValue::S(dsr_adapters::dynamodb::keys::META.into()),
        )
        .update_expression("SET report_expires_at = :past")
        .expression_attribute_values(
            ":past",
            AttributeValue::S("2020-01-01T00:00:00.000Z".into()),
        )
        .send()
        .await
        .unwrap();
    let gone = f.app.get(SUBJECT, &path).await;
    assert_eq!(gone.status, StatusCode::GONE);
    assert_response("GET", "/v1/requests/{id}/report", 410, &gone.body);
    assert!(gone.body.get("url").is_none());
    // The sweep deletes it: the service keeps no report past its retention, whatever the
    // bucket's lifecycle rule does at its next run.
    let (objects, _) = f.leftovers(id).await;
    assert_eq!(objects.len(), 1, "still there until the sweep: {objects:?}");
    let sweep =
        dsr_sweep::build(&f.app.stack.aws, &f.app.stack.env("SweepFunction").unwrap()).unwrap();
    let swept = dsr_sweep::handle(&sweep.requests, &sweep.reports, sweep.sweep)
        .await
        .unwrap();
    assert_eq!(swept.expired, 1);
    let (objects, uploads) = f.leftovers(id).await;
    assert_eq!(
        (objects.len(), uploads),
        (0, 0),
        "the report object is gone"
    );
    assert_eq!(f.request(id).await.state, RequestState::Expired);
    assert_eq!(
        f.app.get(SUBJECT, &format!("/v1/requests/{id}")).await.body["state"],
        "expired"
    );
}

#[tokio::test]
async fn an_http_source_is_retried_within_an_attempt_and_sent_its_auth_header() {
    let mut f = fixture().await;
    f.registry = f.registry.replace(
        "max_attempts: 1, timeout_ms: 5000",
        "max_attempts: 3, timeout_ms: 5000, auth: { header: Authorization, value_from_env: ORDERS_TOKEN }",
    );
    *f.fake.data.orders_token.lock().unwrap() = Some("s3cret".into());
    f.fake.data.failing_order_calls.store(2, Ordering::SeqCst);
    let id = f.submit().await;
    let mut worker = f.worker();
    let aws = crate::helpers::aws().await;
    worker.sources = dsr_adapters::collect::Collectors::new(
        aws_sdk_dynamodb::Client::new(&aws),
        dsr_adapters::s3::client(&aws),
        dsr_adapters::config::Env::from_pairs([("ORDERS_TOKEN", "Bearer s3cret")]),
    );
    let outcome = worker.generate(id).await.unwrap();
    assert!(matches!(outcome, WorkOutcome::Completed(_)), "{outcome:?}");
    assert_eq!(
        f.fake.data.order_calls.load(Ordering::SeqCst),
        3,
        "two 500s, then success"
    );
    assert_eq!(
        f.request(id).await.attempts,
        0,
        "one report attempt was enough"
    );

    // Without the secret the source refuses, and the attempt fails naming the problem.
    let g = fixture().await;
    *g.fake.data.orders_token.lock().unwrap() = Some("s3cret".into());
    let id = g.submit().await;
    match g.worker().generate(id).await.unwrap() {
        WorkOutcome::Waiting { errors, .. } => {
            assert!(errors[0].to_string().contains("401"), "{errors:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_source_fails_the_attempt_without_the_subject_id_in_the_error() {
    let mut f = fixture().await;
    // Nothing listens on the discard port: a transport error, whose text would name the URL.
    f.registry = f.registry.replace(
        &f.fake.orders_url(),
        "http://127.0.0.1:9/users/{subject}/orders",
    );
    let id = f.submit().await;
    match f.worker().generate(id).await.unwrap() {
        WorkOutcome::Waiting { errors, .. } => {
            let error = errors[0].to_string();
            assert!(error.contains("orders"), "{error}");
            assert!(
                !error.contains(SUBJECT) && !error.contains("subject-7"),
                "no personal data: {error}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Nor in what the request keeps (and its owner sees).
    let stored = serde_json::to_string(&f.request(id).await.sources).unwrap();
    assert!(
        !stored.contains("example") && stored.contains("orders"),
        "{stored}"
    );
}

#[tokio::test]
async fn a_source_answering_300_mb_fails_cleanly_without_reading_it_all() {
    let mut f = fixture().await;
    f.registry = f
        .registry
        .replace(&f.fake.orders_url(), &f.fake.bulky_orders_url());
    let id = f.submit().await;
    match f.worker().generate(id).await.unwrap() {
        WorkOutcome::Waiting { errors, .. } => {
            let error = errors[0].to_string();
            assert!(
                error.contains("orders") && error.contains("larger than 32 MiB"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    let (objects, uploads) = f.leftovers(id).await;
    assert_eq!((objects.len(), uploads), (0, 0), "nothing left behind");
}
