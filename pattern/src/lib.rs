//! NestJS-compatible message patterns and their route keys.
//!
//! A pattern is what a handler is keyed by: a string (`"math.add"`), a number, or an object
//! (`{cmd: "get_user"}`). NestJS turns every pattern into a *route* string with
//! `transformPatternToRoute`; the route is the handler key on every transport and the channel,
//! subject or topic name on the brokers, so it must be reproduced byte for byte. This crate is
//! the one implementation of that normalisation, shared by the attribute macros (at compile
//! time), the runtime (for patterns that arrive on the wire) and the code generator.
//!
//! The rules are those of `@nestjs/microservices` 11.1.18+ and 12: object keys sorted with ICU
//! root collation (`localeCompare`), arrays rendered as index-keyed objects, `"` and `\`
//! escaped in keys and string values, nesting capped at depth 5 and 20 keys per object.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::OnceLock;

use icu_collator::options::CollatorOptions;
use icu_collator::{Collator, CollatorBorrowed};

/// Deepest object nesting NestJS renders; deeper objects become [`MAX_DEPTH_MARKER`].
pub const MAX_DEPTH: usize = 5;
/// Most keys NestJS renders in one object; more become [`TOO_MANY_KEYS_MARKER`].
pub const MAX_KEYS: usize = 20;
/// What NestJS writes in place of an object nested deeper than [`MAX_DEPTH`].
pub const MAX_DEPTH_MARKER: &str = "[MAX_DEPTH_REACHED]";
/// What NestJS writes in place of an object with more than [`MAX_KEYS`] keys.
pub const TOO_MANY_KEYS_MARKER: &str = "[TOO_MANY_KEYS]";

/// A message pattern as the user wrote it, keys in their written order.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    /// `"math.add"`
    String(String),
    /// A JavaScript number; integers and floats alike.
    Number(f64),
    /// `true` / `false`
    Bool(bool),
    /// `null`
    Null,
    /// An array; NestJS renders it as an object keyed `"0"`, `"1"`, …
    Array(Vec<Pattern>),
    /// An object, entries in the order written.
    Object(Vec<(String, Pattern)>),
}

impl Pattern {
    /// The NestJS route key of this pattern (`transformPatternToRoute`).
    pub fn route(&self) -> String {
        let mut out = String::new();
        write_route(self, 0, &mut out);
        out
    }

    /// The pattern as compact JSON, keys in written order: what a NestJS client puts in
    /// the `"pattern"` field of a request.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        write_json(self, &mut out);
        out
    }

    /// Depth of the deepest object or array (a string is 0, `{cmd: "x"}` is 1).
    pub fn depth(&self) -> usize {
        match self {
            Pattern::Array(items) => 1 + items.iter().map(Pattern::depth).max().unwrap_or(0),
            Pattern::Object(entries) => 1 + entries.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Converts a parsed JSON value. Object keys keep serde_json's map order, which does
    /// not matter for the route (keys are sorted) but does for [`Pattern::to_json`].
    pub fn from_json_value(value: &serde_json::Value) -> Pattern {
        use serde_json::Value;
        match value {
            Value::String(s) => Pattern::String(s.clone()),
            Value::Number(n) => Pattern::Number(n.as_f64().unwrap_or(f64::NAN)),
            Value::Bool(b) => Pattern::Bool(*b),
            Value::Null => Pattern::Null,
            Value::Array(items) => Pattern::Array(items.iter().map(Pattern::from_json_value).collect()),
            Value::Object(map) => Pattern::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), Pattern::from_json_value(v)))
                    .collect(),
            ),
        }
    }
}

/// The route of a pattern that arrived on the wire as raw JSON text (the `"pattern"` field
/// of a packet), following NestJS's server: a JSON string is taken as is unless its content
/// itself parses as JSON (`"{\"cmd\":\"sum\"}"`), in which case that value is normalised;
/// any other JSON value is normalised directly.
///
/// Returns `None` for text that is not JSON at all.
pub fn route_of_wire_pattern(raw: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    Some(match value {
        serde_json::Value::String(s) => route_of_str(s),
        other => Pattern::from_json_value(&other).route(),
    })
}

/// The route of a string pattern: NestJS first tries `JSON.parse` on it and normalises the
/// result when that succeeds, so `"{\"b\":1,\"a\":2}"` routes as `{"a":2,"b":1}`.
pub fn route_of_str(s: String) -> String {
    let first = s.bytes().next();
    // Only text that can be JSON needs the parse; the common `"math.add"` skips it.
    let maybe_json = matches!(
        first,
        Some(b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
    );
    if !maybe_json {
        return s;
    }
    match serde_json::from_str::<serde_json::Value>(&s) {
        Ok(serde_json::Value::String(inner)) => inner,
        Ok(other) => Pattern::from_json_value(&other).route(),
        Err(_) => s,
    }
}

/// Orders two object keys as JavaScript's `a.localeCompare(b)` does in Node's default ICU
/// locale: case-insensitive first with lowercase ahead on ties, punctuation before digits
/// before letters, digits compared as text (`"10"` before `"2"`), accents after the base letter.
pub fn compare_keys(a: &str, b: &str) -> Ordering {
    static COLLATOR: OnceLock<CollatorBorrowed<'static>> = OnceLock::new();
    COLLATOR
        .get_or_init(|| {
            Collator::try_new(Default::default(), CollatorOptions::default())
                .expect("ICU root collation data is compiled in")
        })
        .compare(a, b)
}

fn write_route(p: &Pattern, depth: usize, out: &mut String) {
    match p {
        Pattern::String(s) => out.push_str(s),
        Pattern::Number(n) => write_number(*n, out),
        Pattern::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Pattern::Null => out.push_str("null"),
        Pattern::Array(items) => {
            let keys: Vec<String> = (0..items.len()).map(|i| i.to_string()).collect();
            let entries: Vec<(&str, &Pattern)> = keys.iter().map(String::as_str).zip(items).collect();
            write_route_object(entries, depth, out)
        }
        Pattern::Object(entries) => {
            write_route_object(entries.iter().map(|(k, v)| (k.as_str(), v)).collect(), depth, out)
        }
    }
}

fn write_route_object(mut entries: Vec<(&str, &Pattern)>, depth: usize, out: &mut String) {
    if depth > MAX_DEPTH {
        out.push_str(MAX_DEPTH_MARKER);
        return;
    }
    if entries.len() > MAX_KEYS {
        out.push_str(TOO_MANY_KEYS_MARKER);
        return;
    }
    entries.sort_by(|a, b| compare_keys(a.0, b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        push_escaped(key, out);
        out.push_str("\":");
        if let Pattern::String(s) = value {
            out.push('"');
            push_escaped(s, out);
            out.push('"');
        } else {
            write_route(value, depth + 1, out);
        }
    }
    out.push('}');
}

/// NestJS escapes only `\` and `"` in routes; other control characters pass through.
fn push_escaped(s: &str, out: &mut String) {
    for c in s.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
}

/// JavaScript's `String(n)`.
fn write_number(n: f64, out: &mut String) {
    let mut buf = ryu_js::Buffer::new();
    out.push_str(buf.format(n));
}

fn write_json(p: &Pattern, out: &mut String) {
    match p {
        Pattern::String(s) => out.push_str(&serde_json::to_string(s).expect("strings serialise")),
        Pattern::Number(n) => write_number(*n, out),
        Pattern::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Pattern::Null => out.push_str("null"),
        Pattern::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Pattern::Object(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", serde_json::to_string(k).expect("strings serialise"));
                write_json(v, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests;

pub mod units;
