//! [`CircuitBreaker`]: stops calling a pattern that keeps failing, and lets a few probes
//! through after a while to see whether it recovered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{Guarded, Rejection};

/// A circuit's state, as [`CircuitBreaker::state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls are refused until the open time is over.
    Open,
    /// A few probe calls go through; their outcomes close or reopen the circuit.
    HalfOpen,
    /// Opened by hand ([`CircuitBreaker::isolate`]) until [`CircuitBreaker::reset`].
    Isolated,
}

/// A circuit breaker, one circuit per pattern (route), shared by every clone.
///
/// A closed circuit opens when, over its sliding window (the last 100 calls by default, or
/// a span of time) and once it has seen `minimum_calls` (20), the failure rate reaches the
/// threshold (50 %), or the slow-call rate does, or a number of failures in the window or
/// in a row is reached, whichever is configured. It stays open for `open_for` (10 s),
/// growing by `open_growth` each time it reopens without closing in between, then lets
/// `half_open_probes` (1) calls through: all succeed and it closes, one fails and it
/// reopens. What is a failure is up to the call ([`Guarded::failed`]): the service could
/// not answer, or timed out; a handler's own error is an answer.
///
/// Transitions are `tracing` events (`warn` when it opens, `info` when it closes).
///
/// ```
/// use std::time::Duration;
/// use switchboard::resilience::CircuitBreaker;
///
/// // The seed's breaker: open after 5 failures in a row, half-open after 30 s.
/// let breaker = CircuitBreaker::new().consecutive_failures(5).open_for(Duration::from_secs(30));
/// let client = switchboard::Client::builder("tcp://127.0.0.1:3001").layer(breaker.clone()).build();
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    config: Arc<Config>,
    circuits: Arc<RwLock<HashMap<Box<str>, Arc<Circuit>>>>,
}

#[derive(Debug, Clone)]
struct Config {
    failure_rate: Option<f64>,
    slow: Option<(Duration, f64)>,
    failure_count: Option<u32>,
    consecutive: Option<u32>,
    window: WindowKind,
    minimum_calls: u32,
    open_for: Duration,
    growth: f64,
    max_open: Duration,
    probes: u32,
}

#[derive(Debug, Clone, Copy)]
enum WindowKind {
    Calls(usize),
    Time(Duration),
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker").field("config", &self.config).finish()
    }
}

impl CircuitBreaker {
    /// Opens at 50 % failures over the last 100 calls (once 20 were seen), for 10 s; one probe.
    pub fn new() -> Self {
        CircuitBreaker {
            config: Arc::new(Config {
                failure_rate: Some(0.5),
                slow: None,
                failure_count: None,
                consecutive: None,
                window: WindowKind::Calls(100),
                minimum_calls: 20,
                open_for: Duration::from_secs(10),
                growth: 1.0,
                max_open: Duration::from_secs(10),
                probes: 1,
            }),
            circuits: Arc::default(),
        }
    }

    fn config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// Opens when this share of the window's calls failed (0.0 to 1.0; values outside are
    /// clamped). `None` turns the rate off.
    pub fn failure_rate(self, rate: impl Into<Option<f64>>) -> Self {
        let rate = rate.into().map(|r| r.clamp(0.0, 1.0));
        self.config(|c| c.failure_rate = rate)
    }

    /// Also opens when this share of the window's calls took `threshold` or longer.
    pub fn slow_calls(self, threshold: Duration, rate: f64) -> Self {
        self.config(|c| c.slow = Some((threshold, rate.clamp(0.0, 1.0))))
    }

    /// Also opens after `n` failures within the window, however many calls succeeded
    /// (with [`window_time`](Self::window_time): "5 failures a minute").
    pub fn failures_in_window(self, n: u32) -> Self {
        self.config(|c| c.failure_count = Some(n.max(1)))
    }

    /// Also opens after `n` failures in a row.
    pub fn consecutive_failures(self, n: u32) -> Self {
        self.config(|c| c.consecutive = Some(n.max(1)))
    }

    /// The window is the last `n` calls (the default, 100).
    pub fn window_calls(self, n: usize) -> Self {
        self.config(|c| c.window = WindowKind::Calls(n.max(1)))
    }

    /// The window is the calls of the last `span` (counted in tenths of it).
    pub fn window_time(self, span: Duration) -> Self {
        self.config(|c| c.window = WindowKind::Time(span.max(Duration::from_millis(10))))
    }

    /// Rates are not judged before the window holds this many calls (20).
    pub fn minimum_calls(self, n: u32) -> Self {
        self.config(|c| c.minimum_calls = n.max(1))
    }

    /// How long the circuit stays open (10 s).
    pub fn open_for(self, d: Duration) -> Self {
        self.config(|c| {
            c.open_for = d;
            c.max_open = c.max_open.max(d);
        })
    }

    /// Each reopening without closing in between multiplies the open time by `factor`, up
    /// to `max`.
    pub fn open_growth(self, factor: f64, max: Duration) -> Self {
        self.config(|c| {
            c.growth = factor.max(1.0);
            c.max_open = max.max(c.open_for);
        })
    }

    /// How many probe calls a half-open circuit lets through; all must succeed to close it (1).
    pub fn half_open_probes(self, n: u32) -> Self {
        self.config(|c| c.probes = n.max(1))
    }

    /// The state of `route`'s circuit (closed when it has not been called).
    pub fn state(&self, route: &str) -> CircuitState {
        self.find(route)
            .map_or(CircuitState::Closed, |c| c.state(Instant::now()))
    }

    /// Opens `route`'s circuit until [`reset`](Self::reset), whatever the calls do.
    pub fn isolate(&self, route: &str) {
        self.circuit(route).lock().isolate();
    }

    /// Closes `route`'s circuit and forgets its window.
    pub fn reset(&self, route: &str) {
        if let Some(c) = self.find(route) {
            c.lock().close("reset");
        }
    }

    fn find(&self, route: &str) -> Option<Arc<Circuit>> {
        self.circuits
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route)
            .cloned()
    }

    fn circuit(&self, route: &str) -> Arc<Circuit> {
        if let Some(c) = self.find(route) {
            return c;
        }
        let mut circuits = self.circuits.write().unwrap_or_else(PoisonError::into_inner);
        circuits
            .entry(route.into())
            .or_insert_with(|| Arc::new(Circuit::new(self.config.clone(), route)))
            .clone()
    }
}

impl<S> Layer<S> for CircuitBreaker {
    type Service = CircuitBreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.clone(),
        }
    }
}

/// A service behind a [`CircuitBreaker`].
#[derive(Clone, Debug)]
pub struct CircuitBreakerService<S> {
    inner: S,
    breaker: CircuitBreaker,
}

impl<S, R> Service<R> for CircuitBreakerService<S>
where
    R: Guarded,
    S: Service<R, Response = R::Response, Error = R::Error>,
    S::Future: Send + 'static,
{
    type Response = R::Response;
    type Error = R::Error;
    type Future = BoxFuture<'static, Result<R::Response, R::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), R::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let circuit = self.breaker.circuit(req.route());
        let started = Instant::now();
        let ticket = match circuit.lock().acquire(started) {
            Ok(ticket) => ticket,
            Err(why) => return std::future::ready(R::reject(req.route(), why)).boxed(),
        };
        let call = self.inner.call(req);
        async move {
            let mut pending = Pending {
                circuit,
                ticket: Some(ticket),
            };
            let outcome = call.await;
            let now = Instant::now();
            if let Some(ticket) = pending.ticket.take() {
                pending
                    .circuit
                    .lock()
                    .record(ticket, R::failed(&outcome), now - started, now);
            }
            outcome
        }
        .boxed()
    }
}

/// A call's place in its circuit, given back if the call is dropped before its outcome.
struct Pending {
    circuit: Arc<Circuit>,
    ticket: Option<Ticket>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.circuit.lock().cancel(ticket);
        }
    }
}

struct Circuit {
    machine: Mutex<Machine>,
}

impl Circuit {
    fn new(config: Arc<Config>, route: &str) -> Self {
        let window = Window::new(config.window);
        Circuit {
            machine: Mutex::new(Machine {
                route: route.into(),
                config,
                state: State::Closed,
                window,
                consecutive: 0,
                openings: 0,
                epoch: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self, now: Instant) -> CircuitState {
        match self.lock().state {
            State::Closed => CircuitState::Closed,
            State::Open { until } if now >= until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
            State::Isolated => CircuitState::Isolated,
        }
    }
}

/// The state machine of one circuit; time comes in as an argument, so it is tested with
/// paused tokio time.
struct Machine {
    route: Box<str>,
    config: Arc<Config>,
    state: State,
    window: Window,
    consecutive: u32,
    /// Times opened since it last closed (for the growing open time).
    openings: u32,
    /// Changes on every transition: outcomes of calls let through in an earlier state are ignored.
    epoch: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { issued: u32, succeeded: u32 },
    Isolated,
}

#[derive(Debug, Clone, Copy)]
struct Ticket {
    epoch: u64,
}

impl Machine {
    fn acquire(&mut self, now: Instant) -> Result<Ticket, Rejection> {
        match self.state {
            State::Closed => {}
            State::Open { until } if now >= until => {
                self.enter(State::HalfOpen {
                    issued: 1,
                    succeeded: 0,
                });
                tracing::info!(pattern = &*self.route, "circuit half-open: letting a probe through");
            }
            State::Open { until } => {
                return Err(Rejection::CircuitOpen {
                    retry_after: until - now,
                });
            }
            State::HalfOpen { ref mut issued, .. } if *issued < self.config.probes => *issued += 1,
            State::HalfOpen { .. } => {
                return Err(Rejection::CircuitOpen {
                    retry_after: Duration::ZERO,
                });
            }
            State::Isolated => {
                return Err(Rejection::CircuitOpen {
                    retry_after: self.config.open_for,
                });
            }
        }
        Ok(Ticket { epoch: self.epoch })
    }

    fn record(&mut self, ticket: Ticket, failed: bool, took: Duration, now: Instant) {
        if ticket.epoch != self.epoch {
            return;
        }
        let slow = self.config.slow.is_some_and(|(threshold, _)| took >= threshold);
        match self.state {
            State::Closed => {
                self.window.push(now, failed, slow);
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                if let Some(why) = self.trips(now) {
                    self.open(now, why);
                }
            }
            State::HalfOpen { issued, succeeded } => {
                if failed || slow {
                    self.open(now, "a probe failed");
                } else if succeeded + 1 >= self.config.probes {
                    self.close("the probes succeeded");
                } else {
                    self.state = State::HalfOpen {
                        issued,
                        succeeded: succeeded + 1,
                    };
                }
            }
            State::Open { .. } | State::Isolated => {}
        }
    }

    /// A call dropped before its outcome: a probe's slot is given back.
    fn cancel(&mut self, ticket: Ticket) {
        if ticket.epoch != self.epoch {
            return;
        }
        if let State::HalfOpen { issued, .. } = &mut self.state {
            *issued = issued.saturating_sub(1);
        }
    }

    /// Why the closed circuit should open now, if it should.
    fn trips(&mut self, now: Instant) -> Option<&'static str> {
        let c = &self.config;
        if c.consecutive.is_some_and(|k| self.consecutive >= k) {
            return Some("too many failures in a row");
        }
        let (calls, failed, slow) = self.window.counts(now);
        if c.failure_count.is_some_and(|n| failed >= n) {
            return Some("too many failures in the window");
        }
        if calls < c.minimum_calls || calls == 0 {
            return None;
        }
        let rate = |n: u32| f64::from(n) / f64::from(calls);
        if c.failure_rate.is_some_and(|r| rate(failed) >= r) {
            return Some("failure rate over the threshold");
        }
        if c.slow.is_some_and(|(_, r)| rate(slow) >= r) {
            return Some("slow-call rate over the threshold");
        }
        None
    }

    fn open(&mut self, now: Instant, why: &'static str) {
        let c = &self.config;
        let grown = c.open_for.as_secs_f64() * c.growth.powi(self.openings.min(64) as i32);
        let open_for = Duration::try_from_secs_f64(grown).unwrap_or(c.max_open).min(c.max_open);
        self.openings += 1;
        self.enter(State::Open { until: now + open_for });
        tracing::warn!(pattern = &*self.route, ?open_for, reason = why, "circuit opened");
    }

    fn close(&mut self, why: &'static str) {
        let was_open = !matches!(self.state, State::Closed);
        self.openings = 0;
        self.enter(State::Closed);
        if was_open {
            tracing::info!(pattern = &*self.route, reason = why, "circuit closed");
        }
    }

    fn isolate(&mut self) {
        self.enter(State::Isolated);
        tracing::warn!(pattern = &*self.route, "circuit isolated by hand");
    }

    fn enter(&mut self, state: State) {
        self.state = state;
        self.epoch += 1;
        self.window.clear();
        self.consecutive = 0;
    }
}

/// Outcomes over the last N calls, or over a span of time in ten buckets.
struct Window {
    kind: WindowKind,
    /// Calls: one entry per call (bit 0 failed, bit 1 slow). Time: unused.
    calls: VecDeque<u8>,
    /// Time: (bucket number, calls, failed, slow), oldest first.
    buckets: VecDeque<(u64, u32, u32, u32)>,
    origin: Option<Instant>,
    totals: (u32, u32, u32),
}

const BUCKETS: u64 = 10;

impl Window {
    fn new(kind: WindowKind) -> Self {
        Window {
            kind,
            calls: VecDeque::new(),
            buckets: VecDeque::new(),
            origin: None,
            totals: (0, 0, 0),
        }
    }

    fn push(&mut self, now: Instant, failed: bool, slow: bool) {
        let (f, s) = (u32::from(failed), u32::from(slow));
        match self.kind {
            WindowKind::Calls(n) => {
                if self.calls.len() == n
                    && let Some(old) = self.calls.pop_front()
                {
                    self.totals.0 -= 1;
                    self.totals.1 -= u32::from(old & 1);
                    self.totals.2 -= u32::from(old >> 1);
                }
                self.calls.push_back(u8::from(failed) | (u8::from(slow) << 1));
            }
            WindowKind::Time(span) => {
                let bucket = self.bucket(now, span);
                self.evict(bucket);
                match self.buckets.back_mut() {
                    Some(b) if b.0 == bucket => {
                        b.1 += 1;
                        b.2 += f;
                        b.3 += s;
                    }
                    _ => self.buckets.push_back((bucket, 1, f, s)),
                }
            }
        }
        self.totals.0 += 1;
        self.totals.1 += f;
        self.totals.2 += s;
    }

    fn counts(&mut self, now: Instant) -> (u32, u32, u32) {
        if let WindowKind::Time(span) = self.kind {
            let bucket = self.bucket(now, span);
            self.evict(bucket);
        }
        self.totals
    }

    fn bucket(&mut self, now: Instant, span: Duration) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let width = (span.as_nanos() / u128::from(BUCKETS)).max(1);
        u64::try_from(now.saturating_duration_since(origin).as_nanos() / width).unwrap_or(u64::MAX)
    }

    /// Drops the buckets that fell out of the window ending in bucket `current`.
    fn evict(&mut self, current: u64) {
        while let Some(&(b, calls, failed, slow)) = self.buckets.front() {
            if b + BUCKETS > current {
                break;
            }
            self.buckets.pop_front();
            self.totals.0 -= calls;
            self.totals.1 -= failed;
            self.totals.2 -= slow;
        }
    }

    fn clear(&mut self) {
        self.calls.clear();
        self.buckets.clear();
        self.totals = (0, 0, 0);
    }
}

#[cfg(test)]
mod tests;
