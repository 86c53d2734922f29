//! What the command line gives, checked: durations, patterns, payloads, headers, trace ids.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use serde_json::Value;

use crate::outcome::Failure;

/// The largest payload read from stdin.
const MAX_STDIN: u64 = 64 << 20;

/// `500ms`, `5s`, `1m30s` (the units of a pattern's declared `timeout`).
pub fn duration(text: &str) -> Result<Duration, Failure> {
    switchboard_pattern::units::parse_duration_ms(text)
        .map(Duration::from_millis)
        .ok_or_else(|| Failure::usage(format!("--timeout {text:?} is not a duration like 500ms, 5s or 1m")))
}

/// A pattern as NestJS clients give it: JSON objects and numbers as themselves, anything
/// else as the text (so `sum` and `"sum"` are the same pattern).
pub fn pattern(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Object(_) | Value::Number(_) | Value::String(_))) => v,
        _ => Value::String(text.to_owned()),
    }
}

/// The payload: the argument, or stdin when it is left out or `-` (`null` when stdin is a
/// terminal or empty).
pub fn payload(arg: Option<&str>) -> Result<Value, Failure> {
    let text = match arg {
        Some(text) if text != "-" => text.to_owned(),
        None if std::io::stdin().is_terminal() => return Ok(Value::Null),
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .take(MAX_STDIN + 1)
                .read_to_string(&mut text)
                .map_err(|e| Failure::usage(format!("cannot read the payload from stdin: {e}")))?;
            if text.len() as u64 > MAX_STDIN {
                return Err(Failure::usage("the payload on stdin is larger than 64 MiB"));
            }
            text
        }
    };
    if text.trim().is_empty() {
        // Nothing given (`< /dev/null`): no payload, as NestJS sends `undefined`.
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| Failure::usage(format!("the payload is not JSON: {e}")))
}

/// `name=value` (or `name:value`). A refused one is not quoted whole: it may hold a token.
pub fn header(text: &str) -> Result<(String, String), Failure> {
    let (name, value) = text.split_once('=').or_else(|| text.split_once(':')).ok_or_else(|| {
        let first = text.split_whitespace().next().unwrap_or_default();
        Failure::usage(format!("the header starting {first:?} is not NAME=VALUE"))
    })?;
    let name = name.trim();
    if name.is_empty() {
        return Err(Failure::usage("a header has no name: NAME=VALUE"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// A W3C `traceparent` for trace id `trace` (32 lowercase hex digits, not all zero), with a
/// span id of its own.
pub fn traceparent(trace: &str) -> Result<String, Failure> {
    let trace = trace.to_ascii_lowercase();
    let hex =
        |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0');
    if !hex(&trace, 32) {
        return Err(Failure::usage(format!(
            "--trace-id {trace:?} is not 32 hex digits (and not all zero)"
        )));
    }
    // A span id that differs per call: the clock's nanoseconds mixed with the process id.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let span = (nanos ^ (u64::from(std::process::id()) << 32)).max(1);
    Ok(format!("00-{trace}-{span:016x}-01"))
}

/// Where an event store or a saga log is.
pub enum Database<'a> {
    /// An SQLite file that exists.
    Sqlite(&'a str),
    /// A PostgreSQL URL without its `?schema=`, and the schema.
    Postgres { url: &'a str, schema: Option<&'a str> },
}

/// `sqlite:PATH` (or a path ending in `.db`; the file must exist, it is never created), or
/// `postgres://…[?schema=NAME]`. `what` names the thing in errors ("event store", "saga log").
pub fn database<'a>(url: &'a str, what: &str) -> Result<Database<'a>, Failure> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (url, schema) = match url.split_once("?schema=") {
            Some((url, schema)) => (url, Some(schema)),
            None => (url, None),
        };
        return Ok(Database::Postgres { url, schema });
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if !url.starts_with("sqlite:") && !path.ends_with(".db") {
        return Err(Failure::usage(format!(
            "{:?} names no {what}: use sqlite:PATH (or a path ending in .db) or postgres://…",
            switchboard::transport::redact(url)
        )));
    }
    if !std::path::Path::new(path).is_file() {
        return Err(Failure::usage(format!("no {what} at {path}")));
    }
    Ok(Database::Sqlite(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_like_nestjs_clients_give_them() {
        assert_eq!(pattern("sum"), Value::from("sum"));
        assert_eq!(pattern("\"sum\""), Value::from("sum"));
        assert_eq!(pattern(r#"{"cmd":"sum"}"#), serde_json::json!({"cmd": "sum"}));
        assert_eq!(pattern("42"), Value::from(42));
        assert_eq!(pattern("[1]"), Value::from("[1]"), "an array is not a pattern");
        assert_eq!(pattern("{oops"), Value::from("{oops"));
    }

    #[test]
    fn inputs_are_checked() {
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(duration("soon").unwrap_err().to_string().contains("--timeout"));
        assert_eq!(header("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(header("tenant: acme").unwrap(), ("tenant".into(), "acme".into()));
        assert!(header("novalue").is_err());
        assert!(header("=x").is_err());
        assert_eq!(payload(Some("[1,2]")).unwrap(), serde_json::json!([1, 2]));
        assert!(payload(Some("{bad")).unwrap_err().to_string().contains("not JSON"));
        let tp = traceparent("4BF92F3577B34DA6A3CE929D0E0E4736").unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"),
            "{tp}"
        );
        assert_eq!(tp.len(), 55);
        assert!(traceparent("00000000000000000000000000000000").is_err());
        assert!(traceparent("xyz").is_err());
    }
}
