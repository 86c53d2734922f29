//! NestJS's RabbitMQ transport (`amqp://user:pass@host:port/vhost?queue=…`), on `lapin`.
//!
//! Byte-compatible with `@nestjs/microservices`' RMQ transport (docs/nestjs-wire.md §6): one queue
//! carries every pattern and the server routes by the body's `pattern`; a client publishes
//! to the queue with `reply_to = amq.rabbitmq.reply-to` (direct reply-to) and
//! `correlation_id = id`, and the server answers on `reply_to` with the same
//! `correlation_id` and a body without `id` (except the no-handler reply, which has one).
//! AMQP headers are the metadata in both directions.
//!
//! URL query parameters (one URL serves both ends; each end ignores the others' keys):
//! - `queue` (default `default`): the queue both ends declare. NestJS's default `''`
//!   is a server-named queue that no client can find, so we name one.
//! - `durable` (default `true`, amqplib's default): the queue's durability; it must match
//!   what every other declarer of the queue uses (NestJS's `queueOptions.durable`), or the
//!   broker refuses with `PRECONDITION_FAILED`.
//! - `heartbeat` (seconds, default 10), `connect_timeout_ms` (default: the client's
//!   connect timeout, 5000 on the server).
//! - server: `noack` (default `false`): `false` acks each message after its handler has
//!   finished (the reply sent, or every event listener done), so a crash redelivers it;
//!   `true` acks it as the server takes it, before handling (NestJS's default auto-ack, but
//!   acked by the server rather than by the broker on delivery, so that `prefetch` still
//!   bounds what the broker pushes). `prefetch` (default 256, NestJS's `prefetchCount`):
//!   unacked messages the broker delivers to a server at once. `max_in_flight` (default:
//!   `prefetch`): messages being handled at once, as on every transport; deliveries beyond
//!   it wait in the server, unacked, and go back to the queue if the server stops.
//!   `max_retries` (default 3): an event whose listener fails is delivered again up to this
//!   many times, then moved to the queue `<queue>.dlq`.
//! - client: `persistent` (default `false`): `delivery_mode` 2 instead of 1, so messages
//!   in a durable queue survive a broker restart.

use std::collections::HashMap;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};

use super::{Endpoint, broker};
use crate::error::{Error, Result};

mod client;
mod server;

pub use client::AmqpClient;
pub use server::AmqpListener;

/// RabbitMQ's direct reply-to pseudo-queue.
pub(crate) const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Header carrying how many times an event was handed back for another try.
pub(crate) const RETRIES_HEADER: &str = "x-switchboard-retries";

/// Default queue when the URL names none.
pub const DEFAULT_QUEUE: &str = "default";
/// Default unacked messages per server.
pub const DEFAULT_PREFETCH: u16 = 256;
/// Default attempts for a failing event before it is dead-lettered.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

const PARAMS: &[&str] = &[
    "queue",
    "durable",
    "heartbeat",
    "connect_timeout_ms",
    "noack",
    "prefetch",
    "max_retries",
    "persistent",
    broker::MAX_IN_FLIGHT,
];

/// The options of one `amqp://` URL.
#[derive(Clone)]
pub(crate) struct Options {
    /// The URL with any password masked, for logs, errors and `local_url`.
    pub url: String,
    /// What lapin connects to.
    uri: String,
    pub queue: String,
    pub durable: bool,
    pub noack: bool,
    pub prefetch: u16,
    /// Messages a server handles at once.
    pub max_in_flight: usize,
    pub max_retries: u32,
    pub persistent: bool,
    pub connect_timeout: Duration,
}

/// The URL without its password: the rest holds the credentials.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Options {
    pub(crate) fn parse(ep: &Endpoint, default_connect_timeout: Duration) -> Result<Self> {
        ep.only_params(PARAMS)?;
        let heartbeat: u16 = ep.param_as("heartbeat")?.unwrap_or(10);
        let queue = ep.param("queue").unwrap_or(DEFAULT_QUEUE).to_owned();
        if queue.is_empty() || queue.len() > 255 {
            return Err(Error::InvalidUrl {
                url: ep.redacted(),
                reason: "`queue` must be 1 to 255 bytes long".into(),
            });
        }
        let prefetch = ep.param_as("prefetch")?.unwrap_or(DEFAULT_PREFETCH);
        if prefetch == 0 {
            // RabbitMQ reads 0 as "no limit": the server would take the whole queue at once.
            return Err(Error::InvalidUrl {
                url: ep.redacted(),
                reason: "`prefetch` must be 1 to 65535 (0 would mean no limit on messages in flight)".into(),
            });
        }
        Ok(Options {
            url: ep.redacted(),
            uri: format!("amqp://{}?heartbeat={heartbeat}", ep.authority),
            queue,
            durable: ep.param_as("durable")?.unwrap_or(true),
            noack: ep.param_as("noack")?.unwrap_or(false),
            prefetch,
            max_in_flight: broker::max_in_flight(ep, usize::from(prefetch))?,
            max_retries: ep.param_as("max_retries")?.unwrap_or(DEFAULT_MAX_RETRIES),
            persistent: ep.param_as("persistent")?.unwrap_or(false),
            connect_timeout: ep
                .param_as("connect_timeout_ms")?
                .map(Duration::from_millis)
                .unwrap_or(default_connect_timeout),
        })
    }

    /// The queue failed events end up in.
    pub(crate) fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    /// Opens a connection, within the connect timeout.
    pub(crate) async fn connect(&self) -> Result<Connection> {
        let connecting = Connection::connect(&self.uri, ConnectionProperties::default());
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.connect_error(e.to_string())),
            Err(_) => Err(self.connect_error(format!("no answer within {:?}", self.connect_timeout))),
        }
    }

    pub(crate) fn connect_error(&self, reason: String) -> Error {
        Error::Connect {
            addr: self.url.clone(),
            reason,
        }
    }

    /// Declares the queue as every end does, NestJS's too (`queue.declare(queue,
    /// {durable})`, no arguments), so that mixed fleets agree on it.
    pub(crate) async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let options = lapin::options::QueueDeclareOptions {
            durable: self.durable,
            ..Default::default()
        };
        channel
            .queue_declare(self.queue.as_str().into(), options, FieldTable::default())
            .await?;
        Ok(())
    }
}

/// AMQP headers as metadata: strings as they are, numbers and booleans as text; nested
/// tables, arrays and binary are left out.
pub(crate) fn headers_to_metadata(headers: &FieldTable, into: &mut HashMap<String, String>) {
    for (k, v) in headers.inner() {
        let text = match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            AMQPValue::Boolean(b) => b.to_string(),
            AMQPValue::ShortShortInt(n) => n.to_string(),
            AMQPValue::ShortShortUInt(n) => n.to_string(),
            AMQPValue::ShortInt(n) => n.to_string(),
            AMQPValue::ShortUInt(n) => n.to_string(),
            AMQPValue::LongInt(n) => n.to_string(),
            AMQPValue::LongUInt(n) => n.to_string(),
            AMQPValue::LongLongInt(n) => n.to_string(),
            AMQPValue::Float(n) => n.to_string(),
            AMQPValue::Double(n) => n.to_string(),
            AMQPValue::Timestamp(n) => n.to_string(),
            _ => continue,
        };
        into.insert(k.as_str().to_owned(), text);
    }
}

/// Metadata as an AMQP headers table (long strings, as amqplib writes JS strings).
pub(crate) fn metadata_to_headers(metadata: &crate::service::Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in metadata.iter() {
        match ShortString::try_new(k) {
            Ok(key) => {
                table.insert(key, AMQPValue::LongString(v.into()));
            }
            Err(_) => tracing::warn!(header = %k, "header name longer than 255 bytes; not sent"),
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let ep = Endpoint::parse("amqp://u:p@h:5672/%2f?queue=q&durable=false&prefetch=5").unwrap();
        let o = Options::parse(&ep, Duration::from_secs(1)).unwrap();
        assert_eq!(o.uri, "amqp://u:p@h:5672/%2f?heartbeat=10");
        assert_eq!(
            (o.queue.as_str(), o.durable, o.prefetch, o.noack),
            ("q", false, 5, false)
        );
        assert_eq!(o.dead_letter_queue(), "q.dlq");
        assert_eq!(o.max_in_flight, 5, "max_in_flight follows prefetch");
        assert_eq!(o.url, "amqp://u:***@h:5672/%2f?queue=q&durable=false&prefetch=5");
        let ep = Endpoint::parse("amqp://h?prefetch=5&max_in_flight=2").unwrap();
        assert_eq!(Options::parse(&ep, Duration::from_secs(1)).unwrap().max_in_flight, 2);
        let o = Options::parse(&Endpoint::parse("amqp://h").unwrap(), Duration::from_secs(1)).unwrap();
        assert_eq!((o.queue.as_str(), o.durable, o.max_retries), (DEFAULT_QUEUE, true, 3));
        let bad = Options::parse(&Endpoint::parse("amqp://h?qeue=x").unwrap(), Duration::from_secs(1));
        assert!(bad.unwrap_err().to_string().contains("unknown query parameter `qeue`"));
        let unbounded = Options::parse(&Endpoint::parse("amqp://h?prefetch=0").unwrap(), Duration::from_secs(1));
        assert!(
            unbounded
                .unwrap_err()
                .to_string()
                .contains("`prefetch` must be 1 to 65535")
        );
        assert!(
            Options::parse(
                &Endpoint::parse("amqp://h?durable=yes").unwrap(),
                Duration::from_secs(1)
            )
            .is_err()
        );
        let secret = Options::parse(
            &Endpoint::parse("amqp://u:s3cret@h:1/v?queue=a@b").unwrap(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(secret.url, "amqp://u:***@h:1/v?queue=a@b");
        let bad = Options::parse(
            &Endpoint::parse("amqp://u:s3cret@h:1?queue=").unwrap(),
            Duration::from_secs(1),
        );
        assert!(!bad.unwrap_err().to_string().contains("s3cret"));
    }

    #[test]
    fn headers_round_trip_as_strings() {
        let meta: crate::service::Headers = [("traceparent", "00-abc")].into_iter().collect();
        let mut table = metadata_to_headers(&meta);
        table.insert("n".into(), AMQPValue::LongInt(7));
        table.insert("nested".into(), AMQPValue::FieldTable(FieldTable::default()));
        let mut back = HashMap::new();
        headers_to_metadata(&table, &mut back);
        assert_eq!(back.len(), 2);
        assert_eq!(back["traceparent"], "00-abc");
        assert_eq!(back["n"], "7");
    }
}
