//! Counting handled messages per route and calls per transport.
//!
//! With [`install`](super::install)'s recorder, a message costs two clock reads, at its start
//! and its end, and a few plain stores into the recording thread's own shard ([`Series`]),
//! the duration kept in the clock's ticks. Over TCP the reads are shared: a message starts
//! at the read that brought it ([`Arrival`]), and a reply ready while that read's messages
//! are handled ends when they are done ([`Together`]). The histogram counts
//! every reply, so `ok` is its count less the failures, and what is in flight its starts
//! less its count and the cancelled; [`publish`] hands those to the exporter when it renders.
//! With another recorder every message goes through the `metrics` facade's handles.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use metrics::{Counter, Gauge, Histogram, Key, Label};
use rustc_hash::FxBuildHasher;

use super::prometheus::Histograms;
use super::series::Series;
use super::{clock, enabled, names};
use crate::error::{Error, RpcError};
use crate::service::{Arrival, Kind, Replies, Reply, Request, Route, Watch, Watcher, Watching};

/// The transports a route's handles are kept for (any other counts as `custom`).
const TRANSPORTS: [&str; 9] = ["mem", "tcp", "redis", "nats", "mqtt", "amqp", "kafka", "grpc", "custom"];

/// Handles kept per route, transport and kind.
const SLOTS: usize = TRANSPORTS.len() * 2;

/// Distinct routes a process's clients keep handles for; calls to any more are counted
/// through the facade at each call (a client sending made-up patterns costs no memory here).
const MAX_CALLED_ROUTES: usize = 4096;

/// The index of `transport` and `kind` in a route's handles.
#[inline]
fn slot(transport: &str, kind: Kind) -> usize {
    // In `TRANSPORTS`' order. Byte patterns, not a search or string comparisons (calls to
    // `memcmp`): this runs for every message.
    let at = match *transport.as_bytes() {
        [b'm', b'e', b'm'] => 0,
        [b't', b'c', b'p'] => 1,
        [b'r', b'e', b'd', b'i', b's'] => 2,
        [b'n', b'a', b't', b's'] => 3,
        [b'm', b'q', b't', b't'] => 4,
        [b'a', b'm', b'q', b'p'] => 5,
        [b'k', b'a', b'f', b'k', b'a'] => 6,
        [b'g', b'r', b'p', b'c'] => 7,
        _ => 8,
    };
    at * 2 + usize::from(kind == Kind::Event)
}

/// The clock now, if metrics are recorded: a transport's [`Arrival`].
#[inline]
pub(crate) fn arrival_now() -> Option<u64> {
    enabled().then(clock::now)
}

/// The side a series counts.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Handled,
    Called,
}

/// One route's metrics on one transport for one kind, on one side: looked up once.
struct Handles {
    ok: Counter,
    duration: Histogram,
    /// Messages being handled (the server's side only).
    in_flight: Option<Gauge>,
    /// With [`install`](super::install)'s recorder: what the handles above are computed from.
    fast: Option<Fast>,
    /// The counter's name, and its transport, route and kind labels, for the other outcomes.
    total: &'static str,
    labels: [&'static str; 3],
    /// Messages handled over TCP: a reply ready while its read is handled is timed with the
    /// others of that read ([`Together`]).
    together: bool,
}

struct Fast {
    series: Arc<Series>,
    failed: AtomicU64,
    cancelled: AtomicU64,
}

/// Every [`Handles`] made, by side, then transport and kind ([`slot`]), then route: one per
/// series, however many routes share it (a route's request handler and its events, two
/// services in one process).
#[derive(Default)]
struct Registry {
    by: HashMap<(Side, usize), HashMap<Box<str>, &'static Handles>>,
    called: usize,
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    static ALL: OnceLock<Mutex<Registry>> = OnceLock::new();
    ALL.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

impl Handles {
    /// The handles of `route` on `side`, made (and leaked: a bounded few) the first time.
    fn get(all: &mut Registry, side: Side, at: usize, route: &str) -> &'static Handles {
        let routes = all.by.entry((side, at)).or_default();
        if let Some(&h) = routes.get(route) {
            return h;
        }
        let kind = if at % 2 == 1 { "event" } else { "request" };
        let label: &'static str = Box::leak(route.into());
        let labels = [TRANSPORTS[at / 2], label, kind];
        let handles: &'static Handles = Box::leak(Box::new(Handles::new(side, labels, super::histograms())));
        routes.insert(route.into(), handles);
        handles
    }

    /// A served route's handles.
    fn served(at: usize, route: &str) -> &'static Handles {
        Handles::get(&mut lock(), Side::Handled, at, route)
    }

    /// A called route's handles; `None` for a new route once clients have handles for
    /// `MAX_CALLED_ROUTES` routes.
    fn called(at: usize, route: &str) -> Option<&'static Handles> {
        let mut all = lock();
        let known = all.by.get(&(Side::Called, at)).is_some_and(|r| r.contains_key(route));
        if !known {
            if all.called >= MAX_CALLED_ROUTES {
                return None;
            }
            all.called += 1;
        }
        Some(Handles::get(&mut all, Side::Called, at, route))
    }

    /// With `histograms` (the ones [`install`](super::install) set up), `fast`.
    fn new(side: Side, labels: [&'static str; 3], histograms: Option<&Histograms>) -> Self {
        let [transport, route, kind] = labels;
        let (total, duration_name) = match side {
            Side::Handled => (names::HANDLED, names::HANDLE_DURATION),
            Side::Called => (names::CALLS, names::CALL_DURATION),
        };
        let key = Key::from_parts(
            duration_name,
            vec![
                Label::new("transport", transport),
                Label::new("route", route),
                Label::new("kind", kind),
            ],
        );
        let fast = histograms.map(|h| Fast {
            series: h.series(&key),
            failed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        });
        Handles {
            ok: metrics::counter!(total, "transport" => transport, "route" => route, "kind" => kind, "outcome" => "ok"),
            duration: match fast {
                Some(_) => Histogram::noop(),
                None => metrics::histogram!(duration_name, "transport" => transport, "route" => route, "kind" => kind),
            },
            in_flight: (side == Side::Handled)
                .then(|| metrics::gauge!(names::IN_FLIGHT, "transport" => transport, "route" => route)),
            fast,
            total,
            labels,
            together: side == Side::Handled && transport == "tcp",
        }
    }

    fn outcome(&self, outcome: &'static str) {
        let [transport, route, kind] = self.labels;
        metrics::counter!(self.total, "transport" => transport, "route" => route, "kind" => kind, "outcome" => outcome)
            .increment(1);
    }

    #[inline]
    fn start(&self) {
        match (&self.fast, &self.in_flight) {
            (Some(fast), _) => fast.series.start(),
            (None, Some(gauge)) => gauge.increment(1.0),
            (None, None) => {}
        }
    }

    /// A message or call that took `ticks` of the [`clock`] ended, `ok` or failed with `failure`.
    #[inline]
    fn finish(&self, ticks: u64, failure: Option<&'static str>) {
        if let Some(outcome) = failure {
            self.outcome(outcome);
            if let Some(fast) = &self.fast {
                // Before the sample that makes it count as handled: `publish` never sees
                // the sample without the failure, so `ok` is never overstated.
                fast.failed.fetch_add(1, Ordering::Release);
            }
        }
        match &self.fast {
            Some(fast) => fast.series.record_ticks(ticks),
            None => {
                if let Some(gauge) = &self.in_flight {
                    gauge.decrement(1.0);
                }
                self.duration.record(clock::seconds(ticks));
                if failure.is_none() {
                    self.ok.increment(1);
                }
            }
        }
    }

    fn cancelled(&self) {
        self.outcome("cancelled");
        match (&self.fast, &self.in_flight) {
            (Some(fast), _) => {
                fast.cancelled.fetch_add(1, Ordering::Release);
            }
            (None, Some(gauge)) => gauge.decrement(1.0),
            (None, None) => {}
        }
    }

    /// Hands the counts of a `fast` series to the exporter's `ok` counter and in-flight gauge.
    fn publish(&self) {
        let Some(fast) = &self.fast else { return };
        // Ended first, started last: every end read has its start read too.
        let ended = fast.series.count();
        let failed = fast.failed.load(Ordering::Acquire);
        let cancelled = fast.cancelled.load(Ordering::Acquire);
        self.ok.absolute(ended.saturating_sub(failed));
        if let Some(gauge) = &self.in_flight {
            let started = fast.series.started();
            gauge.set(started.saturating_sub(ended + cancelled) as f64);
        }
    }
}

impl Watcher for Handles {
    fn end(&'static self, started: u64, reply: Option<&Reply>) {
        match reply {
            None => self.cancelled(),
            Some(reply) => {
                let failure = if reply.is_no_handler() {
                    Some("no_handler")
                } else {
                    reply.as_error().map(RpcError::kind)
                };
                if self.together && TOGETHER.get() {
                    ENDED.with_borrow_mut(|ended| ended.push((self, started, failure)));
                } else {
                    self.finish(clock::since(started), failure);
                }
            }
        }
    }
}

thread_local! {
    /// A TCP read's messages are being handled on this thread ([`Together`]).
    static TOGETHER: Cell<bool> = const { Cell::new(false) };
    /// Their replies so far: handles, start and failure.
    static ENDED: RefCell<Vec<(&'static Handles, u64, Option<&'static str>)>> = const { RefCell::new(Vec::new()) };
}

/// While a TCP connection handles the messages of one read: the replies ready meanwhile go
/// out together when it is dropped, so they are timed then, with one clock read for all.
#[cfg_attr(not(feature = "tcp"), allow(dead_code))]
pub(crate) struct Together(());

#[cfg_attr(not(feature = "tcp"), allow(dead_code))]
impl Together {
    /// `None` unless metrics are recorded.
    #[inline]
    pub(crate) fn open() -> Option<Together> {
        enabled().then(Together::begin)
    }

    fn begin() -> Together {
        TOGETHER.set(true);
        Together(())
    }
}

impl Drop for Together {
    fn drop(&mut self) {
        let _ = TOGETHER.try_with(|open| open.set(false));
        let _ = ENDED.try_with(|ended| {
            let mut ended = ended.borrow_mut();
            if ended.is_empty() {
                return;
            }
            let now = clock::now();
            for (handles, started, failure) in ended.drain(..) {
                handles.finish(now.saturating_sub(started), failure);
            }
        });
    }
}

/// Hands every series' counts to the exporter (before it renders).
pub(crate) fn publish() {
    let all: Vec<&'static Handles> = lock().by.values().flat_map(|routes| routes.values().copied()).collect();
    for handles in all {
        handles.publish();
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

/// A route's handles per transport and kind, found on its first message of each.
struct Observer {
    name: &'static str,
    slots: [OnceLock<&'static Handles>; SLOTS],
}

impl Watch for Observer {
    #[inline]
    fn start(&self, req: &Request, arrival: Option<Arrival>) -> Watching {
        let ctx = req.context();
        let at = slot(ctx.transport(), ctx.kind());
        let handles = *self.slots[at].get_or_init(|| Handles::served(at, route_label(self.name)));
        handles.start();
        let started = match arrival {
            Some(Arrival(at)) => at,
            None => clock::now(),
        };
        Watching::new(handles, started)
    }
}

/// `route` (named `name`, empty for the fallback) counting the messages it handles; a service
/// wraps its routes in it when it starts with metrics [`enabled`].
pub(crate) fn observe(name: &'static str, route: Route) -> Route {
    clock::warm_up();
    Route::watched(
        route,
        Observer {
            name,
            slots: std::array::from_fn(|_| OnceLock::new()),
        },
    )
}

/// A call being made; [`Called::done`] records it.
pub(crate) struct Called {
    start: u64,
}

thread_local! {
    /// The calling thread's handles per transport and kind, by route: a call looks its
    /// route up here, without a lock or an allocation.
    static CALLED: RefCell<[HashMap<Box<str>, &'static Handles, FxBuildHasher>; SLOTS]> =
        RefCell::new(std::array::from_fn(|_| HashMap::default()));
}

impl Called {
    /// Starts timing a call, if metrics are on.
    #[inline]
    pub(crate) fn start() -> Option<Called> {
        enabled().then(|| Called { start: clock::now() })
    }

    /// Records a call to `route` over `transport` and how it ended.
    pub(crate) fn done(self, transport: &'static str, route: &str, kind: Kind, outcome: &Result<Replies, Error>) {
        let ticks = clock::since(self.start);
        let failure = match outcome {
            Ok(replies) => replies.first_error().map(RpcError::kind),
            Err(e) => Some(e.kind()),
        };
        let at = slot(transport, kind);
        let handles = CALLED
            .try_with(|cache| {
                let mut cache = cache.borrow_mut();
                if let Some(h) = cache[at].get(route) {
                    return Some(*h);
                }
                let h = Handles::called(at, route)?;
                cache[at].insert(route.into(), h);
                Some(h)
            })
            .ok()
            .flatten();
        match handles {
            Some(h) => h.finish(ticks, failure),
            None => uncached(
                transport,
                route,
                kind_label(kind),
                clock::seconds(ticks),
                failure.unwrap_or("ok"),
            ),
        }
    }
}

/// A call to a route beyond the cached ones, counted through the facade.
fn uncached(transport: &'static str, route: &str, kind: &'static str, seconds: f64, outcome: &'static str) {
    let route = route.to_owned();
    metrics::histogram!(names::CALL_DURATION, "transport" => transport, "route" => route.clone(), "kind" => kind)
        .record(seconds);
    metrics::counter!(names::CALLS, "transport" => transport, "route" => route, "kind" => kind, "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_transports_order() {
        for (i, transport) in TRANSPORTS.iter().enumerate() {
            assert_eq!(slot(transport, Kind::Request), 2 * i);
            assert_eq!(slot(transport, Kind::Event), 2 * i + 1);
        }
        assert_eq!(slot("carrier-pigeon", Kind::Request), 2 * 8, "custom");
    }

    #[test]
    fn a_message_is_timed_from_its_arrival_when_its_transport_gives_one() {
        use crate::service::{Address, Context, Payload};
        let observer = Observer {
            name: "timed",
            slots: std::array::from_fn(|_| OnceLock::new()),
        };
        let req = || {
            Request::new(
                Address::static_route("timed"),
                Payload::null(),
                Context::new("tcp", Kind::Request),
            )
        };
        assert_eq!(observer.start(&req(), Some(Arrival(5))).started(), 5);
        let before = clock::now();
        let started = observer.start(&req(), None).started();
        assert!((before..=clock::now()).contains(&started), "read when it starts");
    }

    #[test]
    fn replies_ready_during_a_read_are_timed_when_they_go_out() {
        let histograms: &'static Histograms = Box::leak(Box::default());
        let handles = |transport| -> &'static Handles {
            Box::leak(Box::new(Handles::new(
                Side::Handled,
                [transport, "together", "request"],
                Some(histograms),
            )))
        };
        let (tcp, mem) = (handles("tcp"), handles("mem"));
        let count = |h: &Handles| h.fast.as_ref().unwrap().series.count();
        let together = Together::begin();
        let started = clock::now();
        tcp.end(started, Some(&Reply::empty()));
        mem.end(started, Some(&Reply::empty()));
        assert_eq!(count(tcp), 0, "not before its read's replies go out");
        assert_eq!(count(mem), 1, "another transport's message is timed at its end");
        std::thread::sleep(std::time::Duration::from_millis(2));
        drop(together);
        assert_eq!(count(tcp), 1);
        let (buckets, _) = tcp.fast.as_ref().unwrap().series.buckets();
        assert!(
            buckets[..4].iter().all(|&n| n == 0),
            "timed when they went out, 2 ms on: {buckets:?}"
        );
        // Outside a read: at once.
        tcp.end(clock::now(), Some(&Reply::empty()));
        assert_eq!(count(tcp), 2);
    }

    #[test]
    fn ok_and_in_flight_are_derived_from_the_histogram_when_rendered() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        let histograms = Histograms::default();
        let value = |text: &str, series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {series} in {text}"))
        };
        let ok = r#"switchboard_messages_handled_total{transport="tcp",route="r",kind="request",outcome="ok"}"#;
        let failed =
            r#"switchboard_messages_handled_total{transport="tcp",route="r",kind="request",outcome="rpc_error"}"#;
        let cancelled =
            r#"switchboard_messages_handled_total{transport="tcp",route="r",kind="request",outcome="cancelled"}"#;
        let in_flight = r#"switchboard_messages_in_flight{transport="tcp",route="r"}"#;
        metrics::with_local_recorder(&recorder, || {
            let h = Handles::new(Side::Handled, ["tcp", "r", "request"], Some(&histograms));
            for _ in 0..4 {
                h.start();
            }
            h.finish(1000, None);
            h.finish(2000, Some("rpc_error"));
            h.cancelled();
            h.publish();
            let text = prometheus.render();
            assert_eq!(value(&text, ok), 1.0, "{text}");
            assert_eq!(value(&text, failed), 1.0);
            assert_eq!(value(&text, cancelled), 1.0);
            assert_eq!(value(&text, in_flight), 1.0);
            h.finish(3000, None);
            h.publish();
            let text = prometheus.render();
            assert_eq!(value(&text, ok), 2.0, "{text}");
            assert_eq!(value(&text, in_flight), 0.0);
        });
        let mut text = String::new();
        histograms.render(&mut text);
        let count = r#"switchboard_message_handle_duration_seconds_count{transport="tcp",route="r",kind="request"}"#;
        assert_eq!(value(&text, count), 3.0, "every reply, failed or not: {text}");
    }
}
