//! The serve loop every broker transport shares, and the NestJS pieces they all need.
//!
//! A broker supplies a [`Source`] of [`Delivery`]s (its subscription, reconnecting by
//! itself); each delivery knows how to become a request, where its reply packets go, and how
//! to acknowledge itself. The loop here does the rest, the same way on every broker: at most
//! `max_in_flight` messages handled at once (the broker keeps the rest), a handler that
//! answers at once run and its reply sent by the loop itself and one that waits given a task,
//! finished tasks reaped without waking the loop, and on shutdown: stop taking messages, let
//! the ones in flight finish (and reply, and acknowledge), then close.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::future::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Endpoint, Shutdown};
use crate::error::{Error, Result};
use crate::service::{Address, Context, Headers, Kind, Payload, Reply, Request, Router, RouterFuture};
use crate::wire::nestjs::packet::{Packet, PacketError};
use crate::wire::nestjs::steps::{Step, Steps};

/// The URL parameter that bounds the messages a server handles at once, on every transport.
pub(crate) const MAX_IN_FLIGHT: &str = "max_in_flight";

/// `max_in_flight` from the URL (at least 1), or `default`.
pub(crate) fn max_in_flight(ep: &Endpoint, default: usize) -> Result<usize> {
    Ok(ep
        .param_as::<usize>(MAX_IN_FLIGHT)?
        .unwrap_or(default)
        .clamp(1, Semaphore::MAX_PERMITS))
}

/// A broker's subscription.
pub(crate) trait Source: Send + 'static {
    /// One message as the broker delivered it.
    type Delivery: Delivery;

    /// The next message; `None` once the source has ended (it reconnects by itself and only
    /// ends when it cannot go on).
    fn next(&mut self) -> impl Future<Output = Option<Self::Delivery>> + Send;

    /// Stops taking messages, once shutdown has begun (unsubscribe, cancel the consumer).
    fn stop(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// Closes the connection, once every message in flight is done.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// One message from a broker.
pub(crate) trait Delivery: Send + 'static {
    /// Hands the message to `router` before returning, so that messages reach the router in
    /// the order they were delivered (which fixes the order of a pattern's events), and
    /// returns the rest: waiting for the reply, sending it, acknowledging.
    fn serve(self, router: &Router) -> Handling<impl Future<Output = ()> + Send + 'static>;
}

/// What is left of a message once handed to the router.
pub(crate) struct Handling<F> {
    /// Its handler is still running (it waits on something, or for its turn): the rest gets
    /// a task of its own, so that handlers that wait run in parallel. Otherwise (most
    /// handlers answer at once) the rest is sending the reply and acknowledging, which the
    /// serve loop drives itself: no task to spawn, and the message is freed on the thread
    /// that read it (glibc's allocator locks an arena for a block freed on another thread).
    pub waits: bool,
    pub rest: F,
}

impl<F> Handling<F> {
    /// The rest of a message whose handler has answered already, or never ran.
    #[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(dead_code))]
    pub(crate) fn done(rest: F) -> Self {
        Handling { waits: false, rest }
    }
}

/// A routed message's reply, polled once where it was routed.
pub(crate) enum Started {
    Ready(Option<Reply>),
    Waiting(RouterFuture),
}

/// Polls a routed message's reply once, right away: most handlers answer without waiting.
pub(crate) fn start(mut reply: RouterFuture) -> Started {
    match reply.poll_unpin(&mut TaskContext::from_waker(std::task::Waker::noop())) {
        Poll::Ready(reply) => Started::Ready(Some(reply)),
        Poll::Pending => Started::Waiting(reply),
    }
}

impl Started {
    /// The handler has not answered yet.
    pub(crate) fn waits(&self) -> bool {
        matches!(self, Started::Waiting(_))
    }
}

impl Future for Started {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Reply> {
        match self.get_mut() {
            Started::Ready(reply) => Poll::Ready(reply.take().expect("a reply is taken once")),
            Started::Waiting(reply) => reply.poll_unpin(cx),
        }
    }
}

/// Serves `source` until `shutdown`, then drains: the loop every broker runs.
pub(crate) async fn serve<S: Source>(mut source: S, router: Router, max_in_flight: usize, mut shutdown: Shutdown) {
    // Messages whose handlers answered at once: their replies' sending, driven here.
    let mut sending = FuturesUnordered::new();
    // Messages whose handlers wait, each in a task.
    let mut tasks = JoinSet::new();
    // One wait for the whole loop: a new one per message would register with the signal
    // (a lock) each time.
    let stop = shutdown.wait();
    tokio::pin!(stop);
    'serve: loop {
        // Reaped here rather than awaited in the selects: a task waiting on `join_next` is
        // woken by every handler that ends, one more wake-up per message.
        while let Some(done) = tasks.try_join_next() {
            log_panic(done);
        }
        let delivery = {
            // Kept across the replies sent meanwhile: a source's `next` need not be
            // cancel-safe.
            let next = source.next();
            tokio::pin!(next);
            loop {
                // Room for one more message first: while full, messages wait in the broker.
                let room = sending.len() + tasks.len() < max_in_flight;
                tokio::select! {
                    biased;
                    _ = &mut stop => break 'serve,
                    Some(()) = sending.next(), if !sending.is_empty() => {}
                    Some(done) = tasks.join_next(), if !room && !tasks.is_empty() => log_panic(done),
                    next = &mut next, if room => match next {
                        Some(delivery) => break delivery,
                        None => break 'serve,
                    },
                }
            }
        };
        let Handling { waits, rest } = delivery.serve(&router);
        if waits {
            // Boxed here: a delivery's future is kilobytes, and spawned as it is, it would be
            // copied several times on its way into the task.
            tasks.spawn(Box::pin(rest));
        } else {
            sending.push(AssertUnwindSafe(rest).catch_unwind().map(log_caught as fn(_)));
        }
    }
    source.stop().await;
    let sent = async { while sending.next().await.is_some() {} };
    let handled = async {
        while let Some(done) = tasks.join_next().await {
            log_panic(done);
        }
    };
    tokio::join!(sent, handled);
    source.close().await;
}

/// A panic while sending a reply (the transport's own code: handlers' panics are caught by
/// the router), logged as a task's would be.
fn log_caught(done: std::thread::Result<()>) {
    if let Err(panic) = done {
        tracing::error!(panic = %crate::error::panic_message(&*panic), "sending a reply panicked");
    }
}

fn log_panic(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        // Handlers' panics are caught by the router; this is the transport's own code.
        tracing::error!(panic = %crate::error::panic_message(&*e.into_panic()), "a message task panicked");
    }
}

/// What a broker received, read as NestJS reads it.
// RabbitMQ and Kafka read messages their own way.
#[cfg_attr(not(any(feature = "redis", feature = "nats", feature = "mqtt")), allow(dead_code))]
pub(crate) enum Inbound {
    /// A NestJS packet: the request or event, and the raw `id` a request's reply echoes.
    Packet { request: Request, id: Option<Bytes> },
    /// Not a NestJS packet (JSON without `pattern` and `data`, or not JSON at all): NestJS
    /// hands it to the channel's event listeners as the data (text when it is not JSON).
    External(Request),
    /// Not text at all.
    Invalid,
}

/// Reads a message that arrived at `address` (a broker routing by channel passes
/// `Router::channel_address(channel)`) as NestJS does. `headers` are the broker's own (NATS,
/// AMQP); the packet's `metadata` is added to them.
#[cfg_attr(not(any(feature = "redis", feature = "nats", feature = "mqtt")), allow(dead_code))]
pub(crate) fn read(body: &Bytes, address: Address, transport: &'static str, headers: Headers) -> Inbound {
    match Packet::parse(body) {
        Ok(mut p) if p.pattern.is_some() || p.data.is_some() => {
            let id = p.id.map(|id| body.slice(Packet::range_in(body, id)));
            let kind = if id.is_some() { Kind::Request } else { Kind::Event };
            let headers = match (headers.is_empty(), p.metadata) {
                // Taken as parsed: no second map.
                (true, _) => p.headers(),
                (false, None) => headers,
                (false, Some(_)) => {
                    let mut headers = headers;
                    headers.extend(p.headers().iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
                    headers
                }
            };
            let payload = p.payload(body);
            let ctx = Context::new(transport, kind).with_headers(headers);
            Inbound::Packet {
                request: Request::new(address, payload, ctx),
                id,
            }
        }
        Ok(_) | Err(PacketError::NotAnObject) => Inbound::External(external(address, body.clone(), transport, headers)),
        Err(PacketError::InvalidJson(_)) => {
            let text = serde_json::to_vec(&*String::from_utf8_lossy(body)).expect("strings serialise");
            Inbound::External(external(address, text.into(), transport, headers))
        }
        Err(PacketError::InvalidUtf8) => Inbound::Invalid,
    }
}

#[cfg_attr(not(any(feature = "redis", feature = "nats", feature = "mqtt")), allow(dead_code))]
fn external(address: Address, data: Bytes, transport: &'static str, headers: Headers) -> Request {
    let ctx = Context::new(transport, Kind::Event).with_headers(headers);
    Request::new(address, Payload::Json(data), ctx)
}

/// Where one request's reply packets go.
pub(crate) trait ReplySink: Send {
    /// Sends one packet of the reply.
    fn send(&mut self, step: Step) -> impl Future<Output = Result<()>> + Send;
}

/// Sends a reply's packets, in NestJS's shape (completion merged into the last value), until
/// the reply ends or a packet cannot be sent.
pub(crate) async fn send_reply(reply: Reply, sink: &mut impl ReplySink) -> Result<()> {
    let mut steps = Steps::new(reply);
    while let Some(step) = steps.next().await {
        sink.send(step).await?;
    }
    Ok(())
}

/// FNV-1a, 64 bits: a digest every replica computes alike, whatever it was built with.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A served route's subscription failed.
#[allow(dead_code)]
pub(crate) fn subscribe_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::broker(format!("cannot subscribe to {what}"), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_external_messages_and_garbage() {
        let body = Bytes::from_static(br#"{"pattern":"sum","data":[1,2],"id":"7","metadata":{"k":"v"}}"#);
        let Inbound::Packet { request, id } = read(&body, Address::static_route("sum"), "redis", Headers::new()) else {
            panic!()
        };
        assert_eq!(id.as_deref(), Some(&b"\"7\""[..]));
        assert_eq!(request.payload().and_then(Payload::json), Some(&b"[1,2]"[..]));
        assert_eq!(request.headers().get("k"), Some("v"));
        assert_eq!(request.kind(), Kind::Request);

        let Inbound::External(ext) = read(
            &Bytes::from_static(b"[1]"),
            Address::static_route("sum"),
            "redis",
            Headers::new(),
        ) else {
            panic!()
        };
        assert_eq!(ext.payload().and_then(Payload::json), Some(&b"[1]"[..]));
        assert_eq!(ext.kind(), Kind::Event);
        let Inbound::External(text) = read(
            &Bytes::from_static(b"hello"),
            Address::static_route("sum"),
            "redis",
            Headers::new(),
        ) else {
            panic!()
        };
        assert_eq!(text.payload().and_then(Payload::json), Some(&b"\"hello\""[..]));
        assert!(matches!(
            read(
                &Bytes::from_static(b"\xff"),
                Address::static_route("sum"),
                "redis",
                Headers::new()
            ),
            Inbound::Invalid
        ));
    }

    /// A source of deliveries whose handlers answer at once or wait, each finishing when
    /// its gate opens; it counts what it handed out, and its stop and close.
    mod fake {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use tokio::sync::{Semaphore, mpsc};

        use super::super::{Delivery, Handling, Source};
        use crate::service::Router;

        #[derive(Default)]
        pub struct Seen {
            pub taken: AtomicUsize,
            pub finished: AtomicUsize,
            pub stopped: AtomicUsize,
            pub closed: AtomicUsize,
        }

        pub struct Fake {
            pub rx: mpsc::UnboundedReceiver<Msg>,
            pub seen: Arc<Seen>,
        }

        pub struct Msg {
            pub waits: bool,
            pub gate: Arc<Semaphore>,
            pub seen: Arc<Seen>,
        }

        impl Source for Fake {
            type Delivery = Msg;

            async fn next(&mut self) -> Option<Msg> {
                let msg = self.rx.recv().await?;
                self.seen.taken.fetch_add(1, Ordering::SeqCst);
                Some(msg)
            }

            async fn stop(&mut self) {
                self.seen.stopped.fetch_add(1, Ordering::SeqCst);
            }

            async fn close(self) {
                assert_eq!(self.seen.stopped.load(Ordering::SeqCst), 1, "closed before it stopped");
                self.seen.closed.fetch_add(1, Ordering::SeqCst);
            }
        }

        impl Delivery for Msg {
            fn serve(self, _: &Router) -> Handling<impl Future<Output = ()> + Send + 'static> {
                let Msg { waits, gate, seen } = self;
                Handling {
                    waits,
                    rest: async move {
                        let _open = gate.acquire().await.expect("gates stay open");
                        seen.finished.fetch_add(1, Ordering::SeqCst);
                    },
                }
            }
        }
    }

    /// The serve loop over a fake source, allowing `max_in_flight`: what the source saw,
    /// where its messages come from, the shutdown switch, and the loop.
    fn serving(
        max_in_flight: usize,
    ) -> (
        std::sync::Arc<fake::Seen>,
        tokio::sync::mpsc::UnboundedSender<fake::Msg>,
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let seen = std::sync::Arc::new(fake::Seen::default());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let source = fake::Fake { rx, seen: seen.clone() };
        let router = crate::service::RouterBuilder::default().build(false, |route| route, |_, route| route);
        let (stop, shutdown) = Shutdown::new();
        let serving = tokio::spawn(serve(source, router, max_in_flight, shutdown));
        (seen, tx, stop, serving)
    }

    /// Sends the fake source a message whose handler waits or not, finishing once `gate` opens.
    fn deliver(
        tx: &tokio::sync::mpsc::UnboundedSender<fake::Msg>,
        seen: &std::sync::Arc<fake::Seen>,
        gate: &std::sync::Arc<tokio::sync::Semaphore>,
        waits: bool,
    ) {
        let msg = fake::Msg {
            waits,
            gate: gate.clone(),
            seen: seen.clone(),
        };
        assert!(tx.send(msg).is_ok());
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    /// `max_in_flight` counts messages whose replies the loop sends and messages in tasks
    /// alike, and shutdown lets both finish before the source closes.
    #[tokio::test]
    async fn the_in_flight_bound_and_the_drain_cover_both_kinds_of_work() {
        use std::sync::Arc;
        use std::sync::atomic::Ordering::SeqCst;

        use tokio::sync::Semaphore;

        let (seen, tx, stop, serving) = serving(2);
        let gates: Vec<_> = (0..3).map(|_| Arc::new(Semaphore::new(0))).collect();
        for (gate, waits) in gates.iter().zip([false, true, false]) {
            deliver(&tx, &seen, gate, waits);
        }
        settle().await;
        assert_eq!(
            seen.taken.load(SeqCst),
            2,
            "a third message was taken past max_in_flight = 2"
        );

        // The one the loop drives itself finishes: room for the third.
        gates[0].add_permits(1);
        settle().await;
        assert_eq!(seen.finished.load(SeqCst), 1);
        assert_eq!(seen.taken.load(SeqCst), 3);

        // Shutdown with one message in a task and one in the loop: both finish first.
        stop.send_replace(true);
        settle().await;
        assert_eq!(seen.stopped.load(SeqCst), 1, "shutdown stops taking messages");
        assert_eq!(seen.closed.load(SeqCst), 0, "closed with messages in flight");
        assert!(!serving.is_finished());
        gates[1].add_permits(1);
        gates[2].add_permits(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), serving)
            .await
            .expect("the loop ends once the messages in flight are done")
            .expect("the loop does not panic");
        assert_eq!(seen.finished.load(SeqCst), 3);
        assert_eq!(seen.closed.load(SeqCst), 1);
    }

    /// A message whose handler waits does not hold up the ones after it, nor does one whose
    /// reply is slow to send.
    #[tokio::test]
    async fn waiting_work_of_either_kind_does_not_hold_up_later_messages() {
        use std::sync::Arc;
        use std::sync::atomic::Ordering::SeqCst;

        use tokio::sync::Semaphore;

        let (seen, tx, _stop, _serving) = serving(16);
        let (stuck, open) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(16)));
        for (gate, waits) in [(&stuck, true), (&stuck, false), (&open, false), (&open, true)] {
            deliver(&tx, &seen, gate, waits);
        }
        settle().await;
        assert_eq!(seen.taken.load(SeqCst), 4);
        assert_eq!(
            seen.finished.load(SeqCst),
            2,
            "the two open messages finish behind the stuck ones"
        );
    }

    #[test]
    fn fnv1a_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
