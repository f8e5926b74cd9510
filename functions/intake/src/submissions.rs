//! Requests from other internal systems: a `submit_request` published on `<ns>.requests`
//! reaches the `submissions` queue through the RabbitMQ bridge, stamped with the broker user
//! that published it (RabbitMQ checked it against the connection). The `submissions` function
//! takes it only from the broker users the deployment allows, and submits it under the same
//! rules as the subject's own request: one open request per kind, the access limit, and an
//! idempotency key (the message's), so a message delivered twice is one request.

use dsr_adapters::batch::{Outcome, QueueDriver, RecordHandler};
use dsr_adapters::config::{vars, ConfigError, Env};
use dsr_adapters::wiring::{self, CloudRequests};
use dsr_domain::messages::{Origin, SubmitRequest};
use dsr_domain::ports::WorkQueue;
use dsr_domain::request::{Channel, SubmittedVia};
use dsr_domain::{Clock, IdempotencyKey, RequestError, RequestStore, Requests, Submission};

/// The function as Lambda runs it.
pub type SubmissionsFunction = QueueDriver<Submissions<CloudRequests>>;

/// Builds the function from its configuration: the same wiring in Lambda and the local stack.
pub fn build(aws: &aws_config::SdkConfig, env: &Env) -> Result<SubmissionsFunction, ConfigError> {
    let handler = Submissions {
        requests: wiring::requests(aws, env, "submissions")?,
        submitters: submitters(env)?,
    };
    QueueDriver::from_env(
        "submissions",
        handler,
        aws,
        env,
        vars::SUBMISSIONS_QUEUE_URL,
    )
}

/// `REQUEST_SUBMITTERS`: the broker users whose `submit_request`s are taken (comma or space
/// separated; empty: nobody's).
pub fn submitters(env: &Env) -> Result<Vec<String>, ConfigError> {
    let raw = env.optional(vars::REQUEST_SUBMITTERS).unwrap_or_default();
    let users: Vec<String> = raw
        .split([',', ' '])
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = users
        .iter()
        .find(|u| SubmittedVia::new(Channel::System, u, None).is_err())
    {
        return Err(ConfigError::unusable(
            vars::REQUEST_SUBMITTERS,
            format!("`{bad}` is not a broker user name"),
        ));
    }
    Ok(users)
}

/// One `submit_request` of the `submissions` queue.
pub struct Submissions<R> {
    pub requests: R,
    /// The broker users allowed to submit.
    pub submitters: Vec<String>,
}

impl<S, Q, C> RecordHandler for Submissions<Requests<S, Q, C>>
where
    S: RequestStore,
    Q: WorkQueue,
    C: Clock,
{
    type Message = SubmitRequest;

    async fn handle(&self, message: SubmitRequest, origin: &Origin) -> Outcome {
        // Only the bridge writes this queue, and it stamps every message with its publisher.
        let Origin::Broker(user) = origin else {
            return Outcome::Reject(
                "a submit_request without a broker user: only the RabbitMQ bridge forwards them"
                    .into(),
            );
        };
        if !self.submitters.iter().any(|allowed| allowed == user) {
            return Outcome::Reject(format!(
                "broker user `{user}` may not submit requests (REQUEST_SUBMITTERS)"
            ));
        }
        let via = match SubmittedVia::new(Channel::System, user, message.reference.as_deref()) {
            Ok(via) => via,
            Err(why) => return Outcome::Reject(why),
        };
        // Keyed per publisher: another system's message id is never this one's.
        let key = message
            .idempotency_key
            .as_deref()
            .unwrap_or(&message.message_id);
        let key = match IdempotencyKey::parse(&format!("system:{user}:{key}")) {
            Ok(key) => key,
            Err(why) => return Outcome::Reject(format!("idempotency key: {why}")),
        };
        match self
            .requests
            .submit_via(&message.subject, message.request, Some(&key), Some(via))
            .await
        {
            Ok(submission) => {
                let request = submission.request();
                tracing::info!(
                    request_id = %request.id,
                    kind = %message.request,
                    broker_user = %user,
                    message_id = %message.message_id,
                    outcome = match submission {
                        Submission::Created(_) => "created",
                        Submission::AlreadyOpen(_) => "already_open",
                        Submission::Replayed(_) => "replayed",
                    },
                    "request submitted by another system"
                );
                Outcome::Done
            }
            Err(RequestError::Store(err)) => {
                tracing::warn!(error = %err, "submission not stored yet; tried again");
                Outcome::Retry(None)
            }
            // The access limit, a key used for something else: never right by retrying.
            Err(err) => Outcome::Reject(err.to_string()),
        }
    }
}
