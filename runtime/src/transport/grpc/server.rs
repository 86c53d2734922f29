//! The gRPC server: the generic `switchboard.Switchboard` service over the [`Dispatcher`],
//! plus any proto-first services linked into the binary, on one tonic server.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use super::wire::{self, Accepted, Packet, Value};
use super::{GrpcListener, ServerOptions};
use crate::dispatch::{Dispatched, Dispatcher, Incoming};
use crate::error::{Error, Result};
use crate::handler::{Reply, ReplyItem};
use crate::transport::Shutdown;

/// Events a server runs at once; an `Emit` beyond it waits for one to finish, so a caller
/// that emits faster than the listeners run is slowed down instead of piling up tasks.
const MAX_EVENTS_IN_FLIGHT: usize = 1024;

/// Everything a call on the server needs: the handlers, the limits, and a token that keeps
/// shutdown waiting while events run.
#[derive(Clone)]
pub(crate) struct Shared {
    pub dispatcher: Dispatcher,
    pub opts: ServerOptions,
    /// Dropped by each event's task when it ends; shutdown waits for all of them.
    pub events: mpsc::Sender<()>,
    /// Room for events running in the background.
    pub event_slots: Arc<Semaphore>,
}

impl Shared {
    fn new(dispatcher: Dispatcher, opts: ServerOptions, events: mpsc::Sender<()>, max_events: usize) -> Self {
        Shared {
            dispatcher,
            opts,
            events,
            event_slots: Arc::new(Semaphore::new(max_events)),
        }
    }

    /// Runs an event's listeners in the background, in the room `slot` holds; shutdown
    /// waits for them.
    pub(crate) fn spawn_event(&self, run: BoxFuture<'static, ()>, slot: OwnedSemaphorePermit) {
        let token = self.events.clone();
        tokio::spawn(async move {
            run.await;
            drop(slot);
            drop(token);
        });
    }
}

pub(super) async fn serve(l: GrpcListener, dispatcher: Dispatcher, mut shutdown: Shutdown) -> Result<()> {
    let (events, mut events_done) = mpsc::channel(1);
    let shared = Shared::new(dispatcher, l.opts.clone(), events, MAX_EVENTS_IN_FLIGHT);
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(Generic(shared.clone()));
    let mut added = std::collections::HashSet::new();
    for proto in inventory::iter::<super::proto::ProtoService> {
        // The same generated module linked twice registers its services twice.
        if added.insert(proto.name) {
            (proto.add)(&mut routes, &super::proto::ProtoServer(shared.clone()));
        }
    }
    let incoming = tonic::transport::server::TcpIncoming::from(l.listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await })
        .await;
    // In-flight calls have finished; let running events finish too.
    drop(shared);
    let _ = events_done.recv().await;
    result.map_err(|e| Error::Protocol(format!("gRPC server failed: {e}")))
}

/// The generic service: `Send` and `Emit` for every pattern.
#[derive(Clone)]
struct Generic(Shared);

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

/// The deadline a caller sent in `grpc-timeout`, if any.
pub(crate) fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC metadata a handler sees as headers: the ASCII entries, minus gRPC's own.
pub(crate) fn headers_of(meta: &tonic::metadata::MetadataMap) -> std::collections::HashMap<String, String> {
    meta.iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                let k = k.as_str();
                if k.starts_with("grpc-") || k == "te" || k == "content-type" {
                    return None;
                }
                Some((k.to_owned(), v.to_str().ok()?.to_owned()))
            }
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect()
}

struct SendSvc(Shared);

impl ServerStreamingService<Packet> for SendSvc {
    type Response = Value;
    type ResponseStream = BoxStream<'static, std::result::Result<Value, Status>>;
    type Future = BoxFuture<'static, std::result::Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: Request<Packet>) -> Self::Future {
        let deadline = grpc_timeout(req.metadata());
        let packet = req.into_inner();
        let dispatched = self.0.dispatcher.dispatch(Incoming {
            pattern: &packet.pattern,
            data: packet.data.as_deref(),
            request: true,
            metadata: (!packet.metadata.is_empty()).then_some(packet.metadata),
            transport: "grpc",
        });
        let result = match dispatched {
            Dispatched::Reply(reply) => Ok(Response::new(reply_stream(reply, deadline, |json| Value { json }))),
            Dispatched::NoHandler { .. } => Err(wire::no_handler_status()),
            Dispatched::Event(_) | Dispatched::Ignored => unreachable!("a request always gets a reply"),
        };
        Box::pin(std::future::ready(result))
    }
}

struct EmitSvc(Shared);

impl UnaryService<Packet> for EmitSvc {
    type Response = Accepted;
    type Future = BoxFuture<'static, std::result::Result<Response<Accepted>, Status>>;

    fn call(&mut self, req: Request<Packet>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            // Accepted once there is room to run it: the caller waits while the server is full.
            let slot = shared
                .event_slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Status::unavailable("the server is shutting down"))?;
            let packet = req.into_inner();
            let dispatched = shared.dispatcher.dispatch(Incoming {
                pattern: &packet.pattern,
                data: packet.data.as_deref(),
                request: false,
                metadata: (!packet.metadata.is_empty()).then_some(packet.metadata),
                transport: "grpc",
            });
            if let Dispatched::Event(run) = dispatched {
                shared.spawn_event(run, slot);
            }
            Ok(Response::new(Accepted {}))
        })
    }
}

/// A reply as gRPC messages: each value in turn; an error, or the caller's deadline
/// passing, ends the stream with a status. Dropping the stream (the caller went away)
/// drops the handler's future.
pub(crate) fn reply_stream<M: Send + 'static>(
    reply: Reply,
    deadline: Option<Duration>,
    each: impl Fn(bytes::Bytes) -> M + Send + 'static,
) -> BoxStream<'static, std::result::Result<M, Status>> {
    let items = reply.map(move |item| match item {
        ReplyItem::Value(json) => Ok(each(json)),
        ReplyItem::Error(err) => Err(wire::status_of(&err)),
    });
    match deadline {
        None => items.boxed(),
        Some(after) => Deadline {
            items: items.boxed(),
            timer: Box::pin(tokio::time::sleep(after)),
            done: false,
        }
        .boxed(),
    }
}

/// Ends a reply with DEADLINE_EXCEEDED once the caller's deadline has passed.
struct Deadline<M> {
    items: BoxStream<'static, std::result::Result<M, Status>>,
    timer: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl<M: Send + 'static> Stream for Deadline<M> {
    type Item = std::result::Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = this.items.poll_next_unpin(cx) {
            this.done = item.is_none();
            return Poll::Ready(item);
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            this.done = true;
            // The handler's future is dropped with the stream.
            this.items = futures_util::stream::empty().boxed();
            return Poll::Ready(Some(Err(Status::deadline_exceeded("Deadline Exceeded"))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::handler::Inbound;
    use crate::registry::{HandlerEntry, HandlerKind, Registry};

    /// An event listener that never finishes.
    fn stuck(_: Inbound<'_>) -> Reply {
        Reply::from_unit(std::future::pending())
    }

    static STUCK: HandlerEntry = HandlerEntry {
        kind: HandlerKind::Event,
        route: "stuck",
        pattern: "\"stuck\"",
        name: "stuck",
        module: module_path!(),
        file: file!(),
        line: line!(),
        call: stuck,
    };

    fn emit() -> Request<Packet> {
        Request::new(Packet {
            pattern: "\"stuck\"".into(),
            data: Some(bytes::Bytes::from_static(b"1")),
            metadata: Default::default(),
        })
    }

    #[tokio::test]
    async fn emits_wait_for_room_instead_of_piling_up_events() {
        let mut registry = Registry::new();
        registry.add(&STUCK);
        let (events, _done) = mpsc::channel(1);
        let opts = ServerOptions { max_message_len: 1024 };
        let shared = Shared::new(Dispatcher::new(registry.routes().unwrap()), opts, events, 2);
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
}
