//! The breaker's state machine under paused tokio time, and against a reference model
//! written independently (it recomputes everything from the list of outcomes).

use std::sync::atomic::{AtomicUsize, Ordering};

use tower::ServiceExt;

use super::*;
use crate::error::Error;
use crate::service::{Kind, Outbound, Replies};

fn machine(b: CircuitBreaker) -> Machine {
    let Circuit { machine, .. } = Circuit::new(b.config, "p");
    machine.into_inner().unwrap()
}

fn state(m: &Machine, now: Instant) -> CircuitState {
    match m.state {
        State::Closed => CircuitState::Closed,
        State::Open { until } if now >= until => CircuitState::HalfOpen,
        State::Open { .. } => CircuitState::Open,
        State::HalfOpen { .. } => CircuitState::HalfOpen,
        State::Isolated => CircuitState::Isolated,
    }
}

/// One call, acquired and recorded at once.
fn call(m: &mut Machine, failed: bool) -> Result<(), Rejection> {
    let now = Instant::now();
    let t = m.acquire(|| now)?;
    m.record(t, failed, Some(Duration::ZERO), || now);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_once_the_minimum_is_seen() {
    let mut m = machine(CircuitBreaker::new().minimum_calls(20).failure_rate(0.5));
    for _ in 0..19 {
        call(&mut m, true).unwrap();
    }
    assert_eq!(
        state(&m, Instant::now()),
        CircuitState::Closed,
        "19 calls are under the minimum"
    );
    call(&mut m, true).unwrap();
    assert_eq!(state(&m, Instant::now()), CircuitState::Open);
    assert!(
        matches!(call(&mut m, false), Err(Rejection::CircuitOpen { retry_after }) if retry_after == Duration::from_secs(10))
    );
}

#[tokio::test(start_paused = true)]
async fn stays_closed_under_the_rate() {
    let mut m = machine(CircuitBreaker::new().minimum_calls(10).failure_rate(0.5));
    for i in 0..1000 {
        // 40 % failures, never 50 % of any prefix.
        call(&mut m, i % 5 >= 3).unwrap();
    }
    assert_eq!(state(&m, Instant::now()), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_count_window_slides() {
    let mut m = machine(
        CircuitBreaker::new()
            .window_calls(10)
            .minimum_calls(10)
            .failure_rate(0.5),
    );
    let calls = |m: &mut Machine, failed: bool, n: usize| (0..n).for_each(|_| call(m, failed).unwrap());
    calls(&mut m, true, 3);
    calls(&mut m, false, 7);
    // The first failures slide out as new ones come in: 3 of the last 10, six failures in all.
    calls(&mut m, true, 3);
    assert_eq!(state(&m, Instant::now()), CircuitState::Closed);
    calls(&mut m, true, 1);
    assert_eq!(
        state(&m, Instant::now()),
        CircuitState::Closed,
        "4 of the last 10 failed"
    );
    calls(&mut m, true, 1);
    assert_eq!(state(&m, Instant::now()), CircuitState::Open, "5 of the last 10 failed");
}

#[tokio::test(start_paused = true)]
async fn the_time_window_forgets_old_failures() {
    let mut m = machine(
        CircuitBreaker::new()
            .window_time(Duration::from_secs(10))
            .failure_rate(None)
            .failures_in_window(5),
    );
    for _ in 0..4 {
        call(&mut m, true).unwrap();
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    call(&mut m, true).unwrap();
    assert_eq!(
        state(&m, Instant::now()),
        CircuitState::Closed,
        "the first four are out of the window"
    );
    for _ in 0..3 {
        call(&mut m, true).unwrap();
    }
    // Successes do not help: 5 failures within the window open it (Resilience4j #785).
    for _ in 0..100 {
        call(&mut m, false).unwrap();
    }
    assert_eq!(state(&m, Instant::now()), CircuitState::Closed);
    call(&mut m, true).unwrap();
    assert_eq!(state(&m, Instant::now()), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_it_and_a_success_resets_the_count() {
    let mut m = machine(CircuitBreaker::new().failure_rate(None).consecutive_failures(5));
    for _ in 0..4 {
        call(&mut m, true).unwrap();
    }
    call(&mut m, false).unwrap();
    for _ in 0..4 {
        call(&mut m, true).unwrap();
    }
    assert_eq!(state(&m, Instant::now()), CircuitState::Closed);
    call(&mut m, true).unwrap();
    assert_eq!(state(&m, Instant::now()), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_it() {
    let mut m = machine(
        CircuitBreaker::new()
            .failure_rate(None)
            .minimum_calls(4)
            .slow_calls(Duration::from_millis(500), 0.5),
    );
    let now = Instant::now();
    for took in [100, 600, 100] {
        let t = m.acquire(|| now).unwrap();
        m.record(t, false, Some(Duration::from_millis(took)), || now);
    }
    assert_eq!(state(&m, now), CircuitState::Closed);
    let t = m.acquire(|| now).unwrap();
    m.record(t, false, Some(Duration::from_millis(500)), || now);
    assert_eq!(state(&m, now), CircuitState::Open, "2 of 4 calls were slow");
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_the_probes_through_and_closes_when_they_succeed() {
    let mut m = machine(
        CircuitBreaker::new()
            .failure_rate(None)
            .consecutive_failures(1)
            .open_for(Duration::from_secs(30))
            .half_open_probes(2),
    );
    call(&mut m, true).unwrap();
    tokio::time::advance(Duration::from_millis(29_999)).await;
    assert!(matches!(
        call(&mut m, false),
        Err(Rejection::CircuitOpen { retry_after }) if retry_after == Duration::from_millis(1)
    ));
    tokio::time::advance(Duration::from_millis(1)).await;
    let now = Instant::now();
    let first = m.acquire(|| now).expect("first probe");
    let second = m.acquire(|| now).expect("second probe");
    assert!(m.acquire(|| now).is_err(), "only two probes");
    m.record(first, false, Some(Duration::ZERO), || now);
    assert_eq!(state(&m, now), CircuitState::HalfOpen, "one of two probes back");
    m.record(second, false, Some(Duration::ZERO), || now);
    assert_eq!(state(&m, now), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_it_for_longer() {
    let mut m = machine(
        CircuitBreaker::new()
            .failure_rate(None)
            .consecutive_failures(1)
            .open_for(Duration::from_secs(1))
            .open_growth(2.0, Duration::from_secs(3)),
    );
    call(&mut m, true).unwrap();
    for expected in [2, 3, 3] {
        tokio::time::advance(Duration::from_secs(60)).await;
        call(&mut m, true).expect("the probe goes through");
        match call(&mut m, false) {
            Err(Rejection::CircuitOpen { retry_after }) => assert_eq!(retry_after, Duration::from_secs(expected)),
            other => panic!("expected an open circuit, got {other:?}"),
        }
    }
    // A success closes it and the open time starts over.
    tokio::time::advance(Duration::from_secs(60)).await;
    call(&mut m, false).unwrap();
    call(&mut m, true).unwrap();
    assert!(
        matches!(call(&mut m, false), Err(Rejection::CircuitOpen { retry_after }) if retry_after == Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_gives_its_slot_back_and_late_outcomes_are_ignored() {
    let mut m = machine(CircuitBreaker::new().failure_rate(None).consecutive_failures(2));
    let now = Instant::now();
    let late = m.acquire(|| now).unwrap();
    call(&mut m, true).unwrap();
    call(&mut m, true).unwrap();
    assert_eq!(state(&m, now), CircuitState::Open);
    // A success from before the circuit opened says nothing about now.
    m.record(late, false, Some(Duration::ZERO), || now);
    assert_eq!(state(&m, now), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    let now = Instant::now();
    let probe = m.acquire(|| now).unwrap();
    assert!(m.acquire(|| now).is_err());
    m.cancel(probe);
    let probe = m.acquire(|| now).expect("the dropped probe's slot is free again");
    m.record(probe, false, Some(Duration::ZERO), || now);
    assert_eq!(state(&m, now), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn isolate_and_reset_by_hand() {
    let b = CircuitBreaker::new();
    b.isolate("p");
    assert_eq!(b.state("p"), CircuitState::Isolated);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(b.state("p"), CircuitState::Isolated, "isolation does not time out");
    b.reset("p");
    assert_eq!(b.state("p"), CircuitState::Closed);
    assert_eq!(b.state("other"), CircuitState::Closed);
}

/// The layer: an open circuit answers without calling the service, per pattern.
#[tokio::test(start_paused = true)]
async fn the_layer_fails_fast_without_calling_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let failing = tower::service_fn(move |out: Outbound| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            Err::<Replies, _>(Error::ConnectionClosed {
                addr: format!("down ({})", out.route),
            })
        }
    });
    let breaker = CircuitBreaker::new().failure_rate(None).consecutive_failures(3);
    let svc = breaker.layer(failing);
    let out = |route: &'static str| Outbound::new(Kind::Request, route, route, bytes::Bytes::new(), Instant::now());
    for _ in 0..3 {
        assert!(matches!(
            svc.clone().oneshot(out("a")).await,
            Err(Error::ConnectionClosed { .. })
        ));
    }
    assert_eq!(breaker.state("a"), CircuitState::Open);
    for _ in 0..10 {
        let err = svc.clone().oneshot(out("a")).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Rejected {
                    reason: Rejection::CircuitOpen { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_unavailable());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "an open circuit does not call the service"
    );
    // Another pattern has its own circuit.
    assert!(matches!(
        svc.clone().oneshot(out("b")).await,
        Err(Error::ConnectionClosed { .. })
    ));
    assert_eq!(breaker.state("b"), CircuitState::Closed);
}

/// A call that hangs until its caller's deadline drops it counts as timed out, with no
/// per-attempt timeout configured: a service that hangs opens the circuit (the seed's case).
/// A call dropped before its deadline is only cancelled.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_at_its_deadline_is_a_failure() {
    let hangs = tower::service_fn(|_: Outbound| std::future::pending::<Result<Replies, Error>>());
    let breaker = CircuitBreaker::new().failure_rate(None).consecutive_failures(2);
    let svc = breaker.layer(hangs);
    let call = |after: Duration| {
        let out = Outbound::new(Kind::Request, "p", "p", bytes::Bytes::new(), Instant::now() + after);
        let deadline = out.deadline;
        tokio::time::timeout_at(deadline, svc.clone().oneshot(out))
    };
    // Given up on before their deadline: cancelled, not counted.
    for _ in 0..3 {
        let early = tokio::time::timeout(Duration::from_millis(10), call(Duration::from_secs(1)));
        assert!(early.await.is_err());
    }
    assert_eq!(breaker.state("p"), CircuitState::Closed);
    // Dropped at their deadline: two timeouts in a row open it.
    for _ in 0..2 {
        assert!(call(Duration::from_millis(100)).await.is_err());
    }
    assert_eq!(breaker.state("p"), CircuitState::Open);
}

/// The reference: keeps every outcome since the last transition and recomputes from them.
struct Model {
    window: Option<usize>,
    minimum: usize,
    rate: f64,
    consecutive: usize,
    open_for: Duration,
    probes: usize,
    outcomes: Vec<bool>,
    open_until: Option<Instant>,
    half_open: Option<(usize, usize)>,
}

impl Model {
    fn acquire(&mut self, now: Instant) -> bool {
        if let Some((issued, ok)) = self.half_open {
            if issued < self.probes {
                self.half_open = Some((issued + 1, ok));
                return true;
            }
            return false;
        }
        match self.open_until {
            Some(until) if now < until => false,
            Some(_) => {
                self.open_until = None;
                self.half_open = Some((1, 0));
                true
            }
            None => true,
        }
    }

    fn record(&mut self, failed: bool, now: Instant) {
        if let Some((issued, ok)) = self.half_open {
            if failed {
                self.half_open = None;
                self.open_until = Some(now + self.open_for);
            } else if ok + 1 == self.probes {
                self.half_open = None;
                self.outcomes.clear();
            } else {
                self.half_open = Some((issued, ok + 1));
            }
            return;
        }
        self.outcomes.push(failed);
        let recent: Vec<bool> = match self.window {
            Some(n) => self.outcomes.iter().rev().take(n).copied().collect(),
            None => self.outcomes.clone(),
        };
        let in_a_row = self.outcomes.iter().rev().take_while(|f| **f).count();
        let failures = recent.iter().filter(|f| **f).count();
        let by_rate = recent.len() >= self.minimum && failures as f64 / recent.len() as f64 >= self.rate;
        if in_a_row >= self.consecutive || by_rate {
            self.outcomes.clear();
            self.open_until = Some(now + self.open_for);
        }
    }
}

/// Random sequences of calls (each answered at once), time steps and outcomes: the breaker
/// lets through exactly the calls the model does.
#[tokio::test(start_paused = true)]
async fn agrees_with_the_reference_model() {
    against_the_model(|config| {
        let mut m = machine(config);
        let mut held = None;
        move |now: Instant, outcome: Option<bool>| match outcome {
            None => {
                held = m.acquire(|| now).ok();
                held.is_some()
            }
            Some(failed) => {
                m.record(held.take().expect("acquired"), failed, Some(Duration::ZERO), || now);
                true
            }
        }
    })
    .await;
}

/// The same through the circuit's gate, where successes of a closed circuit are counted
/// without the lock and added to the window later: no call is let through, or refused,
/// that the model would not.
#[tokio::test(start_paused = true)]
async fn the_lock_free_path_agrees_with_the_reference_model() {
    against_the_model(|config| {
        let circuit = Circuit::new(config.config, "p");
        let mut held = None;
        move |now: Instant, outcome: Option<bool>| match outcome {
            None => {
                held = circuit.acquire(|| now).ok();
                held.is_some()
            }
            Some(failed) => {
                circuit.record(held.take().expect("acquired"), failed, None, || now);
                true
            }
        }
    })
    .await;
}

/// Runs 200 random sequences through `ours` (made per sequence from its breaker): called with
/// `None` it acquires ("let through?"), with `Some(failed)` it records the call just acquired.
async fn against_the_model<F>(mut ours: impl FnMut(CircuitBreaker) -> F)
where
    F: FnMut(Instant, Option<bool>) -> bool,
{
    for seed in 0..200u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (window, minimum) = (rng.usize(1..30), rng.usize(1..30));
        let rate = [0.2, 0.5, 0.8, 1.0][rng.usize(..4)];
        let consecutive = rng.usize(1..10);
        let probes = rng.usize(1..4);
        let open_for = Duration::from_millis(rng.u64(1..500));
        let mut call = ours(
            CircuitBreaker::new()
                .window_calls(window)
                .minimum_calls(minimum as u32)
                .failure_rate(rate)
                .consecutive_failures(consecutive as u32)
                .open_for(open_for)
                .half_open_probes(probes as u32),
        );
        let mut model = Model {
            window: Some(window),
            minimum,
            rate,
            consecutive,
            open_for,
            probes,
            outcomes: Vec::new(),
            open_until: None,
            half_open: None,
        };
        let failure_odds = rng.f64();
        for step in 0..500 {
            if rng.u8(..10) == 0 {
                tokio::time::advance(Duration::from_millis(rng.u64(0..200))).await;
            }
            let now = Instant::now();
            let let_through = call(now, None);
            assert_eq!(
                let_through,
                model.acquire(now),
                "seed {seed}, step {step}: let through?"
            );
            if let_through {
                let failed = rng.f64() < failure_odds;
                call(now, Some(failed));
                model.record(failed, now);
            }
        }
    }
}

/// Many threads succeeding at once on a closed circuit lose no success: with 40,000 of them
/// in the window, 39,999 failures keep the rate under a half, and one more opens it.
#[test]
fn successes_counted_without_the_lock_are_not_lost() {
    let breaker = CircuitBreaker::new()
        .window_calls(100_000)
        .minimum_calls(10)
        .failure_rate(0.5);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    breaker.enter("p").expect("closed").finish(false);
                }
            });
        }
    });
    for _ in 0..39_999 {
        breaker.enter("p").expect("still closed").finish(true);
    }
    assert_eq!(breaker.state("p"), CircuitState::Closed);
    breaker.enter("p").expect("still closed").finish(true);
    assert_eq!(breaker.state("p"), CircuitState::Open);
}
