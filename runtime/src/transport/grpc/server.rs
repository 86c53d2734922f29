//! The generic service, `switchboard.Switchboard`: `Send` serves a request to any pattern and
//! streams its reply back, `Emit` hands an event to its listeners. Payloads and reply values
//! are JSON, as in a NestJS packet.

use std::convert::Infallible;
use std::task::{Context as TaskContext, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::{Response, Status};
use tonic_prost::ProstCodec;

use super::call::{self, Shared};
use super::wire::{self, Accepted, Packet, Value};
use crate::service::{Address, Kind, Payload, Request};

/// The generic service: `Send` and `Emit` for every pattern.
#[derive(Clone)]
pub(crate) struct Generic(pub Shared);

impl NamedService for Generic {
    const NAME: &'static str = wire::SERVICE;
}

impl<B> tower::Service<http::Request<B>> for Generic
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<std::result::Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let shared = self.0.clone();
        let limit = shared.opts.max_message_len;
        match req.uri().path() {
            wire::SEND_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<Value, Packet>::default())
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit);
                Ok(grpc.server_streaming(SendSvc(shared), req).await)
            }),
            wire::EMIT_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<Accepted, Packet>::default())
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit);
                Ok(grpc.unary(EmitSvc(shared), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

/// A packet as a request for the router: headers are the call's gRPC metadata with the
/// packet's own `metadata` over them.
fn request_of(req: tonic::Request<Packet>, kind: Kind) -> Request {
    let (meta, _, packet) = req.into_parts();
    let mut ctx = call::context(&meta, kind);
    ctx.headers_mut().extend(packet.metadata);
    let payload = match packet.data {
        Some(json) => Payload::Json(json),
        None => Payload::null(),
    };
    Request::new(Address::pattern(packet.pattern), payload, ctx)
}

struct SendSvc(Shared);

impl ServerStreamingService<Packet> for SendSvc {
    type Response = Value;
    type ResponseStream = BoxStream<'static, std::result::Result<Value, Status>>;
    type Future = BoxFuture<'static, std::result::Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: tonic::Request<Packet>) -> Self::Future {
        let replies = self.0.request(request_of(req, Kind::Request));
        let result = replies.map(|values| Response::new(values.map_ok(|json| Value { json }).boxed()));
        Box::pin(std::future::ready(result))
    }
}

struct EmitSvc(Shared);

impl UnaryService<Packet> for EmitSvc {
    type Response = Accepted;
    type Future = BoxFuture<'static, std::result::Result<Response<Accepted>, Status>>;

    fn call(&mut self, req: tonic::Request<Packet>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            // Accepted once there is room to run it: the caller waits while the server is full.
            let slot = shared
                .event_slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Status::unavailable("the server is shutting down"))?;
            shared.spawn_event(request_of(req, Kind::Event), slot);
            Ok(Response::new(Accepted {}))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::future::FutureExt;
    use tokio::sync::mpsc;

    use super::*;
    use crate::service::{Endpoint, Route, RouterBuilder};
    use crate::transport::grpc::call::ServerOptions;

    /// A router whose only route, `stuck`, has an event listener that never finishes.
    fn stuck() -> crate::service::Router {
        let mut routes = RouterBuilder::default();
        let listener = Endpoint {
            location: Arc::from("stuck"),
            order: Default::default(),
            route: Route::from_fn(|_| std::future::pending().boxed()),
        };
        routes.add("stuck", "\"stuck\"", Kind::Event, listener);
        routes.build(false, |route| route, |_, route| route)
    }

    fn emit() -> tonic::Request<Packet> {
        tonic::Request::new(Packet {
            pattern: "\"stuck\"".into(),
            data: Some(bytes::Bytes::from_static(b"1")),
            metadata: Default::default(),
        })
    }

    #[tokio::test]
    async fn emits_wait_for_room_instead_of_piling_up_events() {
        let (events, _done) = mpsc::channel(1);
        let opts = ServerOptions {
            max_message_len: 1024,
            max_in_flight: 2,
        };
        let shared = Shared::new(stuck(), opts, events);
        let mut svc = EmitSvc(shared.clone());
        for _ in 0..2 {
            let accepted = tokio::time::timeout(Duration::from_secs(1), svc.call(emit())).await;
            assert!(
                matches!(accepted, Ok(Ok(_))),
                "an emit within the limit is accepted at once"
            );
        }
        let third = tokio::time::timeout(Duration::from_millis(200), svc.call(emit())).await;
        assert!(third.is_err(), "a third emit must wait while two events run");
        assert_eq!(shared.event_slots.available_permits(), 0);
    }

    #[tokio::test]
    async fn packet_metadata_goes_over_grpc_metadata() {
        let mut req = tonic::Request::new(Packet {
            pattern: "\"x\"".into(),
            data: None,
            metadata: [("k".to_owned(), "packet".to_owned())].into_iter().collect(),
        });
        req.metadata_mut().insert("k", "grpc".parse().unwrap());
        req.metadata_mut().insert("x-trace", "abc".parse().unwrap());
        let req = request_of(req, Kind::Request);
        assert_eq!(req.headers().get("k"), Some("packet"));
        assert_eq!(req.headers().get("x-trace"), Some("abc"));
        assert_eq!(req.payload().and_then(Payload::json), Some(&b"null"[..]));
        assert_eq!(req.address().as_str(), "\"x\"");
    }
}
