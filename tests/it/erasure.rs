//! Erasure over the wire: the local stack (emulator + the real RabbitMQ) with fake services —
//! four AMQP services (profile, billing, viewing-history, email) and a vendor's HTTP API — fan
//! out, confirm, re-send to the silent, escalate, and erase the email service last.

use crate::bridge::LOCAL_BROKER;
use crate::contract::{assert_message, assert_response};
use crate::helpers::{eventually, spawn_app_with, unique_name, TestApp};
use dsr_domain::erasure::OWN_COPIES;
use dsr_local::erasing_services::{self, ErasingServices};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub struct ErasureRig {
    pub app: TestApp,
    pub services: ErasingServices,
    pub namespace: String,
    /// The service registry (YAML) the functions were given.
    pub registry: String,
    /// Every event published on `<ns>.events`, in order.
    pub events: Arc<Mutex<Vec<Value>>>,
    _stop: watch::Sender<bool>,
}

pub struct RigSettings {
    pub confirm_within_seconds: u64,
    pub max_sends: u32,
    pub grace_seconds: u64,
    /// The vendor API's path in the registry (a wrong one, to see what a wrong URL does).
    pub vendor_path: &'static str,
    /// Platform services allowed to use delayed dispatch (the template's parameter).
    pub dispatch_callers: Option<String>,
    /// Where the functions reach AWS (the fault-injecting proxy), if not the emulator itself.
    pub functions_endpoint: Option<String>,
    /// How often the sweep runs (it re-sends work messages that were never sent).
    pub sweep_every: Option<Duration>,
    /// Instances of each queue-fed function, and how many of them get every batch.
    pub workers: usize,
    pub deliveries: usize,
    /// False: the functions run elsewhere (the crash proof's own process); this one only
    /// provisions, serves the API and hosts the holders.
    pub consume_work_queues: bool,
    /// Messages to lose on their way to a function.
    pub losses: Option<Arc<dsr_local::event_source::Losses>>,
    /// Variables every function sees instead of the template's.
    pub overrides: Vec<(&'static str, String)>,
    /// Counts the functions' AWS calls (what a request costs).
    pub call_counter: Option<dsr_local::call_count::CallCounter>,
    /// Holders whose data is read over RabbitMQ (`export_subject`) rather than over HTTP.
    pub over_amqp: Vec<&'static str>,
    /// The vendor's rate limit in the registry (`max_per_second`).
    pub vendor_per_second: u32,
    /// The vendor takes batches of up to this many subjects (its batch API in the registry).
    pub vendor_batch: Option<u32>,
    /// Broker users allowed to submit requests over RabbitMQ (the template's parameter).
    pub request_submitters: Option<String>,
}

impl Default for RigSettings {
    fn default() -> Self {
        Self {
            confirm_within_seconds: 30,
            max_sends: 3,
            grace_seconds: 2,
            vendor_path: VENDOR_PATH,
            dispatch_callers: None,
            functions_endpoint: None,
            sweep_every: None,
            workers: 1,
            deliveries: 1,
            consume_work_queues: true,
            losses: None,
            overrides: Vec::new(),
            call_counter: None,
            over_amqp: Vec::new(),
            vendor_per_second: 20,
            vendor_batch: None,
            request_submitters: None,
        }
    }
}

const VENDOR_PATH: &str = "/v2/users/{subject}";

pub async fn rig(settings: RigSettings) -> ErasureRig {
    let namespace = unique_name();
    let (stop, stopped) = watch::channel(false);
    let services = erasing_services::start(
        LOCAL_BROKER,
        &namespace,
        "127.0.0.1:0".parse().unwrap(),
        stopped,
    )
    .await
    .expect("RabbitMQ runs (make test starts it)");
    let events = spy_on_events(&namespace).await;
    let registry = format!(
        "services:\n{}",
        services.registry_entries(
            settings.confirm_within_seconds,
            settings.max_sends,
            &settings.over_amqp
        )
    )
    .replace(VENDOR_PATH, settings.vendor_path)
    .replace(
        "max_per_second: 20",
        &match settings.vendor_batch {
            None => format!("max_per_second: {}", settings.vendor_per_second),
            Some(most) => format!(
                "max_per_second: {}, batch: {{ url: \"http://{}/v2/erasures\", max_subjects: {most} }}",
                settings.vendor_per_second, services.vendor_addr
            ),
        },
    );
    let ns = namespace.clone();
    let registered = registry.clone();
    let app = spawn_app_with(move |s| {
        s.consume_work_queues = settings.consume_work_queues;
        s.registry = Some(registry);
        s.dispatch_every = Duration::from_millis(500);
        s.functions_endpoint = settings.functions_endpoint;
        s.workers = settings.workers;
        s.deliveries = settings.deliveries;
        s.losses = settings.losses;
        s.call_counter = settings.call_counter;
        s.overrides.extend(
            settings
                .overrides
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v)),
        );
        if let Some(every) = settings.sweep_every {
            s.sweep_every = every;
        }
        s.parameters.insert("RabbitMqNamespace".into(), ns);
        s.parameters.insert(
            "ErasureGraceSeconds".into(),
            settings.grace_seconds.to_string(),
        );
        if let Some(callers) = settings.dispatch_callers {
            s.parameters
                .insert("DelayedDispatchCallers".into(), callers);
        }
        if let Some(submitters) = settings.request_submitters {
            s.parameters.insert("RequestSubmitters".into(), submitters);
        }
    })
    .await;
    ErasureRig {
        app,
        services,
        namespace,
        registry: registered,
        events,
        _stop: stop,
    }
}

/// A queue bound to the events exchange, recording what the platform would hear.
async fn spy_on_events(namespace: &str) -> Arc<Mutex<Vec<Value>>> {
    spy_on(namespace, "events", "#", "spy").await
}

/// A queue `<namespace>.<name>` bound to `<namespace>.<exchange>` with `key`, recording every
/// message that reaches it.
pub async fn spy_on(
    namespace: &str,
    exchange: &str,
    key: &str,
    name: &str,
) -> Arc<Mutex<Vec<Value>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("{namespace}.{name}");
    crate::bridge::bound_queue(&channel, &format!("{namespace}.{exchange}"), key, &queue).await;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "spy".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let seen = events.clone();
    tokio::spawn(async move {
        let _keep = conn;
        while let Some(Ok(delivery)) = consumer.next().await {
            if let Ok(event) = serde_json::from_slice::<Value>(&delivery.data) {
                seen.lock().unwrap().push(event);
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    });
    events
}

impl ErasureRig {
    pub async fn submit_erasure(&self, subject: &str) -> String {
        self.services.seed(subject);
        let reply = self.app.submit(subject, "erasure").await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        reply.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn show(&self, subject: &str, id: &str) -> Value {
        let reply = self.app.get(subject, &format!("/v1/requests/{id}")).await;
        assert_eq!(reply.status, 200);
        assert_response("GET", "/v1/requests/{id}", 200, &reply.body);
        reply.body
    }

    pub async fn wait_for(
        &self,
        subject: &str,
        id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let reached = eventually(within, async || {
            last = self.show(subject, id).await;
            done(&last)
        })
        .await;
        assert!(
            reached,
            "not reached within {within:?}; last seen: {last:#}"
        );
        last
    }

    fn events_of(&self, id: &str, event_type: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["request_id"] == id && e["type"] == event_type)
            .cloned()
            .collect()
    }

    /// The request's audit trail, oldest first.
    pub async fn audit(&self, id: &str) -> Vec<String> {
        let out = self
            .app
            .dynamodb
            .query()
            .table_name(self.app.table())
            .key_condition_expression("pk = :pk AND begins_with(sk, :evt)")
            .expression_attribute_values(
                ":pk",
                aws_sdk_dynamodb::types::AttributeValue::S(dsr_adapters::dynamodb::keys::request(
                    id.parse().unwrap(),
                )),
            )
            .expression_attribute_values(
                ":evt",
                aws_sdk_dynamodb::types::AttributeValue::S(
                    dsr_adapters::dynamodb::keys::EVENT_PREFIX.into(),
                ),
            )
            .send()
            .await
            .unwrap();
        out.items()
            .iter()
            .filter_map(|item| item.get("event")?.as_s().ok().cloned())
            .collect()
    }
}

fn service<'a>(view: &'a Value, name: &str) -> &'a Value {
    planned(view, name).unwrap_or_else(|| panic!("no {name} in {view:#}"))
}

/// The service's progress, once the fan-out planned it.
fn planned<'a>(view: &'a Value, name: &str) -> Option<&'a Value> {
    view["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["service"] == name))
}

pub fn completed(view: &Value) -> bool {
    view["state"] == "completed"
}

#[tokio::test]
async fn an_erasure_reaches_every_service_and_the_email_service_is_erased_last_after_the_notice() {
    let rig = rig(RigSettings::default()).await;
    let subject = format!("erin-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;

    let view = rig
        .wait_for(&subject, &id, Duration::from_secs(60), completed)
        .await;

    // Every service erased, each exactly once, and the proof is on the request.
    assert!(
        rig.services
            .remaining(&subject)
            .values()
            .all(|left| *left == 0),
        "{:?}",
        rig.services.remaining(&subject)
    );
    let services = view["services"].as_array().unwrap();
    assert_eq!(
        services.len(),
        6,
        "five services and the service's own copies: {view:#}"
    );
    for s in services {
        assert_eq!(s["status"], "confirmed", "{s}");
        assert_eq!(s["commands_sent"], 1, "{s}");
        assert_eq!(s["escalated"], false, "{s}");
    }
    assert_eq!(service(&view, "email")["erased_last"], true);
    for name in erasing_services::AMQP_SERVICES {
        assert_eq!(
            rig.services.service(name).erasures_of(&id).len(),
            1,
            "{name}"
        );
    }
    assert_eq!(rig.services.vendor.service.erasures_of(&id).len(), 1);

    // The email service: the notice first, its own erasure only after it and after all others.
    let email = rig.services.service("email");
    let notice = email.notices_of(&id);
    assert_eq!(notice.len(), 1, "one notice");
    let email_erased = email.erasures_of(&id)[0];
    assert!(
        email_erased > notice[0],
        "email erased at {email_erased}, notice at {}",
        notice[0]
    );
    for name in ["profile", "billing", "viewing-history"] {
        assert!(
            rig.services.service(name).erasures_of(&id)[0] < notice[0],
            "{name}"
        );
    }
    assert!(
        (email_erased - notice[0]).num_milliseconds() >= 2_000,
        "the grace period (2 s here) separates the notice from the email erasure"
    );

    // The platform heard about it, in the documented shapes.
    assert!(
        eventually(Duration::from_secs(10), async || rig
            .events_of(&id, "erasure_completed")
            .len()
            == 1)
        .await
    );
    for kind in ["request_submitted", "erasure_notice", "erasure_completed"] {
        let events = rig.events_of(&id, kind);
        assert_eq!(events.len(), 1, "{kind}: {events:#?}");
        assert_message(&events[0]);
        crate::asyncapi::assert_on_channel("events", &events[0]);
    }
    let audit = rig.audit(&id).await;
    for state in ["awaiting_confirmations", "notifying", "completed"] {
        assert!(audit.iter().any(|e| e == state), "{state} in {audit:?}");
    }
    assert_eq!(
        audit.iter().filter(|e| e.starts_with("lease#")).count(),
        1,
        "one fan-out"
    );
    // The user may now ask again: the erasure is no longer open.
    assert_eq!(rig.app.submit(&subject, "erasure").await.status, 202);
}

#[tokio::test]
async fn every_command_and_confirmation_delivered_twice_has_one_effect() {
    let rig = rig(RigSettings::default()).await;
    for name in erasing_services::AMQP_SERVICES {
        let b = &rig.services.service(name).behaviour;
        b.duplicate_confirmations.store(true, Ordering::SeqCst);
        b.redeliver_once.store(true, Ordering::SeqCst);
    }
    let subject = format!("dup-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;
    // The request's work message delivered twice as well.
    let message = dsr_domain::RequestMessage::new(
        id.parse().unwrap(),
        dsr_domain::RequestKind::Erasure,
        chrono::Utc::now(),
    );
    rig.app
        .sqs
        .send_message()
        .queue_url(rig.app.queue_url("ErasureRequestsQueue"))
        .message_body(serde_json::to_string(&message).unwrap())
        .send()
        .await
        .unwrap();

    rig.wait_for(&subject, &id, Duration::from_secs(60), completed)
        .await;
    for name in erasing_services::AMQP_SERVICES {
        let service = rig.services.service(name);
        assert_eq!(
            service.commands_for(&id),
            2,
            "{name}: the command arrived twice"
        );
        assert_eq!(service.erasures_of(&id).len(), 1, "{name}: erased once");
    }
    assert_eq!(rig.services.vendor.calls.load(Ordering::SeqCst), 1);
    let audit = rig.audit(&id).await;
    for name in erasing_services::AMQP_SERVICES.iter().chain(&["ads"]) {
        let confirmed = audit
            .iter()
            .filter(|e| **e == format!("obligation_confirmed:{name}"))
            .count();
        assert_eq!(confirmed, 1, "{name}: {audit:?}");
    }
    assert_eq!(
        audit.iter().filter(|e| e.starts_with("lease#")).count(),
        1,
        "one fan-out: {audit:?}"
    );
    assert_eq!(rig.services.service("email").notices_of(&id).len(), 1);
}

#[tokio::test]
async fn a_silent_service_is_sent_again_then_escalated_and_the_erasure_stays_open() {
    let rig = rig(RigSettings {
        confirm_within_seconds: 2,
        max_sends: 2,
        grace_seconds: 1,
        ..RigSettings::default()
    })
    .await;
    rig.services
        .service("billing")
        .behaviour
        .silent
        .store(true, Ordering::SeqCst);
    let subject = format!("quiet-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;

    let view = rig
        .wait_for(&subject, &id, Duration::from_secs(60), |v| {
            planned(v, "billing").is_some_and(|s| s["escalated"] == true)
        })
        .await;
    let billing = service(&view, "billing");
    assert_eq!(billing["commands_sent"], 2, "{billing}");
    assert_eq!(billing["status"], "sent");
    assert_eq!(rig.services.service("billing").commands_for(&id), 2);
    // The others are done, the erasure is not: it completes only on every confirmation.
    assert_eq!(view["state"], "awaiting_confirmations");
    assert_eq!(service(&view, "profile")["status"], "confirmed");
    assert_eq!(service(&view, "profile")["commands_sent"], 1);
    assert_eq!(service(&view, "email")["status"], "pending");
    // The escalation marks the obligation first, then writes its audit line: the view can
    // show it a moment before the trail does.
    let escalated = "escalated:billing".to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !rig.audit(&id).await.contains(&escalated) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {escalated} in {:?}",
            rig.audit(&id).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rig.services.service("email").notices_of(&id).is_empty());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rig.services.service("billing").commands_for(&id),
        2,
        "no sends after the escalation"
    );
}

#[tokio::test]
async fn a_failing_third_party_api_is_retried_then_escalated() {
    let rig = rig(RigSettings {
        confirm_within_seconds: 1,
        max_sends: 3,
        grace_seconds: 1,
        ..RigSettings::default()
    })
    .await;
    rig.services.vendor.failing.store(true, Ordering::SeqCst);
    let subject = format!("vend-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;

    let view = rig
        .wait_for(&subject, &id, Duration::from_secs(60), |v| {
            planned(v, "ads").is_some_and(|s| s["escalated"] == true)
        })
        .await;
    let ads = service(&view, "ads");
    assert_eq!(
        (ads["status"].as_str(), ads["commands_sent"].as_u64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(rig.services.vendor.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        rig.services.vendor.service.records(&subject),
        1,
        "nothing erased"
    );
    assert_eq!(view["state"], "awaiting_confirmations");
    assert!(rig.audit(&id).await.contains(&"escalated:ads".to_owned()));
}

/// Two function instances (two clients of their own) taking a vendor's slots at the same time,
/// one call a second: every slot is a second after the one before, whoever took it (each
/// instance pacing on its own would hand out the same times twice); a slot further away than a
/// call may wait is not taken but named.
#[tokio::test]
async fn a_vendors_rate_limit_holds_across_function_instances() {
    use dsr_adapters::dynamodb::{DynamoVendorPace, Slot};
    let app = crate::helpers::spawn_app().await;
    let aws = crate::helpers::aws().await;
    let instance = || DynamoVendorPace::new(aws_sdk_dynamodb::Client::new(&aws), app.table());
    let (one, two) = (instance(), instance());
    let vendor = format!("ads-{}", unique_name());
    let most_wait = std::time::Duration::from_secs(60);
    let eight = async |pace: &DynamoVendorPace| {
        let mut slots = Vec::new();
        for _ in 0..8 {
            match pace.take(&vendor, 1, most_wait).await.unwrap() {
                Slot::At(at) => slots.push(at),
                Slot::Later(after) => panic!("within the minute, not later: {after:?}"),
            }
        }
        slots
    };
    let (mut slots, theirs) = tokio::join!(eight(&one), eight(&two));
    slots.extend(theirs);
    slots.sort();
    let gaps: Vec<u128> = slots
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap().as_millis())
        .collect();
    assert!(
        gaps.iter().all(|g| *g == 1000),
        "gaps between slots (ms): {gaps:?}"
    );
    // Sixteen slots reach sixteen seconds ahead: a call that may wait a second gets none.
    match one
        .take(&vendor, 1, std::time::Duration::from_secs(1))
        .await
        .unwrap()
    {
        Slot::Later(after) => assert!(after > std::time::Duration::from_secs(14), "{after:?}"),
        taken => panic!("{taken:?}"),
    }
}

/// A vendor answering 429 with `Retry-After: 1` is called again a second later through delayed
/// dispatch, not after the confirmation time (here five minutes).
#[tokio::test]
async fn a_vendor_answering_429_is_called_again_when_it_says() {
    let rig = rig(RigSettings {
        confirm_within_seconds: 300,
        ..RigSettings::default()
    })
    .await;
    rig.services.vendor.rate_limited.store(1, Ordering::SeqCst);
    let subject = format!("slow-down-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;
    let view = rig
        .wait_for(&subject, &id, Duration::from_secs(60), completed)
        .await;
    let ads = service(&view, "ads");
    assert_eq!(ads["commands_sent"], 2, "{view:#}");
    assert_eq!(ads["status"], "confirmed");
    assert_eq!(rig.services.vendor.calls.load(Ordering::SeqCst), 2);
    assert_eq!(rig.services.vendor.service.records(&subject), 0);
    let times = rig.services.vendor.call_times.lock().unwrap().clone();
    let waited = times[1].duration_since(times[0]);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(30),
        "called again after {waited:?}"
    );
}

/// A vendor that takes batches: erasures submitted together reach it in a few calls (its
/// commands gathered on the vendor-erasures queue, up to 5 s), each subject is answered on its
/// own (erased, or the vendor's "never heard of them"), and every erasure completes.
#[tokio::test]
async fn a_vendor_that_takes_batches_erases_many_subjects_in_a_few_calls() {
    let rig = rig(RigSettings {
        confirm_within_seconds: 300,
        vendor_batch: Some(50),
        ..RigSettings::default()
    })
    .await;
    let run = unique_name();
    let mut requests = Vec::new();
    for n in 0..12 {
        let subject = format!("batched-{n}-{run}");
        let id = rig.submit_erasure(&subject).await;
        requests.push((subject, id));
    }
    // One of them the vendor never heard of.
    let (stranger, stranger_id) = &requests[11];
    rig.services.vendor.service.forget(stranger);
    for (subject, id) in &requests {
        let view = rig
            .wait_for(subject, id, Duration::from_secs(120), completed)
            .await;
        let ads = service(&view, "ads");
        let expected = if id == stranger_id {
            "not_found"
        } else {
            "confirmed"
        };
        assert_eq!(ads["status"], expected, "{view:#}");
        assert_eq!(ads["commands_sent"], 1, "{view:#}");
        assert_eq!(rig.services.vendor.service.records(subject), 0);
    }
    let batches = rig.services.vendor.batches.lock().unwrap().clone();
    let subjects: std::collections::HashSet<&String> = batches.iter().flatten().collect();
    assert_eq!(
        subjects.len(),
        12,
        "every subject reached the vendor: {batches:?}"
    );
    assert_eq!(
        batches.iter().map(Vec::len).sum::<usize>(),
        12,
        "each subject once: {batches:?}"
    );
    assert!(
        batches.len() <= 4,
        "12 erasures in {} calls: {batches:?}",
        batches.len()
    );
    assert_eq!(
        rig.services.vendor.calls.load(Ordering::SeqCst) as usize,
        batches.len(),
        "no single-subject call"
    );
    let dead = crate::helpers::drain(
        &rig.app.sqs,
        &rig.app.queue_url("VendorErasuresDeadLetterQueue"),
    )
    .await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// A vendor that takes batches answering the whole call 429 (`Retry-After: 1`): every command
/// of the call is sent again a second later, in a batch again, not after the confirmation time.
#[tokio::test]
async fn a_vendor_that_takes_batches_saying_not_now_gets_the_whole_batch_again_when_it_says() {
    let rig = rig(RigSettings {
        confirm_within_seconds: 300,
        vendor_batch: Some(50),
        ..RigSettings::default()
    })
    .await;
    rig.services.vendor.rate_limited.store(1, Ordering::SeqCst);
    let run = unique_name();
    let mut requests = Vec::new();
    for n in 0..3 {
        let subject = format!("not-now-{n}-{run}");
        let id = rig.submit_erasure(&subject).await;
        requests.push((subject, id));
    }
    for (subject, id) in &requests {
        let view = rig
            .wait_for(subject, id, Duration::from_secs(90), completed)
            .await;
        let ads = service(&view, "ads");
        assert_eq!(ads["status"], "confirmed", "{view:#}");
        assert!(ads["commands_sent"].as_u64() <= Some(2), "{view:#}");
        assert_eq!(rig.services.vendor.service.records(subject), 0);
    }
    let calls = rig.services.vendor.calls.load(Ordering::SeqCst);
    let batches = rig.services.vendor.batches.lock().unwrap().clone();
    assert_eq!(
        batches.iter().map(Vec::len).sum::<usize>(),
        3,
        "the refused call is not among the answered ones: {batches:?}"
    );
    assert!(
        (2..=4).contains(&calls),
        "{calls} calls for 3 subjects: one refused, then batches {batches:?}"
    );
    let times = rig.services.vendor.call_times.lock().unwrap().clone();
    let waited = times[1].duration_since(times[0]);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(60),
        "called again after {waited:?}"
    );
}

/// The vendor's obligation as stored, with its last error.
async fn vendor_obligation(rig: &ErasureRig, id: &str) -> dsr_domain::erasure::Obligation {
    use dsr_domain::erasure::ObligationStore;
    dsr_adapters::wiring::request_store(
        &crate::helpers::aws().await,
        &rig.app.stack.env("ErasureFunction").unwrap(),
        "test",
    )
    .unwrap()
    .obligations(id.parse().unwrap())
    .await
    .unwrap()
    .into_iter()
    .find(|o| o.service.as_str() == "ads")
    .expect("an obligation for ads")
}

#[tokio::test]
async fn a_vendor_that_never_heard_of_the_subject_says_so_in_its_documented_answer() {
    let rig = rig(RigSettings::default()).await;
    let subject = format!("nobody-{}", unique_name());
    // Seeded in every internal service, but not at the vendor.
    rig.services.seed(&subject);
    rig.services.vendor.service.forget(&subject);
    let reply = rig.app.submit(&subject, "erasure").await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let view = rig
        .wait_for(&subject, &id, Duration::from_secs(60), completed)
        .await;
    assert_eq!(service(&view, "ads")["status"], "not_found");
}

#[tokio::test]
async fn a_wrong_vendor_url_answering_a_bare_404_or_a_redirect_never_completes_the_erasure() {
    for (path, why) in [
        ("/v3/users/{subject}", "not its documented not-found answer"),
        ("/v1/users/{subject}", "redirects are not followed"),
    ] {
        let rig = rig(RigSettings {
            confirm_within_seconds: 1,
            max_sends: 2,
            grace_seconds: 1,
            vendor_path: path,
            ..RigSettings::default()
        })
        .await;
        let subject = format!("wrong-url-{}", unique_name());
        let id = rig.submit_erasure(&subject).await;
        let view = rig
            .wait_for(&subject, &id, Duration::from_secs(60), |v| {
                planned(v, "ads").is_some_and(|s| s["escalated"] == true)
            })
            .await;
        assert_eq!(service(&view, "ads")["status"], "failed", "{path}");
        assert_eq!(view["state"], "awaiting_confirmations", "{path}");
        assert_eq!(
            rig.services.vendor.service.records(&subject),
            1,
            "{path}: the vendor still holds the data, and nobody pretends otherwise"
        );
        let error = vendor_obligation(&rig, &id).await.last_error.unwrap();
        assert!(error.contains(why), "{path}: {error}");
    }
}

#[tokio::test]
async fn an_erasure_deletes_the_subjects_report_and_its_link_answers_410() {
    let rig = rig(RigSettings::default()).await;
    let subject = format!("reported-{}", unique_name());
    rig.services.seed(&subject);
    let access = rig.app.submit(&subject, "access").await;
    assert_eq!(access.status, 202, "{}", access.body);
    let access = access.body["id"].as_str().unwrap().to_owned();
    rig.wait_for(&subject, &access, Duration::from_secs(60), |v| {
        v["state"] == "report_ready"
    })
    .await;
    let link = rig
        .app
        .get(&subject, &format!("/v1/requests/{access}/report"))
        .await;
    assert_eq!(link.status, 200, "{}", link.body);
    let s3 = dsr_adapters::s3::client(&crate::helpers::aws().await);
    let bucket = rig.app.stack.context.resources["ReportsBucket"]
        .name
        .clone();
    let objects = |s3: aws_sdk_s3::Client, bucket: String, prefix: String| async move {
        s3.list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap()
            .contents()
            .len()
    };
    let prefix = format!("reports/{access}/");
    assert_eq!(objects(s3.clone(), bucket.clone(), prefix.clone()).await, 1);

    let erasure = rig.app.submit(&subject, "erasure").await;
    let erasure = erasure.body["id"].as_str().unwrap().to_owned();
    let view = rig
        .wait_for(&subject, &erasure, Duration::from_secs(60), completed)
        .await;
    assert_eq!(service(&view, OWN_COPIES)["status"], "confirmed");
    assert_eq!(objects(s3, bucket, prefix).await, 0, "the report is gone");
    let gone = rig
        .app
        .get(&subject, &format!("/v1/requests/{access}/report"))
        .await;
    assert_eq!(gone.status, 410, "{}", gone.body);
    assert_response("GET", "/v1/requests/{id}/report", 410, &gone.body);
    assert_eq!(rig.show(&subject, &access).await["state"], "expired");
    assert!(rig
        .audit(&access)
        .await
        .contains(&format!("closed_by_erasure:{erasure}")));
}

#[tokio::test]
async fn past_its_retention_a_finished_request_keeps_only_the_hash_and_the_proof() {
    use dsr_domain::erasure::ObligationStore;
    let rig = rig(RigSettings::default()).await;
    let subject = format!("forget-me-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;
    rig.wait_for(&subject, &id, Duration::from_secs(60), completed)
        .await;
    let requests = rig.app.stack.requests("SweepFunction", "sweep").unwrap();
    let request_id: dsr_domain::RequestId = id.parse().unwrap();
    // A vendor that echoed the user id in its answer.
    requests
        .store()
        .replace_receipt(
            request_id,
            &dsr_domain::ServiceName::parse("ads").unwrap(),
            &format!(r#"{{"deleted_user":"{subject}","ok":true}}"#),
        )
        .await
        .unwrap();
    let not_yet = requests
        .forget_finished_subjects(chrono::Duration::days(1), 1000)
        .await
        .unwrap();
    assert_eq!(not_yet, 0, "within its retention nothing changes");
    let forgotten = requests
        .forget_finished_subjects(chrono::Duration::zero(), 1000)
        .await
        .unwrap();
    assert!(forgotten >= 1);

    // The stored items hold no subject id any more...
    let items = rig
        .app
        .dynamodb
        .query()
        .table_name(rig.app.table())
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(
            ":pk",
            aws_sdk_dynamodb::types::AttributeValue::S(dsr_adapters::dynamodb::keys::request(
                request_id,
            )),
        )
        .send()
        .await
        .unwrap();
    let everything = format!("{:?}", items.items());
    assert!(!everything.contains(&subject), "{everything}");
    assert!(everything.contains("[subject]"), "the receipt is scrubbed");
    // ...but the proof and the owner's view stay.
    let obligations = requests.store().obligations(request_id).await.unwrap();
    assert_eq!(obligations.len(), 6);
    assert!(obligations
        .iter()
        .all(|o| o.status.is_done() && o.receipt.is_some()));
    assert_eq!(rig.show(&subject, &id).await["state"], "completed");
    let list = rig.app.get(&subject, "/v1/requests").await;
    assert!(list.body["requests"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == id.as_str()));
    let stranger = rig
        .app
        .get("someone-else", &format!("/v1/requests/{id}"))
        .await;
    assert_eq!(stranger.status, 404);
}

/// Waits for `want` messages on the dead-letter queue `queue` (logical id) and takes them:
/// (body, reason).
pub async fn dead_lettered(app: &TestApp, queue: &str, want: usize) -> Vec<(String, String)> {
    let dlq = app.queue_url(queue);
    let mut dead = Vec::new();
    eventually(Duration::from_secs(30), async || {
        for m in app
            .sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
        {
            let reason = m.message_attributes().unwrap()["reason"]
                .string_value()
                .unwrap()
                .to_owned();
            app.sqs
                .delete_message()
                .queue_url(&dlq)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
            dead.push((m.body().unwrap().to_owned(), reason));
        }
        dead.len() >= want
    })
    .await;
    dead
}

/// Sends `body` straight to SQS `queue` (logical id), stamped as the bridge stamps what
/// `broker_user` published.
async fn send_as(app: &TestApp, queue: &str, body: &str, broker_user: Option<&str>) {
    let mut send = app
        .sqs
        .send_message()
        .queue_url(app.queue_url(queue))
        .message_body(body);
    if let Some(user) = broker_user {
        send = send.message_attributes(
            "broker_user",
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(user)
                .build()
                .unwrap(),
        );
    }
    send.send().await.unwrap();
}

#[tokio::test]
async fn confirmations_for_unknown_requests_or_services_are_dead_lettered_with_the_reason() {
    let rig = rig(RigSettings::default()).await;
    let subject = format!("dlq-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;
    rig.wait_for(&subject, &id, Duration::from_secs(60), completed)
        .await;
    let unknown_request = dsr_domain::RequestId::new_at(chrono::Utc::now()).to_string();
    let billing = erasing_services::broker_user("billing");
    let bodies: HashMap<&str, String> = HashMap::from([
        ("unknown request", serde_json::json!({"type": "erasure_confirmation", "version": 1, "message_id": "x1", "request_id": unknown_request, "service": "billing", "outcome": "erased"}).to_string()),
        ("no obligation", serde_json::json!({"type": "erasure_confirmation", "version": 1, "message_id": "x2", "request_id": id, "service": "warehouse", "outcome": "erased"}).to_string()),
        ("not a confirmation", "{\"hello\": 1}".to_owned()),
    ]);
    for body in bodies.values() {
        send_as(&rig.app, "ConfirmationsQueue", body, Some(&billing)).await;
    }
    let dead = dead_lettered(&rig.app, "ConfirmationsDeadLetterQueue", 3).await;
    assert_eq!(dead.len(), 3, "dead-lettered: {dead:?}");
    for (body, reason) in &dead {
        let why = bodies.iter().find(|(_, b)| *b == body).unwrap().0;
        let expected = match *why {
            "unknown request" => "unknown request",
            "no obligation" => "no broker user is registered for service `warehouse`",
            _ => "not a confirmation",
        };
        assert!(reason.contains(expected), "{why}: {reason}");
    }
    // The completed request was not disturbed.
    assert_eq!(rig.show(&subject, &id).await["state"], "completed");
}

#[tokio::test]
async fn a_confirmation_not_published_by_the_service_itself_never_counts() {
    let rig = rig(RigSettings::default()).await;
    rig.services
        .service("billing")
        .behaviour
        .silent
        .store(true, Ordering::SeqCst);
    let subject = format!("forged-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;
    rig.wait_for(&subject, &id, Duration::from_secs(60), |v| {
        planned(v, "billing").is_some_and(|s| s["status"] == "sent")
    })
    .await;
    let forged = serde_json::json!({"type": "erasure_confirmation", "version": 1,
        "message_id": "forged-1", "request_id": id, "service": "billing", "outcome": "erased",
        "receipt": {"records_deleted": 2}});

    // Another service, connected as itself, claims to be billing: RabbitMQ refuses a user_id
    // that is not the connection's own, so it can only name itself...
    let profile = erasing_services::broker_user("profile");
    let url = erasing_services::broker_url_as(LOCAL_BROKER, &profile);
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let impostor = crate::helpers::confirming_channel(&conn).await;
    let exchange = format!("{}.confirmations", rig.namespace);
    let pretending = async {
        impostor
            .basic_publish(
                exchange.as_str().into(),
                "confirmation.billing".into(),
                lapin::options::BasicPublishOptions::default(),
                forged.to_string().as_bytes(),
                lapin::BasicProperties::default()
                    .with_user_id(erasing_services::broker_user("billing").as_str().into()),
            )
            .await?
            .await
    }
    .await;
    assert!(
        pretending.is_err() || pretending.is_ok_and(|c| !c.is_ack()),
        "RabbitMQ takes no user_id but the connection's own"
    );
    // ...and then the confirmation is dead-lettered, naming who sent it.
    let honest = conn.create_channel().await.unwrap();
    crate::bridge::publish_as(
        &honest,
        &exchange,
        "forged-2",
        forged.to_string().as_bytes(),
        Some(&profile),
    )
    .await;
    let dead = dead_lettered(&rig.app, "ConfirmationsDeadLetterQueue", 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].1.contains("from broker user `dsr-demo-profile`")
            && dead[0].1.contains("`dsr-demo-billing`"),
        "{}",
        dead[0].1
    );
    let view = rig.show(&subject, &id).await;
    assert_eq!(service(&view, "billing")["status"], "sent", "never counted");
    assert_ne!(view["state"], "completed");
}

#[tokio::test]
async fn delayed_dispatch_takes_from_each_caller_only_its_own_destinations_and_keys() {
    let namespace_hint = unique_name();
    let retries = format!("{namespace_hint}-billing.retries");
    let rig = rig(RigSettings {
        dispatch_callers: Some(format!(
            "callers: [{{name: billing, broker_user: {}, destinations: [{{exchange: {retries}, routing_key: \"retry.*\"}}]}}]",
            erasing_services::broker_user("billing")
        )),
        ..RigSettings::default()
    })
    .await;
    let ns = &rig.namespace;
    // What billing's retry consumer would get.
    let conn = Connection::connect(LOCAL_BROKER, ConnectionProperties::default())
        .await
        .unwrap();
    let spy = conn.create_channel().await.unwrap();
    dsr_bridge::declare_topic_exchange(&spy, &retries)
        .await
        .unwrap();
    let spy_queue = format!("{retries}.spy");
    spy.queue_declare(
        spy_queue.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    spy.queue_bind(
        spy_queue.as_str().into(),
        retries.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let now = chrono::Utc::now().to_rfc3339();
    let schedule = |key: &str, destination: Value| {
        serde_json::json!({"action": "schedule", "version": 1, "key": key, "deliver_at": now,
            "destination": destination, "payload": {"type": "erase_subject", "subject": "victim"}})
        .to_string()
    };
    let commands = serde_json::json!({"kind": "rabbitmq", "exchange": format!("{ns}.commands"), "routing_key": "erasure.profile"});
    let allowed =
        serde_json::json!({"kind": "rabbitmq", "exchange": retries, "routing_key": "retry.1"});
    let confirmations =
        serde_json::json!({"kind": "sqs", "queue_url": rig.app.queue_url("ConfirmationsQueue")});
    let publish = |user: String, body: String| {
        let exchange = format!("{ns}.schedule");
        async move {
            let url = erasing_services::broker_url_as(LOCAL_BROKER, &user);
            let conn = Connection::connect(&url, ConnectionProperties::default())
                .await
                .unwrap();
            let channel = crate::helpers::confirming_channel(&conn).await;
            crate::bridge::publish_as(&channel, &exchange, "m", body.as_bytes(), Some(&user)).await;
        }
    };
    let billing = erasing_services::broker_user("billing");
    let stranger = erasing_services::broker_user("profile");
    publish(billing.clone(), schedule("ok", allowed.clone())).await;
    publish(billing.clone(), schedule("evil", commands)).await;
    publish(billing.clone(), schedule("inject", confirmations)).await;
    publish(stranger, schedule("ok", allowed)).await;

    let dead = dead_lettered(&rig.app, "ScheduleRequestsDeadLetterQueue", 3).await;
    let mut reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{dead:?}");
    assert!(
        reasons[0].contains("`dsr-demo-billing` may not deliver to SQS"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains(&format!("may not deliver to exchange `{ns}.commands`")),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("`dsr-demo-profile` is not allowed to use delayed dispatch"),
        "{reasons:?}"
    );

    // The allowed one arrives, once, under the caller's own key namespace.
    let mut consumer = spy
        .basic_consume(
            spy_queue.as_str().into(),
            "spy".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
        .await
        .expect("the allowed message is delivered")
        .unwrap()
        .unwrap();
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some("svc/billing/ok".to_owned())
    );
    assert_eq!(delivery.routing_key.as_str(), "retry.1");
    // Nothing reached the profile service's command queue.
    assert!(rig
        .services
        .service("profile")
        .commands
        .lock()
        .unwrap()
        .is_empty());
}

/// Stops the RabbitMQ server and starts it again, as `make test` started it.
/// Stops the shared broker, keeps it down for `down`, and starts it again.
async fn restart_rabbitmq(down: Duration) {
    tokio::task::spawn_blocking(move || {
        let stop = std::process::Command::new("bash")
            .args(["-c", "PATH=/usr/sbin:$PATH rabbitmqctl shutdown"])
            .status()
            .unwrap();
        assert!(stop.success(), "rabbitmqctl shutdown");
        std::thread::sleep(down);
        let start = std::process::Command::new("bash")
            .arg(crate::helpers::repo_path("infra/local/ensure-rabbitmq.sh"))
            .status()
            .unwrap();
        assert!(start.success(), "ensure-rabbitmq.sh");
    })
    .await
    .unwrap();
}

/// What an operator would look at when erasures do not finish: the requests' states and
/// obligations, the SQS queues between the functions, and the rig's RabbitMQ queues.
async fn where_they_wait(rig: &ErasureRig, unfinished: &[(String, String)]) -> String {
    let mut states: std::collections::BTreeMap<String, usize> = Default::default();
    let mut first = Value::Null;
    for (subject, id) in unfinished {
        let view = rig.show(subject, id).await;
        *states.entry(view["state"].to_string()).or_default() += 1;
        if first.is_null() {
            first = view;
        }
    }
    let mut out = format!("states: {states:?}\nfirst unfinished: {first}\nSQS:");
    for queue in [
        "ErasureRequestsQueue",
        "ConfirmationsQueue",
        "OutboundQueue",
        "ScheduleRequestsQueue",
        "ErasureRequestsDeadLetterQueue",
        "ConfirmationsDeadLetterQueue",
        "OutboundDeadLetterQueue",
    ] {
        let depth = crate::helpers::queue_depth(&rig.app.sqs, &rig.app.queue_url(queue)).await;
        out += &format!(" {queue}={depth}");
    }
    let listed = std::process::Command::new("bash")
        .args([
            "-c",
            "PATH=/usr/sbin:$PATH rabbitmqctl list_queues -q name messages_ready messages_unacknowledged consumers",
        ])
        .output();
    out += "\nRabbitMQ (name ready unacked consumers):";
    if let Ok(listed) = listed {
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            if line.contains(&rig.namespace) {
                out += &format!("\n  {line}");
            }
        }
    }
    out
}

/// Runs alone (`make test` runs it after the parallel suite): it restarts the shared broker.
/// `make chaos` runs it with the broker down for ten minutes during 1,000 erasures
/// (`CHAOS_BROKER_DOWN_SECONDS`, `CHAOS_BROKER_ERASURES`).
#[tokio::test]
async fn rabbitmq_restarted_in_the_middle_of_a_fan_out_of_100_erasures_loses_nothing() {
    let requests = crate::chaos::scale("CHAOS_BROKER_ERASURES", 100);
    let down = Duration::from_secs(crate::chaos::scale("CHAOS_BROKER_DOWN_SECONDS", 0) as u64);
    let started = std::time::Instant::now();
    // No watchdog re-send within the test: whatever completes, completes on the first command.
    let rig = rig(RigSettings {
        confirm_within_seconds: 3600,
        max_sends: 3,
        grace_seconds: 1,
        ..RigSettings::default()
    })
    .await;
    let mut submitted = Vec::new();
    for i in 0..requests {
        let subject = format!("bulk{i}-{}", rig.namespace);
        let id = rig.submit_erasure(&subject).await;
        submitted.push((subject, id));
    }
    // Restart once the fan-out is under way: some commands out, most not yet.
    let profile = rig.services.service("profile");
    assert!(
        eventually(Duration::from_secs(120), async || {
            profile.commands.lock().unwrap().len() >= 10
        })
        .await
    );
    let before = profile.commands.lock().unwrap().len();
    restart_rabbitmq(down).await;
    eprintln!("restart: broker restarted after {before} of {requests} profile commands");

    let mut unfinished = submitted.clone();
    let within = Duration::from_secs(480 + requests as u64) + down;
    // One request at a time, the oldest unfinished: asking about all of them every round was
    // most of what the emulator served at 1,000 erasures.
    let all_done = eventually(within, async || {
        while let Some((subject, id)) = unfinished.first() {
            if rig.show(subject, id).await["state"] != "completed" {
                return false;
            }
            unfinished.remove(0);
        }
        true
    })
    .await;
    if !all_done {
        let mut still = Vec::new();
        for (subject, id) in &unfinished {
            if rig.show(subject, id).await["state"] != "completed" {
                still.push((subject.clone(), id.clone()));
            }
        }
        unfinished = still;
    }
    assert!(
        all_done,
        "{} of {requests} not completed\n{}",
        unfinished.len(),
        where_they_wait(&rig, &unfinished).await
    );
    println!(
        "chaos: broker loss | {requests} erasures, RabbitMQ stopped after {before} profile commands for {} s, then started | {} completed, {} lost | {:.0} s",
        down.as_secs(),
        requests - unfinished.len(),
        unfinished.len(),
        started.elapsed().as_secs_f64()
    );
    for (subject, id) in &submitted {
        let view = rig.show(subject, id).await;
        for s in view["services"].as_array().unwrap() {
            assert_eq!(s["commands_sent"], 1, "no command needed a re-send: {s}");
        }
        assert!(rig.services.remaining(subject).values().all(|n| *n == 0));
        for name in erasing_services::AMQP_SERVICES {
            assert_eq!(
                rig.services.service(name).erasures_of(id).len(),
                1,
                "{name}"
            );
        }
        // Told before the email address went.
        let email = rig.services.service("email");
        let notices = email.notices_of(id);
        assert_eq!(notices.len(), 1, "one notice for {id}");
        assert!(notices[0] <= email.erasures_of(id)[0], "{id}: notice first");
    }
    for dlq in [
        "ErasureRequestsDeadLetterQueue",
        "ConfirmationsDeadLetterQueue",
        "OutboundDeadLetterQueue",
        "ScheduleRequestsDeadLetterQueue",
    ] {
        assert_eq!(
            crate::helpers::queue_depth(&rig.app.sqs, &rig.app.queue_url(dlq)).await,
            0,
            "{dlq}"
        );
    }
}

/// The watchdog reads an obligation as unanswered, the service's confirmation lands, then the
/// watchdog writes its escalation: the write must lose.
#[tokio::test]
async fn an_escalation_written_after_a_confirmation_landed_is_refused_by_the_store() {
    use dsr_adapters::dynamodb::DynamoRequestStore;
    use dsr_domain::erasure::{Obligation, ObligationStatus, ObligationStore};
    use dsr_domain::{Request, RequestKind, RequestState, RequestStore, SubjectId};
    let app = crate::helpers::spawn_app().await;
    let store = DynamoRequestStore::new(app.dynamodb.clone(), app.table(), "test");
    let hasher = app.stack.subject_hasher().unwrap();
    let now = chrono::Utc::now();
    let request = Request::receive(RequestKind::Erasure, SubjectId::parse("erin").unwrap(), now);
    let hash = hasher.hash(&request.subject);
    store.create(&request, &hash, None, None).await.unwrap();
    let leased = match store
        .acquire_lease(
            request.id,
            "test",
            RequestState::FanningOut,
            now,
            chrono::Duration::seconds(60),
        )
        .await
        .unwrap()
    {
        dsr_domain::ports::LeaseOutcome::Acquired(request) => request,
        _ => panic!("the lease is ours"),
    };
    let (billing, profile) = (
        dsr_domain::ServiceName::parse("billing").unwrap(),
        dsr_domain::ServiceName::parse("profile").unwrap(),
    );
    store
        .plan(
            request.id,
            &[
                Obligation::planned(request.id, &billing, false),
                Obligation::planned(request.id, &profile, false),
            ],
            leased.fencing_token,
        )
        .await
        .unwrap();
    for service in [&billing, &profile] {
        assert!(store
            .record_send(request.id, service, 1, ObligationStatus::Sent, None, now)
            .await
            .unwrap());
    }
    // Billing's confirmation lands between the watchdog's read and its write. The write
    // itself returns when the command was sent (the latency metric reads nothing first).
    let recorded = store
        .record_answer(request.id, &billing, ObligationStatus::Confirmed, "{}", now)
        .await
        .unwrap()
        .expect("the answer is written");
    assert_eq!(
        recorded.sent_at.map(|t| t.timestamp_millis()),
        Some(now.timestamp_millis())
    );
    assert_eq!(
        store
            .record_answer(request.id, &billing, ObligationStatus::Confirmed, "{}", now)
            .await
            .unwrap(),
        None,
        "answered already"
    );
    assert!(!store.escalate(request.id, &billing, 1, now).await.unwrap());
    // A check of an older send, or of a silent service, as it should.
    assert!(!store.escalate(request.id, &profile, 0, now).await.unwrap());
    assert!(store.escalate(request.id, &profile, 1, now).await.unwrap());
    assert!(!store.escalate(request.id, &profile, 1, now).await.unwrap());
    let obligations = store.obligations(request.id).await.unwrap();
    let escalated: Vec<&str> = obligations
        .iter()
        .filter(|o| o.escalated_at.is_some())
        .map(|o| o.service.as_str())
        .collect();
    assert_eq!(escalated, ["profile"]);
    // The mark and its audit line are one write: no escalation without its line, and one line.
    let lines: Vec<String> = store
        .audit_trail(request.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .filter(|e| e.starts_with("escalated:"))
        .collect();
    assert_eq!(lines, ["escalated:profile"]);
}

#[tokio::test]
async fn a_service_that_says_it_erased_but_kept_the_data_is_found_by_the_verification_and_erased_again(
) {
    let rig = rig(RigSettings::default()).await;
    let billing = rig.services.service("billing");
    billing.behaviour.keeps_data.store(1, Ordering::SeqCst);
    let subject = format!("liar-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;

    let view = rig
        .wait_for(&subject, &id, Duration::from_secs(60), completed)
        .await;
    // Read again, found, told to erase under a new key, erased, read again: nothing left.
    assert_eq!(billing.records(&subject), 0, "erased for real in the end");
    assert_eq!(billing.erasures_of(&id).len(), 2, "two erasures, two keys");
    let keys: Vec<String> = billing
        .erasures
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains(&id))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        keys,
        [
            format!("erase:{id}:billing"),
            format!("erase:{id}:billing:r1")
        ]
    );
    assert_eq!(service(&view, "billing")["commands_sent"], 2);
    assert_eq!(service(&view, "billing")["status"], "confirmed");
    assert_eq!(
        service(&view, "profile")["commands_sent"],
        1,
        "the others once"
    );
    assert_eq!(
        rig.services.service("email").notices_of(&id).len(),
        1,
        "the subject told once"
    );
    let trail = rig.audit(&id).await;
    assert!(
        trail.contains(&"reopened:billing:2".to_owned()),
        "{trail:?}"
    );
    assert!(trail.contains(&"verifying".to_owned()), "{trail:?}");
    assert!(
        trail
            .iter()
            .any(|e| e.starts_with("verified_nothing_left:")),
        "{trail:?}"
    );

    // The certificate says so.
    let certificate = rig
        .app
        .get(&subject, &format!("/v1/requests/{id}/certificate"))
        .await;
    assert_eq!(certificate.status, 200, "{}", certificate.body);
    crate::contract::assert_response(
        "GET",
        "/v1/requests/{id}/certificate",
        200,
        &certificate.body,
    );
    let certificate = &certificate.body["certificate"];
    assert_eq!(certificate["verification"]["result"], "nothing_left");
    assert_eq!(
        certificate["verification"]["holders_read"], 5,
        "{certificate}"
    );
    let holder = |name: &str| {
        certificate["holders"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["service"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(holder("billing")["found_again"], 1);
    assert!(holder("profile").get("found_again").is_none());
}

#[tokio::test]
async fn a_service_that_keeps_the_data_however_often_it_is_told_is_escalated() {
    let rig = rig(RigSettings {
        max_sends: 2,
        ..RigSettings::default()
    })
    .await;
    let billing = rig.services.service("billing");
    billing
        .behaviour
        .keeps_data
        .store(u32::MAX, Ordering::SeqCst);
    let subject = format!("hoarder-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;

    let view = rig
        .wait_for(&subject, &id, Duration::from_secs(60), |v| {
            planned(v, "billing").is_some_and(|s| s["escalated"] == true)
        })
        .await;
    assert_ne!(
        view["state"], "completed",
        "never completed while data is left"
    );
    assert_eq!(billing.records(&subject), 2, "still there");
    assert_eq!(service(&view, "billing")["commands_sent"], 2, "{view:#}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !rig
        .audit(&id)
        .await
        .contains(&"escalated:billing".to_owned())
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
