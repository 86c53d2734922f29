//! The gRPC transport (`grpc://host:port`, feature `grpc`), on tonic.
//!
//! One server serves two things:
//! - **every handler, no .proto needed**, through the generic service `switchboard.Switchboard`
//!   (`switchboard.proto` next to this file): `Send` carries a pattern and a JSON payload and
//!   streams the reply's values back (server streaming); `Emit` carries an event. A
//!   [`Client`](crate::Client) on `grpc://` speaks it, so every typed and raw call works as
//!   on TCP.
//! - **proto-first services**, as NestJS's `@GrpcMethod` does: `switchboard-codegen`'s
//!   `.proto` path generates prost types, a tonic client, and glue that serves each method
//!   `Service/Method` by the handler whose pattern is `{service: "Service", rpc: "Method"}`.
//!   Unary, server-, client- and bidirectional-streaming methods all work; see [`proto`].
//!
//! Errors follow NestJS's mapping (docs/nestjs-wire.md §8): an error with a numeric `code` becomes
//! that status; anything else UNKNOWN, with `Internal server error` for unexpected failures.
//! A call's deadline travels as `grpc-timeout`, and the server ends the reply with
//! DEADLINE_EXCEEDED when it passes; a call the client drops (deadline, cancellation) resets
//! its HTTP/2 stream, which drops the handler's future on the server.
//!
//! URL query parameters: `max_message_len` (bytes, both ends, default 64 MiB);
//! client: `connect_timeout_ms` (default 5000).

use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};

use super::{ClientOptions, Dispatcher, Endpoint, Listener, Shutdown};
use crate::error::{Error, Result};

mod client;
pub mod proto;
mod server;
pub mod wire;

pub use client::GrpcClient;
pub use proto::{GrpcStream, ProtoServer, ProtoService};
/// The gRPC and protobuf crates this transport is built on, for generated code and tests.
pub use {prost, tonic, tonic_prost};

/// Default cap on one message, both ways.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    pub max_message_len: usize,
}

/// The server side of the gRPC transport, bound to its address.
pub struct GrpcListener {
    listener: tokio::net::TcpListener,
    opts: ServerOptions,
}

impl std::fmt::Debug for GrpcListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.local_url())
    }
}

impl GrpcListener {
    /// Binds `grpc://host:port` (port 0 picks a free one).
    pub async fn bind(ep: &Endpoint) -> Result<Self> {
        ep.only_params(&["max_message_len"])?;
        let opts = ServerOptions {
            max_message_len: ep.param_as("max_message_len")?.unwrap_or(DEFAULT_MAX_MESSAGE_LEN),
        };
        let listener = tokio::net::TcpListener::bind(&ep.authority)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {}", ep.as_str()), e))?;
        Ok(GrpcListener { listener, opts })
    }
}

impl Listener for GrpcListener {
    fn local_url(&self) -> String {
        match self.listener.local_addr() {
            Ok(addr) => format!("grpc://{addr}"),
            Err(_) => "grpc://?".to_owned(),
        }
    }

    fn serve(self: Box<Self>, dispatcher: Dispatcher, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        server::serve(*self, dispatcher, shutdown).boxed()
    }
}

/// An HTTP/2 channel to `grpc://host:port` (or `http://host:port`), for tonic clients
/// generated from a `.proto`: `HeroesServiceClient::new(grpc::channel(url).await?)`.
pub async fn channel(url: &str) -> Result<tonic::transport::Channel> {
    let ep = Endpoint::parse(url)?;
    if ep.scheme != "grpc" && ep.scheme != "http" {
        return Err(Error::InvalidUrl {
            url: url.to_owned(),
            reason: "expected grpc://host:port".into(),
        });
    }
    let opts = client_options(
        &ep,
        &ClientOptions {
            pool_size: 1,
            connect_timeout: Duration::from_secs(5),
            max_frame_len: DEFAULT_MAX_MESSAGE_LEN,
        },
    )?;
    tonic::transport::Endpoint::from_shared(format!("http://{}", ep.authority))
        .map_err(|e| Error::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| Error::Connect {
            addr: url.to_owned(),
            reason: client::error_chain(&e),
        })
}

/// Client settings read from the URL.
#[derive(Debug, Clone)]
pub(crate) struct GrpcClientOptions {
    pub connect_timeout: Duration,
    pub max_message_len: usize,
}

pub(crate) fn client_options(ep: &Endpoint, defaults: &ClientOptions) -> Result<GrpcClientOptions> {
    ep.only_params(&["max_message_len", "connect_timeout_ms"])?;
    Ok(GrpcClientOptions {
        connect_timeout: ep
            .param_as("connect_timeout_ms")?
            .map(Duration::from_millis)
            .unwrap_or(defaults.connect_timeout),
        max_message_len: ep.param_as("max_message_len")?.unwrap_or(DEFAULT_MAX_MESSAGE_LEN),
    })
}
