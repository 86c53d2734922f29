//! The gRPC client: one HTTP/2 channel (tonic reconnects it), many calls multiplexed on it,
//! each on its own stream, so no correlation table is needed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use http::uri::PathAndQuery;
use tokio::sync::OnceCell;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use super::wire::{self, Accepted, Packet, Value};
use super::{GrpcClientOptions, client_options};
use crate::error::{Error, NO_MESSAGE_HANDLER, Result};
use crate::handler::ReplyItem;
use crate::transport::{ClientOptions, ClientTransport, Endpoint, Outbound, Replies};

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
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", ep.authority))
            .map_err(|e| Error::InvalidUrl {
                url: ep.as_str().to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true);
        Ok(GrpcClient {
            url: ep.as_str().to_owned(),
            endpoint,
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

    fn grpc(&self, channel: Channel) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(channel)
            .max_decoding_message_size(self.opts.max_message_len)
            .max_encoding_message_size(self.opts.max_message_len)
    }

    /// The error a status means for a call to `route` that had `timeout`.
    fn error(&self, status: Status, route: &str, timeout: Option<Duration>) -> Error {
        match status.code() {
            _ if status.metadata().get_bin(wire::ERROR_TRAILER).is_some() => Error::Rpc(wire::rpc_error_of(&status)),
            Code::Unimplemented if status.message() == NO_MESSAGE_HANDLER => Error::NoHandler {
                pattern: route.to_owned(),
                addr: self.url.clone(),
            },
            Code::DeadlineExceeded if timeout.is_some() => Error::Timeout {
                pattern: route.to_owned(),
                after: timeout.unwrap_or_default(),
            },
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
}

fn packet(msg: &Outbound) -> Packet {
    Packet {
        pattern: msg.pattern.clone().into_owned(),
        data: Some(msg.data.clone()),
        metadata: msg.metadata.as_deref().cloned().unwrap_or_default(),
    }
}

fn request<T>(msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = timeout.filter(|t| *t < Duration::from_secs(99_999_999)) {
        req.set_timeout(t);
    }
    req
}

/// An error and its causes, on one line.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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

    fn request(&self, msg: Outbound) -> BoxFuture<'_, Result<Replies>> {
        async move {
            let mut grpc = self.grpc(self.channel().await?);
            grpc.ready().await.map_err(|e| Error::Connect {
                addr: self.url.clone(),
                reason: error_chain(&e),
            })?;
            let route = msg.route.clone().into_owned();
            let timeout = msg.timeout;
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
                    return match self.error(status, &route, timeout) {
                        // An error as the whole reply is one error item, like on TCP.
                        Error::Rpc(e) => Ok(futures_util::stream::iter([Ok(ReplyItem::Error(e))]).boxed()),
                        e => Err(e),
                    };
                }
            };
            let url = self.url.clone();
            let this = ErrorMap { url, route, timeout };
            Ok(stream
                .map(move |item| match item {
                    Ok(v) => Ok(ReplyItem::Value(v.json)),
                    Err(status) => match this.error(status) {
                        Error::Rpc(e) => Ok(ReplyItem::Error(e)),
                        e => Err(e),
                    },
                })
                .boxed())
        }
        .boxed()
    }

    fn emit(&self, msg: Outbound) -> BoxFuture<'_, Result<()>> {
        async move {
            let mut grpc = self.grpc(self.channel().await?);
            grpc.ready().await.map_err(|e| Error::Connect {
                addr: self.url.clone(),
                reason: error_chain(&e),
            })?;
            grpc.unary(
                request(packet(&msg), msg.timeout),
                PathAndQuery::from_static(wire::EMIT_PATH),
                ProstCodec::<Packet, Accepted>::default(),
            )
            .await
            .map(drop)
            .map_err(|status| self.error(status, &msg.route, msg.timeout))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.store(true, Ordering::Release);
        std::future::ready(()).boxed()
    }
}

/// What the reply stream needs to map statuses after the call has started.
struct ErrorMap {
    url: String,
    route: String,
    timeout: Option<Duration>,
}

impl ErrorMap {
    fn error(&self, status: Status) -> Error {
        match status.code() {
            _ if status.metadata().get_bin(wire::ERROR_TRAILER).is_some() => Error::Rpc(wire::rpc_error_of(&status)),
            Code::DeadlineExceeded if self.timeout.is_some() => Error::Timeout {
                pattern: self.route.clone(),
                after: self.timeout.unwrap_or_default(),
            },
            Code::Unavailable | Code::Cancelled | Code::Unknown if std::error::Error::source(&status).is_some() => {
                Error::ConnectionClosed { addr: self.url.clone() }
            }
            _ => Error::Rpc(wire::rpc_error_of(&status)),
        }
    }
}
