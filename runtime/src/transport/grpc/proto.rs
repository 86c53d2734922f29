//! Proto-first serving: a `.proto` method `Service/Method` served by the handler whose
//! pattern is `{service: "Service", rpc: "Method"}`, with prost messages in and out.
//!
//! `switchboard-codegen`'s `.proto` path generates the prost types (with serde derives), the
//! tonic client and server, and glue: an implementation of tonic's server trait that calls
//! [`ProtoServer`], and a [`ProtoService`] registration, so that every `grpc://` listener of a
//! binary that links the generated module serves the service. Handlers are ordinary
//! `#[message_pattern]` functions:
//!
//! ```ignore
//! #[message_pattern(service = "HeroesService", rpc = "FindOne")]          // unary
//! async fn find_one(req: HeroById) -> RpcResult<Hero> { … }
//!
//! #[message_pattern(service = "HeroesService", rpc = "ListAll")]          // server streaming
//! async fn list_all(_: Empty) -> ReplyStream<Hero> { … }
//!
//! #[message_pattern(service = "HeroesService", rpc = "FindMany")]         // client or bidi streaming
//! async fn find_many(reqs: GrpcStream<HeroById>) -> ReplyStream<Hero> { … }
//! ```
//!
//! As in NestJS, a unary method answers with the handler's first value, a server-streaming
//! one with every value; a method with no handler answers UNIMPLEMENTED. gRPC metadata
//! reaches the handler as [`Context`](crate::Context) headers.

use std::any::Any;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::task::{Context as TaskContext, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use tonic::{Request, Response, Status, Streaming};

use super::server::{Shared, grpc_timeout, headers_of, reply_stream};
use super::wire;
use crate::dispatch::{Dispatched, Incoming};
use crate::error::RpcError;

/// A proto-first service linked into the binary: every `grpc://` listener adds it.
/// Submitted by generated glue; not written by hand.
pub struct ProtoService {
    /// The fully qualified service name, `package.Service`.
    pub name: &'static str,
    /// Adds the service to a listener's routes.
    pub add: fn(&mut tonic::service::RoutesBuilder, &ProtoServer),
}

inventory::collect!(ProtoService);

/// The services registered in this binary, by fully qualified name.
pub fn services() -> Vec<&'static str> {
    inventory::iter::<ProtoService>.into_iter().map(|s| s.name).collect()
}

/// What generated glue calls to serve a proto method through the handlers. Cheap to clone.
#[derive(Clone)]
pub struct ProtoServer(pub(crate) Shared);

impl std::fmt::Debug for ProtoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProtoServer")
    }
}

type ProtoResult<T> = Result<Response<T>, Status>;

/// The response stream of a server-streaming or bidirectional method.
pub type ResponseStream<T> = BoxStream<'static, Result<T, Status>>;

impl ProtoServer {
    /// The listener's cap on one message (its `max_message_len`).
    pub fn max_message_len(&self) -> usize {
        self.0.opts.max_message_len
    }

    /// A unary method: the handler's first value is the answer.
    pub fn unary<Req, Resp>(&self, pattern: &'static str, req: Request<Req>) -> BoxFuture<'static, ProtoResult<Resp>>
    where
        Req: Serialize,
        Resp: DeserializeOwned + Send + 'static,
    {
        let (meta, _, msg) = req.into_parts();
        let stream = to_json(&msg).and_then(|json| self.call::<Resp>(pattern, &meta, Payload::Json(json)));
        Box::pin(async move { first(stream?).await })
    }

    /// A server-streaming method: every value of the handler's reply, in order.
    pub fn server_streaming<Req, Resp>(
        &self,
        pattern: &'static str,
        req: Request<Req>,
    ) -> BoxFuture<'static, ProtoResult<BoxStream<'static, Result<Resp, Status>>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned + Send + 'static,
    {
        let (meta, _, msg) = req.into_parts();
        let stream = to_json(&msg).and_then(|json| self.call::<Resp>(pattern, &meta, Payload::Json(json)));
        Box::pin(std::future::ready(stream.map(Response::new)))
    }

    /// A client-streaming method: the handler takes a [`GrpcStream`]; its first value is the
    /// answer.
    pub fn client_streaming<Req, Resp>(
        &self,
        pattern: &'static str,
        req: Request<Streaming<Req>>,
    ) -> BoxFuture<'static, ProtoResult<Resp>>
    where
        Req: Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let (meta, _, msgs) = req.into_parts();
        let stream = self.call::<Resp>(pattern, &meta, Payload::Stream(GrpcStream::of(msgs)));
        Box::pin(async move { first(stream?).await })
    }

    /// A bidirectional method: the handler takes a [`GrpcStream`] and answers with a stream.
    pub fn streaming<Req, Resp>(
        &self,
        pattern: &'static str,
        req: Request<Streaming<Req>>,
    ) -> BoxFuture<'static, ProtoResult<BoxStream<'static, Result<Resp, Status>>>>
    where
        Req: Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let (meta, _, msgs) = req.into_parts();
        let stream = self.call::<Resp>(pattern, &meta, Payload::Stream(GrpcStream::of(msgs)));
        Box::pin(std::future::ready(stream.map(Response::new)))
    }

    fn call<Resp>(
        &self,
        pattern: &'static str,
        meta: &tonic::metadata::MetadataMap,
        payload: Payload,
    ) -> Result<BoxStream<'static, Result<Resp, Status>>, Status>
    where
        Resp: DeserializeOwned + Send + 'static,
    {
        let deadline = grpc_timeout(meta);
        let headers = headers_of(meta);
        let (json, token) = match payload {
            Payload::Json(json) => (json, None),
            Payload::Stream(s) => {
                let id = NEXT.fetch_add(1, Ordering::Relaxed);
                STREAMS.lock().expect("stream table").insert(id, s);
                (format!(r#"{{"{STREAM_KEY}":{id}}}"#).into_bytes(), Some(id))
            }
        };
        let dispatched = self.0.dispatcher.dispatch(Incoming {
            pattern,
            data: Some(&json),
            request: true,
            metadata: (!headers.is_empty()).then_some(headers),
            transport: "grpc",
        });
        // The handler took its stream while decoding its payload (dispatch decodes at once);
        // whatever is left was not taken by anyone.
        if let Some(id) = token {
            STREAMS.lock().expect("stream table").remove(&id);
        }
        match dispatched {
            Dispatched::Reply(reply) => Ok(reply_stream(reply, deadline, |json| json)
                .map(|item| {
                    item.and_then(|json| {
                        serde_json::from_slice::<Resp>(&json).map_err(|e| {
                            tracing::error!(error = %e, "a handler's reply does not fit the method's response message");
                            Status::unknown(crate::error::INTERNAL_SERVER_ERROR)
                        })
                    })
                })
                .boxed()),
            Dispatched::NoHandler { .. } => Err(wire::no_handler_status()),
            Dispatched::Event(_) | Dispatched::Ignored => unreachable!("a request always gets a reply"),
        }
    }
}

enum Payload {
    Json(Vec<u8>),
    Stream(Box<dyn Any + Send>),
}

fn to_json<T: Serialize>(msg: &T) -> Result<Vec<u8>, Status> {
    crate::json::to_vec(msg).map_err(|e| Status::internal(format!("cannot encode the request as JSON: {e}")))
}

/// A unary answer: the first value; completion without one is an error.
async fn first<Resp>(mut stream: BoxStream<'static, Result<Resp, Status>>) -> ProtoResult<Resp> {
    match stream.next().await {
        Some(Ok(v)) => Ok(Response::new(v)),
        Some(Err(status)) => Err(status),
        None => Err(Status::unknown(crate::error::INTERNAL_SERVER_ERROR)),
    }
}

const STREAM_KEY: &str = "$switchboard_grpc_stream";
static NEXT: AtomicU64 = AtomicU64::new(1);
/// Incoming request streams on their way to a handler, between dispatch and the payload's
/// decoding (which happens inside dispatch).
static STREAMS: LazyLock<Mutex<HashMap<u64, Box<dyn Any + Send>>>> = LazyLock::new(Default::default);

/// The request messages of a client-streaming or bidirectional gRPC call, as a handler's
/// payload: `async fn find_many(reqs: GrpcStream<HeroById>) -> ReplyStream<Hero>`.
///
/// It is a stream of messages; a broken call yields one error and ends.
pub struct GrpcStream<T>(BoxStream<'static, Result<T, RpcError>>);

impl<T: Send + 'static> GrpcStream<T> {
    fn of(s: Streaming<T>) -> Box<dyn Any + Send> {
        let s = s.map(|item| item.map_err(|status| wire::rpc_error_of(&status)));
        Box::new(GrpcStream(s.boxed()))
    }

    /// A stream of messages from anything, for calling a handler directly (tests).
    pub fn new(messages: impl Stream<Item = T> + Send + 'static) -> Self {
        GrpcStream(messages.map(Ok).boxed())
    }
}

impl<T> Stream for GrpcStream<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl<T> std::fmt::Debug for GrpcStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcStream")
    }
}

impl<'de, T: Send + 'static> Deserialize<'de> for GrpcStream<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Token {
            #[serde(rename = "$switchboard_grpc_stream")]
            id: u64,
        }
        let token = Token::deserialize(d).map_err(|_| {
            D::Error::custom("a GrpcStream payload only comes from a client-streaming or bidirectional gRPC call")
        })?;
        let entry = STREAMS
            .lock()
            .expect("stream table")
            .remove(&token.id)
            .ok_or_else(|| D::Error::custom("this gRPC request stream was already taken"))?;
        entry
            .downcast::<GrpcStream<T>>()
            .map(|s| *s)
            .map_err(|_| D::Error::custom("the gRPC request stream carries another message type"))
    }
}

impl<T> Serialize for GrpcStream<T> {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "a GrpcStream is sent by a gRPC client-streaming call, not as a JSON payload",
        ))
    }
}
