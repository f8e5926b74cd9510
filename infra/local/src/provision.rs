//! Creates the tables, queues and buckets declared in `template.yaml` in whatever answers on
//! `AWS_ENDPOINT_URL` (moto or LocalStack). Physical names are `<stack>-<LogicalId>`, so each
//! test can provision its own isolated copy of the stack. Re-running it is harmless.

use crate::template::{PhysicalResource, ResourceKind, StackContext, Template};
use anyhow::{anyhow, bail, Context, Result};
use aws_config::SdkConfig;
use aws_sdk_dynamodb::types as ddb;
use aws_sdk_s3::types as s3;
use serde_yaml_ng::Value;
use std::collections::HashMap;

pub const DEFAULT_ACCOUNT_ID: &str = "000000000000";

/// Provisions every supported resource of `template` under `stack_name`, with `parameters`
/// overriding the template's defaults, and returns what intrinsics resolve against.
pub async fn provision(
    aws: &SdkConfig,
    template: &Template,
    stack_name: &str,
    parameters: HashMap<String, String>,
) -> Result<StackContext> {
    let mut stack = StackContext {
        stack_name: stack_name.to_owned(),
        region: aws
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into()),
        account_id: DEFAULT_ACCOUNT_ID.into(),
        parameters: template.parameter_defaults(),
        resources: HashMap::new(),
    };
    stack.parameters.extend(parameters);
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let sqs = aws_sdk_sqs::Client::new(aws);
    // Path-style addressing: `bucket.localhost` does not resolve (moto and LocalStack alike).
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(aws)
            .force_path_style(true)
            .build(),
    );

    let scheduler = aws_sdk_scheduler::Client::new(aws);
    let resources = template.resources();
    // Queues without a redrive policy first: the others name them as their dead-letter queue.
    let mut queues: Vec<_> = resources
        .iter()
        .filter(|(_, kind, _)| kind == "AWS::SQS::Queue")
        .collect();
    queues.sort_by_key(|(_, _, props)| props.get("RedrivePolicy").is_some());

    for (id, kind, props) in &resources {
        let physical = match kind.as_str() {
            "AWS::DynamoDB::Table" => create_table(&dynamodb, &stack, id, props).await,
            "AWS::S3::Bucket" => create_bucket(&s3, &stack, id, props).await,
            "AWS::Scheduler::ScheduleGroup" => {
                create_schedule_group(&scheduler, &stack, id, props).await
            }
            "AWS::IAM::Role" => Ok(PhysicalResource {
                kind: ResourceKind::Role,
                arn: format!(
                    "arn:aws:iam::{}:role/{}",
                    stack.account_id,
                    physical_name(&stack, id)
                ),
                name: physical_name(&stack, id),
                url: None,
            }),
            _ => continue,
        }
        .with_context(|| format!("provisioning {id}"))?;
        stack.resources.insert(id.clone(), physical);
    }
    for (id, _, props) in queues {
        let physical = create_queue(&sqs, &stack, id, props)
            .await
            .with_context(|| format!("provisioning {id}"))?;
        stack.resources.insert(id.clone(), physical);
    }
    Ok(stack)
}

fn physical_name(stack: &StackContext, logical_id: &str) -> String {
    format!("{}-{logical_id}", stack.stack_name)
}

fn str_prop<'a>(props: &'a Value, name: &str) -> Result<&'a str> {
    props
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("property {name} missing or not a string"))
}

fn list_prop<'a>(props: &'a Value, name: &str) -> &'a [Value] {
    props
        .get(name)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn key_schema(props: &Value) -> Result<Vec<ddb::KeySchemaElement>> {
    list_prop(props, "KeySchema")
        .iter()
        .map(|k| {
            Ok(ddb::KeySchemaElement::builder()
                .attribute_name(str_prop(k, "AttributeName")?)
                .key_type(ddb::KeyType::from(str_prop(k, "KeyType")?))
                .build()?)
        })
        .collect()
}

async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    stack: &StackContext,
    id: &str,
    props: &Value,
) -> Result<PhysicalResource> {
    let name = physical_name(stack, id);
    let mut create = client
        .create_table()
        .table_name(&name)
        .billing_mode(ddb::BillingMode::from(
            props
                .get("BillingMode")
                .and_then(Value::as_str)
                .unwrap_or("PAY_PER_REQUEST"),
        ))
        .set_key_schema(Some(key_schema(props)?));
    for attribute in list_prop(props, "AttributeDefinitions") {
        create = create.attribute_definitions(
            ddb::AttributeDefinition::builder()
                .attribute_name(str_prop(attribute, "AttributeName")?)
                .attribute_type(ddb::ScalarAttributeType::from(str_prop(
                    attribute,
                    "AttributeType",
                )?))
                .build()?,
        );
    }
    for index in list_prop(props, "GlobalSecondaryIndexes") {
        let projection = index
            .get("Projection")
            .ok_or_else(|| anyhow!("index without Projection"))?;
        create = create.global_secondary_indexes(
            ddb::GlobalSecondaryIndex::builder()
                .index_name(str_prop(index, "IndexName")?)
                .set_key_schema(Some(key_schema(index)?))
                .projection(
                    ddb::Projection::builder()
                        .projection_type(ddb::ProjectionType::from(str_prop(
                            projection,
                            "ProjectionType",
                        )?))
                        .build(),
                )
                .build()?,
        );
    }
    let arn = match create.send().await {
        Ok(out) => out.table_description.and_then(|d| d.table_arn),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            client
                .describe_table()
                .table_name(&name)
                .send()
                .await?
                .table
                .and_then(|t| t.table_arn)
        }
        Err(err) => bail!(aws_sdk_dynamodb::error::DisplayErrorContext(err).to_string()),
    }
    .ok_or_else(|| anyhow!("no ARN for table {name}"))?;

    if let Some(ttl) = props.get("TimeToLiveSpecification") {
        if ttl.get("Enabled").and_then(Value::as_bool) == Some(true) {
            client
                .update_time_to_live()
                .table_name(&name)
                .time_to_live_specification(
                    ddb::TimeToLiveSpecification::builder()
                        .attribute_name(str_prop(ttl, "AttributeName")?)
                        .enabled(true)
                        .build()?,
                )
                .send()
                .await
                .map_err(
                    |e| anyhow!(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()),
                )?;
        }
    }
    Ok(PhysicalResource {
        kind: ResourceKind::Table,
        name,
        arn,
        url: None,
    })
}

async fn create_queue(
    client: &aws_sdk_sqs::Client,
    stack: &StackContext,
    id: &str,
    props: &Value,
) -> Result<PhysicalResource> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let name = physical_name(stack, id);
    let mut create = client.create_queue().queue_name(&name);
    for (property, attribute) in [
        ("VisibilityTimeout", A::VisibilityTimeout),
        ("MessageRetentionPeriod", A::MessageRetentionPeriod),
        ("DelaySeconds", A::DelaySeconds),
        (
            "ReceiveMessageWaitTimeSeconds",
            A::ReceiveMessageWaitTimeSeconds,
        ),
        ("MaximumMessageSize", A::MaximumMessageSize),
    ] {
        if let Some(value) = props.get(property) {
            create = create.attributes(attribute, stack.resolve(value)?);
        }
    }
    if let Some(redrive) = props.get("RedrivePolicy") {
        let target = stack.resolve(
            redrive
                .get("deadLetterTargetArn")
                .ok_or_else(|| anyhow!("RedrivePolicy without deadLetterTargetArn"))?,
        )?;
        let max_receive: u32 = stack
            .resolve(
                redrive
                    .get("maxReceiveCount")
                    .ok_or_else(|| anyhow!("RedrivePolicy without maxReceiveCount"))?,
            )?
            .parse()?;
        create = create.attributes(
            A::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": target, "maxReceiveCount": max_receive})
                .to_string(),
        );
    }
    let attributes = create.get_attributes().clone();
    let url = match create.send().await {
        Ok(created) => created
            .queue_url
            .ok_or_else(|| anyhow!("no URL for queue {name}"))?,
        // The queue exists from an earlier run with other settings: bring it in line with
        // the template, as a stack update would.
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_queue_name_exists()) =>
        {
            let url = client
                .get_queue_url()
                .queue_name(&name)
                .send()
                .await
                .map_err(|e| anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?
                .queue_url
                .ok_or_else(|| anyhow!("no URL for queue {name}"))?;
            client
                .set_queue_attributes()
                .queue_url(&url)
                .set_attributes(attributes)
                .send()
                .await
                .map_err(|e| anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
            url
        }
        Err(err) => bail!(aws_sdk_sqs::error::DisplayErrorContext(err).to_string()),
    };
    let arn = queue_arn(client, &url).await?;
    Ok(PhysicalResource {
        kind: ResourceKind::Queue,
        name,
        arn,
        url: Some(url),
    })
}

async fn create_schedule_group(
    client: &aws_sdk_scheduler::Client,
    stack: &StackContext,
    id: &str,
    props: &Value,
) -> Result<PhysicalResource> {
    let name = match props.get("Name") {
        Some(name) => stack.resolve(name)?,
        None => physical_name(stack, id),
    };
    let arn = match client.create_schedule_group().name(&name).send().await {
        Ok(created) => created.schedule_group_arn,
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_conflict_exception()) =>
        {
            client
                .get_schedule_group()
                .name(&name)
                .send()
                .await
                .map_err(|e| anyhow!(aws_sdk_scheduler::error::DisplayErrorContext(e).to_string()))?
                .arn
                .unwrap_or_default()
        }
        Err(err) => bail!(aws_sdk_scheduler::error::DisplayErrorContext(err).to_string()),
    };
    Ok(PhysicalResource {
        kind: ResourceKind::ScheduleGroup,
        name,
        arn,
        url: None,
    })
}

/// Never build ARNs by hand: ask the emulator, as one would ask AWS.
pub async fn queue_arn(client: &aws_sdk_sqs::Client, queue_url: &str) -> Result<String> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(A::QueueArn)
        .send()
        .await
        .map_err(|e| anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?
        .attributes
        .and_then(|mut a| a.remove(&A::QueueArn))
        .ok_or_else(|| anyhow!("no ARN for queue {queue_url}"))
}

async fn create_bucket(
    client: &aws_sdk_s3::Client,
    stack: &StackContext,
    id: &str,
    props: &Value,
) -> Result<PhysicalResource> {
    // Bucket names are lower case and at most 63 characters.
    let name: String = physical_name(stack, id)
        .to_lowercase()
        .chars()
        .take(63)
        .collect();
    let mut create = client.create_bucket().bucket(&name);
    if stack.region != "us-east-1" {
        create = create.create_bucket_configuration(
            s3::CreateBucketConfiguration::builder()
                .location_constraint(s3::BucketLocationConstraint::from(stack.region.as_str()))
                .build(),
        );
    }
    if let Err(err) = create.send().await {
        let mine = err
            .as_service_error()
            .is_some_and(|e| e.is_bucket_already_owned_by_you());
        if !mine {
            bail!(aws_sdk_s3::error::DisplayErrorContext(err).to_string());
        }
    }
    if props.get("BucketEncryption").is_some() {
        client
            .put_bucket_encryption()
            .bucket(&name)
            .server_side_encryption_configuration(
                s3::ServerSideEncryptionConfiguration::builder()
                    .rules(
                        s3::ServerSideEncryptionRule::builder()
                            .apply_server_side_encryption_by_default(
                                s3::ServerSideEncryptionByDefault::builder()
                                    .sse_algorithm(s3::ServerSideEncryption::Aes256)
                                    .build()?,
                            )
                            .build(),
                    )
                    .build()?,
            )
            .send()
            .await
            .map_err(s3_err)?;
    }
    if props.get("PublicAccessBlockConfiguration").is_some() {
        client
            .put_public_access_block()
            .bucket(&name)
            .public_access_block_configuration(
                s3::PublicAccessBlockConfiguration::builder()
                    .block_public_acls(true)
                    .block_public_policy(true)
                    .ignore_public_acls(true)
                    .restrict_public_buckets(true)
                    .build(),
            )
            .send()
            .await
            .map_err(s3_err)?;
    }
    let rules = props
        .get("LifecycleConfiguration")
        .map(|l| list_prop(l, "Rules"))
        .unwrap_or_default();
    if !rules.is_empty() {
        let mut lifecycle = s3::BucketLifecycleConfiguration::builder();
        for rule in rules {
            let mut lifecycle_rule = s3::LifecycleRule::builder()
                .id(str_prop(rule, "Id").unwrap_or("rule"))
                .status(s3::ExpirationStatus::Enabled)
                .filter(
                    s3::LifecycleRuleFilter::builder()
                        .prefix(rule.get("Prefix").and_then(Value::as_str).unwrap_or(""))
                        .build(),
                );
            if let Some(days) = rule.get("ExpirationInDays") {
                let days: i32 = stack.resolve(days)?.parse()?;
                lifecycle_rule = lifecycle_rule
                    .expiration(s3::LifecycleExpiration::builder().days(days).build());
            }
            if let Some(abort) = rule.get("AbortIncompleteMultipartUpload") {
                let days: i32 = stack
                    .resolve(abort.get("DaysAfterInitiation").ok_or_else(|| {
                        anyhow!("AbortIncompleteMultipartUpload without DaysAfterInitiation")
                    })?)?
                    .parse()?;
                lifecycle_rule = lifecycle_rule.abort_incomplete_multipart_upload(
                    s3::AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(days)
                        .build(),
                );
            }
            lifecycle = lifecycle.rules(lifecycle_rule.build()?);
        }
        client
            .put_bucket_lifecycle_configuration()
            .bucket(&name)
            .lifecycle_configuration(lifecycle.build()?)
            .send()
            .await
            .map_err(s3_err)?;
    }
    Ok(PhysicalResource {
        kind: ResourceKind::Bucket,
        arn: format!("arn:aws:s3:::{name}"),
        name,
        url: None,
    })
}

fn s3_err<E, R>(err: aws_sdk_s3::error::SdkError<E, R>) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    anyhow!(aws_sdk_s3::error::DisplayErrorContext(err).to_string())
}
