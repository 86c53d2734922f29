//! NestJS's MQTT transport (`mqtt://[user:password@]host:port`), on `rumqttc` (MQTT 3.1.1,
//! as mqtt.js speaks by default).
//!
//! Byte-compatible with `@nestjs/microservices` (docs/nestjs-wire.md §5): a request or event is
//! published to the topic named by the pattern's route, with NestJS's JSON packet as the
//! payload; replies go to `<topic>/reply`, carrying the request `id` in the body.
//!
//! Differences from NestJS, on purpose:
//! - the client subscribes to a route's reply topic once (waiting for the SUBACK) and keeps
//!   the subscription for its lifetime, instead of unsubscribing when no call is in flight;
//!   that removes NestJS's subscribe/unsubscribe race, which loses replies under concurrency;
//! - a request nobody serves cannot be told apart from a slow one on MQTT: it fails at the
//!   call's deadline with [`Error::Timeout`] naming the pattern;
//! - with `qos=1|2` the server acknowledges a message only after its handler has finished
//!   (and its reply has been handed to the broker), in arrival order as MQTT 3.1.1 §4.6
//!   asks, so with a persistent session (`clean_session=false` and a fixed `client_id`)
//!   events are delivered at least once: a server that dies is sent again what it had not
//!   acknowledged yet, handled or not;
//! - a message larger than `max_packet_size` is refused before it is sent (rumqttc would
//!   drop the whole connection); a reply that large becomes an `Internal server error`.
//!
//! `emit` resolves once rumqttc has queued the message, not on the broker's PUBACK; the
//! client keeps a clean session, so QoS 1 messages queued when its connection drops are lost.
//!
//! URL query parameters (both ends unless noted):
//! - `qos` = `0|1|2`: publishes, subscriptions and replies (default 0, as NestJS; use 1 for
//!   at-least-once delivery);
//! - `client_id`: the MQTT client id (default `switchboard_<random>`); fixed ids must be
//!   unique per connection, so do not share one URL with `client_id` between a server and
//!   a client;
//! - `group` (server): subscribe through the shared subscription `$share/<group>/<route>`,
//!   so that servers in the same group share the messages (load balancing);
//! - `clean_session` (server) = `true|false`: `false` keeps the session (subscriptions and
//!   queued QoS 1/2 messages) while the server is away; needs `client_id` (default `true`);
//! - `keepalive`: seconds between pings (default 60, as mqtt.js; at most 65535, its two bytes
//!   on the wire);
//! - `connect_timeout_ms`: wait for the broker's CONNACK (default 5000);
//! - `max_packet_size`: largest MQTT packet sent or received, in bytes (default 64 MiB);
//! - `max_in_flight` (server): messages being handled at once (default 1024, as on every
//!   transport). rumqttc's event loop keeps running meanwhile (it carries the replies, acks
//!   and pings): at QoS 1/2 the broker sends no more than its in-flight window of messages not
//!   yet acknowledged, and at QoS 0 (no flow control) messages beyond the bound wait in memory.

use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};

use super::{Endpoint, broker};
use crate::error::{Error, Result};

mod acks;
mod client;
mod server;

pub use client::MqttClient;
pub use server::MqttListener;

/// The port MQTT brokers listen on when the URL names none.
pub const DEFAULT_PORT: u16 = 1883;
/// Default cap on one MQTT packet, in bytes.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 64 * 1024 * 1024;
/// Default wait for the broker's CONNACK.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on messages being handled at once by one server.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

const PARAMS: &[&str] = &[
    "qos",
    "client_id",
    "group",
    "clean_session",
    "keepalive",
    "connect_timeout_ms",
    "max_packet_size",
    broker::MAX_IN_FLIGHT,
];

/// Requests queued towards rumqttc's event loop before callers wait.
const REQUEST_QUEUE: usize = 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The options of an `mqtt://` URL.
#[derive(Clone)]
pub(crate) struct Options {
    /// The URL without its password, for logs and errors.
    url: String,
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
    qos: QoS,
    client_id: Option<String>,
    group: Option<String>,
    clean_session: bool,
    keepalive: Duration,
    connect_timeout: Duration,
    max_packet_size: usize,
    /// Messages a server handles at once.
    max_in_flight: usize,
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
    fn parse(ep: &Endpoint, connect_timeout: Duration, max_packet_size: usize) -> Result<Self> {
        ep.only_params(PARAMS)?;
        let bad = |reason: String| Error::InvalidUrl {
            url: ep.redacted(),
            reason,
        };
        let (credentials, hostport) = match ep.authority.rsplit_once('@') {
            Some((login, hostport)) => {
                let (user, pass) = login.split_once(':').unwrap_or((login, ""));
                let decode = |s: &str| super::percent_decode(s).ok_or_else(|| bad("bad %-escape in the login".into()));
                (Some((decode(user)?, decode(pass)?)), hostport)
            }
            None => (None, ep.authority.as_str()),
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad(format!("bad host:port `{hostport}`")))?;
        let qos = match ep.param_as::<u8>("qos")?.unwrap_or(0) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            n => return Err(bad(format!("query parameter `qos` must be 0, 1 or 2, not {n}"))),
        };
        // MQTT sends it in two bytes: a larger one would reach the broker truncated.
        let keepalive = ep.param_as::<u16>("keepalive")?.unwrap_or(60);
        let client_id = ep.param("client_id").filter(|id| !id.is_empty()).map(str::to_owned);
        let clean_session = ep.param_as::<bool>("clean_session")?.unwrap_or(true);
        let group = ep.param("group").filter(|g| !g.is_empty()).map(str::to_owned);
        if let Some(g) = &group
            && g.contains(['/', '+', '#'])
        {
            return Err(bad(format!("`group` must not contain `/`, `+` or `#`: `{g}`")));
        }
        Ok(Options {
            url: ep.redacted(),
            host,
            port,
            credentials,
            qos,
            client_id,
            group,
            clean_session,
            // rumqttc takes whole seconds, 0 turning pings off.
            keepalive: Duration::from_secs(u64::from(keepalive)),
            connect_timeout: ep
                .param_as("connect_timeout_ms")?
                .map(Duration::from_millis)
                .unwrap_or(connect_timeout),
            max_packet_size: ep.param_as("max_packet_size")?.unwrap_or(max_packet_size),
            max_in_flight: broker::max_in_flight(ep, DEFAULT_MAX_IN_FLIGHT)?,
        })
    }

    /// A rumqttc client and its (not yet connected) event loop.
    fn open(&self, client_id: String, clean_session: bool, manual_acks: bool) -> (AsyncClient, EventLoop) {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(self.keepalive)
            .set_clean_session(clean_session)
            .set_manual_acks(manual_acks)
            .set_max_packet_size(self.max_packet_size, self.max_packet_size)
            .set_request_channel_capacity(REQUEST_QUEUE);
        if let Some((user, pass)) = &self.credentials {
            o.set_credentials(user.clone(), pass.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(o, REQUEST_QUEUE);
        let mut net = eventloop.network_options();
        // Requests and replies are small and latency-bound: no Nagle delay.
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(self.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(net);
        (client, eventloop)
    }

    fn client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(random_client_id)
    }
}

/// The size of a PUBLISH packet (QoS 1/2 add a packet id): rumqttc drops the whole
/// connection when one exceeds the limit, so it is checked before handing it over.
fn publish_size(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let len_bytes = match remaining {
        0..128 => 1,
        128..16_384 => 2,
        16_384..2_097_152 => 3,
        _ => 4,
    };
    1 + len_bytes + remaining
}

/// `host:port`, `[v6]:port` or `host` (port 1883).
fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, rest) = rest.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if rest.is_empty() => DEFAULT_PORT,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None if !s.is_empty() => Some((s.to_owned(), DEFAULT_PORT)),
        None => None,
    }
}

/// A client id like mqtt.js's `mqttjs_xxxxxxxx`, so that each connection has its own.
fn random_client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("switchboard_{:012x}", h.finish() & 0xFFFF_FFFF_FFFF)
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::ZERO)
    }

    /// The wait before the next attempt.
    fn next(&mut self) -> Duration {
        self.0 = (self.0 * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
        self.0
    }

    fn reset(&mut self) {
        self.0 = Duration::ZERO;
    }
}

/// MQTT topic-filter matching: `+` is one level, a trailing `#` any number (even none).
fn topic_matches(filter: &str, topic: &str) -> bool {
    // Wildcards do not match topics starting with `$` (MQTT 3.1.1 §4.7.2).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let ep = Endpoint::parse("mqtt://u:p%40ss@127.0.0.1:1884?qos=1&group=g&keepalive=5").unwrap();
        let o = Options::parse(&ep, DEFAULT_CONNECT_TIMEOUT, 10).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 1884));
        assert_eq!(o.credentials, Some(("u".into(), "p@ss".into())));
        assert_eq!(o.qos, QoS::AtLeastOnce);
        assert_eq!(o.group.as_deref(), Some("g"));
        assert_eq!(o.keepalive, Duration::from_secs(5));
        let ep = Endpoint::parse("mqtt://h?keepalive=65536").unwrap();
        let err = Options::parse(&ep, DEFAULT_CONNECT_TIMEOUT, 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`keepalive`"), "{err}");
        assert_eq!(o.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        assert!(!o.url.contains("p%40ss"), "{}", o.url);
        let ep = Endpoint::parse("mqtt://h?max_in_flight=3").unwrap();
        assert_eq!(
            Options::parse(&ep, DEFAULT_CONNECT_TIMEOUT, 10).unwrap().max_in_flight,
            3
        );
        let o = Options::parse(&Endpoint::parse("mqtt://broker").unwrap(), DEFAULT_CONNECT_TIMEOUT, 10).unwrap();
        assert_eq!((o.host.as_str(), o.port, o.qos), ("broker", 1883, QoS::AtMostOnce));
        assert_eq!(split_host_port("[::1]:1"), Some(("::1".into(), 1)));
        for bad in ["mqtt://h?qos=3", "mqtt://h?nope=1", "mqtt://h:x", "mqtt://h?group=a/b"] {
            assert!(
                Options::parse(&Endpoint::parse(bad).unwrap(), DEFAULT_CONNECT_TIMEOUT, 10).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn matches_topic_filters() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("{\"cmd\":\"sum\"}", "{\"cmd\":\"sum\"}"));
    }
}
