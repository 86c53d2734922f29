//! Discovery and balancing as a user meets them, on the in-process registry with real TCP
//! instances: spread, round robin, hashing, contracts, ejection of a dead instance, removal,
//! critical instances, graceful shutdown with nothing landing on a draining instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard::prelude::*;
use switchboard::{Error, RunningServer};
use switchboard_discovery::{Balance, Instance, Registry, Status};

/// What one instance saw.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<AtomicUsize>,
    /// Calls handled after the instance began to drain.
    while_draining: Arc<AtomicUsize>,
    draining: Arc<AtomicBool>,
    keys: Arc<Mutex<Vec<String>>>,
    /// Calls left to answer slowly (50 ms).
    slow_calls: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GetUser {
    id: u64,
}

/// The same route, built from a request type with a field more: another contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GetUserV2 {
    id: u64,
    tenant: String,
}

#[message_pattern("users.get", idempotent, retries = 5)]
async fn get_user(req: GetUser, State(seen): State<Seen>) -> u64 {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    let slow = seen
        .slow_calls
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if slow.is_ok() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if seen.draining.load(Ordering::SeqCst) {
        seen.while_draining.fetch_add(1, Ordering::SeqCst);
    }
    req.id
}

#[message_pattern("users.get")]
async fn get_user_v2(req: GetUserV2, State(seen): State<Seen>) -> u64 {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    req.id
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Keyed {
    tenant: String,
}

#[message_pattern("users.keyed")]
async fn keyed(req: Keyed, State(seen): State<Seen>) {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    seen.keys.lock().unwrap().push(req.tenant);
}

/// An instance of `users` on TCP, registered in `registry`.
async fn instance(registry: &Registry, seen: &Seen) -> RunningServer {
    Microservice::new()
        .name("users")
        .with_state(seen.clone())
        .handler(GET_USER)
        .handler(KEYED)
        .register(registry.clone())
        .deregister_grace(Duration::from_millis(300))
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap()
}

async fn registry(name: &str) -> Registry {
    Registry::connect(&format!("mem://{name}")).await.unwrap()
}

fn calls(seen: &[Seen]) -> Vec<usize> {
    seen.iter().map(|s| s.calls.load(Ordering::SeqCst)).collect()
}

#[tokio::test]
async fn calls_spread_over_every_instance() {
    let registry = registry("spread").await;
    let seen: Vec<Seen> = (0..3).map(|_| Seen::default()).collect();
    let mut servers = Vec::new();
    for s in &seen {
        servers.push(instance(&registry, s).await);
    }
    let users = Client::discover("users", &registry).connect().await.unwrap();
    // Concurrent waves, so that load tells instances apart.
    for wave in 0..30 {
        let calls = (0..10).map(|i| users.send(GET_USER, GetUser { id: wave * 10 + i }).into_future());
        for (i, r) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
            assert_eq!(r.unwrap(), wave * 10 + i as u64);
        }
    }
    let counts = calls(&seen);
    assert_eq!(counts.iter().sum::<usize>(), 300);
    // Power of two choices over equal instances: each takes a fair share (a third is 100).
    assert!(counts.iter().all(|&n| n >= 40), "calls per instance: {counts:?}");

    let rr = Client::discover("users", &registry.clone().balance(Balance::RoundRobin))
        .connect()
        .await
        .unwrap();
    let before = calls(&seen);
    for id in 0..30 {
        rr.send(GET_USER, GetUser { id }).await.unwrap();
    }
    let after: Vec<usize> = calls(&seen).iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(after, [10, 10, 10], "round robin takes each instance in turn");
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// Two instances of `users` in registry `name`, the first answering its first `slow_calls`
/// calls in 50 ms: what it saw, both servers, and a balanced client.
async fn slow_and_fast(name: &str, slow_calls: usize) -> (Seen, [RunningServer; 2], Client) {
    let registry = registry(name).await;
    let (slow, fast) = (Seen::default(), Seen::default());
    slow.slow_calls.store(slow_calls, Ordering::SeqCst);
    let servers = [instance(&registry, &slow).await, instance(&registry, &fast).await];
    let users = Client::discover("users", &registry).connect().await.unwrap();
    (slow, servers, users)
}

/// An instance whose first replies were slow (a cold start, a stall) takes its share again
/// once it is fast: one slow reply used to keep it out for the minute its estimate took to
/// decay to its peer's, as power of two choices never picks the dearer of two instances.
#[tokio::test]
async fn an_instance_slow_at_first_takes_calls_again() {
    let (slow, servers, users) = slow_and_fast("slow-start", 2).await;
    let started = std::time::Instant::now();
    let mut id = 0;
    while slow.calls.load(Ordering::SeqCst) < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the instance slow at first took {} of {id} calls in 10 s",
            slow.calls.load(Ordering::SeqCst)
        );
        assert_eq!(users.send(GET_USER, GetUser { id }).await.unwrap(), id);
        id += 1;
    }
    assert_eq!(slow.slow_calls.load(Ordering::SeqCst), 0, "its slow calls were made");
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

/// And one that stays slow takes few calls: it is tried again now and then, no more.
#[tokio::test]
async fn an_instance_that_stays_slow_takes_few_calls() {
    let (slow, servers, users) = slow_and_fast("stays-slow", usize::MAX).await;
    for id in 0..2_000 {
        assert_eq!(users.send(GET_USER, GetUser { id }).await.unwrap(), id);
    }
    let taken = slow.calls.load(Ordering::SeqCst);
    assert!(taken <= 100, "the slow instance took {taken} of 2,000 calls");
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_key_goes_to_one_instance() {
    let registry = registry("hash").await;
    let seen: Vec<Seen> = (0..3).map(|_| Seen::default()).collect();
    let mut servers = Vec::new();
    for s in &seen {
        servers.push(instance(&registry, s).await);
    }
    let by_tenant = registry.clone().balance("hash:tenant".parse().unwrap());
    let users = Client::discover("users", &by_tenant).connect().await.unwrap();
    for round in 0..5 {
        for t in 0..20 {
            let _ = round;
            users
                .send(
                    KEYED,
                    Keyed {
                        tenant: format!("t{t}"),
                    },
                )
                .await
                .unwrap();
        }
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, s) in seen.iter().enumerate() {
        for key in s.keys.lock().unwrap().iter() {
            let first = *owner.entry(key.clone()).or_insert(i);
            assert_eq!(first, i, "tenant {key} went to instances {first} and {i}");
        }
    }
    assert_eq!(owner.len(), 20);
    let owners: std::collections::HashSet<usize> = owner.values().copied().collect();
    assert!(
        owners.len() >= 2,
        "20 keys over 3 instances use more than one: {owner:?}"
    );
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn an_instance_with_another_contract_is_skipped() {
    let registry = registry("contract").await;
    let (v1, v2) = (Seen::default(), Seen::default());
    assert_ne!(
        GET_USER.contract(),
        GET_USER_V2.contract(),
        "a field more is another contract"
    );
    let old = instance(&registry, &v1).await;
    let new = Microservice::new()
        .name("users")
        .with_state(v2.clone())
        .handler(GET_USER_V2)
        .register(registry.clone())
        .deregister_grace(Duration::ZERO)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let listed = registry.instances("users").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|i| i
            .patterns
            .iter()
            .any(|p| p.route == "users.get" && p.contract.is_some())),
        "every instance publishes its contracts: {listed:?}"
    );

    let users = Client::discover("users", &registry).connect().await.unwrap();
    for id in 0..40 {
        assert_eq!(users.send(GET_USER, GetUser { id }).await.unwrap(), id);
    }
    assert_eq!(v1.calls.load(Ordering::SeqCst), 40);
    assert_eq!(
        v2.calls.load(Ordering::SeqCst),
        0,
        "the other contract's instance got no call"
    );
    // A raw call has no contract: any instance serving the route may take it.
    let _: u64 = users
        .send_raw("users.get", serde_json::json!({"id": 1, "tenant": "a"}))
        .await
        .unwrap();

    // With only the other contract left, the call is refused, saying why.
    old.shutdown().await.unwrap();
    let err = users.send(GET_USER, GetUser { id: 1 }).await.unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err:?}");
    assert!(err.to_string().contains("another contract"), "{err}");
    new.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dead_instance_is_ejected_and_idempotent_calls_fail_over() {
    let registry = registry("eject").await;
    let (a, b) = (Seen::default(), Seen::default());
    let first = instance(&registry, &a).await;
    let second = instance(&registry, &b).await;
    let users = Client::discover("users", &registry).connect().await.unwrap();
    for id in 0..20 {
        users.send(GET_USER, GetUser { id }).await.unwrap();
    }
    assert!(a.calls.load(Ordering::SeqCst) > 0 && b.calls.load(Ordering::SeqCst) > 0);

    // Gone without deregistering (as a crashed process: its registration stays until a TTL).
    drop(first);
    assert_eq!(registry.instances("users").await.unwrap().len(), 2, "still registered");
    let before = b.calls.load(Ordering::SeqCst);
    for id in 0..100 {
        // Declared idempotent with retries: a call refused by the dead one goes to the other.
        assert_eq!(users.send(GET_USER, GetUser { id }).await.unwrap(), id);
    }
    assert_eq!(
        b.calls.load(Ordering::SeqCst) - before,
        100,
        "every call was answered by the live one"
    );
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_removed_instance_gets_no_more_calls() {
    let registry = registry("removed").await;
    let (a, b) = (Seen::default(), Seen::default());
    let first = instance(&registry, &a).await;
    let second = instance(&registry, &b).await;
    let users = Client::discover("users", &registry).connect().await.unwrap();
    for id in 0..20 {
        users.send(GET_USER, GetUser { id }).await.unwrap();
    }
    // Deregistered by hand while still serving: calls stop at once (tower #856: a cached
    // choice must not send them to it).
    let instances = registry.instances("users").await.unwrap();
    let first_id = instances
        .iter()
        .find(|i| i.urls[0] == first.local_url())
        .map(|i| i.id.clone())
        .unwrap();
    let mut critical = instances.iter().find(|i| i.id == first_id).unwrap().clone();
    critical.status = Status::Critical;
    let lease = registry.register(critical).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = a.calls.load(Ordering::SeqCst);
    for id in 0..50 {
        users.send(GET_USER, GetUser { id }).await.unwrap();
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), before, "a critical instance is skipped");
    lease.deregister().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for id in 0..50 {
        users.send(GET_USER, GetUser { id }).await.unwrap();
    }
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        before,
        "a removed instance gets nothing"
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_deregisters_before_draining() {
    let registry = registry("graceful").await;
    let (a, b) = (Seen::default(), Seen::default());
    let leaving = instance(&registry, &a).await;
    let staying = instance(&registry, &b).await;
    let users = Client::discover("users", &registry).connect().await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (users, stop) = (users.clone(), stop.clone());
        tokio::spawn(async move {
            let mut failed = Vec::new();
            let mut id = 0;
            while !stop.load(Ordering::SeqCst) {
                let wave = (0..8).map(|i| users.send(GET_USER, GetUser { id: id + i }).into_future());
                for r in futures_util::future::join_all(wave).await {
                    if let Err(e) = r {
                        failed.push(e.to_string());
                    }
                }
                id += 8;
            }
            (id, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        a.calls.load(Ordering::SeqCst) > 0,
        "the leaving instance took calls before"
    );
    // Its handlers count a call that arrives once it drains.
    let health = leaving.health();
    let watcher = {
        let a = a.clone();
        tokio::spawn(async move {
            while !health.is_draining() {
                tokio::task::yield_now().await;
            }
            a.draining.store(true, Ordering::SeqCst);
        })
    };
    leaving.shutdown().await.unwrap();
    watcher.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (sent, failed) = load.await.unwrap();
    assert!(sent > 100, "load ran: {sent}");
    assert!(failed.is_empty(), "no call failed: {failed:?}");
    assert_eq!(
        a.while_draining.load(Ordering::SeqCst),
        0,
        "no call landed on the draining instance"
    );
    assert!(registry.instances("users").await.unwrap().len() == 1);
    staying.shutdown().await.unwrap();
}

#[tokio::test]
async fn urls_name_the_registry_the_service_and_the_balance() {
    let seen = Seen::default();
    let server = Microservice::new()
        .with_state(seen.clone())
        .handler(GET_USER)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let authority = server.local_url().trim_start_matches("tcp://").to_owned();
    let users = switchboard_discovery::connect(&format!("static://{authority}/users?balance=round_robin"))
        .await
        .unwrap();
    assert_eq!(users.send(GET_USER, GetUser { id: 3 }).await.unwrap(), 3);
    assert_eq!(users.url(), "discover://users");

    let bad = switchboard_discovery::connect("static://127.0.0.1:1/users?balance=fastest")
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("unknown balance `fastest`"), "{bad}");
    let bad = switchboard_discovery::connect("zookeeper://127.0.0.1:2181/users")
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("unknown registry `zookeeper`"), "{bad}");
    let bad = switchboard_discovery::connect("mem://nothing-here").await.unwrap_err();
    assert!(bad.to_string().contains("name the service"), "{bad}");
    let none = switchboard_discovery::connect("mem://nobody/users").await.unwrap_err();
    assert!(none.to_string().contains("no instance of `users`"), "{none}");
    // A static list only finds.
    let list = Registry::connect("static://127.0.0.1:1/users").await.unwrap();
    let refused = list
        .register(Instance::new("users", "u1", ["tcp://127.0.0.1:1"]))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("cannot register"), "{refused}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_service_must_be_named_to_register() {
    let registry = registry("unnamed").await;
    let err = Microservice::new()
        .with_state(Seen::default())
        .handler(GET_USER)
        .register(registry)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs a name"), "{err}");
}

/// A transport that takes nothing, with a ready flag the test raises and lowers (as a broker
/// transport's while its connection is lost).
struct Flag(tokio::sync::watch::Receiver<bool>);

impl switchboard::transport::Listener for Flag {
    fn local_url(&self) -> String {
        "custom://flag".into()
    }

    fn serve(
        self: Box<Self>,
        _router: switchboard::Router,
        mut shutdown: switchboard::transport::Shutdown,
    ) -> futures_util::future::BoxFuture<'static, switchboard::Result<()>> {
        Box::pin(async move {
            shutdown.wait().await;
            Ok(())
        })
    }

    fn ready(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.0.clone())
    }
}

#[tokio::test]
async fn a_service_that_is_not_ready_is_registered_critical_and_skipped() {
    let registry = registry("readiness").await;
    let (a, b) = (Seen::default(), Seen::default());
    let (ready, flag) = tokio::sync::watch::channel(true);
    let flaky = Microservice::new()
        .name("users")
        .with_state(a.clone())
        .handler(GET_USER)
        .register(registry.clone())
        .listen("tcp://127.0.0.1:0")
        .serve_on(Flag(flag))
        .start()
        .await
        .unwrap();
    let steady = instance(&registry, &b).await;
    let users = Client::discover("users", &registry).connect().await.unwrap();
    let status_of_flaky = || async {
        let listed = registry.instances("users").await.unwrap();
        listed
            .iter()
            .find(|i| i.urls.contains(&flaky.local_url().to_owned()))
            .map(|i| i.status)
    };
    assert_eq!(status_of_flaky().await, Some(Status::Passing));

    // Its transport loses its broker: the registration says critical, callers skip it.
    ready.send_replace(false);
    let mut waited = 0;
    while status_of_flaky().await != Some(Status::Critical) {
        waited += 1;
        assert!(waited < 500, "the registration follows readiness");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = a.calls.load(Ordering::SeqCst);
    for id in 0..30 {
        users.send(GET_USER, GetUser { id }).await.unwrap();
    }
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        before,
        "a critical instance takes no call"
    );

    // Ready again: passing, and it takes calls again.
    ready.send_replace(true);
    while status_of_flaky().await != Some(Status::Passing) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for id in 0..60 {
        users.send(GET_USER, GetUser { id }).await.unwrap();
    }
    assert!(
        a.calls.load(Ordering::SeqCst) > before,
        "a passing instance takes calls again"
    );
    flaky.shutdown().await.unwrap();
    steady.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_url_registered_without_its_password_is_not_called() {
    let registry = registry("redacted").await;
    let seen = Seen::default();
    let reachable = instance(&registry, &seen).await;
    // A broker service registers its URL without the password: a caller cannot use it.
    let lease = registry
        .register(Instance::new("users", "on-a-broker", ["amqp://guest:***@127.0.0.1:1/"]))
        .await
        .unwrap();
    let users = Client::discover("users", &registry).connect().await.unwrap();
    // Not idempotent: a call sent to the broker URL would fail, not be retried.
    for t in 0..20 {
        users
            .send(
                KEYED,
                Keyed {
                    tenant: format!("t{t}"),
                },
            )
            .await
            .unwrap();
    }
    assert_eq!(
        seen.calls.load(Ordering::SeqCst),
        20,
        "every call went to the callable instance"
    );
    lease.deregister().await.unwrap();
    reachable.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_service_on_every_interface_registers_where_it_is_reached() {
    let registry = registry("advertise").await.advertise("127.0.0.1");
    let seen = Seen::default();
    let server = Microservice::new()
        .name("users")
        .with_state(seen.clone())
        .handler(GET_USER)
        .register(registry.clone())
        .deregister_grace(Duration::ZERO)
        .listen("tcp://0.0.0.0:0")
        .start()
        .await
        .unwrap();
    let port = server.local_url().rsplit(':').next().unwrap().to_owned();
    let listed = registry.instances("users").await.unwrap();
    assert_eq!(listed[0].urls, [format!("tcp://127.0.0.1:{port}")]);
    let users = Client::discover("users", &registry).connect().await.unwrap();
    assert_eq!(users.send(GET_USER, GetUser { id: 9 }).await.unwrap(), 9);
    server.shutdown().await.unwrap();
}
