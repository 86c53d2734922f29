//! Resilience on real transports: retries recover a flaky service, the breaker fails fast
//! without a round trip and closes again, fallbacks answer when the server is killed in the
//! middle of a call (every transport), the retry budget stops a storm, one rate limit and
//! one bulkhead hold across transports.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use switchboard::prelude::*;
#[cfg(feature = "nats")]
use switchboard::resilience::RateLimit;
use switchboard::resilience::{
    ATTEMPT_HEADER, Bulkhead, CircuitBreaker, CircuitState, IDEMPOTENCY_KEY_HEADER, Policy, Rejection, Retry,
};
use switchboard::{Error, RunningServer};

/// What the flaky service does and saw.
#[derive(Clone, Default)]
struct Flaky {
    /// Answer `UNAVAILABLE` to this many more calls.
    fail_next: Arc<AtomicU32>,
    calls: Arc<AtomicUsize>,
    /// (attempt, idempotency key) of each call.
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

#[message_pattern("resilience.flaky")]
async fn flaky(n: u32, State(f): State<Flaky>, headers: Headers) -> RpcResult<u32> {
    f.calls.fetch_add(1, Ordering::SeqCst);
    let header = |name| headers.get(name).unwrap_or_default().to_owned();
    f.seen
        .lock()
        .unwrap()
        .push((header(ATTEMPT_HEADER), header(IDEMPOTENCY_KEY_HEADER)));
    if f.fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Err(RpcError::unavailable("flaky: try again"));
    }
    Ok(n)
}

#[message_pattern("resilience.slow")]
async fn slow(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

/// A server on its own runtime, which [`Killed::kill`] drops at once (tasks and sockets gone
/// without a goodbye, as when the process is killed).
struct Killable {
    url: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Killable {
    fn start(
        url: &str,
        state: Flaky,
        wrap: impl FnOnce(Microservice<Flaky>) -> Microservice<Flaky> + Send + 'static,
    ) -> Self {
        let (url, (tx, rx)) = (url.to_owned(), std::sync::mpsc::channel());
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let server: RunningServer = rt
                .block_on(
                    wrap(Microservice::new().with_state(state).handler(FLAKY).handler(SLOW))
                        .listen(url)
                        .start(),
                )
                .expect("server starts");
            tx.send(server.local_url().to_owned()).unwrap();
            let _ = stopped.recv();
            std::mem::forget(server); // no graceful shutdown: the runtime goes with everything on it
            rt.shutdown_background();
        });
        Killable {
            url: rx.recv().expect("server reports its url"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        drop(self.stop.take());
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.kill();
        }
    }
}

#[allow(dead_code)] // used by the broker tests only
/// Skips (or, under CI, fails) when the broker behind `url` is not there.
fn broker_up(url: &str, what: &str) -> bool {
    let hostport = url.split("://").nth(1).unwrap().split(['/', '?']).next().unwrap();
    let up = std::net::TcpStream::connect_timeout(&hostport.parse().unwrap(), Duration::from_secs(2)).is_ok();
    if !up {
        if std::env::var_os("CI").is_some() {
            panic!("{what} is not reachable at {hostport} (CI is set): run scripts/brokers.sh");
        }
        eprintln!("SKIPPED: {what} is not reachable at {hostport}: run scripts/brokers.sh");
    }
    up
}

/// Retry, breaker and fallback against a flaky service on one transport.
async fn flaky_service(server_url: &str) {
    let state = Flaky::default();
    let mut server = Killable::start(server_url, state.clone(), |m| m);
    let url = server.url.clone();

    // Retry recovers two transient failures; every attempt carries its number and one key.
    let retrying = Client::builder(&url)
        .timeout(Duration::from_secs(10))
        .layer(
            Policy::new().retry(
                Retry::new()
                    .max_attempts(3)
                    .backoff(Duration::from_millis(5), Duration::from_millis(20)),
            ),
        )
        .connect()
        .await
        .unwrap();
    state.fail_next.store(2, Ordering::SeqCst);
    assert_eq!(retrying.send(FLAKY, 7).idempotent().await.unwrap(), 7);
    let seen = std::mem::take(&mut *state.seen.lock().unwrap());
    let attempts: Vec<&str> = seen.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(attempts, ["1", "2", "3"], "{url}");
    assert_eq!(seen[0].1.len(), 32, "an idempotency key was generated: {seen:?}");
    assert!(
        seen.iter().all(|(_, key)| *key == seen[0].1),
        "the key is the same on every attempt: {seen:?}"
    );
    // A call not marked idempotent is not repeated.
    state.fail_next.store(1, Ordering::SeqCst);
    let err = retrying.send(FLAKY, 7).await.unwrap_err();
    assert!(err.as_rpc().is_some_and(RpcError::is_unavailable), "{err}");
    assert_eq!(state.seen.lock().unwrap().len(), 1, "{url}: tried once");
    // Nor is a failure that is not retryable: the key a caller set is kept.
    state.seen.lock().unwrap().clear();

    // The breaker opens after 3 failures in a row, then fails fast without calling the service.
    let breaker = CircuitBreaker::new()
        .failure_rate(None)
        .consecutive_failures(3)
        .open_for(Duration::from_millis(500));
    let guarded = Client::builder(&url)
        .timeout(Duration::from_secs(10))
        .layer(Policy::new().circuit_breaker(breaker.clone()))
        .connect()
        .await
        .unwrap();
    state.fail_next.store(u32::MAX, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(guarded.send(FLAKY, 1).await.unwrap_err().is_retryable());
    }
    assert_eq!(breaker.state("resilience.flaky"), CircuitState::Open, "{url}");
    let before = state.calls.load(Ordering::SeqCst);
    let started = Instant::now();
    for _ in 0..1000 {
        let err = guarded.send(FLAKY, 1).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Rejected {
                    reason: Rejection::CircuitOpen { .. },
                    ..
                }
            ),
            "{url}: {err}"
        );
    }
    let per_call = started.elapsed() / 1000;
    eprintln!("{url}: a call refused by the open circuit took {per_call:?}");
    assert_eq!(
        state.calls.load(Ordering::SeqCst),
        before,
        "{url}: no call reached the service"
    );
    // The fallback answers for an open circuit too.
    assert_eq!(guarded.send(FLAKY, 1).fallback(99).await.unwrap(), 99);
    // The service recovers; after the open time a probe goes through and closes the circuit.
    state.fail_next.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(guarded.send(FLAKY, 5).await.unwrap(), 5, "{url}: the probe");
    assert_eq!(breaker.state("resilience.flaky"), CircuitState::Closed, "{url}");
    assert_eq!(guarded.send(FLAKY, 6).await.unwrap(), 6);

    // Killed in the middle of a call: the fallback answers.
    fallback_when_killed(&mut server, Duration::from_secs(3)).await;
}

/// Starts a slow call, kills the server under it, and expects the call's fallback.
async fn fallback_when_killed(server: &mut Killable, attempt: Duration) {
    let client = Client::builder(&server.url)
        .timeout(Duration::from_secs(10))
        .layer(Policy::new().attempt_timeout(attempt))
        .connect()
        .await
        .unwrap();
    // The handler is running when the server dies.
    let call = tokio::spawn(
        client
            .send(SLOW, 5_000)
            .fallback_with(|e| {
                assert!(
                    e.is_unavailable(),
                    "the fallback fires because the service could not answer: {e}"
                );
                0
            })
            .into_future(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = server.url.clone();
    server.kill();
    let started = Instant::now();
    assert_eq!(call.await.unwrap().unwrap(), 0, "{url}: the fallback value");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{url}: the fallback came before the call's deadline"
    );
}

use std::future::IntoFuture;

#[tokio::test]
async fn in_process() {
    flaky_service("mem://resilience").await;
}

#[tokio::test]
async fn tcp() {
    flaky_service("tcp://127.0.0.1:0").await;
}

/// NATS delivers a request to every subscriber of its subject: the tests using it take turns.
#[cfg(feature = "nats")]
static NATS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[cfg(feature = "nats")]
#[tokio::test]
async fn nats() {
    let url = "nats://127.0.0.1:4222";
    let _turn = NATS.lock().await;
    if broker_up(url, "NATS") {
        flaky_service(url).await;
    }
}

#[cfg(feature = "amqp")]
#[tokio::test]
async fn rabbitmq() {
    let url = "amqp://127.0.0.1:5672?queue=sb-test-resilience&durable=false";
    if broker_up(url, "RabbitMQ") {
        flaky_service(url).await;
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_fallback() {
    let url = "redis://127.0.0.1:6379";
    if broker_up(url, "Redis") {
        let mut s = Killable::start(url, Flaky::default(), |m| m);
        fallback_when_killed(&mut s, Duration::from_secs(1)).await;
    }
}

#[cfg(feature = "mqtt")]
#[tokio::test]
async fn mqtt_fallback() {
    let url = "mqtt://127.0.0.1:1883";
    if broker_up(url, "Mosquitto") {
        let mut s = Killable::start(url, Flaky::default(), |m| m);
        fallback_when_killed(&mut s, Duration::from_secs(1)).await;
    }
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_fallback() {
    let cluster = switchboard::transport::kafka::KafkaMock::start().expect("librdkafka's mock cluster starts");
    let url = format!("kafka://{}?session_timeout_ms=6000", cluster.bootstrap());
    let mut s = Killable::start(&url, Flaky::default(), |m| m);
    fallback_when_killed(&mut s, Duration::from_secs(2)).await;
}

#[cfg(feature = "grpc")]
#[tokio::test]
async fn grpc_fallback() {
    let mut s = Killable::start("grpc://127.0.0.1:0", Flaky::default(), |m| m);
    fallback_when_killed(&mut s, Duration::from_secs(3)).await;
}

/// A service that only ever answers `UNAVAILABLE` gets at most about 1.2 × the calls in
/// attempts, whatever the retry policy says, thanks to the budget.
#[tokio::test]
async fn the_retry_budget_stops_a_storm() {
    let state = Flaky::default();
    state.fail_next.store(u32::MAX, Ordering::SeqCst);
    let server = Killable::start("tcp://127.0.0.1:0", state.clone(), |m| m);
    let client = Client::builder(&server.url)
        .layer(
            Policy::new().retry(
                Retry::new()
                    .max_attempts(5)
                    .backoff(Duration::from_millis(1), Duration::from_millis(2)),
            ),
        )
        .connect()
        .await
        .unwrap();
    let calls = 1000;
    for chunk in 0..calls / 50 {
        let wave = (0..50).map(|i| client.send(FLAKY, chunk * 50 + i).idempotent().into_future());
        for r in join_all(wave).await {
            assert!(r.unwrap_err().is_retryable());
        }
    }
    let attempts = state.calls.load(Ordering::SeqCst);
    eprintln!("{calls} calls to a service that is down made {attempts} attempts (5 allowed per call)");
    // 20 % of the calls, plus the budget's reserve (10 a second over its 10 s window) and what
    // it earns in the seconds the test takes.
    assert!(
        attempts as u32 <= calls * 12 / 10 + 100 + 50,
        "{attempts} attempts for {calls} calls"
    );
    assert!(attempts as u32 > calls, "some calls were retried");
}

/// 1,500 concurrent calls, split over TCP and NATS, against one limit of 5 a second: 5 a
/// second are served, the others refused at once as `UNAVAILABLE`.
#[cfg(feature = "nats")]
#[tokio::test]
async fn one_rate_limit_across_transports() {
    let _turn = NATS.lock().await;
    if !broker_up("nats://127.0.0.1:4222", "NATS") {
        return;
    }
    let limit = RateLimit::per_second(5);
    let server = Microservice::new()
        .with_state(Flaky::default())
        .handler(FLAKY)
        .layer(limit)
        .listen("tcp://127.0.0.1:0")
        .listen("nats://127.0.0.1:4222?queue=sb-test-rate")
        .start()
        .await
        .unwrap();
    let tcp = Client::connect(&server.local_urls()[0]).await.unwrap();
    let nats = Client::connect("nats://127.0.0.1:4222").await.unwrap();
    // 1,500 calls in 30 waves of 50 over 3 seconds, each wave all at once.
    let started = Instant::now();
    let waves = (0..30u32).map(|wave| {
        let (tcp, nats) = (tcp.clone(), nats.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(100) * wave).await;
            let calls = (0..50u32).map(|i| {
                let c = if i % 2 == 0 { &tcp } else { &nats };
                c.send(FLAKY, wave * 50 + i).into_future()
            });
            join_all(calls).await
        }
    });
    let outcomes: Vec<_> = join_all(waves).await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    assert_eq!(outcomes.len(), 1500);
    let served = outcomes.iter().filter(|r| r.is_ok()).count();
    for r in outcomes.iter().filter_map(|r| r.as_ref().err()) {
        assert!(r.as_rpc().is_some_and(RpcError::is_unavailable), "{r}");
    }
    eprintln!("1500 calls over {elapsed:?}: {served} served");
    // A burst of 5, then 5 a second.
    let (least, most) = (
        (5.0 * elapsed.as_secs_f64()).floor() as usize,
        5 + (5.0 * elapsed.as_secs_f64()).ceil() as usize,
    );
    assert!(
        (least..=most).contains(&served),
        "{served} served in {elapsed:?} (expected {least} to {most})"
    );
    server.shutdown().await.unwrap();
}

/// At most 2 slow calls at once and 2 waiting: of 10 concurrent calls, 4 are answered and
/// 6 are refused at once.
#[tokio::test]
async fn a_bulkhead_sheds_what_it_cannot_queue() {
    let server = Microservice::new()
        .with_state(Flaky::default())
        .handler(SLOW)
        .layer(Bulkhead::new(2).queue(2))
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();
    let started = Instant::now();
    let outcomes = join_all((0..10).map(|_| client.send(SLOW, 300).into_future())).await;
    let served = outcomes.iter().filter(|r| r.is_ok()).count();
    assert_eq!(served, 4, "{outcomes:?}");
    for r in outcomes.iter().filter_map(|r| r.as_ref().err()) {
        assert!(r.is_retryable(), "{r}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the queued calls waited for a slot"
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- deadlines that travel

/// A service in the chain: what it calls next, and what its handlers did.
#[derive(Clone, Default)]
struct Hop {
    next: Option<Client>,
    started: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    /// When a handler of this hop was dropped before it finished.
    dropped_at: Arc<Mutex<Option<Instant>>>,
}

/// Calls the next hop after `ms` of its own work; records being dropped half-way.
#[message_pattern("chain.work")]
async fn work(ms: u64, State(hop): State<Hop>) -> RpcResult<u64> {
    hop.started.fetch_add(1, Ordering::SeqCst);
    struct OnDrop(Option<Arc<Mutex<Option<Instant>>>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            if let Some(at) = self.0.take() {
                *at.lock().unwrap() = Some(Instant::now());
            }
        }
    }
    let mut guard = OnDrop(Some(hop.dropped_at.clone()));
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let out = match &hop.next {
        // The next hop's client has a 10 s timeout: the call inherits what is left of ours.
        Some(next) => next.send(WORK, ms).await?,
        None => ms,
    };
    guard.0 = None;
    hop.finished.fetch_add(1, Ordering::SeqCst);
    Ok(out)
}

/// The time this request has left, in milliseconds, as its handler sees it.
#[message_pattern("chain.left")]
async fn left(Deadline(deadline): Deadline, State(hop): State<Hop>) -> RpcResult<u64> {
    match &hop.next {
        Some(next) => Ok(next.send(LEFT, ()).await?),
        None => Ok(deadline.map_or(u64::MAX, |d| {
            d.saturating_duration_since(tokio::time::Instant::now()).as_millis() as u64
        })),
    }
}

async fn hop(url: &str, next: Option<Client>) -> (RunningServer, Hop, Client) {
    let hop = Hop { next, ..Hop::default() };
    let server = Microservice::new()
        .with_state(hop.clone())
        .handler(WORK)
        .handler(LEFT)
        .listen(url)
        .start()
        .await
        .unwrap();
    let client = Client::builder(server.local_url())
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    (server, hop, client)
}

/// A → B → C with a 300 ms budget where B is slow: B is dropped at the deadline and C never
/// starts; a hop's handler sees the caller's deadline, less what the hops before it spent.
async fn deadline_chain(urls: [&str; 3]) {
    let (c_server, c, to_c) = hop(urls[2], None).await;
    let (b_server, b, to_b) = hop(urls[1], Some(to_c)).await;
    let (a_server, a, to_a) = hop(urls[0], Some(to_b)).await;

    let left = to_a.send(LEFT, ()).timeout(Duration::from_millis(300)).await.unwrap();
    assert!(
        (1..=300).contains(&left),
        "{urls:?}: C saw {left} ms left of a 300 ms budget"
    );

    // Each hop works 200 ms before calling the next: B's work ends past the 300 ms budget.
    let started = Instant::now();
    let err = to_a
        .send(WORK, 200)
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{urls:?}: {err}");
    let deadline = started + Duration::from_millis(300);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.started.load(Ordering::SeqCst), 0, "{urls:?}: C never started");
    assert_eq!(b.started.load(Ordering::SeqCst), 1);
    assert_eq!(b.finished.load(Ordering::SeqCst) + a.finished.load(Ordering::SeqCst), 0);
    let b_dropped = b
        .dropped_at
        .lock()
        .unwrap()
        .expect("B's handler was dropped at its deadline");
    let wasted = b_dropped.saturating_duration_since(deadline);
    eprintln!("{urls:?}: B worked {wasted:?} past the caller's deadline");
    assert!(
        b_dropped < started + Duration::from_millis(400),
        "{urls:?}: B stopped before its work was done"
    );

    for s in [a_server, b_server, c_server] {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn deadline_chain_in_process() {
    deadline_chain(["mem://chain-a", "mem://chain-b", "mem://chain-c"]).await;
}

#[tokio::test]
async fn deadline_chain_tcp() {
    deadline_chain(["tcp://127.0.0.1:0"; 3]).await;
}

#[cfg(feature = "grpc")]
#[tokio::test]
async fn deadline_chain_grpc() {
    deadline_chain(["grpc://127.0.0.1:0"; 3]).await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn the_deadline_travels_over_nats() {
    let _turn = NATS.lock().await;
    if !broker_up("nats://127.0.0.1:4222", "NATS") {
        return;
    }
    let (server, _, client) = hop("nats://127.0.0.1:4222", None).await;
    let left = client.send(LEFT, ()).timeout(Duration::from_millis(300)).await.unwrap();
    assert!((1..=300).contains(&left), "the handler saw {left} ms left");
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- policy declared on the handler

#[message_pattern("resilience.declared", idempotent, retries = 2)]
async fn declared(n: u32, State(f): State<Flaky>, headers: Headers) -> RpcResult<u32> {
    flaky(n, State(f), headers).await
}

#[message_pattern("resilience.limited", timeout = "200ms")]
async fn limited(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[message_pattern("resilience.single", concurrency = 1)]
async fn single(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[message_pattern("resilience.rated", rate = "2/s")]
async fn rated() -> u32 {
    1
}

/// What the attribute declares holds with no layer configured anywhere: the typed client
/// retries an idempotent pattern and keeps its deadline; the server keeps its concurrency and
/// rate.
#[tokio::test]
async fn the_policy_declared_on_the_handler_is_kept_by_both_ends() {
    let state = Flaky::default();
    let server = Microservice::new()
        .with_state(state.clone())
        .handler(DECLARED)
        .handler(LIMITED)
        .handler(SINGLE)
        .handler(RATED)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();

    state.fail_next.store(2, Ordering::SeqCst);
    assert_eq!(client.send(DECLARED, 3).await.unwrap(), 3, "two retries declared");
    assert_eq!(state.calls.load(Ordering::SeqCst), 3);
    state.fail_next.store(3, Ordering::SeqCst);
    assert!(
        client.send(DECLARED, 3).await.unwrap_err().is_retryable(),
        "no more than two"
    );
    assert_eq!(state.calls.load(Ordering::SeqCst), 6);
    // The hand-written equivalent, for a pattern served elsewhere.
    const REMOTE: MessageDef<u32, u32> = MessageDef::new(pattern!("resilience.declared"))
        .with_options(switchboard::PatternOptions::new().idempotent().retries(1));
    state.fail_next.store(1, Ordering::SeqCst);
    assert_eq!(client.send(REMOTE, 4).await.unwrap(), 4);

    let started = Instant::now();
    let err = client.send(LIMITED, 5_000).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the declared 200 ms, not the client's 30 s"
    );
    // A NestJS-style untyped call has no client deadline of that length: the server's limit answers.
    let err = client.send_raw::<u64>("resilience.limited", 5_000).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let three = join_all((0..3).map(|_| client.send(SINGLE, 200).into_future())).await;
    assert_eq!(
        three.iter().filter(|r| r.is_ok()).count(),
        2,
        "one runs, one waits: {three:?}"
    );
    assert!(three.iter().filter_map(|r| r.as_ref().err()).all(Error::is_retryable));

    let five = join_all((0..5).map(|_| client.send(RATED, ()).into_future())).await;
    assert_eq!(five.iter().filter(|r| r.is_ok()).count(), 2, "{five:?}");
    server.shutdown().await.unwrap();
}

/// Configuration changes what the attribute declares, without recompiling: on the server the
/// concurrency, rate and time limits; on the client the deadline and the retries of idempotent
/// patterns (never of others). A service refuses retries for its own non-idempotent pattern.
#[tokio::test]
async fn configuration_overrides_what_the_handler_declares() {
    let state = Flaky::default();
    let server = Microservice::new()
        .with_state(state.clone())
        .handler(FLAKY)
        .handler(DECLARED)
        .handler(SLOW)
        .handler(SINGLE)
        .handler(RATED)
        .policy_overrides(
            switchboard::Overrides::from_json(
                r#"{ "resilience.single": { "concurrency": 3 },
                     "resilience.slow": { "timeout": "100ms" },
                     "resilience.rated": { "rate": "4/s" },
                     "resilience.declared": { "retries": 9 } }"#,
            )
            .unwrap(),
        )
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let plain = Client::connect(server.local_url()).await.unwrap();
    let three = join_all((0..3).map(|_| plain.send(SINGLE, 200).into_future())).await;
    assert!(
        three.iter().all(Result::is_ok),
        "concurrency 3, not the declared 1: {three:?}"
    );
    // Untyped, so only the server's limit applies: 100 ms instead of none.
    let err = plain.send_raw::<u64>("resilience.slow", 5_000).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let eight = join_all((0..8).map(|_| plain.send(RATED, ()).into_future())).await;
    assert_eq!(
        eight.iter().filter(|r| r.is_ok()).count(),
        4,
        "4/s, not the declared 2/s: {eight:?}"
    );

    let client = Client::builder(server.local_url())
        .policy_overrides(
            switchboard::Overrides::from_json(
                r#"{ "*": { "retries": 4 }, "resilience.slow": { "timeout": "100ms" } }"#,
            )
            .unwrap(),
        )
        .connect()
        .await
        .unwrap();
    state.fail_next.store(4, Ordering::SeqCst);
    state.calls.store(0, Ordering::SeqCst);
    assert_eq!(
        client.send(DECLARED, 1).await.unwrap(),
        1,
        "four retries, not the declared two"
    );
    assert_eq!(state.calls.load(Ordering::SeqCst), 5);
    state.fail_next.store(1, Ordering::SeqCst);
    assert!(client.send(FLAKY, 1).await.is_err(), "not idempotent: never retried");
    assert_eq!(state.calls.load(Ordering::SeqCst), 6);
    let err = client.send(SLOW, 5_000).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "the overridden deadline: {err}");
    server.shutdown().await.unwrap();

    let err = Microservice::new()
        .handler(SLOW)
        .policy_overrides(switchboard::Overrides::from_json(r#"{ "resilience.slow": { "retries": 1 } }"#).unwrap())
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { reason, .. } if reason.contains("resilience.slow") && reason.contains("idempotent")),
        "{err}"
    );
}

/// The policy's order: a timed-out attempt is a failure the breaker counts, and a retry
/// happens inside the breaker (which counts the call once, after its last attempt).
#[tokio::test]
async fn attempt_timeouts_trip_the_breaker() {
    let server = Killable::start("tcp://127.0.0.1:0", Flaky::default(), |m| m);
    let breaker = CircuitBreaker::new().failure_rate(None).consecutive_failures(2);
    let client = Client::builder(&server.url)
        .layer(
            Policy::new()
                .circuit_breaker(breaker.clone())
                .retry(
                    Retry::new()
                        .max_attempts(3)
                        .backoff(Duration::from_millis(1), Duration::from_millis(2)),
                )
                .attempt_timeout(Duration::from_millis(50)),
        )
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let err = client.send(SLOW, 1_000).idempotent().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "three attempts of 50 ms"
    );
    assert_eq!(
        breaker.state("resilience.slow"),
        CircuitState::Closed,
        "one call, counted once"
    );
    assert!(client.send(SLOW, 1_000).await.is_err());
    assert_eq!(
        breaker.state("resilience.slow"),
        CircuitState::Open,
        "two timed-out calls in a row"
    );
    let err = client.send(SLOW, 1).await.unwrap_err();
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
}

/// A client's own limits, in its policy: the bulkhead queues then sheds, the rate limit
/// makes a call wait for its slot up to `max_wait`, then refuses; neither reaches the service.
#[tokio::test]
async fn a_client_policy_limits_its_own_calls() {
    let state = Flaky::default();
    let server = Killable::start("tcp://127.0.0.1:0", state.clone(), |m| m);
    let client = Client::builder(&server.url)
        .layer(Policy::new().bulkhead(Bulkhead::new(1).queue(1)))
        .connect()
        .await
        .unwrap();
    let three = join_all((0..3).map(|_| client.send(SLOW, 200).into_future())).await;
    assert_eq!(three.iter().filter(|r| r.is_ok()).count(), 2, "{three:?}");
    assert!(three.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(
        e,
        Error::Rejected {
            reason: Rejection::Overloaded,
            ..
        }
    )));

    let limited = Client::builder(&server.url)
        .layer(
            Policy::new().rate_limit(
                switchboard::resilience::RateLimit::per_second(10)
                    .burst(1)
                    .max_wait(Duration::from_millis(250)),
            ),
        )
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let five = join_all((0..5).map(|i| limited.send(FLAKY, i).into_future())).await;
    // Slots at 0, 100 and 200 ms are within the wait; the others would be at 300 and 400.
    assert_eq!(five.iter().filter(|r| r.is_ok()).count(), 3, "{five:?}");
    assert!(five.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(
        e,
        Error::Rejected {
            reason: Rejection::RateLimited { .. },
            ..
        }
    )));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the third waited for its slot"
    );
    assert_eq!(
        state.calls.load(Ordering::SeqCst),
        3,
        "refused calls never reached the service"
    );
}

/// What the hedged service saw: how many calls, and the keys they carried.
#[derive(Clone, Default)]
struct Hedged {
    calls: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<String>>>,
}

/// The first call is slow (a replica in trouble); the others answer at once.
#[message_pattern("resilience.hedged")]
async fn hedged(n: u32, State(h): State<Hedged>, headers: Headers) -> u32 {
    h.keys
        .lock()
        .unwrap()
        .push(headers.get(IDEMPOTENCY_KEY_HEADER).unwrap_or_default().to_owned());
    if h.calls.fetch_add(1, Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    n
}

/// A hedged idempotent call answers with the second attempt when the first is slow; both
/// carry one idempotency key; a call that is not idempotent is never sent twice.
#[tokio::test]
async fn a_slow_attempt_is_hedged() {
    let h = Hedged::default();
    let server = Microservice::new()
        .with_state(h.clone())
        .handler(HEDGED)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::builder(server.local_url())
        .layer(Policy::new().hedge(Duration::from_millis(50)))
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(client.send(HEDGED, 7).idempotent().await.unwrap(), 7);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the hedge answered: {:?}",
        started.elapsed()
    );
    assert_eq!(h.calls.load(Ordering::SeqCst), 2);
    let keys = h.keys.lock().unwrap().clone();
    assert!(keys[0].len() == 32 && keys[0] == keys[1], "{keys:?}");
    // A fast answer is not hedged; a call that is not idempotent is not either.
    assert_eq!(client.send(HEDGED, 8).idempotent().await.unwrap(), 8);
    assert_eq!(client.send(HEDGED, 9).await.unwrap(), 9);
    assert_eq!(h.calls.load(Ordering::SeqCst), 4);
    h.calls.store(0, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(client.send(HEDGED, 10).await.unwrap(), 10);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not idempotent: waited for the slow one"
    );
    assert_eq!(h.calls.load(Ordering::SeqCst), 1);
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- events keep no caller deadline
#[derive(Clone, Default)]
struct Done(Arc<tokio::sync::Notify>);

#[event_pattern("resilience.long_event")]
async fn long_event(ms: u64, State(done): State<Done>) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    done.0.notify_one();
}

/// An emit's timeout is how long the emitter waits for the event to be accepted: a listener
/// running longer than that is not cancelled (as on a broker, where events carry no deadline).
async fn an_event_outlives_its_emit_timeout(url: &str) {
    let done = Done::default();
    let server = Microservice::new()
        .with_state(done.clone())
        .handler(LONG_EVENT)
        .listen(url)
        .start()
        .await
        .unwrap();
    let client = Client::builder(server.local_url())
        .timeout(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    client.emit(LONG_EVENT, 300u64).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), done.0.notified())
        .await
        .expect("the listener ran to its end, past the emitter's 50 ms");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_event_outlives_its_emit_timeout_in_process() {
    an_event_outlives_its_emit_timeout("mem://long-event").await;
}

#[tokio::test]
async fn an_event_outlives_its_emit_timeout_over_tcp() {
    an_event_outlives_its_emit_timeout("tcp://127.0.0.1:0").await;
}

/// One value, then nothing: the reply never completes.
#[message_pattern("resilience.drip")]
async fn drip(n: u32) -> impl futures_util::Stream<Item = u32> + Send {
    use futures_util::StreamExt;
    futures_util::stream::once(std::future::ready(n)).chain(futures_util::stream::pending())
}

/// A call whose attempt timeout comes before its deadline has no timer of its own while the
/// attempt runs (the attempt's is enough); once the first reply packet is in, the call's
/// deadline still bounds the rest of the reply.
#[tokio::test]
async fn the_deadline_bounds_a_reply_after_its_attempt() {
    let server = Microservice::new()
        .handler(DRIP)
        .handler(SLOW)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::builder(server.local_url())
        .timeout(Duration::from_millis(600))
        .layer(Policy::new().attempt_timeout(Duration::from_millis(300)))
        .connect()
        .await
        .unwrap();
    // The attempt's timer ends a call that gets no answer.
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), client.send(SLOW, 5_000)).await {
        Ok(Err(Error::Timeout { after, .. })) => assert_eq!(after, Duration::from_millis(300)),
        other => panic!("expected the attempt to time out, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ended by the attempt timeout"
    );
    // The first packet ends the attempt; the call's deadline, not the attempt's, ends the
    // wait for the rest.
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), client.send(DRIP, 7)).await {
        Ok(Err(Error::Timeout { after, .. })) => assert_eq!(after, Duration::from_millis(600)),
        other => panic!("expected the call to time out at its deadline, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the rest of the reply had until the call's deadline"
    );
    server.shutdown().await.unwrap();
}
