//! The Redis client: one publisher connection and one subscriber connection for replies,
//! both opened on first use and opened again after the broker went away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(test)]
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::subscriber::{Event, Subscriber, command};
use super::{COMMAND_TIMEOUT, Publisher, connect_error, open};
use crate::error::{Error, Result};
#[cfg(test)]
use crate::service::Kind;
use crate::service::{Outbound, Replies};
use crate::transport::{ClientOptions, ClientTransport, Endpoint};
use crate::wire::nestjs::packet::encode_request;
use crate::wire::nestjs::pending::Pending;
#[cfg(test)]
use tokio::time::Instant;

/// Reply channels a client keeps subscribed before it drops those no call waits on. NestJS
/// unsubscribes as soon as a channel's last call ends; keeping them saves two round trips
/// per call, and a client calls a bounded set of routes.
const IDLE_REPLY_CHANNELS: usize = 256;

/// The client side of the Redis transport.
pub struct RedisClient {
    shared: Arc<Shared>,
    connect_timeout: Duration,
    /// Silence on the subscriber connection after which Redis is sent a PING (`None`: never).
    ping_every: Option<Duration>,
    /// The subscriber connection; held while connecting and (un)subscribing.
    sub: tokio::sync::Mutex<Option<SubConn>>,
    /// Subscriber connection attempts so far, and the number and error of the last one that
    /// failed: calls queued behind a failed attempt share its error instead of each waiting
    /// for their own.
    sub_attempts: AtomicU64,
    sub_failed: Mutex<(u64, String)>,
}

/// What the subscriber's reader task shares with the client.
struct Shared {
    client: ::redis::Client,
    addr: String,
    pending: Arc<Pending>,
    publisher: Publisher,
    /// Routes whose reply channels are subscribed on the current subscriber connection, with
    /// the number of calls waiting on each.
    channels: Mutex<Channels>,
}

#[derive(Default)]
struct Channels {
    /// The subscriber connection these counts belong to; 0 when there is none.
    generation: u64,
    /// By route: a call finds its entry without making the channel's name.
    /// (The route again in the value, to hand to a lease without allocating.)
    refs: HashMap<Arc<str>, (Arc<str>, usize)>,
}

struct SubConn {
    generation: u64,
    /// Where SUBSCRIBE and UNSUBSCRIBE are written, and the reader task's PINGs.
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    /// One per channel (un)subscribed, from the reader task, in the order Redis answers;
    /// never more than the commands written under the subscriber lock ask for.
    confirmed: mpsc::UnboundedReceiver<()>,
    reader: AbortHandle,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient").field("addr", &self.shared.addr).finish()
    }
}

impl RedisClient {
    /// A client for the broker named by `redis://host:port`; connects on first use (or on
    /// [`ClientTransport::connect`]).
    pub(crate) fn new(ep: &Endpoint, opts: &ClientOptions) -> Result<Self> {
        ep.only_params(&["connect_timeout_ms", "ping_interval_ms"])?;
        let connect_timeout = ep
            .param_as("connect_timeout_ms")?
            .map(Duration::from_millis)
            .unwrap_or(opts.connect_timeout);
        let (client, addr) = open(ep)?;
        Ok(RedisClient {
            shared: Arc::new(Shared {
                publisher: Publisher::new(client.clone(), addr.clone(), connect_timeout),
                client,
                pending: Pending::new(addr.clone()),
                addr,
                channels: Mutex::default(),
            }),
            connect_timeout,
            ping_every: super::ping_interval(ep)?,
            sub: tokio::sync::Mutex::new(None),
            sub_attempts: AtomicU64::new(0),
            sub_failed: Mutex::new((0, String::new())),
        })
    }

    /// The live subscriber connection, opened if there is none (or the last one broke).
    /// `seen` is the number of connection attempts made before the caller queued for `slot`.
    async fn subscriber<'a>(&self, slot: &'a mut Option<SubConn>, seen: u64) -> Result<&'a mut SubConn> {
        let live = self.shared.channels.lock().expect("channels lock").generation;
        if slot.as_ref().is_some_and(|c| c.generation != live) {
            // The reader saw the connection end.
            *slot = None;
        }
        if slot.is_none() {
            {
                let failed = self.sub_failed.lock().expect("subscriber lock");
                if failed.0 > seen {
                    return Err(connect_error(&self.shared.addr, &failed.1));
                }
            }
            let attempt = self.sub_attempts.fetch_add(1, Ordering::AcqRel) + 1;
            let info = self.shared.client.get_connection_info();
            let sub = match Subscriber::connect(info, &self.shared.addr, self.connect_timeout).await {
                Ok(sub) => sub,
                Err(e) => {
                    let reason = match &e {
                        Error::Connect { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    *self.sub_failed.lock().expect("subscriber lock") = (attempt, reason);
                    return Err(e);
                }
            };
            let Subscriber { mut reader, writer } = sub;
            let (confirm, confirmed) = mpsc::unbounded_channel();
            let generation = {
                let mut ch = self.shared.channels.lock().expect("channels lock");
                let generation = next_generation();
                *ch = Channels {
                    generation,
                    refs: HashMap::new(),
                };
                generation
            };
            let (shared, pings, every) = (self.shared.clone(), writer.clone(), self.ping_every);
            let reader = tokio::spawn(async move {
                while let Some(event) = reader.next_alive(every, &pings).await {
                    match event {
                        Event::Message(msg) if msg.channel.ends_with(b".reply") => shared.pending.deliver(&msg.payload),
                        Event::Message(_) | Event::Pong => {}
                        Event::Confirmed => {
                            let _ = confirm.send(());
                        }
                    }
                }
                shared.lost(generation);
            })
            .abort_handle();
            tracing::debug!(addr = %self.shared.addr, "redis subscriber connected");
            *slot = Some(SubConn {
                generation,
                writer,
                confirmed,
                reader,
            });
        }
        Ok(slot.as_mut().expect("just set"))
    }

    /// Makes sure the reply channel of `route` is subscribed (acknowledged by Redis) and
    /// counts one more call waiting on it until the returned lease is dropped.
    async fn lease(&self, route: &str) -> Result<Lease> {
        if let Some(lease) = self.shared.take_existing(route) {
            return Ok(lease);
        }
        // Boxed, so that the subscribing future does not weigh on every call's future.
        Box::pin(self.subscribe(route)).await
    }

    /// Subscribes to the reply channel of `route` (on a fresh subscriber connection if need
    /// be) and leases it.
    async fn subscribe(&self, route: &str) -> Result<Lease> {
        let seen = self.sub_attempts.load(Ordering::Acquire);
        let mut slot = self.sub.lock().await;
        let conn = self.subscriber(&mut slot, seen).await?;
        let generation = conn.generation;
        if let Some(lease) = self.shared.take_existing(route) {
            return Ok(lease);
        }
        let idle: Vec<String> = {
            let mut ch = self.shared.channels.lock().expect("channels lock");
            if ch.refs.len() >= IDLE_REPLY_CHANNELS {
                let idle: Vec<Arc<str>> = ch
                    .refs
                    .iter()
                    .filter(|(_, (_, n))| *n == 0)
                    .map(|(r, _)| r.clone())
                    .collect();
                for r in &idle {
                    ch.refs.remove(r);
                }
                idle.iter().map(|r| reply_channel(r)).collect()
            } else {
                Vec::new()
            }
        };
        let result = async {
            let mut writer = conn.writer.lock().await;
            if !idle.is_empty() {
                let args: Vec<&str> = std::iter::once("UNSUBSCRIBE")
                    .chain(idle.iter().map(String::as_str))
                    .collect();
                command(&mut writer, &args).await?;
            }
            command(&mut writer, &["SUBSCRIBE", &reply_channel(route)]).await?;
            drop(writer);
            // Redis confirms each channel, in order.
            for _ in 0..idle.len() + 1 {
                if conn.confirmed.recv().await.is_none() {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, result).await {
            Ok(Ok(())) => {}
            failed => {
                let reason = match failed {
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => "the connection closed".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("SUBSCRIBE not acknowledged within {COMMAND_TIMEOUT:?}"),
                };
                // Start over with a fresh connection on the next call.
                conn.reader.abort();
                *slot = None;
                self.shared.lost(generation);
                return Err(connect_error(&self.shared.addr, reason));
            }
        }
        let mut ch = self.shared.channels.lock().expect("channels lock");
        if ch.generation != generation {
            return Err(Error::ConnectionClosed {
                addr: self.shared.addr.clone(),
            });
        }
        let route: Arc<str> = route.into();
        ch.refs.entry(route.clone()).or_insert_with(|| (route.clone(), 0)).1 += 1;
        Ok(Lease {
            shared: self.shared.clone(),
            generation,
            route,
        })
    }

    /// Sends a request; taking the client by `Arc`, the future is the whole call (a wrapper
    /// around it would hold `msg` a second time).
    async fn request(self: Arc<Self>, msg: Outbound) -> Result<Replies> {
        let (id, rx) = self.shared.pending.register(msg.route.clone())?;
        let lease = self.lease(&msg.route).await?;
        let mut body = Vec::with_capacity(request_capacity(&msg));
        encode_request(&mut body, &msg.pattern, &msg.payload, msg.headers.iter(), Some(&id));
        let receivers = self.shared.publisher.publish(&msg.route, &body).await?;
        if receivers == 0 {
            // NestJS would wait for its deadline; nobody is subscribed, so no reply can come.
            return Err(Error::NoHandler {
                pattern: msg.route.into_owned(),
                addr: self.shared.addr.clone(),
            });
        }
        // The lease lives as long as the reply stream.
        Replies::first_of(rx.inspect(move |_| {
            let _held = &lease;
        }))
        .await
    }
}

static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Shared {
    /// A lease on the reply channel of `route`, if it is subscribed already.
    fn take_existing(self: &Arc<Self>, route: &str) -> Option<Lease> {
        let mut ch = self.channels.lock().expect("channels lock");
        let generation = ch.generation;
        let (route, n) = ch.refs.get_mut(route)?;
        *n += 1;
        Some(Lease {
            shared: self.clone(),
            generation,
            route: route.clone(),
        })
    }

    /// The subscriber connection `generation` is gone: forget its subscriptions and fail the
    /// calls in flight, whose replies can no longer arrive.
    fn lost(&self, generation: u64) {
        {
            let mut ch = self.channels.lock().expect("channels lock");
            if ch.generation != generation {
                return;
            }
            *ch = Channels::default();
        }
        // Same broker: the publisher's connection is gone too, though it only finds out
        // when it next writes. Drop it now, so that the next call does not fail on it.
        self.publisher.disconnect();
        tracing::warn!(addr = %self.addr, "lost the redis subscriber connection; calls in flight fail");
        self.pending.fail_all(|| Error::ConnectionClosed {
            addr: self.addr.clone(),
        });
    }
}

/// The channel replies to requests on `route` come back on.
fn reply_channel(route: &str) -> String {
    format!("{route}.reply")
}

/// Room for a request packet: a larger one grows its buffer once.
fn request_capacity(msg: &Outbound) -> usize {
    let metadata: usize = msg.headers.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    msg.pattern.len() + msg.payload.len() + metadata + 64
}

/// One call waiting on a reply channel.
struct Lease {
    shared: Arc<Shared>,
    generation: u64,
    route: Arc<str>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut ch) = self.shared.channels.lock()
            && ch.generation == self.generation
            && let Some((_, n)) = ch.refs.get_mut(&*self.route)
        {
            *n = n.saturating_sub(1);
        }
    }
}

impl ClientTransport for RedisClient {
    fn connect(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            self.shared.publisher.conn().await?;
            let seen = self.sub_attempts.load(Ordering::Acquire);
            let mut slot = self.sub.lock().await;
            self.subscriber(&mut slot, seen).await?;
            Ok(())
        }
        .boxed()
    }

    fn request(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<Replies>> {
        Box::pin(RedisClient::request(self, msg))
    }

    fn emit(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<()>> {
        async move {
            let mut body = Vec::with_capacity(request_capacity(&msg));
            encode_request(&mut body, &msg.pattern, &msg.payload, msg.headers.iter(), None);
            // Like NestJS, an event nobody receives is not an error.
            self.shared.publisher.publish(&msg.route, &body).await.map(drop)
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            self.shared.pending.close(|| Error::Closed);
            if let Some(conn) = self.sub.lock().await.take() {
                conn.reader.abort();
            }
            self.shared.publisher.disconnect();
        }
        .boxed()
    }
}

impl Drop for RedisClient {
    fn drop(&mut self) {
        // The reader task holds the subscriber connection open; it must not outlive us.
        if let Some(conn) = self.sub.get_mut().take() {
            conn.reader.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every call allocates its request's future: the connecting and subscribing paths,
    /// which run once, are kept out of it (boxed where they are awaited), and so is the
    /// `redis` crate's own boxing of each command (`query_async`): the call's future holds
    /// the command's, and little more.
    #[test]
    fn a_call_s_future_holds_no_connecting() {
        let ep = Endpoint::parse("redis://127.0.0.1:6379").unwrap();
        let client = Arc::new(RedisClient::new(&ep, &ClientOptions::default()).unwrap());
        let connecting = size_of_val(&client.shared.publisher.connect());
        let subscribing = size_of_val(&client.subscribe("route"));
        let publish = size_of_val(&client.shared.publisher.publish("route", b"{}"));
        assert!(
            publish < connecting,
            "publish: {publish} bytes, connecting {connecting}"
        );
        let out = Outbound::new(Kind::Request, r#""route""#, "route", Bytes::new(), Instant::now());
        let request = size_of_val(&RedisClient::request(client.clone(), out));
        assert!(
            request < publish + subscribing.min(1024),
            "request: {request} bytes, its publish {publish}, subscribing {subscribing}"
        );
    }
}
