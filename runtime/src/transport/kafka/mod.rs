//! The Kafka transport, `kafka://host:port[,host:port]?…`, wire-compatible with NestJS's
//! `Transport.KAFKA` (kafkajs), on librdkafka (`rdkafka`).
//!
//! NestJS's Kafka protocol has no envelope (docs/nestjs-wire.md §7): the topic is the route, the
//! record value is the payload, and requests carry the headers `kafka_correlationId`,
//! `kafka_replyTopic` (`<route>.reply`) and `kafka_replyPartition`. Replies go to that topic
//! and partition with the correlation id, `kafka_nest-err` for errors and
//! `kafka_nest-is-disposed` (one byte 0x00) on the last packet.
//!
//! Values are written as NestJS writes them (strings raw, everything else as JSON text) and
//! read as NestJS's `KafkaParser` reads them, so a NestJS peer sees what it expects. Because
//! that reading loses types (`6` arrives as `"6"`), Switchboard adds a `content-type` header
//! (`application/json`, or `text/plain; charset=utf-8` for a raw string) that NestJS ignores
//! and Switchboard uses to read values exactly.
//!
//! Query parameters (all optional):
//! - `client_id` (`nestjs-consumer`), `group` (`nestjs-group`), `postfix` (`-server` on a
//!   server, `-client` on a client): the client id and consumer group are
//!   `client_id + postfix` and `group + postfix`, as in NestJS.
//! - `from_beginning` (`true`): where a consumer group without committed offsets starts.
//! - `partitions` (`1`), `replication` (`1`): for the topics this transport creates when
//!   they are missing (route topics on a server, reply topics on a client).
//! - `session_timeout_ms` (`30000`, kafkajs' default): how long a dead server keeps its
//!   partitions before the group hands them to another member.
//! - `max_in_flight` (`256`): messages a server handles at once, as on every transport
//!   (at least 1); beyond it, messages wait in the broker.
//! - `max_message_bytes` (`16777216`): the largest record the producer sends.
//! - `max_wait_ms` (`100`): how long a consumer's fetch waits for data at most (a real
//!   broker answers as soon as data arrives; librdkafka's mock waits the full time).

mod client;
mod mock;
mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::Client as RdClient;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, Producer};
use serde::de::IgnoredAny;

pub use client::KafkaClient;
pub use mock::KafkaMock;
pub use server::KafkaListener;

use super::{Endpoint, broker};
use crate::error::{Error, Result};
use crate::wire::nestjs::pending::Pending;

/// NestJS's header names (docs/nestjs-wire.md §7.3, §7.5).
pub(crate) const CORRELATION_ID: &str = "kafka_correlationId";
pub(crate) const REPLY_TOPIC: &str = "kafka_replyTopic";
pub(crate) const REPLY_PARTITION: &str = "kafka_replyPartition";
pub(crate) const NEST_ERR: &str = "kafka_nest-err";
pub(crate) const NEST_IS_DISPOSED: &str = "kafka_nest-is-disposed";
/// Switchboard's own header: how to read the value exactly (NestJS ignores it).
pub(crate) const CONTENT_TYPE: &str = "content-type";
const JSON_TYPE: &str = "application/json";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";

const PARAMS: &[&str] = &[
    "client_id",
    "group",
    "postfix",
    "from_beginning",
    "partitions",
    "replication",
    "session_timeout_ms",
    broker::MAX_IN_FLIGHT,
    "max_message_bytes",
    "max_wait_ms",
];

/// Default cap on messages being handled at once by one server.
const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Settings from the URL.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The URL without its password, for logs, errors and `local_url`.
    url: String,
    brokers: String,
    client_id: String,
    group: String,
    from_beginning: bool,
    partitions: i32,
    replication: i32,
    session_timeout_ms: u32,
    max_in_flight: usize,
    max_message_bytes: usize,
    max_wait_ms: u32,
}

impl Options {
    fn parse(ep: &Endpoint, server: bool) -> Result<Self> {
        ep.only_params(PARAMS)?;
        if ep.authority.contains('@') {
            // librdkafka would take it for a host name, and log it.
            return Err(Error::InvalidUrl {
                url: ep.redacted(),
                reason: "credentials in a kafka:// URL are not supported (no SASL yet): give host:port only".into(),
            });
        }
        let postfix = ep
            .param("postfix")
            .unwrap_or(if server { "-server" } else { "-client" });
        // librdkafka's settings are 32-bit.
        let within = |key: &str, default: i64, max: i64| -> Result<i64> {
            let v = ep.param_as::<i64>(key)?.unwrap_or(default);
            if (1..=max).contains(&v) {
                Ok(v)
            } else {
                Err(Error::InvalidUrl {
                    url: ep.redacted(),
                    reason: format!("query parameter `{key}` must be between 1 and {max}"),
                })
            }
        };
        let int = i64::from(i32::MAX);
        Ok(Options {
            url: ep.redacted(),
            brokers: ep.authority.clone(),
            client_id: format!("{}{postfix}", ep.param("client_id").unwrap_or("nestjs-consumer")),
            group: format!("{}{postfix}", ep.param("group").unwrap_or("nestjs-group")),
            from_beginning: ep.param_as("from_beginning")?.unwrap_or(true),
            partitions: within("partitions", 1, int)? as i32,
            replication: within("replication", 1, int)? as i32,
            session_timeout_ms: within("session_timeout_ms", 30_000, int)? as u32,
            max_in_flight: broker::max_in_flight(ep, DEFAULT_MAX_IN_FLIGHT)?,
            max_message_bytes: within("max_message_bytes", 16 << 20, int)? as usize,
            max_wait_ms: within("max_wait_ms", 100, int)? as u32,
        })
    }

    /// Settings every librdkafka client of this transport shares.
    fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            // Reconnect soon after a broker comes back (librdkafka's default backs off to 10 s).
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000")
            .set("socket.nagle.disable", "true")
            // Idle disconnects by the broker are normal; a dead broker is reported as
            // "all brokers down".
            .set("log.connection.close", "false");
        c
    }

    fn producer_config(&self) -> ClientConfig {
        let mut c = self.base_config();
        c.set("linger.ms", "1")
            // Spread keyless records over partitions one by one, as kafkajs does, instead of
            // librdkafka's sticky batches: a burst of requests reaches every group member.
            .set("sticky.partitioning.linger.ms", "0")
            .set("message.timeout.ms", "30000")
            .set("message.max.bytes", self.max_message_bytes.to_string());
        c
    }

    fn connect_error(&self, reason: impl std::fmt::Display) -> Error {
        Error::Connect {
            addr: self.url.clone(),
            reason: reason.to_string(),
        }
    }
}

/// What the librdkafka clients of one transport instance share: whether the brokers are
/// reachable, and (on a client) the calls to fail when they are not.
pub(crate) struct Shared {
    url: String,
    pending: Option<Arc<Pending>>,
    down: AtomicBool,
    /// Signalled when a broker refused a connection: the client checks whether any broker
    /// is still reachable.
    suspect: tokio::sync::Notify,
    /// A server's ready flag: raised when its consumer gets its partitions from the group,
    /// lowered while no broker answers (`server::watch_brokers`).
    assigned: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn new(url: &str, pending: Option<Arc<Pending>>) -> Arc<Self> {
        Arc::new(Shared {
            url: url.to_owned(),
            pending,
            // Unknown until the first metadata request succeeds.
            down: AtomicBool::new(true),
            suspect: tokio::sync::Notify::new(),
            assigned: tokio::sync::watch::Sender::new(false),
        })
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn set_up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::debug!(url = %self.url, "Kafka brokers reachable");
        }
    }
}

/// The librdkafka context: logs through `tracing`, and fails calls in flight when every
/// broker is gone.
#[derive(Clone)]
pub(crate) struct Ctx(Arc<Shared>);

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(url = %self.0.url, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(url = %self.0.url, facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice => tracing::info!(url = %self.0.url, facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(url = %self.0.url, facility = fac, "librdkafka: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                tracing::warn!(url = %self.0.url, "all Kafka brokers are down: {reason}");
                self.0.suspect.notify_one();
            }
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                tracing::debug!(url = %self.0.url, "Kafka connection failed: {reason}");
                // librdkafka reports a broker that refuses connections only this way (with
                // sparse connections "all brokers down" may never come). An idle connection
                // closed by the broker reconnects without this message.
                if reason.contains("Connect to") {
                    self.0.suspect.notify_one();
                }
            }
            _ => tracing::warn!(url = %self.0.url, error = %error, "Kafka error: {reason}"),
        }
    }
}

/// Runs while a client lives: when a broker refuses connections, checks whether any broker
/// still answers; if none does, fails the calls in flight (their replies may never come)
/// and marks the brokers down, so that new calls check them first instead of waiting for
/// their deadline.
async fn watch_brokers(producer: FutureProducer<Ctx>, shared: Arc<Shared>) {
    loop {
        shared.suspect.notified().await;
        let (p, s) = (producer.clone(), shared.clone());
        let reachable = tokio::task::spawn_blocking(move || probe(p.client(), &s, Duration::from_millis(1500)))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reachable {
            if !shared.down.swap(true, Ordering::AcqRel) {
                tracing::warn!(url = %shared.url, "no Kafka broker reachable; failing calls in flight");
            }
            if let Some(pending) = &shared.pending {
                pending.fail_all(|| Error::ConnectionClosed {
                    addr: shared.url.clone(),
                });
            }
        }
        // The refusals repeat with every reconnect attempt; one check a second is enough.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::debug!(url = %self.0.url, partitions = tpl.count(), "partitions assigned");
                self.0.assigned.send_replace(true);
            }
            Rebalance::Revoke(tpl) => {
                tracing::debug!(url = %self.0.url, partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(url = %self.0.url, error = %e, "Kafka rebalance failed"),
        }
    }
}

/// Asks the brokers for metadata (blocking): proves they are reachable.
fn probe<C: ClientContext>(client: &RdClient<C>, shared: &Shared, timeout: Duration) -> Result<()> {
    match client.fetch_metadata(None, timeout) {
        Ok(_) => {
            shared.set_up();
            Ok(())
        }
        Err(e) => Err(Error::Connect {
            addr: shared.url.clone(),
            reason: format!("no Kafka broker answered within {timeout:?}: {e}"),
        }),
    }
}

/// Makes sure `topics` exist and returns each one's partition count. Asking `producer` for
/// their metadata auto-creates them where the broker allows it (librdkafka's mock cluster
/// does, and has no CreateTopics); those still missing (real Kafka or Tansu with
/// auto-creation off) are created with the admin API.
async fn ensure_topics(
    admin: &AdminClient<Ctx>,
    producer: &FutureProducer<Ctx>,
    opts: &Options,
    topics: &[String],
) -> Result<HashMap<String, i32>> {
    let mut found = partition_counts(producer, opts, topics, 1).await?;
    let missing: Vec<String> = topics.iter().filter(|t| !found.contains_key(*t)).cloned().collect();
    if missing.is_empty() {
        return Ok(found);
    }
    let new: Vec<_> = missing
        .iter()
        .map(|t| NewTopic::new(t, opts.partitions, TopicReplication::Fixed(opts.replication)))
        .collect();
    let admin_opts = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(5)))
        .operation_timeout(Some(Duration::from_secs(5)));
    match admin.create_topics(&new, &admin_opts).await {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(topic) => tracing::info!(url = %opts.url, %topic, "created Kafka topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    // Refused (an illegal name, no permission): waiting for it would not help.
                    Err((topic, code)) => {
                        return Err(Error::broker(
                            format!(
                                "Kafka topic `{topic}` does not exist and the broker at {} refused to create it",
                                opts.url
                            ),
                            code,
                        ));
                    }
                }
            }
        }
        // No CreateTopics at all (librdkafka's mock): the metadata request may still create them.
        Err(e) => tracing::warn!(url = %opts.url, error = %e, "could not create topics {missing:?}"),
    }
    let created = partition_counts(producer, opts, &missing, 20).await?;
    if let Some(topic) = missing.iter().find(|t| !created.contains_key(*t)) {
        return Err(Error::refused(format!(
            "Kafka topic `{topic}` does not exist and could not be created at {}",
            opts.url
        )));
    }
    found.extend(created);
    Ok(found)
}

/// The partition counts of those `topics` that exist, asking up to `attempts` times (a topic
/// just created may show up without partitions at first).
async fn partition_counts(
    producer: &FutureProducer<Ctx>,
    opts: &Options,
    topics: &[String],
    attempts: u64,
) -> Result<HashMap<String, i32>> {
    let producer = producer.clone();
    let (opts, topics) = (opts.clone(), topics.to_vec());
    tokio::task::spawn_blocking(move || {
        let mut partitions = HashMap::with_capacity(topics.len());
        for topic in &topics {
            for attempt in 0..attempts {
                let md = producer
                    .client()
                    .fetch_metadata(Some(topic), Duration::from_secs(5))
                    .map_err(|e| opts.connect_error(format!("metadata of topic `{topic}`: {e}")))?;
                if let Some(t) = md.topics().iter().find(|t| t.name() == topic)
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                {
                    partitions.insert(topic.clone(), t.partitions().len() as i32);
                    break;
                }
                if attempt + 1 < attempts {
                    std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
                }
            }
        }
        Ok(partitions)
    })
    .await
    .map_err(|e| Error::broker("the Kafka topic check failed", e))?
}

/// A record's headers by name (the last one wins, as in kafkajs).
pub(crate) struct HeaderMap(Vec<(String, Option<Vec<u8>>)>);

impl HeaderMap {
    pub(crate) fn from_headers(h: Option<&BorrowedHeaders>) -> Self {
        HeaderMap(
            h.map(|h| {
                (0..h.count())
                    .filter_map(|i| h.try_get(i))
                    .map(|hd| (hd.key.to_owned(), hd.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref().unwrap_or_default())
    }

    pub(crate) fn get_str(&self, key: &str) -> Option<String> {
        self.get(key).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The headers a handler sees as metadata: everything but the protocol's own.
    pub(crate) fn metadata(&self) -> Option<HashMap<String, String>> {
        let map: HashMap<_, _> = self
            .0
            .iter()
            .filter(|(k, _)| ![CORRELATION_ID, REPLY_TOPIC, REPLY_PARTITION, CONTENT_TYPE].contains(&k.as_str()))
            .map(|(k, v)| {
                (
                    k.clone(),
                    String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        (!map.is_empty()).then_some(map)
    }
}

/// A value ready to produce: the record value and its `content-type`.
pub(crate) struct Encoded {
    pub value: Option<Vec<u8>>,
    pub content_type: &'static str,
}

/// Writes a JSON value as NestJS's `KafkaRequestSerializer` does: a string raw, `null` as no
/// value, anything else as JSON text.
pub(crate) fn encode_value(json: &[u8]) -> Encoded {
    let trimmed = json.trim_ascii();
    if trimmed.first() == Some(&b'"')
        && let Ok(s) = serde_json::from_slice::<String>(trimmed)
    {
        return Encoded {
            value: Some(s.into_bytes()),
            content_type: TEXT_TYPE,
        };
    }
    Encoded {
        value: (trimmed != b"null").then(|| trimmed.to_vec()),
        content_type: JSON_TYPE,
    }
}

/// Reads a record value as JSON. With Switchboard's `content-type` the value is exact;
/// without it (a NestJS peer) it is read as NestJS's `KafkaParser` does: a value starting
/// with byte 0x00 is a Buffer, text starting with `{` or `[` is parsed when it is JSON,
/// anything else is a string, and no value is `null`.
pub(crate) fn decode_value(value: Option<&[u8]>, content_type: Option<&[u8]>) -> Bytes {
    let Some(value) = value else {
        return Bytes::from_static(b"null");
    };
    match content_type {
        Some(ct) if ct == JSON_TYPE.as_bytes() && serde_json::from_slice::<IgnoredAny>(value).is_ok() => {
            return Bytes::copy_from_slice(value);
        }
        Some(ct) if ct == TEXT_TYPE.as_bytes() => return json_string(&String::from_utf8_lossy(value)),
        _ => {}
    }
    if value.first() == Some(&0) {
        // What JSON.stringify makes of a Node Buffer.
        return Bytes::from(
            serde_json::to_vec(&serde_json::json!({"type": "Buffer", "data": value})).unwrap_or_default(),
        );
    }
    let text = String::from_utf8_lossy(value);
    if text.starts_with(['{', '[']) && serde_json::from_str::<IgnoredAny>(&text).is_ok() {
        return Bytes::from(text.into_owned());
    }
    json_string(&text)
}

fn json_string(s: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(s).unwrap_or_default())
}

/// The error value of a `kafka_nest-err` header, read as `KafkaParser` reads it.
pub(crate) fn decode_error(raw: &[u8]) -> serde_json::Value {
    serde_json::from_slice(&decode_value(Some(raw), None)).unwrap_or(serde_json::Value::Null)
}

/// The `kafka_nest-err` header of an error value: a string raw, anything else as JSON.
pub(crate) fn encode_error(err: &serde_json::Value) -> Vec<u8> {
    match err {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        other => serde_json::to_vec(other).unwrap_or_default(),
    }
}

/// Adds one header.
pub(crate) fn header(h: OwnedHeaders, key: &str, value: &[u8]) -> OwnedHeaders {
    h.insert(rdkafka::message::Header {
        key,
        value: Some(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn values_are_read_as_nestjs_reads_them() {
        assert_eq!(text(decode_value(None, None)), "null");
        assert_eq!(text(decode_value(Some(b"6"), None)), r#""6""#);
        assert_eq!(text(decode_value(Some(b"[1,2,3]"), None)), "[1,2,3]");
        assert_eq!(text(decode_value(Some(b"{not json"), None)), r#""{not json""#);
        assert_eq!(text(decode_value(Some(b"plain"), None)), r#""plain""#);
        assert_eq!(
            text(decode_value(Some(&[0, 1]), None)),
            r#"{"type":"Buffer","data":[0,1]}"#
        );
        assert_eq!(text(decode_value(Some(b"6"), Some(JSON_TYPE.as_bytes()))), "6");
        assert_eq!(text(decode_value(Some(b"[1]"), Some(TEXT_TYPE.as_bytes()))), r#""[1]""#);
        assert_eq!(decode_error(b"oops"), serde_json::json!("oops"));
        assert_eq!(decode_error(br#"{"a":1}"#), serde_json::json!({"a": 1}));
    }

    #[test]
    fn values_are_written_as_nestjs_writes_them() {
        let e = encode_value(br#""h\u00e9""#);
        assert_eq!(e.value.as_deref(), Some("hé".as_bytes()));
        assert_eq!(e.content_type, TEXT_TYPE);
        let e = encode_value(b"6");
        assert_eq!(e.value.as_deref(), Some(&b"6"[..]));
        assert_eq!(e.content_type, JSON_TYPE);
        assert!(encode_value(b"null").value.is_none());
        assert_eq!(encode_error(&serde_json::json!("x")), b"x");
    }

    #[test]
    fn options_follow_nestjs_defaults() {
        let ep = Endpoint::parse("kafka://127.0.0.1:9092").unwrap();
        let o = Options::parse(&ep, true).unwrap();
        assert_eq!(o.client_id, "nestjs-consumer-server");
        assert_eq!(o.group, "nestjs-group-server");
        let o = Options::parse(&ep, false).unwrap();
        assert_eq!(o.group, "nestjs-group-client");
        let ep = Endpoint::parse("kafka://h:1?group=orders&postfix=").unwrap();
        assert_eq!(Options::parse(&ep, true).unwrap().group, "orders");
        let ep = Endpoint::parse("kafka://h:1?grup=orders").unwrap();
        assert!(Options::parse(&ep, true).is_err());
        let ep = Endpoint::parse("kafka://h:1?partitions=0").unwrap();
        assert!(Options::parse(&ep, true).is_err());
        // Out of range: a clear error, not a truncated setting or a panic when serving.
        for bad in ["partitions=4294967297", "session_timeout_ms=4294967296"] {
            let ep = Endpoint::parse(&format!("kafka://h:1?{bad}")).unwrap();
            let err = Options::parse(&ep, true).unwrap_err().to_string();
            assert!(err.contains("must be between 1 and"), "{bad}: {err}");
        }
        // `max_in_flight` is read as on every transport: at least 1, at most what a semaphore holds.
        assert_eq!(
            Options::parse(&Endpoint::parse("kafka://h:1").unwrap(), true)
                .unwrap()
                .max_in_flight,
            256
        );
        for (given, got) in [
            ("0", 1),
            ("1000000", 1_000_000),
            ("9223372036854775807", tokio::sync::Semaphore::MAX_PERMITS),
        ] {
            let ep = Endpoint::parse(&format!("kafka://h:1?max_in_flight={given}")).unwrap();
            let o = Options::parse(&ep, true).unwrap();
            assert_eq!(o.max_in_flight, got, "{given}");
            let _ = tokio::sync::Semaphore::new(o.max_in_flight);
        }
        let ep = Endpoint::parse("kafka://h:1?max_in_flight=-1").unwrap();
        assert!(Options::parse(&ep, true).is_err());
    }
}
