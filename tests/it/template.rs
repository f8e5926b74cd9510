//! template.yaml is what the cloud and the local stack are both made from.

use crate::helpers::{aws, repo_path, unique_name};
use aws_sdk_sqs::types::QueueAttributeName;
use dsr_adapters::config::vars::SUBJECT_HASH_KEY;
use dsr_adapters::wiring::REQUEST_RESOURCE_VARIABLES;
use dsr_local::template::Template;
use serde_yaml_ng::Value;

#[test]
fn cfn_lint_passes() {
    let output = std::process::Command::new("cfn-lint")
        .arg(repo_path("template.yaml"))
        .output()
        .expect("cfn-lint is installed (make test puts the project virtualenv on PATH)");
    assert!(
        output.status.success(),
        "cfn-lint found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The resource or parameter a `!Ref` / `!GetAtt` names.
fn referenced(value: &Value) -> Option<String> {
    match value {
        Value::Tagged(tagged) if tagged.tag != "Sub" => tagged
            .value
            .as_str()
            .map(|s| s.split('.').next().unwrap_or(s).to_owned()),
        _ => None,
    }
}

/// The names a `!Sub` string refers to (`${Name}` or `${Name.Attribute}`), pseudo
/// parameters left out.
fn substituted(value: &Value) -> Vec<String> {
    let Value::Tagged(tagged) = value else {
        return Vec::new();
    };
    let Some(text) = tagged.value.as_str().filter(|_| tagged.tag == "Sub") else {
        return Vec::new();
    };
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split('}').next())
        .filter(|name| !name.starts_with("AWS::"))
        .map(|name| name.split('.').next().unwrap_or(name).to_owned())
        .collect()
}

/// cfn-lint does not check references inside a serverless function's environment; this does.
#[test]
fn every_resource_the_code_reads_from_its_environment_is_declared() {
    let template = Template::load(repo_path("template.yaml")).unwrap();
    let parameters = template.parameter_names();
    let functions: Vec<String> = template
        .resources()
        .into_iter()
        .filter(|(_, kind, _)| kind == "AWS::Serverless::Function")
        .map(|(id, _, _)| id)
        .collect();
    assert!(functions.len() >= 2);
    for function in &functions {
        let env = template.function_environment_raw(function).unwrap();
        // Every reference, in every function, names something declared.
        for (variable, value) in &env {
            for target in referenced(value).into_iter().chain(substituted(value)) {
                // `AWS::StackName` and the other pseudo parameters are CloudFormation's own.
                let pseudo = [
                    "AWS::StackName",
                    "AWS::Region",
                    "AWS::AccountId",
                    "AWS::Partition",
                ];
                assert!(
                    template.resource(&target).is_some()
                        || parameters.contains(&target)
                        || pseudo.contains(&target.as_str()),
                    "{function}.{variable} refers to undeclared {target}"
                );
            }
        }
    }
    // And the variables the requests reads name tables, queues or buckets.
    for function in ["IntakeFunction", "SweepFunction"] {
        let env = template.function_environment_raw(function).unwrap();
        for variable in REQUEST_RESOURCE_VARIABLES {
            let value = env
                .get(variable)
                .unwrap_or_else(|| panic!("{function} does not set {variable}"));
            let target = referenced(value)
                .unwrap_or_else(|| panic!("{function}.{variable} is not a reference"));
            let (kind, _) = template
                .resource(&target)
                .unwrap_or_else(|| panic!("{function}.{variable} refers to undeclared {target}"));
            assert!(
                ["AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::S3::Bucket"]
                    .contains(&kind.as_str()),
                "{function}.{variable} refers to a {kind}"
            );
        }
        // Secrets are named, never passed: the function reads them from Parameter Store.
        assert!(
            !env.contains_key(SUBJECT_HASH_KEY),
            "{function} is given the key itself"
        );
        let named = substituted(&env[&format!("{SUBJECT_HASH_KEY}_PARAMETER")]);
        assert_eq!(
            named,
            ["SecretsPath"],
            "{function}'s key lives under SecretsPath"
        );
    }
    // No secret value anywhere in any function's environment.
    for function in &functions {
        let env = template.function_environment_raw(function).unwrap();
        for (variable, value) in &env {
            if let Some(target) = referenced(value) {
                let no_echo = template.parameter_no_echo(&target);
                assert!(
                    !no_echo,
                    "{function}.{variable} passes the secret {target} as a value"
                );
            }
        }
    }
}

/// Every IAM statement (functions' policies, roles), as (where, statement).
fn statements(template: &Template) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for (id, kind, props) in template.resources() {
        let documents: Vec<&Value> = match kind.as_str() {
            "AWS::Serverless::Function" => props["Policies"]
                .as_sequence()
                .map(|p| p.iter().collect())
                .unwrap_or_default(),
            "AWS::IAM::Role" => props["Policies"]
                .as_sequence()
                .map(|p| p.iter().map(|p| &p["PolicyDocument"]).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        for document in documents {
            for statement in document["Statement"].as_sequence().into_iter().flatten() {
                found.push((id.clone(), statement.clone()));
            }
        }
    }
    found
}

fn as_list(value: &Value) -> Vec<Value> {
    match value {
        Value::Sequence(items) => items.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

/// No statement grants a `*` resource (or a whole account's) for a service whose resources
/// have names: queues, tables, buckets, secrets, parameters, the broker, functions.
#[test]
fn iam_names_every_resource_it_can() {
    let template = Template::load(repo_path("template.yaml")).unwrap();
    let named = [
        "sqs:",
        "dynamodb:",
        "s3:",
        "secretsmanager:",
        "ssm:",
        "mq:",
        "lambda:",
        "kms:",
    ];
    let all = statements(&template);
    assert!(all.len() > 10, "the statements were found: {}", all.len());
    for (id, statement) in all {
        if statement["Effect"].as_str() != Some("Allow") {
            continue;
        }
        let actions: Vec<String> = as_list(&statement["Action"])
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        for resource in as_list(&statement["Resource"]) {
            let text = match &resource {
                Value::String(text) => text.clone(),
                Value::Tagged(tagged) => tagged.value.as_str().unwrap_or_default().to_owned(),
                _ => String::new(),
            };
            let wildcard = text == "*" || text.ends_with(":*") || text.ends_with("}:*");
            if wildcard {
                let offending: Vec<&String> = actions
                    .iter()
                    .filter(|a| named.iter().any(|n| a.starts_with(n)))
                    .collect();
                assert!(
                    offending.is_empty(),
                    "{id}: {offending:?} on `{text}`: name the resource"
                );
            }
        }
    }
}

/// AWS's rule for SQS event sources: a queue's visibility timeout at least six times its
/// function's timeout, or a message still being worked on (or retried by Lambda) comes back to
/// another worker and is done twice.
#[test]
fn every_queue_hides_its_messages_for_six_times_its_functions_timeout() {
    let template = Template::load(repo_path("template.yaml")).unwrap();
    let mut mappings = 0;
    for (function, kind, _) in template.resources() {
        if kind != "AWS::Serverless::Function" {
            continue;
        }
        let timeout = template.function_timeout(&function).as_secs();
        for (queue, _, _) in template.sqs_event_sources(&function) {
            mappings += 1;
            let (_, props) = template.resource(&queue).unwrap();
            let visibility = props["VisibilityTimeout"].as_u64().unwrap_or(30);
            assert!(
                visibility >= 6 * timeout,
                "{queue}: visibility {visibility} s < 6 × {function}'s timeout {timeout} s"
            );
        }
    }
    assert!(
        mappings >= 5,
        "the SQS event sources were found: {mappings}"
    );
}

#[test]
fn the_api_is_throttled_and_submissions_more_tightly() {
    let template = Template::load(repo_path("template.yaml")).unwrap();
    let (_, api) = template.resource("HttpApi").unwrap();
    let rate = |settings: &Value| settings["ThrottlingRateLimit"].as_u64();
    let all = rate(&api["DefaultRouteSettings"]).expect("a default route throttle");
    let submit = rate(&api["RouteSettings"]["POST /v1/requests"]).expect("a submit throttle");
    assert!(submit < all, "submit {submit} < default {all}");
}

#[test]
fn reports_travel_only_over_tls_and_every_log_group_has_a_retention() {
    let template = Template::load(repo_path("template.yaml")).unwrap();
    let (_, policy) = template.resource("ReportsBucketPolicy").unwrap();
    let denies_plain_http = as_list(&policy["PolicyDocument"]["Statement"])
        .iter()
        .any(|s| {
            s["Effect"].as_str() == Some("Deny")
                && s["Condition"]["Bool"]["aws:SecureTransport"].as_str() == Some("false")
        });
    assert!(denies_plain_http);
    let resources = template.resources();
    let functions: Vec<&String> = resources
        .iter()
        .filter(|(_, kind, _)| kind == "AWS::Serverless::Function")
        .map(|(id, _, _)| id)
        .collect();
    for function in functions {
        let group = resources
            .iter()
            .find(|(_, kind, props)| {
                kind == "AWS::Logs::LogGroup"
                    && serde_yaml_ng::to_string(&props["LogGroupName"])
                        .unwrap()
                        .contains(&format!("${{{function}}}"))
            })
            .unwrap_or_else(|| panic!("{function} has no log group of its own"));
        assert!(
            !group.2["RetentionInDays"].is_null(),
            "{function}'s logs are kept forever"
        );
    }
}

#[tokio::test]
async fn provisioning_creates_what_the_template_declares() {
    let aws = aws().await;
    let template = Template::load(repo_path("template.yaml")).unwrap();
    let stack = dsr_local::provision::provision(
        &aws,
        &template,
        &unique_name(),
        dsr_local::stack::local_parameters(),
    )
    .await
    .unwrap();
    let declared: Vec<String> = template
        .resources()
        .into_iter()
        .filter(|(_, kind, _)| {
            ["AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::S3::Bucket"].contains(&kind.as_str())
        })
        .map(|(id, _, _)| id)
        .collect();
    assert!(declared.len() >= 6);
    for id in &declared {
        assert!(stack.resources.contains_key(id), "{id} was provisioned");
    }

    let sqs = aws_sdk_sqs::Client::new(&aws);
    let redrive = sqs
        .get_queue_attributes()
        .queue_url(stack.resources["AccessRequestsQueue"].url.clone().unwrap())
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    let policy: serde_json::Value =
        serde_json::from_str(&redrive[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(
        policy["deadLetterTargetArn"],
        stack.resources["AccessRequestsDeadLetterQueue"].arn
    );
    assert_eq!(policy["maxReceiveCount"].as_u64(), Some(5));
    assert_eq!(redrive[&QueueAttributeName::VisibilityTimeout], "5400");

    let table = aws_sdk_dynamodb::Client::new(&aws)
        .describe_table()
        .table_name(&stack.resources["RequestsTable"].name)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let mut indexes: Vec<_> = table
        .global_secondary_indexes()
        .iter()
        .filter_map(|i| i.index_name())
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["ByStateDue", "BySubject"]);

    // Provisioning twice is harmless (`make run` after `make run`).
    let again = dsr_local::provision::provision(
        &aws,
        &template,
        &stack.stack_name,
        dsr_local::stack::local_parameters(),
    )
    .await
    .unwrap();
    assert_eq!(
        again.resources["RequestsTable"].arn,
        stack.resources["RequestsTable"].arn
    );
}

/// Secrets reach a function only through Parameter Store: the stack put them there, the
/// functions' configuration names them, and the one configuration reader fetches them.
#[tokio::test]
async fn secrets_are_read_from_parameter_store_by_name() {
    use dsr_adapters::config::{self, vars, Env};
    let aws = aws().await;
    let app = crate::helpers::spawn_app().await;
    let declared = app.stack.environment("IntakeFunction").unwrap();
    assert!(!declared.contains_key(vars::SUBJECT_HASH_KEY));
    let name = &declared[&format!("{}_PARAMETER", vars::SUBJECT_HASH_KEY)];
    let resolved = app.stack.env("IntakeFunction").unwrap();
    assert_eq!(
        resolved.secret(vars::SUBJECT_HASH_KEY).unwrap().expose(),
        dsr_local::stack::local_secrets()["subject-hash-key"]
    );

    // A rotated value is what the next cold start reads.
    let ssm = aws_sdk_ssm::Client::new(&aws);
    ssm.put_parameter()
        .name(name)
        .value("a-rotated-key-of-enough-bytes")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let fresh = config::with_parameters(&aws, Env::from_pairs(declared.clone()))
        .await
        .unwrap();
    assert_eq!(
        fresh.secret(vars::SUBJECT_HASH_KEY).unwrap().expose(),
        "a-rotated-key-of-enough-bytes"
    );

    // A missing one stops the function at init, naming the variable.
    let missing = format!("/dsr-local/{}/nothing-here", unique_name());
    let err = config::with_parameters(
        &aws,
        Env::from_pairs([("VENDOR_TOKEN_PARAMETER", missing.as_str())]),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("VENDOR_TOKEN_PARAMETER") && err.contains(&missing),
        "{err}"
    );
}

/// Every alarm and dashboard widget on the service's own namespace watches a metric the code
/// emits, under the dimensions it emits it with (`Function` alone is the roll-up every metric
/// has), from a function that emits it, on the namespace every function emits to (its
/// `METRICS_NAMESPACE`): a renamed metric, dimension or namespace breaks this, not the alarm in
/// silence. What the code emits is held to the same catalog by the local stack's check.
#[test]
fn every_alarm_and_dashboard_metric_is_one_the_code_emits() {
    use dsr_domain::metrics::emitted;
    use serde_yaml_ng::Value as Yaml;
    let template = Template::load(repo_path("template.yaml")).unwrap();
    let check = |place: &str, name: &str, dimensions: &[(String, String)]| {
        let metric =
            emitted(name).unwrap_or_else(|| panic!("{place}: no metric {name} is emitted"));
        let names: std::collections::BTreeSet<&str> =
            dimensions.iter().map(|(k, _)| k.as_str()).collect();
        let full: std::collections::BTreeSet<&str> = std::iter::once("Function")
            .chain(metric.dimensions.iter().copied())
            .collect();
        assert!(
            names == std::collections::BTreeSet::from(["Function"]) || names == full,
            "{place}: {name} is emitted with {full:?} (or Function alone), not {names:?}"
        );
        let function = dimensions
            .iter()
            .find(|(k, _)| k == "Function")
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{place}: {name} without its Function"));
        assert!(
            metric.functions.contains(&function),
            "{place}: {name} is not emitted by {function} but by {:?}",
            metric.functions
        );
    };
    let own_namespace = |value: &Yaml| matches!(value, Yaml::Tagged(t) if t.value.as_str() == Some("GdprDsr/${AWS::StackName}"));
    let mut alarms = 0;
    let mut widgets = 0;
    let mut functions = 0;
    for (id, kind, props) in template.resources() {
        if kind == "AWS::Serverless::Function" {
            // Where the code's EMF lines go: the namespace the alarms and the dashboard read.
            let env = template.function_environment_raw(&id).unwrap();
            assert!(
                env.get("METRICS_NAMESPACE").is_some_and(own_namespace),
                "{id}: emits to {:?}, not to the alarms' namespace",
                env.get("METRICS_NAMESPACE")
            );
            functions += 1;
        }
        if kind == "AWS::CloudWatch::Alarm" {
            let namespace = &props["Namespace"];
            if matches!(namespace.as_str(), Some("AWS/SQS" | "AWS/AmazonMQ")) {
                continue;
            }
            assert!(
                own_namespace(namespace),
                "{id}: an alarm on {namespace:?}, which nothing emits to"
            );
            let name = props["MetricName"].as_str().unwrap();
            let dimensions: Vec<(String, String)> = props["Dimensions"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|d| {
                    (
                        d["Name"].as_str().unwrap().to_owned(),
                        d["Value"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            check(&id, name, &dimensions);
            alarms += 1;
        }
        if kind == "AWS::CloudWatch::Dashboard" {
            let Yaml::Tagged(sub) = &props["DashboardBody"] else {
                panic!("the dashboard body is a !Sub");
            };
            assert!(
                own_namespace(&sub.value[1]["Ns"]),
                "{id}: the dashboard's ${{Ns}} is not the functions' namespace"
            );
            let body = sub.value[0]
                .as_str()
                .unwrap()
                .replace("${Ns}", "NS")
                .replace("${AWS::Region}", "r");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            for widget in body["widgets"].as_array().unwrap() {
                let mut previous: Vec<String> = Vec::new();
                for row in widget["properties"]["metrics"].as_array().unwrap() {
                    let row: Vec<String> = row
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned())
                        .collect();
                    // CloudWatch's shorthand: "..." repeats the previous row but for its tail.
                    let full: Vec<String> = if row[0] == "..." {
                        let keep = previous.len() - (row.len() - 1);
                        previous[..keep].iter().chain(&row[1..]).cloned().collect()
                    } else {
                        row
                    };
                    assert_eq!(
                        full[0], "NS",
                        "{id}: a widget on another namespace: {full:?}"
                    );
                    let dimensions: Vec<(String, String)> = full[2..]
                        .chunks(2)
                        .map(|pair| (pair[0].clone(), pair[1].clone()))
                        .collect();
                    check(&id, &full[1], &dimensions);
                    previous = full;
                    widgets += 1;
                }
            }
        }
    }
    assert!(
        alarms >= 6 && widgets >= 20 && functions >= 8,
        "{alarms} alarms, {widgets} widget metrics, {functions} functions"
    );
}

/// The CDK app (infra/cdk) deploys what template.yaml deploys: synthesised offline (`cdk synth`,
/// no account) and compared with the SAM template as the SAM transform expands it, resource by
/// resource; and the comparison sees a one-setting difference.
#[test]
fn the_cdk_app_synthesises_the_same_resources_as_template_yaml() {
    let out = tempfile::tempdir().unwrap();
    let synth = std::process::Command::new("bash")
        .arg(repo_path("infra/cdk/synth.sh"))
        .env("CDK_STAND_INS", "1")
        .env("CDK_OUT", out.path())
        .output()
        .expect("bash runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&synth.stdout),
        String::from_utf8_lossy(&synth.stderr)
    );
    assert!(
        synth.status.success(),
        "cdk synth or the drift check failed:\n{said}"
    );
    assert!(said.contains("no drift"), "{said}");

    let template = std::fs::read_to_string(repo_path("template.yaml")).unwrap();
    let one_setting = "            BatchSize: 5\n";
    assert_eq!(
        template.matches(one_setting).count(),
        1,
        "the setting to change"
    );
    let changed = out.path().join("changed.yaml");
    std::fs::write(
        &changed,
        template.replace(one_setting, "            BatchSize: 6\n"),
    )
    .unwrap();
    let drift = std::process::Command::new("python3")
        .arg(repo_path("infra/cdk/drift.py"))
        .arg(&changed)
        .arg(out.path().join("GdprDsr.template.json"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&drift.stdout);
    assert!(
        !drift.status.success(),
        "a changed template passed:\n{said}"
    );
    assert!(
        said.contains(
            r#"ErasureFunctionErasureRequests.Properties.BatchSize: template.yaml "6" != CDK "5""#
        ),
        "{said}"
    );
}
