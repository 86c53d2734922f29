//! The describe pattern: every service answers [`DESCRIBE_PATTERN`] (and, when named,
//! `switchboard.describe.<name>`) on every transport with its patterns, their kinds, the policy
//! it enforces, their contracts and the JSON Schemas of their payloads and replies, derived
//! from the serde types ([`Shape`](crate::contract::Shape)). `switchboard describe <url>`
//! prints it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::handler::Bound;
use crate::service::{EventOrder, Kind, Overrides};

/// The pattern every service answers with its [`Description`].
pub const DESCRIBE_PATTERN: &str = "switchboard.describe";

/// The describe pattern of the service named `name`, for when several share a broker.
pub fn describe_pattern_of(name: &str) -> String {
    format!("{DESCRIBE_PATTERN}.{name}")
}

/// What a service says of itself.
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard::server::describe::{DESCRIBE_PATTERN, Description};
///
/// #[message_pattern("math.add", idempotent, retries = 2, timeout = "2s")]
/// async fn add((a, b): (i64, i64)) -> i64 { a + b }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let server = Microservice::new().name("math").version("1.4.0").handler(ADD).listen("mem://math-described").start().await?;
/// let client = Client::connect("mem://math-described").await?;
/// let described: Description = client.send_raw(DESCRIBE_PATTERN, ()).await?;
/// assert_eq!(described.name.as_deref(), Some("math"));
/// let add = &described.patterns[0];
/// assert_eq!((add.route.as_str(), add.kind.as_str()), ("math.add", "request"));
/// assert_eq!(add.policy.retries, Some(2));
/// assert_eq!(add.contract, ADD.contract().map(|c| c.to_string()));
/// assert_eq!(add.reply, Some(serde_json::json!({ "type": "integer" })));
/// # server.shutdown().await
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Description {
    /// The service's name ([`Microservice::name`](super::Microservice::name)).
    pub name: Option<String>,
    /// Its version ([`Microservice::version`](super::Microservice::version)).
    pub version: Option<String>,
    /// Every pattern it serves (the built-in ones left out), ordered by route.
    pub patterns: Vec<Described>,
}

/// One pattern a service serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Described {
    /// The pattern as written (`{"cmd":"get_user"}`, `"math.add"`).
    pub pattern: Value,
    /// Its normalised route.
    pub route: String,
    /// `request` or `event`.
    pub kind: String,
    /// The handler: `module::function`.
    pub handler: String,
    /// What the service enforces (declared, then overridden).
    pub policy: Policy,
    /// The fingerprint of its types (16 hex digits), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// The payload's JSON Schema, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The reply's JSON Schema (requests), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
}

/// A pattern's policy, as the service enforces it and typed callers apply it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Policy {
    /// The handler's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Safe to repeat.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotent: bool,
    /// Attempts a typed caller may add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Calls handled at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// `calls/period`, e.g. `200/1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// How an event pattern's events are ordered: `in order`, `concurrent`, `by key <field>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// The description of a service with these handlers.
pub(crate) fn describe(
    name: Option<&str>,
    version: Option<&str>,
    handlers: &[Bound],
    overrides: &Overrides,
) -> Description {
    let mut patterns: Vec<Described> = handlers
        .iter()
        .map(|h| {
            let info = h.info;
            let options = overrides.apply(info.route(), info.options());
            let signature = info.signature();
            let order = match (info.kind(), options.get_order()) {
                (Kind::Request, _) => None,
                (Kind::Event, EventOrder::InOrder) => Some("in order".to_owned()),
                (Kind::Event, EventOrder::Concurrent) => Some("concurrent".to_owned()),
                (Kind::Event, EventOrder::ByKey(field)) => Some(format!("by key {field}")),
            };
            Described {
                pattern: serde_json::from_str(info.pattern())
                    .unwrap_or_else(|_| Value::String(info.pattern().to_owned())),
                route: info.route().to_owned(),
                kind: match info.kind() {
                    Kind::Request => "request",
                    Kind::Event => "event",
                }
                .to_owned(),
                handler: format!("{}::{}", info.module(), info.name()),
                policy: Policy {
                    timeout_ms: options.get_timeout().map(|d| d.as_millis() as u64),
                    idempotent: options.is_idempotent(),
                    retries: (options.get_retries() > 0).then_some(options.get_retries()),
                    concurrency: options.get_concurrency(),
                    rate: options.get_rate().map(|(n, per)| format!("{n}/{per:?}")),
                    order,
                },
                contract: signature.map(|s| s.contract().to_string()),
                payload: signature.map(|s| s.payload.json_schema()),
                reply: signature.and_then(|s| s.reply.as_ref()).map(|r| r.json_schema()),
            }
        })
        .collect();
    patterns.sort_by(|a, b| (&a.route, &a.kind, &a.handler).cmp(&(&b.route, &b.kind, &b.handler)));
    Description {
        name: name.map(str::to_owned),
        version: version.map(str::to_owned),
        patterns,
    }
}
