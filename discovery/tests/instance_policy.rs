//! Resilience per instance on a discovered client, with real TCP instances in the in-process
//! registry: a circuit per (pattern, instance), so one failing instance is left out of that
//! pattern alone; hedges and retries sent to another instance than the attempts before them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard::prelude::*;
use switchboard::resilience::{CircuitBreaker, Policy, Rejection, Retry};
use switchboard::{Error, RpcError, RpcResult, RunningServer};
use switchboard_discovery::{Balance, Registry};

/// One instance: what it answers and what it saw.
#[derive(Clone, Default)]
struct Inst {
    name: String,
    p: Arc<AtomicUsize>,
    q: Arc<AtomicUsize>,
    /// Answers `p` with `UNAVAILABLE` while set.
    failing: Arc<AtomicBool>,
    /// Sleeps this long before answering `p`.
    slow_ms: Arc<AtomicU64>,
    /// Shared by the instances of a test: the names of the instances `p` calls reached, in order.
    order: Arc<Mutex<Vec<String>>>,
    /// Shared: the first `p` call of the test (whichever instance gets it) sleeps this long...
    first_sleeps_ms: Arc<AtomicU64>,
    /// ...or, when set, answers `UNAVAILABLE`.
    first_fails: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Req {
    key: String,
}

#[message_pattern("svc.p")]
async fn p(_req: Req, State(inst): State<Inst>) -> RpcResult<String> {
    inst.p.fetch_add(1, Ordering::SeqCst);
    let first = {
        let mut order = inst.order.lock().unwrap();
        order.push(inst.name.clone());
        order.len() == 1
    };
    if first {
        let ms = inst.first_sleeps_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if inst.first_fails.load(Ordering::SeqCst) {
            return Err(RpcError::unavailable("the first call fails"));
        }
    }
    let ms = inst.slow_ms.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if inst.failing.load(Ordering::SeqCst) {
        return Err(RpcError::unavailable(format!("{} is down for p", inst.name)));
    }
    Ok(inst.name.clone())
}

#[message_pattern("svc.q")]
async fn q(_req: Req, State(inst): State<Inst>) -> String {
    inst.q.fetch_add(1, Ordering::SeqCst);
    inst.name.clone()
}

/// `n` instances of `svc` on TCP, registered in the in-process registry `name`, sharing
/// `order` and the first-call behaviour.
async fn instances(name: &str, n: usize) -> (Registry, Vec<Inst>, Vec<RunningServer>) {
    let registry = Registry::connect(&format!("mem://{name}")).await.unwrap();
    let shared = Inst::default();
    let mut insts = Vec::new();
    let mut servers = Vec::new();
    for i in 0..n {
        let inst = Inst {
            name: format!("i{i}"),
            p: Arc::default(),
            q: Arc::default(),
            failing: Arc::default(),
            slow_ms: Arc::default(),
            ..shared.clone()
        };
        servers.push(
            Microservice::new()
                .name("svc")
                .with_state(inst.clone())
                .handler(P)
                .handler(Q)
                .register(registry.clone())
                .deregister_grace(Duration::from_millis(20))
                .listen("tcp://127.0.0.1:0")
                .start()
                .await
                .unwrap(),
        );
        insts.push(inst);
    }
    (registry, insts, servers)
}

async fn shutdown(servers: Vec<RunningServer>) {
    for r in futures_util::future::join_all(servers.into_iter().map(RunningServer::shutdown)).await {
        r.unwrap();
    }
}

fn req() -> Req {
    Req { key: "k".into() }
}

fn counts(insts: &[Inst], f: impl Fn(&Inst) -> &AtomicUsize) -> Vec<usize> {
    insts.iter().map(|i| f(i).load(Ordering::SeqCst)).collect()
}

/// Calls `p` (20 ms apart) until `done` holds, within `within`.
async fn p_until(client: &Client, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "not within {within:?}");
        let _ = client.send(P, req()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One instance failing `p`: its circuit for `p` opens after the threshold and no more `p`
/// calls reach it, while it still takes `q`; after the open time a probe reaches it, and once it
/// answers again its circuit closes. With every instance open, a call fails fast.
#[tokio::test]
async fn a_failing_instance_is_left_out_of_its_pattern_only() {
    let (registry, insts, servers) = instances("instance-circuits", 3).await;
    let open_for = Duration::from_millis(500);
    let registry = registry.balance(Balance::RoundRobin).circuit_breaker(
        CircuitBreaker::new()
            .failure_rate(None)
            .consecutive_failures(3)
            .open_for(open_for),
    );
    let client = Client::discover("svc", &registry).connect().await.unwrap();
    let bad = &insts[0];
    bad.failing.store(true, Ordering::SeqCst);

    let mut failed = 0;
    for _ in 0..15 {
        match client.send(P, req()).await {
            Ok(name) => assert_ne!(name, "i0"),
            Err(e) => {
                assert!(e.as_rpc().is_some_and(RpcError::is_unavailable), "{e}");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 3, "three failures open the bad instance's circuit");
    assert_eq!(bad.p.load(Ordering::SeqCst), 3, "no p call reached it after that");
    assert_eq!(counts(&insts, |i| &i.p).iter().sum::<usize>(), 15);

    let before = counts(&insts, |i| &i.q);
    for _ in 0..9 {
        client.send(Q, req()).await.unwrap();
    }
    let q: Vec<usize> = counts(&insts, |i| &i.q)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(q, [3, 3, 3], "its circuit for q is closed: it takes its turn");

    // After the open time, a probe reaches it (and fails: the circuit reopens).
    p_until(&client, Duration::from_secs(3), || bad.p.load(Ordering::SeqCst) == 4).await;
    for _ in 0..3 {
        assert_ne!(
            client.send(P, req()).await.unwrap(),
            "i0",
            "reopened after a failed probe"
        );
    }
    assert_eq!(bad.p.load(Ordering::SeqCst), 4);

    // It answers again: the next probe closes its circuit, and it takes its turn again.
    bad.failing.store(false, Ordering::SeqCst);
    p_until(&client, Duration::from_secs(3), || bad.p.load(Ordering::SeqCst) == 5).await;
    let before = counts(&insts, |i| &i.p);
    for _ in 0..6 {
        client.send(P, req()).await.unwrap();
    }
    let p: Vec<usize> = counts(&insts, |i| &i.p)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(p, [2, 2, 2], "closed again: round robin over all three");

    // Every instance failing: once all three circuits are open, calls are refused at once.
    for i in &insts {
        i.failing.store(true, Ordering::SeqCst);
    }
    let mut refused = None;
    for _ in 0..20 {
        if let Err(e @ Error::Rejected { .. }) = client.send(P, req()).await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("refused once every circuit is open");
    assert!(
        matches!(&refused, Error::Rejected { reason: Rejection::CircuitOpen { retry_after }, .. } if *retry_after <= open_for),
        "{refused}"
    );
    let reached = counts(&insts, |i| &i.p);
    assert!(matches!(client.send(P, req()).await, Err(Error::Rejected { .. })));
    assert_eq!(counts(&insts, |i| &i.p), reached, "a refused call reaches no handler");
    assert!(client.send(Q, req()).await.is_ok(), "q is not affected");

    shutdown(servers).await;
}

/// A call to an instance that does not answer before the call's deadline is a failure of
/// that instance's circuit.
#[tokio::test]
async fn timed_out_calls_open_the_instance_circuit() {
    let (registry, insts, servers) = instances("instance-timeouts", 2).await;
    let registry = registry.balance(Balance::RoundRobin).circuit_breaker(
        CircuitBreaker::new()
            .failure_rate(None)
            .consecutive_failures(2)
            .open_for(Duration::from_secs(30)),
    );
    let client = Client::discover("svc", &registry).connect().await.unwrap();
    insts[0].slow_ms.store(2_000, Ordering::SeqCst);
    let mut timed_out = 0;
    for _ in 0..10 {
        match client.send(P, req()).timeout(Duration::from_millis(100)).await {
            Ok(name) => assert_eq!(name, "i1"),
            Err(e) => {
                assert!(matches!(e, Error::Timeout { .. }), "{e}");
                timed_out += 1;
            }
        }
    }
    assert_eq!(timed_out, 2, "two timeouts in a row open the slow instance's circuit");
    assert_eq!(insts[0].p.load(Ordering::SeqCst), 2);
    assert_eq!(insts[1].p.load(Ordering::SeqCst), 8);
    shutdown(servers).await;
}

/// A hedge goes to another instance than the slow first attempt, even when the balance
/// (hashing on a key) would pick the same one again.
#[tokio::test]
async fn a_hedge_goes_to_another_instance() {
    let (registry, insts, servers) = instances("instance-hedge", 3).await;
    insts[0].first_sleeps_ms.store(1_500, Ordering::SeqCst);
    let registry = registry.balance("hash:key".parse().unwrap());
    let client = Client::discover("svc", &registry)
        .layer(Policy::new().hedge(Duration::from_millis(50)))
        .connect()
        .await
        .unwrap();
    let answer = client.send(P, req()).idempotent().await.unwrap();
    let order = insts[0].order.lock().unwrap().clone();
    assert_eq!(order.len(), 2, "one attempt and its hedge: {order:?}");
    assert_ne!(order[0], order[1], "the hedge went to another instance");
    assert_eq!(answer, order[1], "the hedge's instance answered");
    let slow = insts.iter().find(|i| i.name == order[0]).unwrap();
    assert_eq!(slow.p.load(Ordering::SeqCst), 1, "the slow instance saw one attempt");

    shutdown(servers).await;
}

/// A retry after `UNAVAILABLE` goes to another instance than the attempt that failed, even
/// when the balance would pick the same one again.
#[tokio::test]
async fn a_retry_goes_to_another_instance() {
    let (registry, insts, servers) = instances("instance-retry", 3).await;
    insts[0].first_fails.store(true, Ordering::SeqCst);
    let registry = registry.balance("hash:key".parse().unwrap());
    let client = Client::discover("svc", &registry)
        .layer(
            Policy::new().retry(
                Retry::new()
                    .max_attempts(3)
                    .backoff(Duration::from_millis(1), Duration::from_millis(2)),
            ),
        )
        .connect()
        .await
        .unwrap();
    let answer = client.send(P, req()).idempotent().await.unwrap();
    let order = insts[0].order.lock().unwrap().clone();
    assert_eq!(order.len(), 2, "a failed attempt and its retry: {order:?}");
    assert_ne!(order[0], order[1], "the retry went to another instance");
    assert_eq!(answer, order[1]);
    let failed = insts.iter().find(|i| i.name == order[0]).unwrap();
    assert_eq!(failed.p.load(Ordering::SeqCst), 1);

    // A retry declared on the pattern's call goes elsewhere too (its own Retry layer).
    let plain = Client::discover("svc", &registry).connect().await.unwrap();
    let retrying = Retry::new()
        .max_attempts(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(2));
    let layered = Client::discover("svc", &registry)
        .layer(retrying)
        .connect()
        .await
        .unwrap();
    assert_eq!(
        plain.send(P, req()).await.unwrap(),
        order[0],
        "a plain call goes to the key's instance"
    );
    insts[0].order.lock().unwrap().clear();
    let answer = layered.send(P, req()).idempotent().await.unwrap();
    let again = insts[0].order.lock().unwrap().clone();
    assert_eq!(again.len(), 2, "{again:?}");
    assert_ne!(again[0], again[1]);
    assert_eq!(answer, again[1]);
    shutdown(servers).await;
}

/// `circuit=<failures in a row>[,<open time>]` in a registry URL gives its clients circuits per
/// instance; a bad value is refused.
#[tokio::test]
async fn a_url_configures_circuits_per_instance() {
    let (_registry, insts, servers) = instances("instance-url", 2).await;
    insts[0].failing.store(true, Ordering::SeqCst);
    let client = switchboard_discovery::connect("mem://instance-url/svc?balance=round_robin&circuit=2,30s")
        .await
        .unwrap();
    let mut answered = 0;
    for _ in 0..10 {
        answered += usize::from(client.send(P, req()).await.is_ok());
    }
    assert_eq!(
        insts[0].p.load(Ordering::SeqCst),
        2,
        "two failures in a row open its circuit"
    );
    assert_eq!(answered, 8);
    for bad in ["0", "2,30", "2,1x", "x"] {
        let err = switchboard_discovery::connect(&format!("mem://instance-url/svc?circuit={bad}"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("circuit"), "{bad}: {err}");
    }
    shutdown(servers).await;
}

/// The events of one thread, as `message` and `url` fields.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(String, String)>>>);

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        #[derive(Default)]
        struct Fields(String, String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.0 = format!("{value:?}"),
                    "url" => self.1 = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push((fields.0, fields.1));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// An instance's circuit opening and closing are logged with the instance's URL.
#[tokio::test(flavor = "current_thread")]
async fn transitions_name_the_instance() {
    let events = Events::default();
    let _logging = tracing::subscriber::set_default(events.clone());
    let (registry, insts, servers) = instances("instance-events", 2).await;
    let registry = registry.balance(Balance::RoundRobin).circuit_breaker(
        CircuitBreaker::new()
            .failure_rate(None)
            .consecutive_failures(1)
            .open_for(Duration::from_millis(100)),
    );
    let client = Client::discover("svc", &registry).connect().await.unwrap();
    insts[0].failing.store(true, Ordering::SeqCst);
    p_until(&client, Duration::from_secs(3), || {
        insts[0].p.load(Ordering::SeqCst) == 1
    })
    .await;
    insts[0].failing.store(false, Ordering::SeqCst);
    p_until(&client, Duration::from_secs(3), || {
        insts[0].p.load(Ordering::SeqCst) == 2
    })
    .await;
    let url = servers[0].local_url().to_owned();
    let logged = events.0.lock().unwrap().clone();
    let about = |what: &str| logged.iter().any(|(m, u)| m.starts_with(what) && *u == url);
    assert!(about("instance circuit opened"), "{url}: {logged:?}");
    assert!(about("instance circuit half-open"), "{url}: {logged:?}");
    assert!(about("instance circuit closed"), "{url}: {logged:?}");
    shutdown(servers).await;
}
