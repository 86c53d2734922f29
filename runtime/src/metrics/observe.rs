//! Counting handled messages per route and calls per transport.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures_util::future::FutureExt;
use metrics::{Counter, Gauge, Histogram};

use super::{enabled, names};
use crate::error::{Error, RpcError};
use crate::service::{Kind, Replies, Reply, Route};

/// The transports a route's handles are kept for (any other counts as `custom`).
const TRANSPORTS: [&str; 9] = ["mem", "tcp", "redis", "nats", "mqtt", "amqp", "kafka", "grpc", "custom"];

fn slot(transport: &str) -> usize {
    TRANSPORTS
        .iter()
        .position(|t| *t == transport)
        .unwrap_or(TRANSPORTS.len() - 1)
}

/// One route's metrics on one transport for one kind: looked up once, then each message
/// costs atomic updates only.
struct Handles {
    ok: Counter,
    duration: Histogram,
    in_flight: Gauge,
    /// Transport, route and kind labels, for the outcomes other than `ok`.
    labels: [&'static str; 3],
}

impl Handles {
    fn new(transport: &'static str, route: &'static str, kind: Kind) -> Self {
        let kind = kind_label(kind);
        let route = route_label(route);
        Handles {
            ok: metrics::counter!(names::HANDLED, "transport" => transport, "route" => route, "kind" => kind, "outcome" => "ok"),
            duration: metrics::histogram!(names::HANDLE_DURATION, "transport" => transport, "route" => route, "kind" => kind),
            in_flight: metrics::gauge!(names::IN_FLIGHT, "transport" => transport, "route" => route),
            labels: [transport, route, kind],
        }
    }

    fn failed(&self, outcome: &'static str) {
        let [transport, route, kind] = self.labels;
        metrics::counter!(names::HANDLED, "transport" => transport, "route" => route, "kind" => kind, "outcome" => outcome)
            .increment(1);
    }
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Request => "request",
        Kind::Event => "event",
    }
}

/// Patterns nobody serves are the sender's text: one label for all of them.
fn route_label(route: &'static str) -> &'static str {
    if route.is_empty() { "(unmatched)" } else { route }
}

/// `route` (named `name`, empty for the fallback) counting the messages it handles; a service
/// wraps its routes in it when it starts with metrics [`enabled`].
pub(crate) fn observe(name: &'static str, route: Route) -> Route {
    // Leaked once per route, transport and kind (a bounded few): a message then touches no
    // reference count.
    let slots: Arc<[OnceLock<&'static Handles>; 18]> = Arc::new(std::array::from_fn(|_| OnceLock::new()));
    Route::from_fn(move |req| {
        let ctx = req.context();
        let (at, kind) = (slot(ctx.transport()), ctx.kind());
        let transport = TRANSPORTS[at];
        let handles: &'static Handles = slots[at * 2 + usize::from(kind == Kind::Event)]
            .get_or_init(|| Box::leak(Box::new(Handles::new(transport, name, kind))));
        let reply = route.call(req);
        let guard = InFlight::start(handles);
        async move {
            let reply = reply.await;
            guard.finish(&reply);
            reply
        }
        .boxed()
    })
}

/// A message being handled: counted as `cancelled` if dropped before its reply (its
/// caller's deadline passed).
struct InFlight {
    handles: &'static Handles,
    start: Instant,
    done: bool,
}

impl InFlight {
    fn start(handles: &'static Handles) -> Self {
        handles.in_flight.increment(1.0);
        InFlight {
            handles,
            start: Instant::now(),
            done: false,
        }
    }

    fn finish(mut self, reply: &Reply) {
        self.done = true;
        let h = self.handles;
        h.in_flight.decrement(1.0);
        h.duration.record(self.start.elapsed().as_secs_f64());
        if reply.is_no_handler() {
            h.failed("no_handler");
        } else if let Some(e) = reply.as_error() {
            h.failed(e.kind());
        } else {
            h.ok.increment(1);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.handles.in_flight.decrement(1.0);
            self.handles.failed("cancelled");
        }
    }
}

/// A call being made; [`Called::done`] records it.
pub(crate) struct Called {
    start: Instant,
}

impl Called {
    /// Starts timing a call, if metrics are on.
    #[inline]
    pub(crate) fn start() -> Option<Called> {
        enabled().then(|| Called { start: Instant::now() })
    }

    /// Records a call to `route` over `transport` and how it ended.
    pub(crate) fn done(self, transport: &'static str, route: &str, kind: Kind, outcome: &Result<Replies, Error>) {
        let kind = kind_label(kind);
        let outcome = match outcome {
            Ok(replies) => replies.first_error().map_or("ok", RpcError::kind),
            Err(e) => e.kind(),
        };
        let route = route.to_owned();
        metrics::histogram!(names::CALL_DURATION, "transport" => transport, "route" => route.clone(), "kind" => kind)
            .record(self.start.elapsed().as_secs_f64());
        metrics::counter!(names::CALLS, "transport" => transport, "route" => route, "kind" => kind, "outcome" => outcome)
            .increment(1);
    }
}
