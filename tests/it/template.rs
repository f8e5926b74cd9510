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
                assert!(
                    template.resource(&target).is_some() || parameters.contains(&target),
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
        let key = referenced(&env[SUBJECT_HASH_KEY]).unwrap();
        assert!(parameters.contains(&key), "the hash key is a parameter");
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
