//! NestJS's TCP transport (`tcp://host:port`, and `tls://host:port` with the `tls` feature).
//!
//! Byte-compatible with `@nestjs/microservices` 11 and 12 (the versions tested): `<len>#<json>` frames with the
//! length in UTF-16 units, NestJS's packets and reply shapes (`docs/nestjs-wire.md` §1).
//!
//! URL query parameters:
//! - both ends: `max_frame_len` (UTF-16 units, and as many bytes; default 64 Mi);
//! - server: `max_in_flight` (per connection, default 256), `incomplete_timeout_ms` (a frame
//!   must arrive whole within it from its first byte, default 30000), `idle_timeout_ms` (a
//!   connection with nothing received and nothing in flight is closed, within an eighth more,
//!   and so is one whose peer takes none of its replies for as long; default 300000; 0: never),
//!   `max_connections` (more are closed at once, with a warning; default 10000),
//!   `backlog` (the listen queue, default 1024), `max_buffered_bytes` (what all connections
//!   may buffer of partial frames together beyond 64 KiB each; a connection that needs more
//!   is closed, default 256 Mi);
//! - client: `pool` (connections, default 2), `connect_timeout_ms` (default 5000), `codec`
//!   (`json`, NestJS's, the default; `msgpack`, Switchboard's own, for Switchboard servers
//!   only: see `wire::msgpack`; a server serves both on one port);
//! - `tls://` server: `cert`, `key` (PEM files); client: `ca` (PEM file), `server_name`.
//!
//! Both ends turn TCP keepalive on (first probe after 30 s idle, then every 10 s, three
//! unanswered ones fail the connection), and the client, on Linux, also fails a connection
//! whose sent data goes unacknowledged, or untaken by a server that stopped reading (a full
//! receive window), for 60 s (`TCP_USER_TIMEOUT`): a peer that vanished without closing (its
//! host lost power, a NAT forgot the connection) is found in about a minute, and the client's
//! calls then go to a new connection instead of each timing out on the dead one.

use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tokio::net::TcpStream;

use super::{ClientOptions, Endpoint, Listener, Shutdown};
use crate::error::{Error, Result};
use crate::service::Router;

mod budget;
mod client;
pub mod frame;
mod gate;
mod server;
#[cfg(feature = "tls")]
pub(crate) mod tls;

pub use client::TcpClient;

/// Default cap on a frame, in UTF-16 units.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024 * 1024;
/// Default cap on requests being handled at once on one server connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Default time a frame may take to arrive whole, from its first byte (NestJS 11.2.5+'s
/// incomplete-frame timeout, which NestJS restarts on every byte).
pub const DEFAULT_INCOMPLETE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time an idle connection (nothing received, nothing in flight) is kept.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default cap on a server's open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default bytes of partial frames a server's connections may buffer together (beyond 64 KiB
/// each).
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;
/// Default listen queue of a server (the kernel's default of 128 drops connects in a burst).
pub const DEFAULT_BACKLOG: u32 = super::DEFAULT_BACKLOG;

#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    pub max_frame_len: usize,
    pub max_in_flight: usize,
    pub incomplete_timeout: Duration,
    /// `None`: never.
    pub idle_timeout: Option<Duration>,
    pub max_connections: usize,
    pub max_buffered_bytes: usize,
}

/// The server side of the TCP transport, bound to its address.
pub struct TcpListener {
    listener: tokio::net::TcpListener,
    scheme: &'static str,
    opts: ServerOptions,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.local_url())
    }
}

impl TcpListener {
    /// Binds `tcp://host:port` (port 0 picks a free one).
    pub async fn bind(ep: &Endpoint) -> Result<Self> {
        let tls_params: &[&str] = if ep.scheme == "tls" { &["cert", "key"] } else { &[] };
        let mut known = vec![
            "max_frame_len",
            "max_in_flight",
            "incomplete_timeout_ms",
            "idle_timeout_ms",
            "max_connections",
            "backlog",
            "max_buffered_bytes",
        ];
        known.extend_from_slice(tls_params);
        ep.only_params(&known)?;
        let opts = ServerOptions {
            max_frame_len: ep.param_as("max_frame_len")?.unwrap_or(DEFAULT_MAX_FRAME_LEN),
            max_in_flight: ep
                .param_as::<usize>("max_in_flight")?
                .unwrap_or(DEFAULT_MAX_IN_FLIGHT)
                .max(1),
            incomplete_timeout: ep
                .param_as("incomplete_timeout_ms")?
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_INCOMPLETE_TIMEOUT),
            idle_timeout: match ep.param_as::<u64>("idle_timeout_ms")? {
                Some(0) => None,
                Some(ms) => Some(Duration::from_millis(ms)),
                None => Some(DEFAULT_IDLE_TIMEOUT),
            },
            max_connections: ep
                .param_as::<usize>("max_connections")?
                .unwrap_or(DEFAULT_MAX_CONNECTIONS)
                .max(1),
            max_buffered_bytes: ep.param_as("max_buffered_bytes")?.unwrap_or(DEFAULT_MAX_BUFFERED_BYTES),
        };
        let backlog = ep.param_as::<u32>("backlog")?.unwrap_or(DEFAULT_BACKLOG).max(1);
        #[cfg(feature = "tls")]
        let tls = if ep.scheme == "tls" {
            Some(tls::acceptor(ep)?)
        } else {
            None
        };
        let listener = super::listen(&ep.authority, backlog)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {}", ep.redacted()), e))?;
        Ok(TcpListener {
            listener,
            scheme: if ep.scheme == "tls" { "tls" } else { "tcp" },
            opts,
            #[cfg(feature = "tls")]
            tls,
        })
    }
}

impl Listener for TcpListener {
    fn local_url(&self) -> String {
        match self.listener.local_addr() {
            Ok(addr) => format!("{}://{addr}", self.scheme),
            Err(_) => format!("{}://?", self.scheme),
        }
    }

    fn serve(self: Box<Self>, router: Router, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        server::serve(*self, router, shutdown).boxed()
    }
}

/// Connects a TCP socket the way both ends want it: no Nagle delay.
async fn connect_socket(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")))??;
    stream.set_nodelay(true)?;
    crate::transport::keepalive::client(&stream)?;
    Ok(stream)
}

pub(crate) fn client_options(ep: &Endpoint, defaults: &ClientOptions) -> Result<ClientOptions> {
    let mut known = vec!["max_frame_len", "pool", "connect_timeout_ms"];
    if ep.scheme == "tls" {
        known.extend_from_slice(&["ca", "server_name"]);
    }
    ep.only_params(&known)?;
    let pool_size = ep.param_as::<usize>("pool")?.unwrap_or(defaults.pool_size).max(1);
    if pool_size > super::MAX_POOL {
        return Err(Error::InvalidUrl {
            url: ep.redacted(),
            reason: format!("query parameter `pool` is at most {}", super::MAX_POOL),
        });
    }
    Ok(ClientOptions {
        pool_size,
        connect_timeout: ep
            .param_as("connect_timeout_ms")?
            .map(Duration::from_millis)
            .unwrap_or(defaults.connect_timeout),
        max_frame_len: ep.param_as("max_frame_len")?.unwrap_or(defaults.max_frame_len),
    })
}
