//! NestJS's Redis transport (`redis://host:port`): pub/sub, byte-compatible with
//! `@nestjs/microservices` 11 and 12 (tested) and ioredis (`docs/nestjs-wire.md` §3).
//!
//! - Requests and events are published on the channel named by the normalised route
//!   (`{"cmd":"sum"}` is a literal channel name); replies on `<route>.reply`. The server
//!   subscribes to every route it serves; the client subscribes to a reply channel, waits
//!   for the acknowledgement, and only then publishes the request. Unlike NestJS it stays
//!   subscribed after the call (up to 256 reply channels), saving two round trips per call.
//! - Unlike NestJS, a request that no server receives (PUBLISH reports 0 receivers) fails
//!   at once with [`Error::NoHandler`] instead of waiting for its deadline.
//! - Pub/sub fans out: with several server replicas *every* replica handles every request
//!   and every event (NestJS behaves the same), unless they share a `group` (below). The
//!   client completes on the first final reply and ignores the others.
//! - Delivery is at most once: nothing is stored, so a message published while no server is
//!   subscribed (or while a server reconnects) is lost, and a server that dies mid-request
//!   leaves its caller to fail at the deadline. A server reads its subscription only as fast
//!   as it handles messages (`max_in_flight`), so a backlog waits in Redis, not in the
//!   server's memory; one that outgrows Redis's `client-output-buffer-limit pubsub` (32 MiB
//!   by default) gets the server disconnected by Redis, and it subscribes again (the backlog
//!   is lost, as pub/sub loses messages).
//! - NestJS's `wildcards: true` (PSUBSCRIBE) server mode is not offered: its replies go to
//!   `<subscription pattern>.reply`, which only a client sending to the literal pattern hears.
//! - A message that is not a NestJS packet (not JSON, or JSON without `pattern`/`data`)
//!   reaches the channel's event listeners as its data, as NestJS delivers it.
//!
//! URL: `redis://[user:password@]host:port`, query parameters:
//! - both ends: `connect_timeout_ms` (default 5000 on the server, the client's connect
//!   timeout on the client); `ping_interval_ms` (default 30000, 0 for never): after that
//!   long without a word from Redis on a subscriber connection (the server's subscription,
//!   the client's reply channels), Redis is sent a PING, and without an answer in as long
//!   again the connection is taken for dead and replaced (the client's calls waiting on it
//!   fail). A half-open connection, behind a NAT or a proxy that lost it, would otherwise
//!   keep the server waiting for ever and fail every call of the client at its deadline;
//! - server: `max_in_flight` (messages being handled at once, default 1024, as on every
//!   transport; when full the server stops reading until one finishes); `group` (opt-in load
//!   balancing, not in NestJS: the replicas started with the same `group=name` still all
//!   receive each request, but only the one that claims it first, with `SET … NX` on a key
//!   naming the group, channel, request id and a digest of the packet, handles it; one extra
//!   Redis round trip per request; events still reach every replica).
//! - Every connection to Redis has TCP keepalive on, as the TCP transport's.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError};

use super::{Endpoint, keepalive};
use crate::error::{Error, Result};

mod client;
mod server;
mod subscriber;

pub use client::RedisClient;
pub use server::RedisListener;

/// Default time allowed to open a connection to Redis.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on messages being handled at once by one server.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// How long one Redis command (PUBLISH, SUBSCRIBE) may take before the call fails; generous,
/// because a 1 MiB publish on a loaded machine is not instant.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The Redis client for `ep`, and the address used in errors (`redis://host:port`, without
/// credentials or parameters).
fn open(ep: &Endpoint) -> Result<(::redis::Client, String)> {
    let invalid = |e: RedisError| Error::InvalidUrl {
        url: ep.redacted(),
        reason: e.to_string(),
    };
    let info = format!("redis://{}", ep.authority)
        .into_connection_info()
        .map_err(invalid)?;
    // redis-rs's own connections (the publishers) keep alive as ours do.
    let tcp = info.tcp_settings().clone().set_keepalive(keepalive::probes());
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(keepalive::UNACKED);
    let client = ::redis::Client::open(info.set_tcp_settings(tcp)).map_err(invalid)?;
    let host = ep.authority.rsplit_once('@').map_or(ep.authority.as_str(), |(_, h)| h);
    Ok((client, format!("redis://{host}")))
}

/// Silence on a subscriber connection after which Redis is sent a PING, unless the URL's
/// `ping_interval_ms` says otherwise (0: never).
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

fn ping_interval(ep: &Endpoint) -> Result<Option<Duration>> {
    Ok(match ep.param_as::<u64>("ping_interval_ms")? {
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
        None => Some(DEFAULT_PING_INTERVAL),
    })
}

fn connect_error(addr: &str, e: impl std::fmt::Display) -> Error {
    Error::Connect {
        addr: addr.to_owned(),
        reason: e.to_string(),
    }
}

/// True when the connection an error came from is no longer usable.
fn is_fatal(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}

/// The publishing connection of either end: one multiplexed connection, opened on first use
/// and opened again on the next use after it broke.
struct Publisher {
    client: ::redis::Client,
    addr: String,
    connect_timeout: Duration,
    /// The live connection and its generation (so that a failure only drops the connection
    /// it happened on).
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Serialises connection attempts; holds the number of the last attempt and its error.
    connecting: tokio::sync::Mutex<(u64, Option<String>)>,
    generation: AtomicU64,
}

impl Publisher {
    fn new(client: ::redis::Client, addr: String, connect_timeout: Duration) -> Self {
        Publisher {
            client,
            addr,
            connect_timeout,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new((0, None)),
            generation: AtomicU64::new(0),
        }
    }

    async fn conn(&self) -> Result<(u64, MultiplexedConnection)> {
        if let Some(c) = self.conn.lock().expect("publisher lock").clone() {
            return Ok(c);
        }
        // Boxed: held inline, the connecting future (kilobytes) would make every publish's
        // future as big, and each call allocate and copy that much.
        Box::pin(self.connect()).await
    }

    /// Opens the connection, unless another call opened it meanwhile.
    async fn connect(&self) -> Result<(u64, MultiplexedConnection)> {
        let seen = self.generation.load(Ordering::Acquire);
        let mut attempt = self.connecting.lock().await;
        if let Some(c) = self.conn.lock().expect("publisher lock").clone() {
            return Ok(c);
        }
        // Calls that queued behind a failed attempt share its result instead of each trying
        // (and each waiting for) a broker that is down.
        if let (n, Some(err)) = &*attempt
            && *n > seen
        {
            return Err(connect_error(&self.addr, err));
        }
        let n = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        match self.client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(c) => {
                *attempt = (n, None);
                *self.conn.lock().expect("publisher lock") = Some((n, c.clone()));
                tracing::debug!(addr = %self.addr, "redis publisher connected");
                Ok((n, c))
            }
            Err(e) => {
                *attempt = (n, Some(e.to_string()));
                Err(connect_error(&self.addr, e))
            }
        }
    }

    /// Publishes `body` on `channel`; returns how many subscribers received it.
    async fn publish(&self, channel: &str, body: &[u8]) -> Result<usize> {
        // Sized up front: grown argument by argument, its two buffers are reallocated on
        // every message.
        let mut cmd = ::redis::Cmd::with_capacity(3, "PUBLISH".len() + channel.len() + body.len());
        cmd.arg("PUBLISH").arg(channel).arg(body);
        self.query("PUBLISH", &cmd).await
    }

    /// Sets `key` unless it exists (expiring after `ttl`); true when this call set it.
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool> {
        let cmd = ::redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .to_owned();
        Ok(self.query::<Option<String>>("SET", &cmd).await?.is_some())
    }

    async fn query<T: ::redis::FromRedisValue>(&self, what: &str, cmd: &::redis::Cmd) -> Result<T> {
        let (generation, mut conn) = self.conn().await?;
        // Not `query_async`, which boxes a future for every command.
        let value = conn.send_packed_command(cmd).await;
        let value = value.and_then(|v| Ok(::redis::from_redis_value(v.extract_error()?)?));
        value.map_err(|e| {
            if is_fatal(&e) {
                let mut slot = self.conn.lock().expect("publisher lock");
                if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
                    *slot = None;
                }
                tracing::warn!(addr = %self.addr, error = %e, "redis publisher connection lost");
                Error::ConnectionClosed {
                    addr: self.addr.clone(),
                }
            } else {
                Error::broker(format!("{what} on {} failed", self.addr), e)
            }
        })
    }

    fn disconnect(&self) {
        self.conn.lock().expect("publisher lock").take();
    }
}
