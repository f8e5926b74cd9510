//! Reads `template.yaml` the way CloudFormation would for the parts the local stack needs:
//! resources and their properties, the functions' environments (with `Globals`), and the
//! intrinsic functions that connect them (`Ref`, `Fn::GetAtt`, `Fn::Sub`, short or long form).

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml_ng::{Mapping, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Template {
    root: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Table,
    Queue,
    Bucket,
    ScheduleGroup,
    /// Not created locally (the emulator does not enforce IAM); only its ARN is made up.
    Role,
}

/// A provisioned resource, as `Ref` and `Fn::GetAtt` see it.
#[derive(Debug, Clone)]
pub struct PhysicalResource {
    pub kind: ResourceKind,
    pub name: String,
    pub arn: String,
    /// Queues only.
    pub url: Option<String>,
}

/// What intrinsic functions resolve against: the stack's parameters and pseudo parameters, and
/// the resources provisioned so far.
#[derive(Debug, Clone, Default)]
pub struct StackContext {
    pub stack_name: String,
    pub region: String,
    pub account_id: String,
    pub parameters: HashMap<String, String>,
    pub resources: HashMap<String, PhysicalResource>,
}

impl Template {
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let root: Value = serde_yaml_ng::from_str(text)?;
        if !root.get("Resources").is_some_and(Value::is_mapping) {
            bail!("the template has no Resources section");
        }
        Ok(Self { root })
    }

    /// `(logical id, type, properties)` of every resource, in template order.
    pub fn resources(&self) -> Vec<(String, String, Value)> {
        let Some(resources) = self.root.get("Resources").and_then(Value::as_mapping) else {
            return Vec::new();
        };
        resources
            .iter()
            .filter_map(|(id, body)| {
                let id = id.as_str()?.to_owned();
                let kind = body.get("Type")?.as_str()?.to_owned();
                let props = body
                    .get("Properties")
                    .cloned()
                    .unwrap_or(Value::Mapping(Mapping::new()));
                Some((id, kind, props))
            })
            .collect()
    }

    pub fn resource(&self, logical_id: &str) -> Option<(String, Value)> {
        self.resources()
            .into_iter()
            .find(|(id, _, _)| id == logical_id)
            .map(|(_, kind, props)| (kind, props))
    }

    /// The binary a function's `sam build` makes (`Metadata.BuildProperties.Binary`).
    pub fn function_binary(&self, logical_id: &str) -> Option<String> {
        self.root
            .get("Resources")?
            .get(logical_id)?
            .get("Metadata")?
            .get("BuildProperties")?
            .get("Binary")?
            .as_str()
            .map(str::to_owned)
    }

    /// Default values of the template's parameters.
    pub fn parameter_defaults(&self) -> HashMap<String, String> {
        let Some(params) = self.root.get("Parameters").and_then(Value::as_mapping) else {
            return HashMap::new();
        };
        params
            .iter()
            .filter_map(|(name, body)| {
                Some((name.as_str()?.to_owned(), scalar(body.get("Default")?)?))
            })
            .collect()
    }

    /// Whether parameter `name` is declared `NoEcho` (a secret value).
    pub fn parameter_no_echo(&self, name: &str) -> bool {
        self.root["Parameters"][name]["NoEcho"].as_bool() == Some(true)
    }

    pub fn parameter_names(&self) -> Vec<String> {
        self.root
            .get("Parameters")
            .and_then(Value::as_mapping)
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How long Lambda lets the function run (its `Timeout`, else the global one, else
    /// Lambda's default of 3 s).
    pub fn function_timeout(&self, logical_id: &str) -> std::time::Duration {
        let seconds = |v: Option<&Value>| v.and_then(|v| v.get("Timeout")).and_then(Value::as_u64);
        let own = self
            .resource(logical_id)
            .and_then(|(_, props)| seconds(Some(&props)));
        let global = seconds(self.root.get("Globals").and_then(|g| g.get("Function")));
        std::time::Duration::from_secs(own.or(global).unwrap_or(3))
    }

    /// The function's environment variables as written (Globals merged in, function wins),
    /// values still unresolved.
    pub fn function_environment_raw(&self, logical_id: &str) -> Result<BTreeMap<String, Value>> {
        let (kind, props) = self
            .resource(logical_id)
            .ok_or_else(|| anyhow!("no resource {logical_id} in the template"))?;
        if kind != "AWS::Serverless::Function" {
            bail!("{logical_id} is a {kind}, not a function");
        }
        let variables = |v: Option<&Value>| -> BTreeMap<String, Value> {
            v.and_then(|v| v.get("Environment"))
                .and_then(|e| e.get("Variables"))
                .and_then(Value::as_mapping)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut env = variables(self.root.get("Globals").and_then(|g| g.get("Function")));
        env.extend(variables(Some(&props)));
        Ok(env)
    }

    /// The function's environment with every intrinsic resolved against `stack`.
    pub fn function_environment(
        &self,
        logical_id: &str,
        stack: &StackContext,
    ) -> Result<BTreeMap<String, String>> {
        self.function_environment_raw(logical_id)?
            .into_iter()
            .map(|(name, value)| {
                let resolved = stack
                    .resolve(&value)
                    .with_context(|| format!("{logical_id}: environment variable {name}"))?;
                Ok((name, resolved))
            })
            .collect()
    }

    /// The SQS event sources of a function: `(queue logical id, batch size, batching window
    /// in seconds)`.
    pub fn sqs_event_sources(&self, function: &str) -> Vec<(String, i32, u64)> {
        let Some((_, props)) = self.resource(function) else {
            return Vec::new();
        };
        let Some(events) = props.get("Events").and_then(Value::as_mapping) else {
            return Vec::new();
        };
        events
            .values()
            .filter(|e| e.get("Type").and_then(Value::as_str) == Some("SQS"))
            .filter_map(|e| {
                let props = e.get("Properties")?;
                let queue = match intrinsic(props.get("Queue")?)? {
                    (_, Value::String(target)) => target.split('.').next()?.to_owned(),
                    _ => return None,
                };
                let batch = props
                    .get("BatchSize")
                    .and_then(Value::as_i64)
                    .and_then(|b| i32::try_from(b).ok())
                    .unwrap_or(10);
                let window = props
                    .get("MaximumBatchingWindowInSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                Some((queue, batch, window))
            })
            .collect()
    }

    /// The HTTP API's JWT authorizer configuration: `(issuer, audiences)`, unresolved.
    pub fn jwt_authorizer(&self) -> Option<(Value, Vec<Value>)> {
        self.resources().into_iter().find_map(|(_, kind, props)| {
            if kind != "AWS::Serverless::HttpApi" {
                return None;
            }
            let authorizers = props.get("Auth")?.get("Authorizers")?.as_mapping()?;
            authorizers.values().find_map(|a| {
                let jwt = a.get("JwtConfiguration")?;
                let audiences = jwt.get("audience")?.as_sequence()?.clone();
                Some((jwt.get("issuer")?.clone(), audiences))
            })
        })
    }
}

/// An intrinsic function in either form: `!Ref X` (a YAML tag) or `{Ref: X}` (a mapping).
fn intrinsic(value: &Value) -> Option<(String, Value)> {
    match value {
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            let name = if name == "Ref" {
                "Ref".to_owned()
            } else {
                format!("Fn::{name}")
            };
            Some((name, tagged.value.clone()))
        }
        Value::Mapping(map) if map.len() == 1 => {
            let (key, arg) = map.iter().next()?;
            let key = key.as_str()?;
            (key == "Ref" || key.starts_with("Fn::")).then(|| (key.to_owned(), arg.clone()))
        }
        _ => None,
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl StackContext {
    /// Resolves a property value to a string: scalars as they are, intrinsics looked up.
    pub fn resolve(&self, value: &Value) -> Result<String> {
        if let Some(s) = scalar(value) {
            return Ok(s);
        }
        let (function, arg) =
            intrinsic(value).ok_or_else(|| anyhow!("cannot resolve {value:?} to a string"))?;
        match function.as_str() {
            "Ref" => self.reference(arg.as_str().ok_or_else(|| anyhow!("Ref takes a name"))?),
            "Fn::GetAtt" => {
                let (resource, attribute) = match &arg {
                    Value::String(dotted) => dotted
                        .split_once('.')
                        .map(|(r, a)| (r.to_owned(), a.to_owned()))
                        .ok_or_else(|| anyhow!("GetAtt `{dotted}` lacks an attribute"))?,
                    Value::Sequence(parts) if parts.len() == 2 => (
                        scalar(&parts[0]).unwrap_or_default(),
                        scalar(&parts[1]).unwrap_or_default(),
                    ),
                    other => bail!("malformed GetAtt {other:?}"),
                };
                self.attribute(&resource, &attribute)
            }
            "Fn::Sub" => {
                let text = match &arg {
                    Value::String(s) => s.clone(),
                    other => bail!("only the one-argument form of Sub is supported, not {other:?}"),
                };
                self.substitute(&text)
            }
            other => bail!("intrinsic function {other} is not supported locally"),
        }
    }

    fn reference(&self, name: &str) -> Result<String> {
        match name {
            "AWS::StackName" => return Ok(self.stack_name.clone()),
            "AWS::Region" => return Ok(self.region.clone()),
            "AWS::AccountId" => return Ok(self.account_id.clone()),
            "AWS::Partition" => return Ok("aws".into()),
            "AWS::URLSuffix" => return Ok("amazonaws.com".into()),
            _ => {}
        }
        if let Some(value) = self.parameters.get(name) {
            return Ok(value.clone());
        }
        let resource = self.resources.get(name).ok_or_else(|| {
            anyhow!("Ref to `{name}`, which is neither a parameter nor a provisioned resource")
        })?;
        Ok(match resource.kind {
            ResourceKind::Queue => resource.url.clone().unwrap_or_default(),
            ResourceKind::Table
            | ResourceKind::Bucket
            | ResourceKind::ScheduleGroup
            | ResourceKind::Role => resource.name.clone(),
        })
    }

    fn attribute(&self, resource: &str, attribute: &str) -> Result<String> {
        let found = self
            .resources
            .get(resource)
            .ok_or_else(|| anyhow!("GetAtt on `{resource}`, which is not provisioned"))?;
        match attribute {
            "Arn" => Ok(found.arn.clone()),
            "QueueName" | "TableName" | "BucketName" => Ok(found.name.clone()),
            "QueueUrl" => found
                .url
                .clone()
                .ok_or_else(|| anyhow!("{resource} has no URL")),
            other => bail!("attribute {other} of {resource} is not supported locally"),
        }
    }

    fn substitute(&self, text: &str) -> Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| anyhow!("unclosed ${{ in Sub `{text}`"))?;
            let name = &rest[start + 2..start + end];
            out.push_str(&match name.split_once('.') {
                Some((r, a)) if !name.starts_with("AWS::") => self.attribute(r, a)?,
                _ => self.reference(name)?,
            });
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Parameters:
  Key: { Type: String }
  Days: { Type: Number, Default: 30 }
Globals:
  Function:
    Environment:
      Variables: { RUST_LOG: info, SHARED: global }
Resources:
  Q: { Type: AWS::SQS::Queue }
  T: { Type: AWS::DynamoDB::Table }
  F:
    Type: AWS::Serverless::Function
    Properties:
      Environment:
        Variables:
          SHARED: mine
          QUEUE: !Ref Q
          QUEUE_ARN: !GetAtt Q.Arn
          TABLE: { Ref: T }
          TABLE_ARN: { "Fn::GetAtt": [T, Arn] }
          KEY: !Ref Key
          DESC: !Sub "${AWS::StackName}-${T}-${Q.Arn}"
"#;

    #[test]
    fn resolves_environments_in_short_and_long_forms() {
        let template = Template::parse(TEMPLATE).unwrap();
        assert_eq!(
            template
                .parameter_defaults()
                .get("Days")
                .map(String::as_str),
            Some("30")
        );
        let mut stack = StackContext {
            stack_name: "s".into(),
            parameters: HashMap::from([("Key".into(), "k".into())]),
            ..StackContext::default()
        };
        stack.resources.insert(
            "Q".into(),
            PhysicalResource {
                kind: ResourceKind::Queue,
                name: "s-Q".into(),
                arn: "arn:q".into(),
                url: Some("http://q".into()),
            },
        );
        stack.resources.insert(
            "T".into(),
            PhysicalResource {
                kind: ResourceKind::Table,
                name: "s-T".into(),
                arn: "arn:t".into(),
                url: None,
            },
        );
        let env = template.function_environment("F", &stack).unwrap();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("RUST_LOG"), Some("info"));
        assert_eq!(get("SHARED"), Some("mine"));
        assert_eq!(get("QUEUE"), Some("http://q"));
        assert_eq!(get("QUEUE_ARN"), Some("arn:q"));
        assert_eq!(get("TABLE"), Some("s-T"));
        assert_eq!(get("TABLE_ARN"), Some("arn:t"));
        assert_eq!(get("KEY"), Some("k"));
        assert_eq!(get("DESC"), Some("s-s-T-arn:q"));
    }

    #[test]
    fn an_undeclared_reference_is_an_error() {
        let template = Template::parse(TEMPLATE).unwrap();
        let err = template
            .function_environment("F", &StackContext::default())
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("F: environment variable"), "{message}");
        assert!(
            message.contains("neither a parameter nor a provisioned resource"),
            "{message}"
        );
    }
}
