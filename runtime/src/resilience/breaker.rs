//! [`CircuitBreaker`]: stops calling a pattern that keeps failing, and lets a few probes
//! through after a while to see whether it recovered.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, Ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::Either;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{Guarded, Rejection};

/// Each route's circuit.
type Circuits = HashMap<Box<str>, Arc<Circuit>, rustc_hash::FxBuildHasher>;

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
    circuits: Arc<RwLock<Circuits>>,
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
    /// Outcomes need the clock: slow calls are counted, or the window is a span of time.
    timed: bool,
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
                timed: false,
            }),
            circuits: Arc::default(),
        }
    }

    fn config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        let c = Arc::make_mut(&mut self.config);
        change(c);
        c.timed = c.slow.is_some() || matches!(c.window, WindowKind::Time(_));
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
        self.circuit(route).with(Machine::isolate);
    }

    /// Closes `route`'s circuit and forgets its window.
    pub fn reset(&self, route: &str) {
        if let Some(c) = self.find(route) {
            c.with(|m| m.close("reset"));
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
        if let Some(c) = Last::get(&self.circuits, route) {
            return c;
        }
        let circuit = match self.find(route) {
            Some(c) => c,
            None => {
                let mut circuits = self.circuits.write().unwrap_or_else(PoisonError::into_inner);
                circuits
                    .entry(route.into())
                    .or_insert_with(|| Arc::new(Circuit::new(self.config.clone(), route)))
                    .clone()
            }
        };
        Last::set(&self.circuits, &circuit);
        circuit
    }
}

/// The circuit a thread entered last: calls mostly go to one route after another through one
/// breaker, and finding it there costs no lock, no hash and no write to memory other threads
/// read (the map's lock word is shared by every thread calling through the breaker).
/// Circuits are never taken out of a breaker's map, so one found stays the route's.
struct Last {
    /// Whose map it came from: held weakly (a dropped breaker's map is not kept), and held,
    /// so no other map can take its address while it is compared with.
    circuits: std::sync::Weak<RwLock<Circuits>>,
    circuit: Arc<Circuit>,
}

thread_local! {
    static LAST: std::cell::RefCell<Option<Last>> = const { std::cell::RefCell::new(None) };
}

impl Last {
    fn get(circuits: &Arc<RwLock<Circuits>>, route: &str) -> Option<Arc<Circuit>> {
        LAST.with_borrow(|last| {
            last.as_ref()
                .filter(|l| std::ptr::eq(l.circuits.as_ptr(), Arc::as_ptr(circuits)) && *l.circuit.route == *route)
                .map(|l| l.circuit.clone())
        })
    }

    fn set(circuits: &Arc<RwLock<Circuits>>, circuit: &Arc<Circuit>) {
        LAST.set(Some(Last {
            circuits: Arc::downgrade(circuits),
            circuit: circuit.clone(),
        }));
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
{
    type Response = R::Response;
    type Error = R::Error;
    type Future = Either<Ready<Result<R::Response, R::Error>>, Guard<S::Future, R>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), R::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.breaker.enter_until(req.route(), req.deadline()) {
            Ok(pass) => Either::Right(Guard {
                call: self.inner.call(req),
                pass: Some(pass),
                _call: PhantomData,
            }),
            Err(why) => Either::Left(std::future::ready(R::reject(req.route(), why))),
        }
    }
}

impl CircuitBreaker {
    /// Lets a call to `route` through, or says why not.
    pub(super) fn enter(&self, route: &str) -> Result<Pass, Rejection> {
        self.enter_until(route, None)
    }

    /// As [`enter`](Self::enter), for a call due at `deadline`: dropped at or after it, the
    /// call counts as timed out (a failure) rather than cancelled, so a caller's own deadline
    /// opens the circuit of a service that hangs even without a per-attempt timeout.
    pub(super) fn enter_until(&self, route: &str, deadline: Option<Instant>) -> Result<Pass, Rejection> {
        let circuit = self.circuit(route);
        // The clock is read only when the state or the configuration needs it.
        let started = self.config.timed.then(Instant::now);
        let ticket = circuit.acquire(|| started.unwrap_or_else(Instant::now))?;
        Ok(Pass {
            circuit,
            ticket: Some(ticket),
            started,
            deadline,
        })
    }
}

pin_project_lite::pin_project! {
    /// A call let through a [`CircuitBreaker`]: its outcome is counted when it ends.
    pub struct Guard<F, R> {
        #[pin]
        call: F,
        pass: Option<Pass>,
        _call: PhantomData<fn() -> R>,
    }
}

impl<F, R> Future for Guard<F, R>
where
    R: Guarded,
    F: Future<Output = Result<R::Response, R::Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.call.poll(cx));
        if let Some(pass) = this.pass.take() {
            pass.finish(R::failed(&outcome));
        }
        Poll::Ready(outcome)
    }
}

/// A call's place in its circuit; given back if the call is dropped before its outcome.
pub(super) struct Pass {
    circuit: Arc<Circuit>,
    ticket: Option<Ticket>,
    started: Option<Instant>,
    deadline: Option<Instant>,
}

impl Pass {
    /// Counts the call's outcome.
    pub(super) fn finish(mut self, failed: bool) {
        if let Some(ticket) = self.ticket.take() {
            let took = self.started.map(|s| s.elapsed());
            self.circuit.record(ticket, failed, took, Instant::now);
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let now = Instant::now();
            match self.deadline {
                Some(deadline) if now >= deadline => {
                    let took = self.started.map(|s| now.duration_since(s));
                    self.circuit.record(ticket, true, took, || now);
                }
                _ => self.circuit.with(|m| m.cancel(ticket)),
            }
        }
    }
}

/// One route's circuit: its state machine behind a lock, and a gate word that lets the
/// common case (a closed circuit, a call that succeeds) through without taking it.
///
/// The gate holds the machine's epoch (bits 32..64), [`FAST`] while the circuit is closed and
/// a success cannot trip it, and the successes counted since the lock was last taken (bits
/// 0..31), which the next locked operation adds to the window first.
struct Circuit {
    machine: Mutex<Machine>,
    gate: AtomicU64,
    /// Its route, outside the lock (for [`Last`]).
    route: Box<str>,
}

const FAST: u64 = 1 << 31;
const COUNTED: u64 = FAST - 1;

impl Circuit {
    fn new(config: Arc<Config>, route: &str) -> Self {
        let machine = Machine::new(config, route);
        let gate = AtomicU64::new(machine.gate());
        Circuit {
            machine: Mutex::new(machine),
            gate,
            route: route.into(),
        }
    }

    /// Runs `f` on the machine, with the successes counted outside the lock added first,
    /// and publishes what changed.
    fn with<R>(&self, f: impl FnOnce(&mut Machine) -> R) -> R {
        let mut m = self.machine.lock().unwrap_or_else(PoisonError::into_inner);
        let counted = self.gate.fetch_and(!COUNTED, Ordering::AcqRel);
        if epoch_of(counted) == m.epoch {
            m.succeeded(counted & COUNTED);
        }
        let (epoch, fast) = (m.epoch, m.fast());
        let r = f(&mut m);
        if m.epoch != epoch {
            self.gate.store(m.gate(), Ordering::Release);
        } else if m.fast() != fast {
            match m.fast() {
                true => self.gate.fetch_or(FAST, Ordering::AcqRel),
                false => self.gate.fetch_and(!FAST, Ordering::AcqRel),
            };
        }
        r
    }

    fn acquire(&self, clock: impl FnOnce() -> Instant) -> Result<Ticket, Rejection> {
        let gate = self.gate.load(Ordering::Acquire);
        if gate & FAST != 0 {
            return Ok(Ticket { epoch: epoch_of(gate) });
        }
        self.with(|m| m.acquire(clock))
    }

    fn record(&self, ticket: Ticket, failed: bool, took: Option<Duration>, clock: impl Fn() -> Instant) {
        if !failed {
            // Counted in the gate while the circuit is still closed in the ticket's epoch.
            let mut gate = self.gate.load(Ordering::Relaxed);
            while epoch_of(gate) == ticket.epoch && gate & FAST != 0 && gate & COUNTED != COUNTED {
                match self
                    .gate
                    .compare_exchange_weak(gate, gate + 1, Ordering::AcqRel, Ordering::Relaxed)
                {
                    Ok(_) => return,
                    Err(now) => gate = now,
                }
            }
        }
        self.with(|m| m.record(ticket, failed, took, clock));
    }

    fn state(&self, now: Instant) -> CircuitState {
        self.with(|m| match m.state {
            State::Closed => CircuitState::Closed,
            State::Open { until } if now >= until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
            State::Isolated => CircuitState::Isolated,
        })
    }
}

fn epoch_of(gate: u64) -> u32 {
    (gate >> 32) as u32
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
    epoch: u32,
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
    epoch: u32,
}

impl Machine {
    fn new(config: Arc<Config>, route: &str) -> Self {
        Machine {
            route: route.into(),
            window: Window::new(config.window),
            config,
            state: State::Closed,
            consecutive: 0,
            openings: 0,
            epoch: 0,
        }
    }

    /// True while a success cannot change anything but the window: the circuit is closed,
    /// the clock plays no part, and the rates are judged already (or never will be), so more
    /// successes only lower them.
    fn fast(&self) -> bool {
        let c = &self.config;
        let judged = match self.window.kind {
            WindowKind::Calls(n) => n < c.minimum_calls as usize || self.window.totals.0 >= c.minimum_calls,
            WindowKind::Time(_) => false,
        };
        matches!(self.state, State::Closed) && !c.timed && judged
    }

    /// The gate word for this state, with no successes counted.
    fn gate(&self) -> u64 {
        (u64::from(self.epoch) << 32) | if self.fast() { FAST } else { 0 }
    }

    /// Adds `n` successes counted outside the lock while the circuit was closed (the window
    /// holds at most its length of them).
    fn succeeded(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let keep = match self.window.kind {
            WindowKind::Calls(len) => n.min(len as u64),
            WindowKind::Time(_) => n,
        };
        for _ in 0..keep {
            self.window.push(None, false, false);
        }
        self.consecutive = 0;
    }

    fn acquire(&mut self, clock: impl FnOnce() -> Instant) -> Result<Ticket, Rejection> {
        let now = match self.state {
            State::Closed => return Ok(Ticket { epoch: self.epoch }),
            State::Open { .. } => clock(),
            _ => return self.acquire_at(None),
        };
        self.acquire_at(Some(now))
    }

    fn acquire_at(&mut self, now: Option<Instant>) -> Result<Ticket, Rejection> {
        match self.state {
            State::Closed => {}
            State::Open { until } if now.is_some_and(|now| now >= until) => {
                self.enter(State::HalfOpen {
                    issued: 1,
                    succeeded: 0,
                });
                tracing::info!(pattern = &*self.route, "circuit half-open: letting a probe through");
            }
            State::Open { until } => {
                return Err(Rejection::CircuitOpen {
                    retry_after: now.map_or(Duration::ZERO, |now| until.saturating_duration_since(now)),
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

    /// Counts an outcome; `took` is known when the configuration needs it, and `clock` is
    /// read only when the time matters.
    fn record(&mut self, ticket: Ticket, failed: bool, took: Option<Duration>, clock: impl Fn() -> Instant) {
        if ticket.epoch != self.epoch {
            return;
        }
        let slow = self
            .config
            .slow
            .is_some_and(|(threshold, _)| took.is_some_and(|t| t >= threshold));
        match self.state {
            State::Closed => {
                let now = self.config.timed.then(&clock);
                self.window.push(now, failed, slow);
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                if let Some(why) = self.trips(now) {
                    self.open(clock(), why);
                }
            }
            State::HalfOpen { issued, succeeded } => {
                if failed || slow {
                    self.open(clock(), "a probe failed");
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
    fn trips(&mut self, now: Option<Instant>) -> Option<&'static str> {
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
        let code = |s: &State| match s {
            State::Closed => 0,
            State::HalfOpen { .. } => 1,
            State::Open { .. } => 2,
            State::Isolated => 3,
        };
        if code(&state) != code(&self.state) {
            crate::signal::circuit(&self.route, code(&state));
        }
        self.state = state;
        self.epoch = self.epoch.wrapping_add(1);
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

    /// Adds an outcome; `now` is given for a time window.
    fn push(&mut self, now: Option<Instant>, failed: bool, slow: bool) {
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
                let bucket = self.bucket(now.expect("a time window is timed"), span);
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

    fn counts(&mut self, now: Option<Instant>) -> (u32, u32, u32) {
        if let (WindowKind::Time(span), Some(now)) = (self.kind, now) {
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

/// A call let through by [`CircuitBreaker::try_enter`]: [`finish`](Self::finish) counts its
/// outcome; dropped unfinished, the call counts as cancelled (a half-open probe's slot is given
/// back, nothing is counted), or as timed out once past the deadline given to [`due`](Self::due).
#[must_use = "a pass dropped unfinished counts as a cancelled call"]
pub struct CircuitPass {
    pass: Pass,
}

impl std::fmt::Debug for CircuitPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitPass").finish_non_exhaustive()
    }
}

impl CircuitPass {
    /// Counts the call's outcome: `failed` when the service could not answer (what
    /// [`Guarded::failed`] says of it), not for a handler's own error.
    pub fn finish(self, failed: bool) {
        self.pass.finish(failed);
    }

    /// The call's caller stops waiting at `deadline`: dropped unfinished at or after it, the
    /// call counts as timed out (a failure), as the breaker's own layer counts it.
    pub fn due(mut self, deadline: Instant) -> Self {
        self.pass.deadline = Some(deadline);
        self
    }
}

impl CircuitBreaker {
    /// Lets a call to `route` through, or says why not, for code that guards calls without the
    /// `tower` layer (a balancer keeping a breaker per instance). The caller reports the outcome
    /// through the pass.
    ///
    /// ```
    /// use switchboard::resilience::{CircuitBreaker, CircuitState, Rejection};
    ///
    /// let breaker = CircuitBreaker::new().consecutive_failures(2);
    /// for _ in 0..2 {
    ///     breaker.try_enter("orders.get").unwrap().finish(true);
    /// }
    /// assert_eq!(breaker.state("orders.get"), CircuitState::Open);
    /// assert!(matches!(breaker.try_enter("orders.get"), Err(Rejection::CircuitOpen { .. })));
    /// ```
    pub fn try_enter(&self, route: &str) -> Result<CircuitPass, Rejection> {
        self.enter(route).map(|pass| CircuitPass { pass })
    }

    /// A breaker with this one's configuration and circuits of its own (all closed), for one
    /// instance of a service among several. Clones share circuits; a detached breaker does not.
    ///
    /// ```
    /// use switchboard::resilience::{CircuitBreaker, CircuitState};
    ///
    /// let per_instance = CircuitBreaker::new().consecutive_failures(1);
    /// let (a, b) = (per_instance.detached(), per_instance.detached());
    /// a.try_enter("p").unwrap().finish(true);
    /// assert_eq!(a.state("p"), CircuitState::Open);
    /// assert_eq!(b.state("p"), CircuitState::Closed);
    /// assert_eq!(per_instance.state("p"), CircuitState::Closed);
    /// ```
    pub fn detached(&self) -> CircuitBreaker {
        CircuitBreaker {
            config: self.config.clone(),
            circuits: Arc::default(),
        }
    }
}

#[cfg(test)]
mod pass_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pass_counts_its_outcome_and_a_dropped_one_gives_its_probe_back() {
        let b = CircuitBreaker::new()
            .consecutive_failures(2)
            .open_for(Duration::from_millis(200));
        b.try_enter("p").unwrap().finish(true);
        b.try_enter("p").unwrap().finish(false);
        b.try_enter("p").unwrap().finish(true);
        assert_eq!(
            b.state("p"),
            CircuitState::Closed,
            "a success in between resets the run"
        );
        b.try_enter("p").unwrap().finish(true);
        assert_eq!(b.state("p"), CircuitState::Open);
        let Err(Rejection::CircuitOpen { retry_after }) = b.try_enter("p") else {
            panic!("an open circuit refuses");
        };
        assert_eq!(retry_after, Duration::from_millis(200));
        assert_eq!(b.state("q"), CircuitState::Closed, "circuits are per route");
        b.try_enter("q").unwrap().finish(false);

        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(b.state("p"), CircuitState::HalfOpen);
        let probe = b.try_enter("p").unwrap();
        assert!(b.try_enter("p").is_err(), "one probe at a time");
        drop(probe);
        let probe = b.try_enter("p").expect("a dropped probe gives its slot back");
        probe.finish(true);
        assert_eq!(b.state("p"), CircuitState::Open, "a failed probe reopens");

        tokio::time::advance(Duration::from_millis(200)).await;
        b.try_enter("p").unwrap().finish(false);
        assert_eq!(b.state("p"), CircuitState::Closed, "a good probe closes");
    }

    #[test]
    fn a_detached_breaker_has_the_configuration_and_its_own_circuits() {
        let shared = CircuitBreaker::new().consecutive_failures(3);
        let clone = shared.clone();
        let own = shared.detached();
        for _ in 0..3 {
            own.try_enter("p").unwrap().finish(true);
        }
        assert_eq!(own.state("p"), CircuitState::Open, "same threshold: 3 in a row");
        assert_eq!(shared.state("p"), CircuitState::Closed);
        for _ in 0..2 {
            shared.try_enter("p").unwrap().finish(true);
        }
        assert_eq!(shared.state("p"), CircuitState::Closed, "2 are under the threshold");
        clone.try_enter("p").unwrap().finish(true);
        assert_eq!(shared.state("p"), CircuitState::Open, "clones share their circuits");
        assert_eq!(own.detached().state("p"), CircuitState::Closed);
    }

    #[test]
    fn the_circuit_a_thread_entered_last_is_its_breakers_and_its_routes() {
        let one = CircuitBreaker::new().consecutive_failures(1);
        let other = one.detached();
        // Taking turns on one thread: each call finds its own breaker's circuit.
        one.try_enter("p").unwrap().finish(true);
        assert!(other.try_enter("p").is_ok(), "the other breaker's circuit is closed");
        assert!(one.try_enter("p").is_err(), "this one's is open");
        assert!(one.try_enter(&String::from("q")).is_ok(), "another route");
        assert!(one.try_enter("p").is_err());
        // A breaker made where a dropped one was does not find the dropped one's circuit.
        for _ in 0..100 {
            let open = CircuitBreaker::new().consecutive_failures(1);
            open.try_enter("r").unwrap().finish(true);
            assert!(open.try_enter("r").is_err());
            drop(open);
            assert!(
                CircuitBreaker::new().try_enter("r").is_ok(),
                "a new breaker's circuit is closed"
            );
        }
    }
}
