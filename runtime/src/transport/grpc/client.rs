//! The gRPC client: one HTTP/2 channel (tonic reconnects it), many calls multiplexed on it,
//! each on its own stream, so no correlation table is needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use http::uri::PathAndQuery;
use tokio::sync::OnceCell;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use super::DEFAULT_MAX_MESSAGE_LEN;
use super::wire::{self, Accepted, Packet, Value};
use crate::error::{Error, NO_MESSAGE_HANDLER, Result};
use crate::service::{Outbound, Replies, ReplyItem};
use crate::transport::{ClientOptions, ClientTransport, Endpoint};

/// A timeout this long is no deadline: nothing is sent for it (see `deadline_after`).
const NO_DEADLINE: Duration = Duration::from_secs(99_999_999);

/// Client settings read from the URL.
#[derive(Debug, Clone)]
struct GrpcClientOptions {
    connect_timeout: Duration,
    max_message_len: usize,
}

fn client_options(ep: &Endpoint, defaults: &ClientOptions) -> Result<GrpcClientOptions> {
    ep.only_params(&["max_message_len", "connect_timeout_ms"])?;
    Ok(GrpcClientOptions {
        connect_timeout: ep
            .param_as("connect_timeout_ms")?
            .map(Duration::from_millis)
            .unwrap_or(defaults.connect_timeout),
        max_message_len: ep.param_as("max_message_len")?.unwrap_or(DEFAULT_MAX_MESSAGE_LEN),
    })
}

/// tonic's endpoint for `grpc://host:port`.
fn endpoint(ep: &Endpoint, opts: &GrpcClientOptions) -> Result<tonic::transport::Endpoint> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{}", ep.authority))
            .map_err(|e| Error::InvalidUrl {
                url: ep.redacted(),
                reason: e.to_string(),
            })?
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(crate::transport::keepalive::IDLE))
            .tcp_keepalive_interval(Some(crate::transport::keepalive::INTERVAL))
            .tcp_keepalive_retries(Some(crate::transport::keepalive::PROBES)),
    )
}

/// An HTTP/2 channel to `grpc://host:port` (or `http://host:port`), for tonic clients
/// generated from a `.proto`: `HeroesServiceClient::new(grpc::channel(url).await?)`.
pub async fn channel(url: &str) -> Result<Channel> {
    let ep = Endpoint::parse(url)?;
    if ep.scheme != "grpc" && ep.scheme != "http" {
        return Err(Error::InvalidUrl {
            url: ep.redacted(),
            reason: "expected grpc://host:port".into(),
        });
    }
    let opts = client_options(&ep, &ClientOptions::default())?;
    endpoint(&ep, &opts)?.connect().await.map_err(|e| Error::Connect {
        addr: ep.redacted(),
        reason: error_chain(&e),
    })
}

/// The client side of the gRPC transport.
pub struct GrpcClient {
    url: String,
    endpoint: tonic::transport::Endpoint,
    opts: GrpcClientOptions,
    channel: OnceCell<Channel>,
    closed: AtomicBool,
}

impl std::fmt::Debug for GrpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcClient").field("url", &self.url).finish()
    }
}

impl GrpcClient {
    /// A client for `grpc://host:port`; connects on the first call.
    pub(crate) fn new(ep: &Endpoint, defaults: &ClientOptions) -> Result<Self> {
        let opts = client_options(ep, defaults)?;
        Ok(GrpcClient {
            url: ep.redacted(),
            endpoint: endpoint(ep, &opts)?,
            opts,
            channel: OnceCell::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// The HTTP/2 channel, connected on first use; tonic clients generated from a `.proto`
    /// can share it (`HeroesServiceClient::new(client.channel().await?)`).
    pub async fn channel(&self) -> Result<Channel> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.channel
            .get_or_try_init(|| async {
                self.endpoint.connect().await.map_err(|e| Error::Connect {
                    addr: self.url.clone(),
                    reason: error_chain(&e),
                })
            })
            .await
            .cloned()
    }

    /// A ready call on the channel.
    async fn grpc(&self) -> Result<tonic::client::Grpc<Channel>> {
        let mut grpc = tonic::client::Grpc::new(self.channel().await?)
            .max_decoding_message_size(self.opts.max_message_len)
            .max_encoding_message_size(self.opts.max_message_len);
        grpc.ready().await.map_err(|e| Error::Connect {
            addr: self.url.clone(),
            reason: error_chain(&e),
        })?;
        Ok(grpc)
    }

    fn errors(&self, msg: &Outbound, timeout: Option<Duration>) -> ErrorMap {
        ErrorMap {
            url: self.url.clone(),
            route: msg.route.clone().into_owned(),
            timeout,
        }
    }
}

fn packet(msg: &Outbound) -> Packet {
    Packet {
        pattern: msg.pattern.clone().into_owned(),
        data: Some(msg.payload.clone()),
        metadata: msg.headers.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
    }
}

/// The call's time left, unless it has no deadline.
fn timeout_of(msg: &Outbound) -> Option<Duration> {
    Some(msg.timeout()).filter(|t| *t < NO_DEADLINE)
}

/// A call carrying its deadline as `grpc-timeout`.
fn request<T>(msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl ClientTransport for GrpcClient {
    fn connect(&self) -> BoxFuture<'_, Result<()>> {
        async move { self.channel().await.map(drop) }.boxed()
    }

    fn request(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<Replies>> {
        async move {
            let mut grpc = self.grpc().await?;
            let timeout = timeout_of(&msg);
            let errors = self.errors(&msg, timeout);
            let response = grpc
                .server_streaming(
                    request(packet(&msg), timeout),
                    PathAndQuery::from_static(wire::SEND_PATH),
                    ProstCodec::<Packet, Value>::default(),
                )
                .await;
            let stream = match response {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    return match errors.before_reply(status) {
                        // An error as the whole reply is one error item, like on TCP.
                        Error::Rpc(e) => Ok(Replies::new(futures_util::stream::iter([Ok(ReplyItem::Error(e))]))),
                        e => Err(e),
                    };
                }
            };
            Replies::first_of(stream.map(move |item| match item {
                Ok(v) => Ok(ReplyItem::Value(v.json)),
                Err(status) => match errors.in_reply(status) {
                    Error::Rpc(e) => Ok(ReplyItem::Error(e)),
                    e => Err(e),
                },
            }))
            .await
        }
        .boxed()
    }

    fn emit(self: Arc<Self>, msg: Outbound) -> BoxFuture<'static, Result<()>> {
        async move {
            let mut grpc = self.grpc().await?;
            let timeout = timeout_of(&msg);
            grpc.unary(
                request(packet(&msg), timeout),
                PathAndQuery::from_static(wire::EMIT_PATH),
                ProstCodec::<Packet, Accepted>::default(),
            )
            .await
            .map(drop)
            .map_err(|status| self.errors(&msg, timeout).before_reply(status))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.store(true, Ordering::Release);
        std::future::ready(()).boxed()
    }
}

/// What a call's statuses mean, before its reply has started and during it.
struct ErrorMap {
    url: String,
    route: String,
    timeout: Option<Duration>,
}

impl ErrorMap {
    /// The status the call ended with before any reply message.
    fn before_reply(&self, status: Status) -> Error {
        match status.code() {
            _ if status.metadata().get_bin(wire::ERROR_TRAILER).is_some() => Error::Rpc(wire::rpc_error_of(&status)),
            Code::Unimplemented if status.message() == NO_MESSAGE_HANDLER => Error::NoHandler {
                pattern: self.route.clone(),
                addr: self.url.clone(),
            },
            Code::DeadlineExceeded if self.timeout.is_some() => self.timed_out(),
            Code::Unavailable => Error::Connect {
                addr: self.url.clone(),
                reason: status.message().to_owned(),
            },
            Code::Cancelled | Code::Unknown if std::error::Error::source(&status).is_some() => {
                Error::ConnectionClosed { addr: self.url.clone() }
            }
            _ => Error::Rpc(wire::rpc_error_of(&status)),
        }
    }

    /// The status that ended a reply after it had started.
    fn in_reply(&self, status: Status) -> Error {
        match status.code() {
            _ if status.metadata().get_bin(wire::ERROR_TRAILER).is_some() => Error::Rpc(wire::rpc_error_of(&status)),
            // A server behind a layer that waits reports a miss in the stream.
            Code::Unimplemented if status.message() == NO_MESSAGE_HANDLER => Error::NoHandler {
                pattern: self.route.clone(),
                addr: self.url.clone(),
            },
            Code::DeadlineExceeded if self.timeout.is_some() => self.timed_out(),
            Code::Unavailable | Code::Cancelled | Code::Unknown if std::error::Error::source(&status).is_some() => {
                Error::ConnectionClosed { addr: self.url.clone() }
            }
            _ => Error::Rpc(wire::rpc_error_of(&status)),
        }
    }

    fn timed_out(&self) -> Error {
        Error::Timeout {
            pattern: self.route.clone(),
            after: self.timeout.unwrap_or_default(),
        }
    }
}
