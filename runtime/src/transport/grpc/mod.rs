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
//! A call's deadline travels as `grpc-timeout` (handlers see it as their
//! [`Deadline`](crate::Deadline)), and the server ends the reply with DEADLINE_EXCEEDED when
//! it passes; a call the client drops (deadline, cancellation) resets its HTTP/2 stream,
//! which drops the handler's future on the server. gRPC metadata (minus gRPC's own) reaches
//! handlers as headers.
//!
//! The server also serves gRPC health checking (`grpc.health.v1.Health`, tonic-health's
//! service; [`tonic_health`]'s client calls it): `Check` and `Watch` answer `SERVING` while
//! the service is ready (every transport takes messages, see
//! [`Health`]) and `NOT_SERVING` otherwise, for the service `""`, for
//! the generic service `switchboard.Switchboard`, and for the service's
//! [name](crate::Microservice::name) when it has one. Once shutdown begins they answer
//! `NOT_SERVING` and end open `Watch` streams, so that the drain does not wait for them.
//!
//! URL query parameters:
//! - `max_message_len`: the cap on one message, in bytes, both ends (default 64 MiB);
//! - server: `max_in_flight` (default 1024): events run at once, and requests handled at once
//!   on one connection (HTTP/2 streams past it wait); an `Emit` beyond it waits until one
//!   finishes, so a caller that emits faster than the listeners run is slowed down instead of
//!   piling up tasks.
//! - client: `connect_timeout_ms` (default 5000).
//!
//! Inside: `server` is the generic service and [`proto`] the proto-first one; both serve
//! their calls through `call` (the shared state, a call's context, a reply as statuses) and
//! neither imports the other. `client` is the client side, [`wire`] the generic service's
//! messages and the status mapping.

use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::{Semaphore, mpsc};

use super::health::Health;
use super::{Endpoint, Listener, Shutdown};
use crate::error::{Error, Result};
use crate::service::Router;

mod call;
mod client;
mod health;
pub mod proto;
mod server;
pub mod wire;

pub use client::{GrpcClient, channel};
pub use proto::{GrpcStream, ProtoServer, ProtoService};
/// The gRPC and protobuf crates this transport is built on, for generated code and tests
/// (`tonic_health`'s client checks a server's health).
pub use {prost, tonic, tonic_health, tonic_prost};

/// Default cap on one message, both ways.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// The URL parameter bounding the work a server runs at once, named as on every transport.
const MAX_IN_FLIGHT: &str = "max_in_flight";
/// Events a server runs at once unless `max_in_flight` says otherwise.
const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// The server side of the gRPC transport, bound to its address.
pub struct GrpcListener {
    listener: tokio::net::TcpListener,
    opts: call::ServerOptions,
    /// The service's health, for gRPC health checks; without it, serving until shutdown.
    health: Option<Health>,
}

impl std::fmt::Debug for GrpcListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.local_url())
    }
}

impl GrpcListener {
    /// Binds `grpc://host:port` (port 0 picks a free one).
    pub async fn bind(ep: &Endpoint) -> Result<Self> {
        ep.only_params(&["max_message_len", MAX_IN_FLIGHT])?;
        let opts = call::ServerOptions {
            max_message_len: ep.param_as("max_message_len")?.unwrap_or(DEFAULT_MAX_MESSAGE_LEN),
            max_in_flight: ep
                .param_as::<usize>(MAX_IN_FLIGHT)?
                .unwrap_or(DEFAULT_MAX_IN_FLIGHT)
                .clamp(1, Semaphore::MAX_PERMITS),
        };
        let listener = super::listen(&ep.authority, super::DEFAULT_BACKLOG)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {}", ep.redacted()), e))?;
        Ok(GrpcListener {
            listener,
            opts,
            health: None,
        })
    }

    /// Answers gRPC health checks with `health` (the whole service's) instead of this
    /// transport's own state.
    pub(crate) fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }
}

impl Listener for GrpcListener {
    fn local_url(&self) -> String {
        match self.listener.local_addr() {
            Ok(addr) => format!("grpc://{addr}"),
            Err(_) => "grpc://?".to_owned(),
        }
    }

    fn serve(self: Box<Self>, router: Router, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        serve(*self, router, shutdown).boxed()
    }
}

/// Serves the generic service and every proto-first one linked in, on one tonic server,
/// until shutdown; then lets in-flight calls and running events finish.
async fn serve(l: GrpcListener, router: Router, mut shutdown: Shutdown) -> Result<()> {
    let url = l.local_url();
    let (events, mut events_done) = mpsc::channel(1);
    let shared = call::Shared::new(router, l.opts.clone(), events);
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(server::Generic(shared.clone()));
    proto::add_services(&mut routes, &shared);
    let health = l.health.unwrap_or_else(|| Health::new(None, &shutdown));
    let reporting = health::Reporter::start(&mut routes, health).await.run();
    let incoming = tonic::transport::server::TcpIncoming::from(l.listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(crate::transport::keepalive::IDLE))
        .with_keepalive_interval(Some(crate::transport::keepalive::INTERVAL))
        .with_keepalive_retries(Some(crate::transport::keepalive::PROBES));
    let server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(l.opts.max_in_flight)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await });
    let (result, ()) = futures_util::future::join(server, reporting).await;
    // In-flight calls have finished; let running events finish too (each holds a sender).
    drop(shared);
    let _ = events_done.recv().await;
    result.map_err(|e| Error::broker(format!("the gRPC server on {url} failed"), e))
}
