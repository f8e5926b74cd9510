use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use dsr_local::jwt::JwtAuthorizer;
use dsr_local::stack::{self, LocalSettings, LocalStack, RunningStack};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A name no other test uses: every test gets its own tables, queues and buckets.
pub fn unique_name() -> String {
    format!("t{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Always the emulator, never a real account, whatever the environment holds.
pub async fn aws() -> aws_config::SdkConfig {
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned());
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(dsr_adapters::config::https_client())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await
}

pub fn settings(stack_name: &str) -> LocalSettings {
    let mut settings = LocalSettings::new(repo_path("template.yaml"), stack_name);
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.consume_work_queues = false;
    settings.sweep_every = Duration::from_secs(3600);
    settings.reconcile_every = Duration::from_secs(3600);
    settings
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub stack: Arc<LocalStack>,
    pub authorizer: JwtAuthorizer,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub running: RunningStack,
    // Read by its `Drop`: the check runs when the app goes.
    pub _metric_check: MetricCatalogCheck,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `Retry-After` header, in seconds.
    pub fn retry_after(&self) -> i64 {
        self.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// The API of a freshly provisioned stack, with no queue consumers: tests read the queues.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut LocalSettings)) -> TestApp {
    try_spawn_app_with(adjust)
        .await
        .expect("the local stack starts (is the emulator up? run `make test`)")
}

/// The app, or why it did not start (a port taken meanwhile by another test, say).
pub async fn try_spawn_app_with(
    adjust: impl FnOnce(&mut LocalSettings),
) -> anyhow::Result<TestApp> {
    let aws = aws().await;
    let mut settings = settings(&unique_name());
    adjust(&mut settings);
    let running = stack::start(&aws, &settings).await?;
    let stack = running.stack.clone();
    Ok(TestApp {
        base: format!("http://{}", running.http_addr),
        http: reqwest::Client::new(),
        authorizer: stack.authorizer().unwrap(),
        sqs: aws_sdk_sqs::Client::new(&aws),
        dynamodb: aws_sdk_dynamodb::Client::new(&aws),
        stack,
        running,
        _metric_check: MetricCatalogCheck,
    })
}

/// Every test that ran the functions holds what they emitted to the metric catalog (the
/// template's alarms and dashboard are tested against the same catalog), when its app goes.
pub struct MetricCatalogCheck;

impl Drop for MetricCatalogCheck {
    fn drop(&mut self) {
        let violations = dsr_local::metric_check::violations();
        if !std::thread::panicking() && !violations.is_empty() {
            panic!("metrics the catalog does not declare: {violations:#?}");
        }
    }
}

impl TestApp {
    pub fn token(&self, subject: &str) -> String {
        self.authorizer.issue(subject, 300)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{status}: body is not JSON: {text}"));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn submit(&self, subject: &str, kind: &str) -> Reply {
        self.send(
            reqwest::Method::POST,
            "/v1/requests",
            Some(&self.token(subject)),
            Some(&format!(r#"{{"type":"{kind}"}}"#)),
            &[],
        )
        .await
    }

    pub async fn get(&self, subject: &str, path: &str) -> Reply {
        self.send(
            reqwest::Method::GET,
            path,
            Some(&self.token(subject)),
            None,
            &[],
        )
        .await
    }

    pub async fn delete(&self, subject: &str, path: &str) -> Reply {
        self.send(
            reqwest::Method::DELETE,
            path,
            Some(&self.token(subject)),
            None,
            &[],
        )
        .await
    }

    pub fn queue_url(&self, logical_id: &str) -> String {
        self.stack.context.resources[logical_id]
            .url
            .clone()
            .expect("a queue")
    }

    pub fn table(&self) -> String {
        self.stack.context.resources["RequestsTable"].name.clone()
    }

    pub fn hops_table(&self) -> String {
        self.stack.context.resources["HopsTable"].name.clone()
    }

    /// The hop log the functions count in, to read it as the reconciliation does.
    pub fn hop_log(&self) -> dsr_adapters::dynamodb::DynamoHopLog {
        dsr_adapters::dynamodb::DynamoHopLog::new(self.dynamodb.clone(), self.hops_table())
    }
}

/// Every message currently in the queue, received and deleted.
pub async fn drain(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<Message> {
    let mut all = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        let batch = out.messages.unwrap_or_default();
        if batch.is_empty() {
            return all;
        }
        for message in &batch {
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        all.extend(batch);
    }
}

/// Messages in the queue, visible or in flight.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> usize {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|name| {
        attributes
            .get(name)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    })
    .sum()
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every one of `queues` has a consumer. The bridge starts consuming only after it
/// declared and bound all its queues, so a message published after this is routed; one published
/// when a queue merely exists may find it not yet bound and be dropped by the broker.
pub async fn consumed(conn: &lapin::Connection, queues: &[&str], within: Duration) -> bool {
    eventually(within, async || {
        for queue in queues {
            // A fresh channel each time: the broker closes one whose passive declare failed.
            let Ok(channel) = conn.create_channel().await else {
                return false;
            };
            let declared = channel
                .queue_declare(
                    (*queue).into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await;
            let _ = channel.close(200, "probed".into()).await;
            match declared {
                Ok(q) if q.consumer_count() > 0 => {}
                _ => return false,
            }
        }
        true
    })
    .await
}

/// A channel on `conn` in publisher-confirm mode: each publish waits for the broker's ack.
pub async fn confirming_channel(conn: &lapin::Connection) -> lapin::Channel {
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

/// Writes a benchmark's figures into `$DSR_BENCH_OUT/<file>` when `make bench` runs the test
/// (infra/bench/report.py reads them); nothing otherwise.
pub fn write_bench_figures(file: &str, figures: &impl serde::Serialize) {
    if let Ok(dir) = std::env::var("DSR_BENCH_OUT") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            std::path::Path::new(&dir).join(file),
            serde_json::to_string_pretty(figures).unwrap(),
        )
        .unwrap();
    }
}

/// A TCP proxy in front of the broker that can make every connection open through it go quiet
/// at once: the broker's side is closed (the broker drops the consumers and requeues what it
/// had delivered), the client's side stays open and hears nothing more. A connection lost
/// without a goodbye, as behind a firewall, or when a restart's close never reaches the client.
pub struct SilencingProxy {
    pub addr: std::net::SocketAddr,
    generation: tokio::sync::watch::Sender<u64>,
}

impl SilencingProxy {
    pub async fn start(upstream: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generations = generation.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut silenced = generations.subscribe();
                let born = *silenced.borrow();
                tokio::spawn(async move {
                    let Ok(mut broker) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let quiet = async {
                        let _ = silenced.wait_for(|g| *g > born).await;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => return,
                        _ = quiet => {}
                    }
                    drop(broker);
                    // Held open, unread and unanswered, until the proxy goes.
                    let _ = silenced.wait_for(|_| false).await.is_ok();
                });
            }
        });
        Self { addr, generation }
    }

    /// `url` (an `amqp://` URL of the local broker) through this proxy.
    pub fn url(&self, url: &str) -> String {
        url.replace("127.0.0.1:5672", &self.addr.to_string())
    }

    /// Every connection open now goes quiet; later ones pass.
    pub fn silence(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Headless Chromium driven over WebDriver (Debian's chromium-driver): for a page a test
/// clicks on. The driver is killed with the value.
pub struct Browser {
    pub client: fantoccini::Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs (make test installs Debian's chromium-driver package)");
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    "--window-size=1400,1600",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut tries = 0;
        let client = loop {
            tries += 1;
            match fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            )
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
            {
                Ok(client) => break client,
                // The driver takes a moment to listen.
                Err(_) if tries < 100 => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(err) => panic!("no WebDriver session from chromedriver: {err}"),
            }
        };
        Browser {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// The text of the element `css` selects once `wanted` holds for it (within 30 s).
    pub async fn text_when(&self, css: &str, wanted: impl Fn(&str) -> bool) -> String {
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if let Ok(element) = self.client.find(fantoccini::Locator::Css(css)).await {
                text = element.text().await.unwrap_or_default();
                if wanted(&text) {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("`{css}` never came to say what was expected; it says: {text}")
    }

    /// Scrolls the element `css` selects to the middle of the window (for a screenshot).
    pub async fn scroll_to(&self, css: &str) {
        self.client
            .execute(
                "document.querySelector(arguments[0]).scrollIntoView({block: 'center'})",
                vec![serde_json::json!(css)],
            )
            .await
            .unwrap();
    }

    /// A screenshot of the window, saved to `path`; its size in bytes.
    pub async fn screenshot(&self, path: &std::path::Path) -> usize {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(path, &png).unwrap();
        png.len()
    }
}

/// Runs headless Chromium on `url`: the DOM after its scripts ran, and a screenshot.
pub async fn chromium(url: &str, screenshot: &std::path::Path) -> String {
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1400,2200",
        // Lets the page's fetch finish before the DOM is taken.
        "--virtual-time-budget=20000",
    ];
    let profile = tempfile::tempdir().unwrap();
    let user_data = format!("--user-data-dir={}", profile.path().display());
    let dom = tokio::process::Command::new("chromium")
        .args(common)
        .arg(&user_data)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .await
        .expect("chromium runs (make test installs Debian's chromium package)");
    assert!(
        dom.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let shot = tokio::process::Command::new("chromium")
        .args(common)
        .arg(&user_data)
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(url)
        .output()
        .await
        .unwrap();
    assert!(
        shot.status.success(),
        "chromium screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    String::from_utf8(dom.stdout).unwrap()
}
