//! A call on the server, whichever service it came to (the generic one or a proto-first
//! one): the server's shared state, the call's [`Context`] from its gRPC metadata, and its
//! [`Reply`] as a stream of gRPC messages that ends with a status.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::FutureExt;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tonic::Status;
use tonic::metadata::{KeyAndValueRef, MetadataMap};

use super::wire;
use crate::service::{Context, Headers, Kind, Reply, ReplyItem, Request, Router, RouterFuture, deadline_after};

/// A listener's settings, read from its URL.
#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    /// The cap on one message, both ways.
    pub max_message_len: usize,
    /// Events run at once (`max_in_flight`).
    pub max_in_flight: usize,
}

/// Everything a call on the server needs: the router, the limits, and a token that keeps
/// shutdown waiting while events run. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Shared {
    router: Router,
    pub opts: ServerOptions,
    /// Dropped by each event's task when it ends; shutdown waits for all of them.
    events: mpsc::Sender<()>,
    /// Room for events running in the background.
    pub event_slots: Arc<Semaphore>,
}

impl Shared {
    pub fn new(router: Router, opts: ServerOptions, events: mpsc::Sender<()>) -> Self {
        let event_slots = Arc::new(Semaphore::new(opts.max_in_flight));
        Shared {
            router,
            opts,
            events,
            event_slots,
        }
    }

    /// Serves a request; its reply as the messages to send, each value's JSON in turn.
    /// A pattern nobody handles is UNIMPLEMENTED: the call's status at once, unless a layer
    /// makes the router wait (then the stream's).
    pub fn request(&self, req: Request) -> Result<BoxStream<'static, Result<Bytes, Status>>, Status> {
        let deadline = req.context().deadline();
        reply_stream(self.router.call(req), deadline)
    }

    /// Runs an event's listeners in the background, in the room `slot` holds; shutdown
    /// waits for them. Their failures are logged by the router.
    pub fn spawn_event(&self, req: Request, slot: OwnedSemaphorePermit) {
        let run = self.router.call(req);
        let token = self.events.clone();
        tokio::spawn(async move {
            let reply = run.await;
            // Nobody listens: the router has said so in the log already.
            if !reply.is_no_handler() {
                let _ = reply.drain().await;
            }
            drop(slot);
            drop(token);
        });
    }
}

/// A call's context: its metadata as headers, a request's `grpc-timeout` as its deadline
/// (an event's only bounds its acceptance: its listeners run afterwards, with none).
pub(crate) fn context(meta: &MetadataMap, kind: Kind) -> Context {
    let deadline = match kind {
        Kind::Request => grpc_timeout(meta).map(deadline_after),
        Kind::Event => None,
    };
    Context::new("grpc", kind)
        .with_headers(headers_of(meta))
        .with_deadline(deadline)
}

/// The deadline a caller sent in `grpc-timeout`, if any.
fn grpc_timeout(meta: &MetadataMap) -> Option<Duration> {
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
fn headers_of(meta: &MetadataMap) -> Headers {
    meta.iter()
        .filter_map(|kv| match kv {
            KeyAndValueRef::Ascii(k, v) => {
                let k = k.as_str();
                if k.starts_with("grpc-") || k == "te" || k == "content-type" {
                    return None;
                }
                Some((k.to_owned(), v.to_str().ok()?.to_owned()))
            }
            KeyAndValueRef::Binary(..) => None,
        })
        .collect()
}

/// A reply as gRPC messages: each value in turn; an error, or the caller's deadline
/// passing, ends the stream with a status. Dropping the stream (the caller went away)
/// drops the handler's future.
///
/// The reply is polled once at once, as TCP does: a miss (and most handlers) resolves
/// without waiting, so an unhandled pattern is the call's status rather than the stream's.
fn reply_stream(
    mut reply: RouterFuture,
    deadline: Option<Instant>,
) -> Result<BoxStream<'static, Result<Bytes, Status>>, Status> {
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    let items = match reply.poll_unpin(&mut cx) {
        Poll::Ready(reply) if reply.is_no_handler() => return Err(wire::no_handler_status()),
        Poll::Ready(reply) => statuses(reply),
        // Under a layer that waits, the deadline covers the wait too.
        Poll::Pending => futures_util::stream::once(reply).flat_map(statuses).boxed(),
    };
    Ok(match deadline {
        None => items,
        Some(at) => Deadline {
            items,
            timer: Box::pin(tokio::time::sleep_until(at)),
            done: false,
        }
        .boxed(),
    })
}

/// A reply's items as gRPC messages and statuses.
fn statuses(reply: Reply) -> BoxStream<'static, Result<Bytes, Status>> {
    if reply.is_no_handler() {
        return futures_util::stream::iter([Err(wire::no_handler_status())]).boxed();
    }
    reply.map(message_of).boxed()
}

/// One reply item as a gRPC message, or the status that ends the call.
fn message_of(item: ReplyItem) -> Result<Bytes, Status> {
    match item {
        ReplyItem::Value(json) => Ok(json),
        ReplyItem::Error(err) => Err(wire::status_of(&err)),
        // A value handed back unencoded (only in-process senders ask for that): encoded here.
        local @ ReplyItem::Local(_) => message_of(local.encoded()),
        packed @ ReplyItem::MsgPack(_) => message_of(packed.encoded()),
    }
}

/// Ends a reply with DEADLINE_EXCEEDED once the caller's deadline has passed.
struct Deadline {
    items: BoxStream<'static, Result<Bytes, Status>>,
    timer: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, Status>;

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
    use futures_util::future::BoxFuture;

    use super::*;
    use crate::service::{Address, Endpoint, Payload, Route, RouterBuilder};

    /// A router serving `slow` (answers `1` after 10 s); with `waiting`, inside a layer that
    /// yields once before it calls the route, as an async layer would.
    fn router(waiting: bool) -> Router {
        let mut routes = RouterBuilder::default();
        let slow = Endpoint {
            location: "slow".into(),
            order: Default::default(),
            route: Route::from_fn(|_| {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Reply::json(Bytes::from_static(b"1"))
                })
            }),
        };
        routes.add("slow", "\"slow\"", Kind::Request, slow);
        routes.build(
            waiting,
            move |route| {
                if !waiting {
                    return route;
                }
                Route::from_fn(move |req| -> BoxFuture<'static, Reply> {
                    let route = route.clone();
                    Box::pin(async move {
                        tokio::task::yield_now().await;
                        route.call(req).await
                    })
                })
            },
            |_, route| route,
        )
    }

    fn shared(waiting: bool) -> Shared {
        let opts = ServerOptions {
            max_message_len: 1024,
            max_in_flight: 1,
        };
        Shared::new(router(waiting), opts, mpsc::channel(1).0)
    }

    fn request(pattern: &'static str, deadline: Option<Duration>) -> Request {
        let ctx = Context::new("grpc", Kind::Request).with_deadline(deadline.map(deadline_after));
        Request::new(Address::static_pattern(pattern), Payload::null(), ctx)
    }

    #[tokio::test]
    async fn a_miss_is_unimplemented_whether_or_not_the_router_waits() {
        let status = shared(false)
            .request(request("\"nope\"", None))
            .err()
            .expect("the call's status");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        let mut stream = shared(true).request(request("\"nope\"", None)).expect("a stream");
        let status = stream.next().await.expect("an item").unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Unimplemented, crate::error::NO_MESSAGE_HANDLER)
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_the_reply_and_covers_a_waiting_router() {
        for waiting in [false, true] {
            let mut stream = shared(waiting)
                .request(request("\"slow\"", Some(Duration::from_millis(150))))
                .expect("a stream");
            let status = stream.next().await.expect("an item").unwrap_err();
            assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "waiting: {waiting}");
            assert!(stream.next().await.is_none());
        }
        let mut stream = shared(true).request(request("\"slow\"", None)).expect("a stream");
        assert_eq!(stream.next().await.expect("an item").unwrap(), Bytes::from_static(b"1"));
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn grpc_timeouts() {
        let with = |v: &'static str| {
            let mut meta = MetadataMap::new();
            meta.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&meta)
        };
        assert_eq!(with("150m"), Some(Duration::from_millis(150)));
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("5x"), None);
        assert_eq!(with("m"), None);
        assert_eq!(with("1234567890S"), None, "at most 8 digits");
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn headers_leave_grpcs_own_out() {
        let mut meta = MetadataMap::new();
        meta.insert("grpc-timeout", "1S".parse().unwrap());
        meta.insert("te", "trailers".parse().unwrap());
        meta.insert("x-trace", "abc".parse().unwrap());
        meta.insert_bin("x-bin", tonic::metadata::MetadataValue::from_bytes(b"\x00"));
        let ctx = context(&meta, Kind::Request);
        assert_eq!(ctx.headers().len(), 1);
        assert_eq!(ctx.headers().get("x-trace"), Some("abc"));
        assert!(ctx.deadline().is_some());
        assert_eq!(ctx.transport(), "grpc");
        assert_eq!(
            context(&meta, Kind::Event).deadline(),
            None,
            "an event runs after the call"
        );
    }
}
