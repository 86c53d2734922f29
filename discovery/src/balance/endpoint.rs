//! [`Endpoint`]: one instance URL a balancer calls, with its load (Peak-EWMA of round-trip
//! times × calls in flight), its passive health (ejected after a refused connection or a
//! run of failures, readmitted once a connection succeeds again) and its own circuits.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use switchboard::resilience::{CircuitBreaker, CircuitPass, CircuitState, Rejection};
use switchboard::transport::{ClientTransport, redact};
use switchboard::{Error, Outbound};
use tokio::time::Instant;

/// How fast the round-trip estimate forgets a peak.
const DECAY: Duration = Duration::from_secs(10);
/// An estimate no reply has refreshed for this long says little of the instance now: the next
/// reply replaces it instead of being averaged in.
const STALE: Duration = Duration::from_millis(250);
/// An idle endpoint with a stale estimate is worth a call again once the balancer has started
/// this many times its fair share of calls elsewhere (see [`Endpoint::cost`]), and at least
/// [`MIN_STARVED_AFTER`]: a slow instance then gets a sixteenth of its share at most.
const FAIR_SHARES: u64 = 16;
const MIN_STARVED_AFTER: u64 = 64;

/// Calls started elsewhere past which an endpoint of a pool of `members` is left out.
pub(crate) fn starved_after(members: usize) -> u64 {
    (FAIR_SHARES * members as u64).max(MIN_STARVED_AFTER)
}

/// Failures in a row (timeouts, `UNAVAILABLE`) that eject an endpoint.
const FAILURES_TO_EJECT: u32 = 5;
/// The first ejection; each next one in a row doubles, up to [`MAX_EJECTION`].
const BASE_EJECTION: Duration = Duration::from_millis(500);
const MAX_EJECTION: Duration = Duration::from_secs(30);

/// One URL calls go to.
pub(crate) struct Endpoint {
    pub url: String,
    /// Unique in the process: the key a call's [`Tried`](switchboard::resilience::Tried)
    /// record holds.
    pub id: u64,
    pub transport: Arc<dyn ClientTransport>,
    /// This endpoint's circuits, one per route, when the registry configures a breaker.
    circuits: Option<CircuitBreaker>,
    in_flight: AtomicUsize,
    /// The balancer's count of choices when it last chose this endpoint.
    last_chosen: AtomicU64,
    /// When its first connection was up: a call started before then waited for the connection,
    /// so its round trip is no sample of the instance's speed.
    connected: OnceLock<Instant>,
    state: Mutex<State>,
}

struct State {
    /// Round-trip estimate in nanoseconds, and when it was last updated; `None` before the
    /// first reply.
    rtt: Option<(f64, Instant)>,
    failures: u32,
    /// While ejected, until a connection attempt succeeds.
    ejected: bool,
    /// Ejections in a row (the next one lasts longer).
    ejections: u32,
}

impl Endpoint {
    pub fn new(url: String, transport: Arc<dyn ClientTransport>, circuits: Option<CircuitBreaker>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Endpoint {
            url,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            transport,
            circuits,
            in_flight: AtomicUsize::new(0),
            last_chosen: AtomicU64::new(0),
            connected: OnceLock::new(),
            state: Mutex::new(State {
                rtt: None,
                failures: 0,
                ejected: false,
                ejections: 0,
            }),
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.state.lock().expect("endpoint lock").ejected
    }

    /// Notes that a connection to the instance is up (the first time only counts).
    pub fn mark_connected(&self) {
        let _ = self.connected.set(Instant::now());
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// What a call here would cost, when the balancer has made `calls` choices so far: the
    /// round-trip estimate times the calls waiting. Before its first reply an endpoint takes
    /// one call, not a burst. An endpoint whose last reply was slow (a cold start, a passing
    /// stall) is left out, and so gets no reply to show that it is fast again: its estimate
    /// decays, but from a peak a hundred times its peers' that takes about a minute. So once
    /// `starved_after` calls ([`starved_after`]) have gone elsewhere and its estimate is
    /// [`STALE`], an idle endpoint costs nothing: it takes one call, whose reply replaces the
    /// estimate. A slow instance is thus sent one call in that many, at most one every
    /// [`STALE`].
    pub fn cost(&self, calls: u64, starved_after: u64) -> f64 {
        let in_flight = self.in_flight();
        let pending = in_flight as f64 + 1.0;
        let now = Instant::now();
        match self.state.lock().expect("endpoint lock").rtt {
            Some((_, at))
                if in_flight == 0
                    && now.saturating_duration_since(at) >= STALE
                    && calls.saturating_sub(self.last_chosen.load(Ordering::Relaxed)) >= starved_after =>
            {
                0.0
            }
            Some((rtt, at)) => decayed(rtt, at, now) * pending,
            None if pending <= 1.0 => 0.0,
            None => f64::MAX / 4.0,
        }
    }

    /// Notes that the balancer chose this endpoint, its `calls`-th choice: at once, so a caller
    /// choosing before this call starts no longer finds it left out (one call, not a burst).
    pub fn chosen(&self, calls: u64) {
        self.last_chosen.fetch_max(calls, Ordering::Relaxed);
    }

    /// Counts a call in; the guard records how it went.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            at: Instant::now(),
            done: false,
        }
    }

    fn finish(self: &Arc<Self>, at: Instant, outcome: Outcome) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let eject = {
            let mut state = self.state.lock().expect("endpoint lock");
            match outcome {
                // Sent before the first connection was up: it answered, but its round trip
                // includes the connection (it set one up itself when none was noted).
                Outcome::Answered if self.connected.get().is_none_or(|c| at < *c) => {
                    self.mark_connected();
                    state.failures = 0;
                    state.ejections = 0;
                    false
                }
                Outcome::Answered => {
                    let sample = now.duration_since(at).as_nanos() as f64;
                    state.rtt = Some(match state.rtt {
                        // What the instance does now, not what it did then.
                        Some((_, then)) if now.saturating_duration_since(then) >= STALE => (sample, now),
                        // A peak is taken at once; a lower sample is averaged in.
                        Some((est, then)) if sample > decayed(est, then, now) => (sample, now),
                        Some((est, then)) => {
                            let w = (-(now.duration_since(then).as_secs_f64()) / DECAY.as_secs_f64()).exp();
                            (est * w + sample * (1.0 - w), now)
                        }
                        None => (sample, now),
                    });
                    state.failures = 0;
                    state.ejections = 0;
                    false
                }
                Outcome::Refused => !state.ejected,
                Outcome::Failed => {
                    state.failures += 1;
                    state.failures >= FAILURES_TO_EJECT && !state.ejected
                }
                Outcome::Cancelled => false,
            }
        };
        if eject {
            self.eject();
        }
    }

    /// Takes the endpoint out of rotation; a task tries to connect after a backoff, and lets
    /// it back in once that works.
    fn eject(self: &Arc<Self>) {
        let wait = {
            let mut state = self.state.lock().expect("endpoint lock");
            state.ejected = true;
            state.failures = 0;
            state.ejections += 1;
            BASE_EJECTION
                .saturating_mul(1 << (state.ejections - 1).min(8))
                .min(MAX_EJECTION)
        };
        tracing::info!(url = %redact(&self.url), ?wait, "instance ejected");
        let endpoint = Arc::downgrade(self);
        tokio::spawn(readmit(endpoint, wait));
    }
}

impl Endpoint {
    /// The state of this endpoint's circuit for `route` (closed without a breaker).
    pub fn circuit(&self, route: &str) -> CircuitState {
        self.circuits.as_ref().map_or(CircuitState::Closed, |b| b.state(route))
    }

    /// Lets `out` through this endpoint's circuit for its route, or says why not. `seen` is
    /// the circuit's state when the balancer chose this endpoint.
    pub fn enter(self: &Arc<Self>, out: &Outbound, seen: CircuitState) -> Result<Circuited, Rejection> {
        let Some(breaker) = &self.circuits else {
            return Ok(Circuited(None));
        };
        // Dropped past its deadline, the call counts as timed out.
        let pass = breaker.try_enter(&out.route)?.due(out.deadline);
        let route = out.route.clone();
        if seen == CircuitState::HalfOpen {
            tracing::info!(pattern = &*route, url = %redact(&self.url), "instance circuit half-open: sending a probe");
        }
        Ok(Circuited(Some(Passed {
            pass,
            endpoint: self.clone(),
            route,
            seen,
        })))
    }
}

/// A call let through an endpoint's circuit; its outcome goes to the circuit.
pub(crate) struct Circuited(Option<Passed>);

struct Passed {
    pass: CircuitPass,
    endpoint: Arc<Endpoint>,
    route: Cow<'static, str>,
    /// The circuit's state when the call was let through.
    seen: CircuitState,
}

impl Circuited {
    /// Counts the call's outcome: `failed` when the instance could not answer.
    pub fn finish(mut self, failed: bool) {
        if let Some(p) = self.0.take() {
            p.settle(Some(failed));
        }
    }
}

impl Drop for Circuited {
    /// Dropped unfinished: the pass counts it (timed out past its deadline, else cancelled).
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.settle(None);
        }
    }
}

impl Passed {
    /// Gives the pass its outcome (`None`: dropped unfinished) and logs a transition it caused.
    fn settle(self, failed: Option<bool>) {
        let Passed {
            pass,
            endpoint,
            route,
            seen,
        } = self;
        match failed {
            Some(failed) => pass.finish(failed),
            None => drop(pass),
        }
        // A closed circuit changes only on a failure; only then is its state read again.
        if failed == Some(false) && seen == CircuitState::Closed {
            return;
        }
        let now = endpoint.circuit(&route);
        if now == seen {
            return;
        }
        let url = redact(&endpoint.url);
        match now {
            CircuitState::Closed => tracing::info!(pattern = &*route, %url, "instance circuit closed"),
            CircuitState::Open => {
                tracing::warn!(pattern = &*route, %url, "instance circuit opened: calls go to other instances")
            }
            _ => {}
        }
    }
}

/// An estimate made at `then`, as it stands at `now`: it decays towards zero over [`DECAY`].
fn decayed(estimate: f64, then: Instant, now: Instant) -> f64 {
    estimate * (-(now.saturating_duration_since(then).as_secs_f64()) / DECAY.as_secs_f64()).exp()
}

/// Tries to connect after `wait`, then after longer waits, until a connection succeeds or the
/// endpoint is gone (its instance left the registry).
async fn readmit(endpoint: Weak<Endpoint>, mut wait: Duration) {
    loop {
        tokio::time::sleep(wait).await;
        let Some(e) = endpoint.upgrade() else { return };
        match e.transport.connect().await {
            Ok(()) => {
                e.mark_connected();
                e.state.lock().expect("endpoint lock").ejected = false;
                tracing::info!(url = %redact(&e.url), "instance readmitted");
                return;
            }
            Err(err) => {
                tracing::debug!(url = %redact(&e.url), error = %err, "instance still unreachable");
                wait = wait.saturating_mul(2).min(MAX_EJECTION);
            }
        }
    }
}

enum Outcome {
    /// A reply (a handler's own error included): the instance works.
    Answered,
    /// The connection was refused or broke: the instance is probably gone.
    Refused,
    /// A timeout or `UNAVAILABLE`.
    Failed,
    /// The caller stopped waiting before an outcome.
    Cancelled,
}

/// A call in flight to an endpoint.
pub(crate) struct InFlight {
    endpoint: Arc<Endpoint>,
    at: Instant,
    done: bool,
}

impl InFlight {
    pub fn done<T>(mut self, result: &Result<T, Error>) {
        self.done = true;
        let outcome = match result {
            Ok(_) => Outcome::Answered,
            Err(Error::Connect { .. } | Error::ConnectionClosed { .. }) => Outcome::Refused,
            Err(e) if e.is_retryable() => Outcome::Failed,
            Err(_) => Outcome::Answered,
        };
        self.endpoint.finish(self.at, outcome);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.endpoint.finish(self.at, Outcome::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint nothing listens at (calls are never sent: the tests time them by hand).
    fn endpoint() -> Arc<Endpoint> {
        let transport = switchboard::transport::client_for("tcp://127.0.0.1:9").unwrap();
        Arc::new(Endpoint::new("tcp://127.0.0.1:9".into(), transport, None))
    }

    /// `e` chosen, the balancer's `call`-th choice, and its call answered after `ms`.
    async fn answered(e: &Arc<Endpoint>, call: u64, ms: u64) {
        e.chosen(call);
        let started = e.start();
        tokio::time::advance(Duration::from_millis(ms)).await;
        started.done(&Ok::<(), Error>(()));
    }

    /// One slow reply does not keep an endpoint out for good: its estimate decays while no
    /// other reply comes in, and a fast reply later brings it down further.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reply_weighs_less_as_time_passes() {
        let e = endpoint();
        e.mark_connected();
        answered(&e, 0, 100).await;
        let slow = e.cost(0, MIN_STARVED_AFTER);
        assert!((slow - 100e6).abs() < 1e6, "{slow}");
        tokio::time::advance(DECAY).await;
        let later = e.cost(0, MIN_STARVED_AFTER);
        assert!(
            (later - slow / std::f64::consts::E).abs() < 1e6,
            "{later} after one decay time"
        );
        tokio::time::advance(DECAY * 3).await;
        assert!(
            e.cost(0, MIN_STARVED_AFTER) < slow / 50.0,
            "{} after four",
            e.cost(0, MIN_STARVED_AFTER)
        );
        // A slower reply than what is left of the estimate is taken at once (a peak).
        answered(&e, 0, 20).await;
        assert!(
            (e.cost(0, MIN_STARVED_AFTER) - 20e6).abs() < 1e6,
            "{}",
            e.cost(0, MIN_STARVED_AFTER)
        );
    }

    /// A new instance's first calls wait for its connection: their round trips say nothing of
    /// its speed, so they do not make it look slow (a slow peak would keep it out for tens of
    /// seconds); the first call sent once it is connected is the first sample.
    #[tokio::test(start_paused = true)]
    async fn calls_sent_before_the_connection_is_up_are_no_sample() {
        let e = endpoint();
        let early = e.start();
        tokio::time::advance(Duration::from_millis(150)).await;
        e.mark_connected();
        tokio::time::advance(Duration::from_millis(1)).await;
        early.done(&Ok::<(), Error>(()));
        assert_eq!(
            e.cost(0, MIN_STARVED_AFTER),
            0.0,
            "no estimate yet: the next call is taken"
        );
        answered(&e, 0, 2).await;
        assert!(
            (e.cost(0, MIN_STARVED_AFTER) - 2e6).abs() < 1e5,
            "{}",
            e.cost(0, MIN_STARVED_AFTER)
        );

        // With no connection noted, a call that answers set one up itself: the next is a sample.
        let e = endpoint();
        answered(&e, 0, 80).await;
        assert_eq!(e.cost(0, MIN_STARVED_AFTER), 0.0);
        answered(&e, 0, 3).await;
        assert!(
            (e.cost(0, MIN_STARVED_AFTER) - 3e6).abs() < 1e5,
            "{}",
            e.cost(0, MIN_STARVED_AFTER)
        );
    }

    /// An instance left out after a slow reply is sent a call again once others have taken
    /// [`starved_after`] calls and its estimate is [`STALE`]; a fast reply then replaces the
    /// estimate (averaged in, it would leave a 100 ms peak at some 98 ms).
    #[tokio::test(start_paused = true)]
    async fn an_endpoint_left_out_after_a_slow_reply_is_tried_again() {
        assert_eq!(starved_after(3), MIN_STARVED_AFTER, "three instances: at least 64");
        assert_eq!(starved_after(50), 800, "fifty: sixteen times a fair share");
        const N: u64 = MIN_STARVED_AFTER;
        let cost = |e: &Arc<Endpoint>, calls: u64| e.cost(calls, N);
        let e = endpoint();
        e.mark_connected();
        answered(&e, 1, 100).await;
        // Calls went elsewhere, but not for long enough yet, or not enough of them.
        assert!(cost(&e, 1 + N) > 90e6, "{}", cost(&e, 1 + N));
        tokio::time::advance(STALE).await;
        assert!(cost(&e, N) > 90e6, "{}", cost(&e, N));
        // Both: one call is sent to it; while it is in flight, no other.
        assert_eq!(cost(&e, 1 + N), 0.0);
        e.chosen(2 + N);
        let probe = e.start();
        assert!(cost(&e, 3 + 2 * N) > 90e6);
        tokio::time::advance(Duration::from_millis(1)).await;
        probe.done(&Ok::<(), Error>(()));
        let now = cost(&e, 3 + N);
        assert!((now - 1e6).abs() < 1e5, "{now}");
    }
}
