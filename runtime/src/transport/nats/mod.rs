//! The NATS transport, `nats://host:port`, wire-compatible with NestJS's `Transport.NATS`
//! (docs/nestjs-wire.md §4).
//!
//! - Requests and events go to the subject named by the route; a request carries a reply
//!   subject, and every reply packet is published there without headers.
//! - Caller headers travel as NATS headers and reach handlers as [`Context`](crate::Context)
//!   headers. Switchboard's own (`sb-…`: the call's time left, a retry's attempt) travel in
//!   the packet's `metadata`, as on TCP and Redis: only Switchboard reads them, and as NATS
//!   headers they would make every request an `HPUB` whose header map is built, written and
//!   parsed again per message (a sixth of the throughput at 32 calls in flight).
//! - A request nobody subscribes to gets the server's 503 no-responders status, which the
//!   client turns into [`Error::NoHandler`] at once.
//! - `?queue=<group>` puts the server's subscriptions in a queue group: several replicas share
//!   the load, each message handled once. Without it every replica gets every message, as in
//!   NestJS.
//! - `?jetstream=<stream>` makes events durable: the server keeps a JetStream stream over its
//!   event-only routes and consumes it with a durable consumer (`?durable=<name>`), acking
//!   each event only after every listener succeeded; the client publishes events through
//!   JetStream and waits for the stream's acknowledgement.
//!
//! The async-nats client reconnects on its own (with our backoff) and resubscribes; calls in
//! flight when the connection drops fail at once.
//!
//! URL: `nats://[user:password@]host:port[,host:port…]`, query parameters:
//! - both ends: `name` (connection name shown by the NATS server's monitoring),
//!   `connect_timeout_ms` (default 5000 on the server, the client's connect timeout on the
//!   client), `jetstream=<stream>` (durable events, above);
//! - server: `queue=<group>`; with `jetstream`: `durable=<name>` (default `switchboard`),
//!   `max_deliver` (deliveries of one event, default 10, -1 for no limit) and `ack_wait_ms`
//!   (default 30000); `max_in_flight` (messages being handled at once, default 1024, as on
//!   every transport; when full the server stops taking messages, which wait in the
//!   subscriptions or in the stream, until one finishes).
//! - both ends: `subscription_capacity` (default 65536, async-nats's): messages a
//!   subscription (a server's route, a client's reply inbox) keeps while it is not read;
//!   past that, core NATS messages are dropped, warned of and counted
//!   (`switchboard_messages_dropped_total`). With large payloads, lower it to bound the
//!   memory a server that falls behind holds.

mod client;
mod server;

use std::time::Duration;

use async_nats::{ConnectOptions, Event, HeaderMap};

pub use client::NatsClient;
pub use server::NatsListener;

use super::{Endpoint, broker};
use crate::error::{Error, Result};
use crate::service::Headers;

/// Query parameters the NATS transport takes.
const PARAMS: &[&str] = &[
    "queue",
    "jetstream",
    "durable",
    "max_deliver",
    "ack_wait_ms",
    "name",
    "connect_timeout_ms",
    "subscription_capacity",
    broker::MAX_IN_FLIGHT,
];

/// Default cap on messages being handled at once by one server.
const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// async-nats's own default: messages a subscription keeps before it drops the next.
const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 65_536;

/// Credentials from a `nats://` URL: `user:password@` or `token@`.
#[derive(Clone, Default)]
enum Auth {
    #[default]
    None,
    UserAndPassword(String, String),
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::UserAndPassword(..) => "UserAndPassword(***)",
            Auth::Token(_) => "Token(***)",
        })
    }
}

/// Settings from a `nats://` URL.
#[derive(Debug, Clone)]
struct NatsOptions {
    /// The URL without its password (for logs, errors and `local_url`).
    url: String,
    /// What async-nats connects to: `nats://host:port`, each server of the URL.
    servers: Vec<String>,
    /// The URL's credentials, handed to async-nats apart from the servers (which it logs).
    auth: Auth,
    /// Queue group of the server's subscriptions (NestJS `queue`); none by default.
    queue: Option<String>,
    /// JetStream stream carrying durable events; none (core NATS) by default.
    jetstream: Option<String>,
    /// Durable consumer name (servers with the same name share the work).
    durable: String,
    /// Deliveries of one event before JetStream gives up on it.
    max_deliver: i64,
    /// How long JetStream waits for an ack before redelivering.
    ack_wait: Duration,
    /// Connection name shown by the NATS server's monitoring.
    name: Option<String>,
    /// Overrides the connect timeout (client: the builder's, default 5 s; server: 5 s).
    connect_timeout: Option<Duration>,
    /// Messages a server handles at once.
    max_in_flight: usize,
    /// Messages async-nats keeps for each subscription that is not read fast enough.
    subscription_capacity: usize,
}

/// Default number of deliveries of a durable event.
const DEFAULT_MAX_DELIVER: i64 = 10;
/// Default ack wait of the durable consumer.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

impl NatsOptions {
    fn parse(ep: &Endpoint) -> Result<Self> {
        ep.only_params(PARAMS)?;
        let bad = |reason: String| Error::InvalidUrl {
            url: ep.redacted(),
            reason,
        };
        // `user:pass@host1:4222,host2:4222`: credentials apply to every server.
        let decode = |s: &str| super::percent_decode(s).ok_or_else(|| bad("bad %-escape in the login".into()));
        let (auth, hosts) = match ep.authority.rsplit_once('@') {
            Some((login, hosts)) => match login.split_once(':') {
                Some((user, pass)) => (Auth::UserAndPassword(decode(user)?, decode(pass)?), hosts),
                None => (Auth::Token(decode(login)?), hosts),
            },
            None => (Auth::None, ep.authority.as_str()),
        };
        let servers: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("nats://{h}"))
            .collect();
        if servers.is_empty() {
            return Err(bad("missing host:port".into()));
        }
        let non_empty = |key: &str| -> Result<Option<String>> {
            match ep.param(key) {
                Some("") => Err(bad(format!("query parameter `{key}` must not be empty"))),
                other => Ok(other.map(str::to_owned)),
            }
        };
        let jetstream = non_empty("jetstream")?;
        if let Some(stream) = &jetstream
            && !valid_js_name(stream)
        {
            return Err(bad(format!(
                "JetStream stream name `{stream}` may not contain whitespace, `.`, `*`, `>`, `/` or `\\`"
            )));
        }
        let durable = non_empty("durable")?.unwrap_or_else(|| "switchboard".to_owned());
        if !valid_js_name(&durable) {
            return Err(bad(format!(
                "durable consumer name `{durable}` may not contain whitespace, `.`, `*`, `>`, `/` or `\\`"
            )));
        }
        if jetstream.is_none() && (ep.param("durable").is_some() || ep.param("max_deliver").is_some()) {
            return Err(bad("`durable` and `max_deliver` need `jetstream=<stream name>`".into()));
        }
        let max_deliver = ep.param_as::<i64>("max_deliver")?.unwrap_or(DEFAULT_MAX_DELIVER);
        if max_deliver == 0 || max_deliver < -1 {
            return Err(bad("`max_deliver` must be positive, or -1 for no limit".into()));
        }
        Ok(NatsOptions {
            url: ep.redacted(),
            servers,
            auth,
            queue: non_empty("queue")?,
            jetstream,
            durable,
            max_deliver,
            ack_wait: ep
                .param_as::<u64>("ack_wait_ms")?
                .map_or(DEFAULT_ACK_WAIT, Duration::from_millis),
            name: non_empty("name")?,
            connect_timeout: ep.param_as::<u64>("connect_timeout_ms")?.map(Duration::from_millis),
            max_in_flight: broker::max_in_flight(ep, DEFAULT_MAX_IN_FLIGHT)?,
            subscription_capacity: match ep.param_as::<usize>("subscription_capacity")? {
                Some(0) => return Err(bad("`subscription_capacity` must be at least 1".into())),
                Some(n) => n,
                None => DEFAULT_SUBSCRIPTION_CAPACITY,
            },
        })
    }

    /// Connects now; afterwards async-nats reconnects by itself, forever, with backoff.
    async fn connect(
        &self,
        timeout: Duration,
        on_event: impl Fn(Event) + Send + Sync + 'static,
    ) -> Result<async_nats::Client> {
        let lost = std::sync::atomic::AtomicBool::new(false);
        let mut opts = ConnectOptions::new()
            .connection_timeout(self.connect_timeout.unwrap_or(timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .subscription_capacity(self.subscription_capacity)
            .event_callback(move |event| {
                // Connected follows the first connection too: a reconnect is one after a loss.
                match event {
                    Event::Disconnected => lost.store(true, std::sync::atomic::Ordering::Relaxed),
                    Event::Connected if lost.swap(false, std::sync::atomic::Ordering::Relaxed) => {
                        crate::signal::reconnected("nats")
                    }
                    _ => {}
                }
                on_event(event);
                std::future::ready(())
            });
        if let Some(name) = &self.name {
            opts = opts.name(name);
        }
        opts = match &self.auth {
            Auth::None => opts,
            Auth::UserAndPassword(user, pass) => opts.user_and_password(user.clone(), pass.clone()),
            Auth::Token(token) => opts.token(token.clone()),
        };
        opts.connect(self.servers.as_slice()).await.map_err(|e| Error::Connect {
            addr: self.url.clone(),
            reason: e.to_string(),
        })
    }
}

/// Warnings about messages async-nats dropped (one event each), at most one a second.
static SLOW_CONSUMER: crate::text::Throttle = crate::text::Throttle::new(1);

/// Backoff between reconnect attempts: 50 ms doubling up to 2 s.
fn reconnect_delay(attempts: usize) -> Duration {
    Duration::from_millis((50u64 << attempts.min(6)).min(2_000))
}

/// JetStream names must not contain these.
fn valid_js_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

/// NATS headers as a message's headers (the last value of a repeated header wins).
fn nats_headers(headers: &HeaderMap) -> impl Iterator<Item = (String, String)> + '_ {
    headers
        .iter()
        .filter_map(|(name, values)| Some((name.to_string(), values.last()?.to_string())))
}

/// Switchboard's own headers, which travel in the packet's `metadata` rather than as NATS
/// headers (see the module's documentation).
fn own(name: &str) -> bool {
    name.starts_with("sb-")
}

/// A caller's headers as NATS headers; `None` when there is nothing to send, so the message
/// goes out as a plain `PUB`, as NestJS sends it.
fn to_nats_headers(headers: &Headers) -> Option<HeaderMap> {
    let mut sent = headers.iter().filter(|(k, _)| !own(k)).peekable();
    sent.peek()?;
    let mut out = HeaderMap::new();
    for (k, v) in sent {
        out.insert(k, v);
    }
    Some(out)
}

/// What a message with these headers weighs against the server's `max_payload`, counted as
/// async-nats counts it (the header block, then the payload).
fn wire_size(headers: &Headers, payload: usize) -> usize {
    let block: usize = headers
        .iter()
        .filter(|(k, _)| !own(k))
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum();
    if block == 0 {
        return payload;
    }
    "NATS/1.0\r\n".len() + block + 2 + payload
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> Result<NatsOptions> {
        NatsOptions::parse(&Endpoint::parse(url)?)
    }

    /// Switchboard's own headers stay out of the NATS header block (and out of its size):
    /// a request with only those is a plain `PUB`.
    #[test]
    fn own_headers_are_not_nats_headers() {
        let own: Headers = [("sb-timeout-ms", "250"), ("sb-attempt", "2")].into_iter().collect();
        assert!(to_nats_headers(&own).is_none());
        assert_eq!(wire_size(&own, 40), 40);
        let mut mixed = own.clone();
        mixed.insert("traceparent", "00-1");
        let sent = to_nats_headers(&mixed).expect("a header block");
        assert_eq!(sent.iter().count(), 1);
        assert_eq!(sent.get("traceparent").map(|v| v.as_str()), Some("00-1"));
        assert_eq!(
            wire_size(&mixed, 40),
            "NATS/1.0\r\ntraceparent: 00-1\r\n\r\n".len() + 40
        );
    }

    #[test]
    fn parses_urls() {
        let o = opts("nats://127.0.0.1:4222").unwrap();
        assert_eq!(o.subscription_capacity, 65_536);
        assert_eq!(
            opts("nats://h?subscription_capacity=64").unwrap().subscription_capacity,
            64
        );
        let zero = opts("nats://h?subscription_capacity=0").unwrap_err().to_string();
        assert!(zero.contains("`subscription_capacity` must be at least 1"), "{zero}");
        assert_eq!(o.servers, ["nats://127.0.0.1:4222"]);
        assert!(o.queue.is_none() && o.jetstream.is_none());
        let o = opts("nats://u:p@a:1,b:2?queue=workers&jetstream=EVENTS&durable=orders&max_deliver=3").unwrap();
        assert_eq!(o.servers, ["nats://a:1", "nats://b:2"]);
        assert!(matches!(&o.auth, Auth::UserAndPassword(u, p) if u == "u" && p == "p"));
        assert_eq!(o.queue.as_deref(), Some("workers"));
        assert_eq!(o.jetstream.as_deref(), Some("EVENTS"));
        assert_eq!((o.durable.as_str(), o.max_deliver), ("orders", 3));
        assert_eq!(o.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        let o = opts("nats://u:secret@h:1?max_in_flight=8").unwrap();
        assert_eq!(o.max_in_flight, 8);
        assert!(!o.url.contains("secret"), "{}", o.url);
        assert_eq!(o.servers, ["nats://h:1"]);
        assert!(!format!("{o:?}").contains("secret"));
        let o = opts("nats://s3cr%40t@h:1").unwrap();
        assert!(matches!(&o.auth, Auth::Token(t) if t == "s3cr@t"));
        let err = |url: &str| opts(url).unwrap_err().to_string();
        assert!(!err("nats://u:secret@h:1?queue=").contains("secret"));
        assert!(err("nats://h:1?qeue=x").contains("unknown query parameter `qeue`"));
        assert!(err("nats://h:1?durable=x").contains("need `jetstream"));
        assert!(err("nats://h:1?jetstream=a.b").contains("may not contain"));
        assert!(err("nats://h:1?queue=").contains("must not be empty"));
        assert!(err("nats://h:1?jetstream=S&max_deliver=0").contains("max_deliver"));
    }
}
