//! Transports: how bytes reach the service and replies reach callers.
//!
//! A transport is chosen by URL: `mem://name` (in-process) and `tcp://host:port` (NestJS's
//! TCP protocol; `tls://host:port` for TLS) are built in, the brokers and gRPC are cargo
//! features. Server-side a transport is a [`Listener`]: it turns what it receives into
//! [`Request`](crate::Request)s for the [`Router`] and sends back the replies; it never sees a
//! handler. Client-side it is a [`ClientTransport`] that sends [`Outbound`] calls and yields
//! [`Replies`]; a client wraps it in its layers.
//!
//! Both traits are public so that a transport can live outside this crate: serve one with
//! `Microservice::serve_on(listener)`, call through one with `Client::over(transport)`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::service::{Outbound, Replies, Router};

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(any(feature = "tcp", feature = "amqp"))]
pub(crate) mod backoff;
#[cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "mqtt",
    feature = "amqp",
    feature = "kafka"
))]
pub(crate) mod broker;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod health;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(any(feature = "tcp", feature = "redis", feature = "grpc"))]
pub(crate) mod keepalive;
pub mod mem;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "tcp")]
pub mod tcp;

/// The client half of a transport.
pub trait ClientTransport: Send + Sync + 'static {
    /// Connects now instead of on the first call, so that an unreachable peer is reported
    /// at once.
    fn connect(&self) -> BoxFuture<'_, Result<()>>;
    /// Sends a request; resolves once its first reply packet is in (or the reply is over),
    /// with the packets of the reply.
    fn request(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<Replies>>;
    /// Sends an event; resolves once the transport has accepted it.
    fn emit(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<()>>;
    /// Closes connections; in-flight calls fail.
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Resolves once every event whose `emit` resolved before has left this process (written
    /// to the socket, or taken by the broker), or fails if one may not have. The default is for
    /// transports whose `emit` already waits for that.
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// True for a transport within this process, which takes a request's payload as a value
    /// (`Outbound::local`) instead of JSON when it has one.
    fn takes_values(&self) -> bool {
        false
    }
}

/// The server half of a transport, bound and ready to serve.
pub trait Listener: Send + 'static {
    /// The URL it listens on, with the real port when port 0 was asked for (and without a
    /// password).
    fn local_url(&self) -> String;
    /// Serves `router` until `shutdown` fires, then stops taking new messages, lets in-flight
    /// ones finish and returns.
    fn serve(self: Box<Self>, router: Router, shutdown: Shutdown) -> BoxFuture<'static, Result<()>>;

    /// For transports that take messages only once `serve` has set something up (a broker
    /// subscription): a flag `serve` raises then, so that `Microservice::start` returns only
    /// when a message sent right after it would be handled, and lowers while it cannot take
    /// messages (the broker connection lost, until it is subscribed again): the service's
    /// [`Health`](health::Health) reads it. `None`: ready as soon as bound.
    fn ready(&self) -> Option<watch::Receiver<bool>> {
        None
    }
}

/// A signal that the server is shutting down. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the sender that fires it.
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// Resolves once shutdown has begun (at once if it already has, or if the sender is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|&down| down).await;
    }

    /// True once shutdown has begun.
    pub fn is_down(&self) -> bool {
        *self.0.borrow()
    }
}

/// The most connections one client pools (each a socket and a reader task): a `pool` from a
/// URL (a registry's entry, say) is held to it.
pub(crate) const MAX_POOL: usize = 1024;

/// Client options shared by transports.
#[derive(Debug, Clone)]
pub(crate) struct ClientOptions {
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub max_frame_len: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            pool_size: 2,
            connect_timeout: Duration::from_secs(5),
            max_frame_len: 64 * 1024 * 1024,
        }
    }
}

/// The listen queue of a server socket (the kernel's default of 128 drops connects in a burst).
#[cfg_attr(not(any(feature = "tcp", feature = "grpc")), allow(dead_code))]
pub(crate) const DEFAULT_BACKLOG: u32 = 1024;

/// A listening socket on `authority` (`host:port`) with a listen queue of `backlog`.
#[cfg_attr(not(any(feature = "tcp", feature = "grpc", feature = "http")), allow(dead_code))]
pub(crate) async fn listen(authority: &str, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(authority).await? {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As std and tokio bind: a restarted server may take its port back at once.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")))
}

/// The name a transport goes by in contexts, spans and metrics, from its URL scheme:
/// `tls` is `tcp`, a scheme not built in is `custom`.
pub(crate) fn name_of(scheme: &str) -> &'static str {
    match scheme {
        "tcp" | "tls" => "tcp",
        "mem" => "mem",
        "redis" | "rediss" => "redis",
        "nats" => "nats",
        "mqtt" | "mqtts" => "mqtt",
        "amqp" | "amqps" => "amqp",
        "kafka" => "kafka",
        "grpc" => "grpc",
        _ => "custom",
    }
}

/// `url` without its secrets, for logs, errors and `Debug`: the password of its user info (all
/// of a NATS user info, which NATS reads as a token) and the values of query parameters whose
/// names [say a secret](is_secret_name).
///
/// ```
/// use switchboard::transport::redact;
///
/// assert_eq!(redact("amqp://guest:s3cret@mq:5672/orders"), "amqp://guest:***@mq:5672/orders");
/// assert_eq!(redact("redis://h:6379?password=s3cret&x=1"), "redis://h:6379?password=***&x=1");
/// ```
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => (scheme, rest),
        _ => ("", url),
    };
    let (authority, query) = split_query(rest);
    let mut out = String::with_capacity(url.len());
    if !scheme.is_empty() {
        out.push_str(scheme);
        out.push_str("://");
    }
    // Everything before the authority's last `@` is user info, as the transports read it (a
    // password may hold `,`, `/` or `@`; NATS lists hosts after it with commas).
    match authority.rsplit_once('@') {
        Some((user, hosts)) => {
            match user.split_once(':') {
                _ if scheme.is_empty() => {
                    // No scheme to say how it is read (a typo, a path): what follows the last
                    // `/` goes, so that the message still shows what it is about.
                    let kept = user.rfind('/').map_or(0, |slash| slash + 1);
                    out.push_str(&user[..kept]);
                    out.push_str("***");
                }
                Some((name, _)) => {
                    out.push_str(name);
                    out.push_str(":***");
                }
                // NATS reads a lone user info as a token; elsewhere it is a user name.
                None if scheme.eq_ignore_ascii_case("nats") => out.push_str("***"),
                None => out.push_str(user),
            }
            out.push('@');
            out.push_str(hosts);
        }
        None => out.push_str(authority),
    }
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((key, value)) if !value.is_empty() && is_secret_name(&percent_decode(key).unwrap_or_default()) => {
                    out.push_str(key);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    out
}

/// Whether a query parameter or header with this name holds a credential (`password`,
/// `sasl.password`, `access_token`, `client_secret`, `authorization`, `x-api-key`, `cookie`,
/// in any case): its value is kept out of messages.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "token",
        "secret",
        "authorization",
        "api-key",
        "apikey",
        "cookie",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// A URL scheme: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// What follows `scheme://`, split into the authority (with any path: an AMQP vhost, a
/// registry's service) and the query, as [`Endpoint`] and [`redact`] read it. The query starts
/// at the first `?`, unless that `?` is in a password: no `@` before it, one after it, and no
/// host list before it.
///
/// ```
/// use switchboard::transport::split_query;
///
/// assert_eq!(split_query("h:1883?qos=1"), ("h:1883", Some("qos=1")));
/// assert_eq!(split_query("me:s3cr?et@h:1883?qos=1"), ("me:s3cr?et@h:1883", Some("qos=1")));
/// ```
pub fn split_query(rest: &str) -> (&str, Option<&str>) {
    let Some(q) = rest.find('?') else {
        return (rest, None);
    };
    let before = &rest[..q];
    if !before.contains('@')
        && !is_host_list(before)
        && let Some(at) = rest[q..].find('@').map(|i| q + i)
    {
        return match rest[at..].find('?') {
            Some(next) => (&rest[..at + next], Some(&rest[at + next + 1..])),
            None => (rest, None),
        };
    }
    (before, Some(&rest[q + 1..]))
}

/// `host`, `host:port`, `[v6]:port`, comma-separated, then any path.
fn is_host_list(s: &str) -> bool {
    let hosts = s.split('/').next().unwrap_or_default();
    hosts.split(',').all(|host| {
        let port = match host.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((_, rest)) => rest.strip_prefix(':'),
                None => return false,
            },
            None => host.split_once(':').map(|(_, port)| port),
        };
        !host.is_empty() && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A transport URL: `scheme://authority?key=value&…`.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `tcp`, `mem`, …
    pub scheme: String,
    /// `host:port`, or a name for `mem`.
    pub authority: String,
    /// Query parameters, in order.
    pub params: Vec<(String, String)>,
    url: String,
}

impl Endpoint {
    /// Parses a transport URL.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://address, e.g. tcp://127.0.0.1:3001"))?;
        let (authority, query) = split_query(rest);
        let query = query.unwrap_or_default();
        let authority = authority.trim_end_matches('/');
        if authority.is_empty() {
            return Err(bad("missing address"));
        }
        let params = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                Ok((
                    percent_decode(k).ok_or_else(|| bad("bad %-escape"))?,
                    percent_decode(v).ok_or_else(|| bad("bad %-escape"))?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Endpoint {
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_owned(),
            params,
            url: url.to_owned(),
        })
    }

    /// The URL as given, password included: for connecting, never for messages.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The URL without its password, for logs and errors.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    /// A query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A query parameter parsed as `T`, with a clear error when it does not parse.
    pub fn param_as<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>> {
        self.param(key)
            .map(|v| {
                v.parse().map_err(|_| Error::InvalidUrl {
                    url: self.redacted(),
                    reason: match is_secret_name(key) {
                        true => format!("query parameter `{key}` has an invalid value"),
                        false => format!("query parameter `{key}` has an invalid value `{v}`"),
                    },
                })
            })
            .transpose()
    }

    /// Refuses query parameters the transport does not know, naming them.
    pub fn only_params(&self, known: &[&str]) -> Result<()> {
        match self.params.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) => Err(Error::InvalidUrl {
                url: self.redacted(),
                reason: format!(
                    "unknown query parameter `{k}`; this transport takes: {}",
                    known.join(", ")
                ),
            }),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

/// `s` with its `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Binds the server side of the transport named by `url`; `health` is the service's, for
/// transports that answer health checks of their own (gRPC).
#[cfg_attr(not(feature = "grpc"), allow(unused_variables))]
pub(crate) async fn bind(url: &str, health: &health::Health) -> Result<Box<dyn Listener>> {
    let mut ep = Endpoint::parse(url)?;
    // A server serves every codec it speaks (TCP tells them apart per connection): `codec`
    // only checks that a NestJS peer could not be served what it cannot read.
    crate::wire::msgpack::Codec::take(&mut ep)?;
    match ep.scheme.as_str() {
        "mem" => Ok(Box::new(mem::MemListener::bind(&ep)?)),
        #[cfg(feature = "tcp")]
        "tcp" | "tls" => Ok(Box::new(tcp::TcpListener::bind(&ep).await?)),
        #[cfg(feature = "redis")]
        "redis" => Ok(Box::new(redis::RedisListener::bind(&ep).await?)),
        #[cfg(feature = "nats")]
        "nats" => Ok(Box::new(nats::NatsListener::bind(&ep).await?)),
        #[cfg(feature = "mqtt")]
        "mqtt" => Ok(Box::new(mqtt::MqttListener::bind(&ep).await?)),
        #[cfg(feature = "amqp")]
        "amqp" => Ok(Box::new(amqp::AmqpListener::bind(&ep).await?)),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Box::new(kafka::KafkaListener::bind(&ep).await?)),
        #[cfg(feature = "grpc")]
        "grpc" => Ok(Box::new(
            grpc::GrpcListener::bind(&ep).await?.with_health(health.clone()),
        )),
        other => Err(unknown_scheme(&ep, other)),
    }
}

/// Creates the client side of the transport named by `url`.
#[cfg_attr(not(feature = "tcp"), allow(unused_variables))]
/// The client transport for `url`, with default options: what a balancer over several
/// instances calls each of them through. (A [`Client`](crate::Client) is the usual way in.)
pub fn client_for(url: &str) -> Result<Arc<dyn ClientTransport>> {
    client(url, &ClientOptions::default())
}

#[cfg_attr(
    not(any(
        feature = "tcp",
        feature = "redis",
        feature = "nats",
        feature = "mqtt",
        feature = "amqp",
        feature = "kafka",
        feature = "grpc"
    )),
    allow(unused_variables)
)]
pub(crate) fn client(url: &str, opts: &ClientOptions) -> Result<Arc<dyn ClientTransport>> {
    let mut ep = Endpoint::parse(url)?;
    let codec = crate::wire::msgpack::Codec::take(&mut ep)?;
    match ep.scheme.as_str() {
        "mem" => Ok(Arc::new(mem::MemClient::with_codec(&ep, codec)?)),
        #[cfg(feature = "tcp")]
        "tcp" | "tls" => Ok(Arc::new(tcp::TcpClient::new(&ep, opts, codec)?)),
        #[cfg(feature = "redis")]
        "redis" => Ok(Arc::new(redis::RedisClient::new(&ep, opts)?)),
        #[cfg(feature = "nats")]
        "nats" => Ok(Arc::new(nats::NatsClient::new(&ep, opts)?)),
        #[cfg(feature = "mqtt")]
        "mqtt" => Ok(Arc::new(mqtt::MqttClient::new(&ep, opts)?)),
        #[cfg(feature = "amqp")]
        "amqp" => Ok(Arc::new(amqp::AmqpClient::new(&ep, opts)?)),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Arc::new(kafka::KafkaClient::new(&ep, opts)?)),
        #[cfg(feature = "grpc")]
        "grpc" => Ok(Arc::new(grpc::GrpcClient::new(&ep, opts)?)),
        other => Err(unknown_scheme(&ep, other)),
    }
}

fn unknown_scheme(ep: &Endpoint, scheme: &str) -> Error {
    let reason = match scheme {
        "tcp" => "the TCP transport is not compiled in: enable the `tcp` feature".to_owned(),
        "tls" => "TLS is not compiled in: enable the `tls` feature".to_owned(),
        "redis" | "nats" | "mqtt" | "amqp" | "kafka" | "grpc" => {
            format!("the {scheme} transport is not compiled in: enable switchboard's `{scheme}` feature")
        }
        _ => format!(
            "unknown transport `{scheme}`; this build knows: {}",
            known_schemes().join(", ")
        ),
    };
    Error::InvalidUrl {
        url: ep.redacted(),
        reason,
    }
}

fn known_schemes() -> Vec<&'static str> {
    let mut s = vec!["mem"];
    if cfg!(feature = "tcp") {
        s.push("tcp");
    }
    if cfg!(feature = "tls") {
        s.push("tls");
    }
    for (on, scheme) in [
        (cfg!(feature = "redis"), "redis"),
        (cfg!(feature = "nats"), "nats"),
        (cfg!(feature = "mqtt"), "mqtt"),
        (cfg!(feature = "amqp"), "amqp"),
        (cfg!(feature = "kafka"), "kafka"),
        (cfg!(feature = "grpc"), "grpc"),
    ] {
        if on {
            s.push(scheme);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/vhost?x=1"),
            "amqp://guest:***@127.0.0.1:5672/vhost?x=1"
        );
        assert_eq!(redact("nats://a:pw@h1:4222,h2:4222"), "nats://a:***@h1:4222,h2:4222");
        assert_eq!(redact("nats://u:p,ss@w@h:1"), "nats://u:***@h:1");
        assert_eq!(redact("redis://user@h:6379"), "redis://user@h:6379");
        assert_eq!(redact("nats://s3cr3t@h:4222"), "nats://***@h:4222");
        assert_eq!(redact("tcp://127.0.0.1:3001"), "tcp://127.0.0.1:3001");
        // Read as the transports read them: the user info runs to the last `@` before the
        // query, whatever the password holds.
        assert_eq!(redact("nats://u:pa/ss@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact("mqtt://u:p/a?b@h:1883"), "mqtt://u:***@h:1883");
        assert_eq!(redact("amqp://u:p@ss@h/vhost"), "amqp://u:***@h/vhost");
        assert_eq!(redact("NATS://s3cr3t@h:4222"), "NATS://***@h:4222");
        assert_eq!(redact("nats://u:p?a=b@h:1"), "nats://u:***@h:1");
        // No scheme to say how it is read: what follows the last `/` goes.
        assert_eq!(redact("nats:/u:pw@h"), "nats:/***@h");
        assert_eq!(redact("/data/a@b.db"), "/data/***@b.db");
        assert_eq!(redact("u:p@h?x=http://y"), "***@h?x=http://y");
        // Query parameters named like secrets, in any case.
        assert_eq!(
            redact("kafka://h:9092?sasl.password=pw&Token=t&client_secret=s&group=g"),
            "kafka://h:9092?sasl.password=***&Token=***&client_secret=***&group=g"
        );
        assert_eq!(redact("consul://h?token"), "consul://h?token");
        assert_eq!(redact("consul://h?token="), "consul://h?token=", "nothing to hide");
        assert_eq!(redact("redis://h?pass%77ord=pw"), "redis://h?pass%77ord=***");
        assert_eq!(redact("kafka://h:9092?group=me@corp"), "kafka://h:9092?group=me@corp");
        assert_eq!(redact("nats://u:p?w@h:1?x=1"), "nats://u:***@h:1?x=1");
        let ep = Endpoint::parse("redis://u:hunter2@h:1?bogus=1").unwrap();
        assert!(!format!("{ep:?}").contains("hunter2"));
        let err = ep.only_params(&[]).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        // A `?` in a password is read as the password, as `redact` reads it.
        let ep = Endpoint::parse("mqtt://me:s3cr?et@h:1883?qos=1").unwrap();
        assert_eq!(
            (ep.authority.as_str(), ep.param("qos")),
            ("me:s3cr?et@h:1883", Some("1"))
        );
        let err = ep.only_params(&[]).unwrap_err().to_string();
        assert!(
            err.contains("me:***@h:1883") && !err.contains("s3cr") && !err.contains("et@"),
            "{err}"
        );
        // An invalid secret parameter is not quoted.
        let ep = Endpoint::parse("redis://h:1?token=s3cret").unwrap();
        let err = ep.param_as::<u32>("token").unwrap_err().to_string();
        assert!(err.contains("`token`") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn parses_urls() {
        let ep = Endpoint::parse("tcp://127.0.0.1:3001?max_frame_len=10&x=a%20b").unwrap();
        assert_eq!(ep.scheme, "tcp");
        assert_eq!(ep.authority, "127.0.0.1:3001");
        assert_eq!(ep.param_as::<usize>("max_frame_len").unwrap(), Some(10));
        assert_eq!(ep.param("x"), Some("a b"));
        assert!(
            ep.only_params(&["max_frame_len"])
                .unwrap_err()
                .to_string()
                .contains("unknown query parameter `x`")
        );
        assert!(Endpoint::parse("127.0.0.1:3001").is_err());
        assert!(Endpoint::parse("tcp://").is_err());
        assert!(
            Endpoint::parse("tcp://h:1?n=abc")
                .unwrap()
                .param_as::<u32>("n")
                .is_err()
        );
    }
}
