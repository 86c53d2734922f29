//! `switchboard describe <url>`: what a Switchboard service says of itself (the built-in
//! describe pattern): its patterns, kinds, policies, contracts, and payload and reply types.

use std::time::Duration;

use serde_json::Value;
use switchboard::server::describe::{DESCRIBE_PATTERN, Description, describe_pattern_of};
use switchboard::{Client, Error};

use crate::outcome::{Failure, Output};

/// Asks the service at `url` (or, on a shared broker, the one named `name`) to describe itself
/// and prints the answer: a table for people, the JSON as it came with `--json`, and the whole
/// JSON Schemas with `schemas`.
pub async fn describe(
    url: &str,
    name: Option<&str>,
    schemas: bool,
    timeout: Duration,
    out: &Output,
) -> Result<(), Failure> {
    let client = Client::builder(url)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
        .map_err(Failure::from)?;
    let answer = fetch(&client, name).await;
    client.close().await;
    let value = answer.map_err(|e| failure(e, &switchboard::transport::redact(url), name, timeout))?;
    print(value, name, schemas, out)
}

/// What the service behind `client` (or the one named `name` on a shared broker) says of
/// itself, as it came. A service that does not describe itself (NestJS, or Switchboard with
/// `describe_pattern(false)`) gives [`Error::NoHandler`], or on MQTT [`Error::Timeout`].
pub async fn fetch(client: &Client, name: Option<&str>) -> Result<Value, Error> {
    client.send_raw::<Value>(pattern(name).as_str(), Value::Null).await
}

/// Whether `e`, from [`fetch`], means the service does not describe itself.
pub fn undescribed(e: &Error) -> bool {
    // MQTT has no "no handler" answer: a missing describe is a timeout there.
    matches!(e, Error::NoHandler { .. } | Error::Timeout { .. })
}

/// `e`, from [`fetch`], said in words for a user of `url`.
pub fn failure(e: Error, url: &str, name: Option<&str>, timeout: Duration) -> Failure {
    let pattern = pattern(name);
    match e {
        Error::NoHandler { .. } => Failure::from(e).with_message(format!(
            "the service at {url} does not describe itself: nothing answers `{pattern}` (a NestJS service cannot; a Switchboard one may have turned it off with `describe_pattern(false)`)"
        )),
        Error::Timeout { .. } => Failure::from(e).with_message(format!(
            "no answer to `{pattern}` from {url} within {timeout:?}: a NestJS service cannot describe itself, nor a Switchboard one with `describe_pattern(false)`"
        )),
        e => Failure::from(e),
    }
}

/// The answer of [`fetch`] read as a [`Description`].
pub fn parse(value: Value, name: Option<&str>) -> Result<Description, Failure> {
    serde_json::from_value(value).map_err(|e| {
        Failure::other(format!(
            "the answer to `{}` is not a service description: {e}",
            pattern(name)
        ))
    })
}

/// Prints the answer of [`fetch`]: as it came with `--json`, else as a table for people.
pub fn print(value: Value, name: Option<&str>, schemas: bool, out: &Output) -> Result<(), Failure> {
    if out.json {
        println!("{value}");
        return Ok(());
    }
    print!("{}", render(&parse(value, name)?, schemas));
    Ok(())
}

fn pattern(name: Option<&str>) -> String {
    name.map_or_else(|| DESCRIBE_PATTERN.to_owned(), describe_pattern_of)
}

/// The description as text for people.
pub fn render(d: &Description, schemas: bool) -> String {
    let mut text = String::new();
    let name = d.name.as_deref().unwrap_or("(unnamed service)");
    let version = d.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
    let count = d.patterns.len();
    text.push_str(&format!(
        "{name}{version}: {count} pattern{}\n",
        if count == 1 { "" } else { "s" }
    ));
    for p in &d.patterns {
        let pattern = match &p.pattern {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.push_str(&format!("\n{:<8} {pattern}\n", p.kind));
        text.push_str(&format!("  handler   {}\n", p.handler));
        let policy = policy(&p.policy);
        if !policy.is_empty() {
            text.push_str(&format!("  policy    {policy}\n"));
        }
        if let Some(contract) = &p.contract {
            text.push_str(&format!("  contract  {contract}\n"));
        }
        for (label, schema) in [("payload", &p.payload), ("reply", &p.reply)] {
            let Some(schema) = schema else { continue };
            match schemas {
                true => {
                    let pretty = serde_json::to_string_pretty(schema).unwrap_or_default();
                    text.push_str(&format!("  {label:<9} {}\n", pretty.replace('\n', "\n            ")));
                }
                false => text.push_str(&format!("  {label:<9} {}\n", brief(schema))),
            }
        }
    }
    text
}

fn policy(p: &switchboard::server::describe::Policy) -> String {
    let mut parts = Vec::new();
    if let Some(ms) = p.timeout_ms {
        parts.push(format!("timeout {ms} ms"));
    }
    if p.idempotent {
        parts.push("idempotent".to_owned());
    }
    if let Some(n) = p.retries {
        parts.push(format!("retries {n}"));
    }
    if let Some(n) = p.concurrency {
        parts.push(format!("concurrency {n}"));
    }
    if let Some(rate) = &p.rate {
        parts.push(format!("rate {rate}"));
    }
    if let Some(order) = &p.order {
        parts.push(order.clone());
    }
    parts.join(", ")
}

/// A JSON Schema in a line: `{id: integer, email?: string}`, `[string]`, `"Open" | {Shipped: …}`.
pub fn brief(schema: &Value) -> String {
    brief_at(schema, 0)
}

fn brief_at(schema: &Value, depth: usize) -> String {
    if depth > 6 {
        return "…".into();
    }
    let next = |s: &Value| brief_at(s, depth + 1);
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
        && any.len() == 2
        && any[1] == serde_json::json!({ "type": "null" })
    {
        return format!("{}?", next(&any[0]));
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let variants: Vec<String> = one
            .iter()
            .map(
                |v| match (v.get("const"), v.get("properties").and_then(Value::as_object)) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(props)) => props.iter().map(|(k, s)| format!("{{{k}: {}}}", next(s))).collect(),
                    _ => next(v),
                },
            )
            .collect();
        return variants.join(" | ");
    }
    if let Some(description) = schema.get("description").and_then(Value::as_str) {
        return description.to_owned();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let fields: Vec<String> = props
                    .iter()
                    .map(|(k, s)| {
                        let optional = if required.contains(&k.as_str()) { "" } else { "?" };
                        let inner = match s.get("anyOf") {
                            Some(_) if !optional.is_empty() => next(s).trim_end_matches('?').to_owned(),
                            _ => next(s),
                        };
                        format!("{k}{optional}: {inner}")
                    })
                    .collect();
                return format!("{{{}}}", fields.join(", "));
            }
            match schema.get("additionalProperties") {
                Some(v) => format!("{{string: {}}}", next(v)),
                None => "object".into(),
            }
        }
        Some("array") => match (schema.get("prefixItems").and_then(Value::as_array), schema.get("items")) {
            (Some(items), _) => format!("({})", items.iter().map(next).collect::<Vec<_>>().join(", ")),
            (None, Some(items)) => format!("[{}]", next(items)),
            (None, None) => "array".into(),
        },
        Some(t) => t.to_owned(),
        None => "any".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::brief;

    #[test]
    fn schemas_in_a_line() {
        assert_eq!(brief(&json!({ "type": "integer", "minimum": 0 })), "integer");
        assert_eq!(
            brief(&json!({
                "type": "object",
                "properties": {
                    "id": { "type": "string" },
                    "tags": { "type": "array", "items": { "type": "string" } },
                    "email": { "anyOf": [{ "type": "string" }, { "type": "null" }] }
                },
                "required": ["id", "tags"]
            })),
            "{id: string, tags: [string], email?: string}"
        );
        assert_eq!(
            brief(
                &json!({ "oneOf": [{ "const": "Open" }, { "type": "object", "properties": { "Shipped": { "type": "string" } } }] })
            ),
            "\"Open\" | {Shipped: string}"
        );
        assert_eq!(
            brief(&json!({ "type": "array", "prefixItems": [{ "type": "integer" }, { "type": "integer" }] })),
            "(integer, integer)"
        );
        assert_eq!(brief(&json!({})), "any");
    }
}
