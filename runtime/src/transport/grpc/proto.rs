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
//! #[message_pattern({ service = "HeroesService", rpc = "FindOne" })]      // unary
//! async fn find_one(req: HeroById) -> RpcResult<Hero> { /* … */ }
//!
//! #[message_pattern({ service = "HeroesService", rpc = "ListAll" })]      // server streaming
//! async fn list_all(_: Empty) -> ReplyStream<Hero> { /* … */ }
//!
//! #[message_pattern({ service = "HeroesService", rpc = "FindMany" })]     // client or bidi streaming
//! async fn find_many(reqs: GrpcStream<HeroById>) -> ReplyStream<Hero> { /* … */ }
//! ```
//!
//! A request message reaches its handler as it is (a [`Payload::Value`]), so the payload
//! argument must be the method's input type; a streaming method's messages come as a
//! [`GrpcStream`]. Replies are the handler's values serialised and decoded into the
//! method's output type. As in NestJS, a unary method answers with the handler's first
//! value, a server-streaming one with every value; a method with no handler answers
//! UNIMPLEMENTED. gRPC metadata reaches the handler as [`Context`](crate::Context) headers,
//! `grpc-timeout` as its deadline.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde::de::DeserializeOwned;
use tonic::metadata::MetadataMap;
use tonic::{Response, Status, Streaming};

use super::call::{self, Shared};
use super::wire;
use crate::error::RpcError;
use crate::service::{Address, Kind, Payload, Request};

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

/// Adds every registered service to a listener's routes.
pub(super) fn add_services(routes: &mut tonic::service::RoutesBuilder, shared: &Shared) {
    let server = ProtoServer(shared.clone());
    let mut added = std::collections::HashSet::new();
    for proto in inventory::iter::<ProtoService> {
        // The same generated module linked twice registers its services twice.
        if added.insert(proto.name) {
            (proto.add)(routes, &server);
        }
    }
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

    /// A unary method: the handler takes the request message; its first value is the answer.
    pub fn unary<Req, Resp>(
        &self,
        pattern: &'static str,
        req: tonic::Request<Req>,
    ) -> BoxFuture<'static, ProtoResult<Resp>>
    where
        Req: Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let (meta, _, msg) = req.into_parts();
        let replies = self.call::<Resp>(pattern, &meta, Payload::Value(Box::new(msg)));
        Box::pin(async move { first(replies?).await })
    }

    /// A server-streaming method: the handler takes the request message; every value of its
    /// reply is sent, in order.
    pub fn server_streaming<Req, Resp>(
        &self,
        pattern: &'static str,
        req: tonic::Request<Req>,
    ) -> BoxFuture<'static, ProtoResult<ResponseStream<Resp>>>
    where
        Req: Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let (meta, _, msg) = req.into_parts();
        let replies = self.call::<Resp>(pattern, &meta, Payload::Value(Box::new(msg)));
        Box::pin(std::future::ready(replies.map(Response::new)))
    }

    /// A client-streaming method: the handler takes a [`GrpcStream`]; its first value is the
    /// answer.
    pub fn client_streaming<Req, Resp>(
        &self,
        pattern: &'static str,
        req: tonic::Request<Streaming<Req>>,
    ) -> BoxFuture<'static, ProtoResult<Resp>>
    where
        Req: Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let (meta, _, msgs) = req.into_parts();
        let replies = self.call::<Resp>(pattern, &meta, Payload::Value(Box::new(GrpcStream::of(msgs))));
        Box::pin(async move { first(replies?).await })
    }

    /// A bidirectional method: the handler takes a [`GrpcStream`] and answers with a stream.
    pub fn streaming<Req, Resp>(
        &self,
        pattern: &'static str,
        req: tonic::Request<Streaming<Req>>,
    ) -> BoxFuture<'static, ProtoResult<ResponseStream<Resp>>>
    where
        Req: Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
    {
        let (meta, _, msgs) = req.into_parts();
        let replies = self.call::<Resp>(pattern, &meta, Payload::Value(Box::new(GrpcStream::of(msgs))));
        Box::pin(std::future::ready(replies.map(Response::new)))
    }

    /// Serves the method's request; its reply as response messages.
    fn call<Resp>(
        &self,
        pattern: &'static str,
        meta: &MetadataMap,
        payload: Payload,
    ) -> Result<ResponseStream<Resp>, Status>
    where
        Resp: DeserializeOwned + Send + 'static,
    {
        let req = Request::new(
            Address::static_pattern(pattern),
            payload,
            call::context(meta, Kind::Request),
        );
        let values = self.0.request(req)?;
        Ok(values
            .map(|value| value.and_then(|json| response::<Resp>(&json)))
            .boxed())
    }
}

/// A reply value as the method's response message.
fn response<Resp: DeserializeOwned>(json: &Bytes) -> Result<Resp, Status> {
    serde_json::from_slice(json).map_err(|e| {
        tracing::error!(error = %e, "a handler's reply does not fit the method's response message");
        Status::unknown(crate::error::INTERNAL_SERVER_ERROR)
    })
}

/// A unary answer: the first value; completion without one is an error.
async fn first<Resp>(mut stream: ResponseStream<Resp>) -> ProtoResult<Resp> {
    match stream.next().await {
        Some(Ok(v)) => Ok(Response::new(v)),
        Some(Err(status)) => Err(status),
        None => Err(Status::unknown(crate::error::INTERNAL_SERVER_ERROR)),
    }
}

/// The request messages of a client-streaming or bidirectional gRPC call, as a handler's
/// payload: `async fn find_many(reqs: GrpcStream<HeroById>) -> ReplyStream<Hero>`.
///
/// It is a stream of messages; a broken call yields one error and ends.
pub struct GrpcStream<T>(BoxStream<'static, Result<T, RpcError>>);

impl<T: Send + 'static> GrpcStream<T> {
    fn of(s: Streaming<T>) -> Self {
        GrpcStream(s.map(|item| item.map_err(|status| wire::rpc_error_of(&status))).boxed())
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

/// The request stream the call put in the request, for the handler's `GrpcStream` argument
/// (its `FromRequest` impl is the server's, in `server::extract`).
pub(crate) fn take_stream<T: Send + 'static>(req: &mut Request) -> Result<GrpcStream<T>, RpcError> {
    let invalid = |req: &Request, why: &str| {
        RpcError::new(format!(
            "invalid payload for pattern {}: {}",
            req.context().route(),
            crate::text::payload_error(why)
        ))
    };
    match req.take_payload() {
        Some(Payload::Value(value)) => match value.downcast::<GrpcStream<T>>() {
            Ok(stream) => Ok(*stream),
            Err(value) => {
                req.set_payload(Payload::Value(value));
                // The type's name is for our log, not for the caller.
                tracing::debug!(
                    expected = std::any::type_name::<GrpcStream<T>>(),
                    "a stream of another item type"
                );
                Err(invalid(req, "a stream of another item type"))
            }
        },
        Some(other) => {
            req.set_payload(other);
            Err(invalid(
                req,
                "a GrpcStream only comes from a client-streaming or bidirectional gRPC call",
            ))
        }
        None => Err(invalid(req, "the payload was already taken")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Context;

    async fn extract<T: Send + 'static>(req: &mut Request) -> Result<GrpcStream<T>, RpcError> {
        take_stream(req)
    }

    #[tokio::test]
    async fn a_grpc_stream_is_taken_from_the_request() {
        let stream = GrpcStream::new(futures_util::stream::iter([1u32, 2]));
        let ctx = Context::new("grpc", Kind::Request);
        let mut req = Request::new(
            Address::static_pattern("\"sum\""),
            Payload::Value(Box::new(stream)),
            ctx,
        );
        let got: Vec<_> = extract::<u32>(&mut req).await.unwrap().collect().await;
        assert_eq!(got, [Ok(1), Ok(2)]);
        let again = extract::<u32>(&mut req).await.unwrap_err();
        assert!(again.message().unwrap().contains("already taken"), "{again}");
    }

    #[tokio::test]
    async fn anything_else_is_an_error_naming_the_pattern() {
        let ctx = Context::new("grpc", Kind::Request);
        let mut req = Request::new(
            Address::static_pattern("\"sum\""),
            Payload::Json(Bytes::from_static(b"[1]")),
            ctx,
        );
        req.context_mut().set_route("sum".into());
        let err = extract::<u32>(&mut req).await.unwrap_err();
        assert_eq!(
            err.message(),
            Some(
                "invalid payload for pattern sum: a GrpcStream only comes from a client-streaming or bidirectional gRPC call"
            )
        );
        assert!(req.payload().is_some(), "the payload stays for whoever reads it");

        let other = GrpcStream::new(futures_util::stream::iter(["x".to_owned()]));
        req.set_payload(Payload::Value(Box::new(other)));
        let err = extract::<u32>(&mut req).await.unwrap_err();
        assert!(
            err.message().unwrap() == "invalid payload for pattern sum: a stream of another item type",
            "{err}"
        );
    }
}
