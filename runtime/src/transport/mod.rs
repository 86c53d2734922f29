//! Transports: how bytes reach handlers and replies reach callers.
//!
//! A transport is chosen by URL: `mem://name` (in-process) and `tcp://host:port` (NestJS's
//! TCP protocol; `tls://host:port` for TLS) are built in. Server-side a transport is a
//! [`Listener`] that decodes packets and hands them to a [`Dispatcher`];
//! client-side it is a [`ClientTransport`] that sends [`Outbound`] packets and yields replies.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use tokio::sync::watch;

use crate::dispatch::Dispatcher;
use crate::error::{Error, Result};
use crate::handler::ReplyItem;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(any(feature = "tcp", feature = "amqp"))]
pub(crate) mod backoff;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod mem;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg_attr(not(all(feature = "tcp", feature = "amqp")), allow(dead_code))]
pub(crate) mod pending;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg_attr(
    not(any(
        feature = "tcp",
        feature = "redis",
        feature = "nats",
        feature = "mqtt",
        feature = "amqp",
        feature = "kafka"
    )),
    allow(dead_code)
)]
pub(crate) mod steps;
#[cfg(feature = "tcp")]
pub mod tcp;

/// A request or event on its way out.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The pattern as JSON, as it goes in the packet's `pattern` field.
    pub pattern: Cow<'static, str>,
    /// The normalised route (channel/subject names on brokers; lookups in-process).
    pub route: Cow<'static, str>,
    /// The payload as JSON.
    pub data: Bytes,
    /// Headers (sent as NestJS 12's `metadata` on TCP).
    pub metadata: Option<Arc<HashMap<String, String>>>,
    /// The call's deadline, for transports that send it along (gRPC's `grpc-timeout`);
    /// the caller enforces it either way.
    pub timeout: Option<Duration>,
}

/// The packets of one reply, as a client receives them; ends after the last one.
pub type Replies = BoxStream<'static, Result<ReplyItem>>;

/// The client half of a transport.
pub trait ClientTransport: Send + Sync + 'static {
    /// Connects now instead of on the first call, so that an unreachable peer is reported
    /// at once.
    fn connect(&self) -> BoxFuture<'_, Result<()>>;
    /// Sends a request; the stream yields its reply packets.
    fn request(&self, msg: Outbound) -> BoxFuture<'_, Result<Replies>>;
    /// Sends an event; resolves once the transport has accepted it.
    fn emit(&self, msg: Outbound) -> BoxFuture<'_, Result<()>>;
    /// Closes connections; in-flight calls fail.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// The server half of a transport, bound and ready to serve.
pub trait Listener: Send + 'static {
    /// The URL it listens on, with the real port when port 0 was asked for.
    fn local_url(&self) -> String;
    /// Serves until `shutdown` fires, then stops taking new messages, lets in-flight ones
    /// finish and returns.
    fn serve(self: Box<Self>, dispatcher: Dispatcher, shutdown: Shutdown) -> BoxFuture<'static, Result<()>>;

    /// For transports that take messages only once `serve` has set something up (a broker
    /// subscription): a flag `serve` raises then, so that `Microservice::start` returns only
    /// when a message sent right after it would be handled. `None`: ready as soon as bound.
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

/// Client options shared by transports.
#[derive(Debug, Clone)]
pub(crate) struct ClientOptions {
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub max_frame_len: usize,
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
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://address, e.g. tcp://127.0.0.1:3001"))?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
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

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.url
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
                    url: self.url.clone(),
                    reason: format!("query parameter `{key}` has an invalid value `{v}`"),
                })
            })
            .transpose()
    }

    /// Refuses query parameters the transport does not know, naming them.
    pub fn only_params(&self, known: &[&str]) -> Result<()> {
        match self.params.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) => Err(Error::InvalidUrl {
                url: self.url.clone(),
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
        f.write_str(&self.url)
    }
}

fn percent_decode(s: &str) -> Option<String> {
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

/// Binds the server side of the transport named by `url`.
pub(crate) async fn bind(url: &str) -> Result<Box<dyn Listener>> {
    let ep = Endpoint::parse(url)?;
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
        "grpc" => Ok(Box::new(grpc::GrpcListener::bind(&ep).await?)),
        other => Err(unknown_scheme(&ep, other)),
    }
}

/// Creates the client side of the transport named by `url`.
#[cfg_attr(not(feature = "tcp"), allow(unused_variables))]
pub(crate) fn client(url: &str, opts: &ClientOptions) -> Result<Arc<dyn ClientTransport>> {
    let ep = Endpoint::parse(url)?;
    match ep.scheme.as_str() {
        "mem" => Ok(Arc::new(mem::MemClient::new(&ep)?)),
        #[cfg(feature = "tcp")]
        "tcp" | "tls" => Ok(Arc::new(tcp::TcpClient::new(&ep, opts)?)),
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
        url: ep.as_str().to_owned(),
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
