//! The Consul backend against a fake Consul agent in this process (tests/common/consul.rs,
//! written after Consul's HTTP API documentation): Consul itself is not run here, as it cannot
//! be installed where these tests run. Registration, the record's round trip through service
//! metadata, blocking health queries, TTL heartbeats and expiry, critical instances,
//! deregistration, ACL tokens, services not registered by Switchboard, and a microservice
//! found and called through Consul.
#![cfg(feature = "consul")]

mod common {
    pub mod consul;
}

use std::sync::Arc;
use std::time::Duration;

use common::consul::FakeConsul;
use serde_json::json;
use switchboard::prelude::*;
use switchboard_discovery::consul::Consul;
use switchboard_discovery::{Backend, Instance, Pattern, PatternKind, Registry, Status, Watch};

/// The deadline of anything awaited.
const DEADLINE: Duration = Duration::from_secs(20);

/// A client of the fake with queries that wait long: whatever arrives sooner came from a
/// blocking query's answer, not from asking again.
fn consul(fake: &FakeConsul) -> Consul {
    Consul::new(fake.address())
        .ttl(Duration::from_secs(2))
        .wait(Duration::from_secs(300))
}

/// An instance of `users` with many patterns (its record spans several metadata values).
fn record(id: &str, port: u16) -> Instance {
    let mut instance = Instance::new(
        "users",
        id,
        [format!("tcp://127.0.0.1:{port}"), "nats://127.0.0.1:4222".to_owned()],
    );
    instance.version = Some("1.2.3".into());
    instance.patterns = (0..40u64)
        .map(|n| Pattern {
            route: format!("users.operation_{n}"),
            kind: match n % 2 {
                0 => PatternKind::Request,
                _ => PatternKind::Event,
            },
            contract: (n % 5 != 0).then(|| switchboard::Contract::from(0x0123_4567_89ab_cdef ^ n)),
        })
        .collect();
    instance
}

fn ids(instances: &[Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.id.as_str()).collect()
}

/// Waits until the watch's instances satisfy `ok`.
async fn until(watch: &mut Watch, what: &str, ok: impl Fn(&[Instance]) -> bool) -> Arc<[Instance]> {
    let wait = async {
        loop {
            let now = watch.current();
            if ok(&now) {
                return now;
            }
            assert!(watch.changed().await, "the watch stopped while waiting for {what}");
        }
    };
    match tokio::time::timeout(DEADLINE, wait).await {
        Ok(now) => now,
        Err(_) => panic!("timed out waiting for {what}; instances: {:?}", ids(&watch.current())),
    }
}

/// Waits until `ok` holds.
async fn eventually(what: &str, ok: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(fake: &FakeConsul, prefix: &str) -> usize {
    fake.requests().iter().filter(|r| r.starts_with(prefix)).count()
}

#[tokio::test]
async fn a_registered_instance_is_watched_with_its_whole_record() {
    let fake = FakeConsul::start().await;
    let consul = consul(&fake);
    let users = record("users-1", 3001);
    let lease = consul.register(users.clone()).await.unwrap();

    let stored = fake.service("users-1").expect("registered");
    assert_eq!(stored.name, "users");
    assert_eq!(
        (stored.address.as_str(), stored.port),
        ("127.0.0.1", 3001),
        "from the tcp URL"
    );
    assert_eq!(stored.tags, ["switchboard", "tcp", "nats"]);
    let chunks: usize = stored.meta["sb-n"].parse().unwrap();
    assert!(chunks > 1, "a record of 40 patterns spans several values: {chunks}");
    assert_eq!(stored.meta.len(), chunks + 1);
    assert!(stored.meta.values().all(|v| v.len() <= 512));
    assert_eq!(fake.check_status("service:users-1").as_deref(), Some("passing"));

    let watch = consul.watch("users").await.unwrap();
    assert_eq!(
        &*watch.current(),
        std::slice::from_ref(&users),
        "patterns, contracts, version and URLs round-trip"
    );
    let registry = Registry::new(consul.clone());
    assert_eq!(registry.instances("users").await.unwrap(), [users]);
    assert!(registry.instances("orders").await.unwrap().is_empty());

    lease.deregister().await.unwrap();
}

#[tokio::test]
async fn a_blocked_watcher_sees_a_new_instance_without_polling() {
    let fake = FakeConsul::start().await;
    let consul = consul(&fake);
    let _first = consul.register(record("users-1", 3001)).await.unwrap();
    let mut watch = consul.watch("users").await.unwrap();
    assert_eq!(ids(&watch.current()), ["users-1"]);
    eventually("the watch's blocking query", || fake.blocked() == 1).await;

    let _second = consul.register(record("users-2", 3002)).await.unwrap();
    let now = until(&mut watch, "the second instance", |i| i.len() == 2).await;
    assert_eq!(ids(&now), ["users-1", "users-2"]);
    // The list, one blocking query answered by the registration, the next one: with a wait of
    // five minutes, nothing asked again on a timer.
    let queries = count(&fake, "GET /v1/health/service/users");
    assert!(queries <= 3, "{queries} queries: {:#?}", fake.requests());
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.contains("index=") && r.contains("wait=") && r.contains("passing=true")),
        "{:#?}",
        fake.requests()
    );
}

#[tokio::test]
async fn a_critical_instance_leaves_the_passing_list_until_it_passes_again() {
    let fake = FakeConsul::start().await;
    let consul = consul(&fake);
    let a = record("users-a", 3001);
    let lease_a = consul.register(a.clone()).await.unwrap();
    let _lease_b = consul.register(record("users-b", 3002)).await.unwrap();
    let mut watch = consul.watch("users").await.unwrap();
    until(&mut watch, "both instances", |i| i.len() == 2).await;

    let critical = Instance {
        status: Status::Critical,
        ..a.clone()
    };
    lease_a.update(critical).await.unwrap();
    let now = until(&mut watch, "users-a gone", |i| ids(i) == ["users-b"]).await;
    assert_eq!(now.len(), 1);
    assert_eq!(fake.check_status("service:users-a").as_deref(), Some("critical"));
    // Its heartbeat keeps it critical (and known to Consul) rather than passing.
    let fails = count(&fake, "PUT /v1/agent/check/fail/service:users-a");
    eventually("a failing heartbeat", || {
        count(&fake, "PUT /v1/agent/check/fail/service:users-a") > fails
    })
    .await;
    assert_eq!(fake.check_status("service:users-a").as_deref(), Some("critical"));

    lease_a.update(a.clone()).await.unwrap();
    let now = until(&mut watch, "users-a back", |i| i.len() == 2).await;
    assert_eq!(now[0], a);
    assert_eq!(fake.check_status("service:users-a").as_deref(), Some("passing"));

    let other = Instance::new("users", "users-z", ["tcp://127.0.0.1:1"]);
    let refused = lease_a.update(other).await.unwrap_err().to_string();
    assert!(refused.contains("cannot take the record"), "{refused}");
}

#[tokio::test]
async fn heartbeats_keep_a_live_instance_passing() {
    let fake = FakeConsul::start().await;
    let consul = consul(&fake).ttl(Duration::from_secs(1));
    let _lease = consul.register(record("users-1", 3001)).await.unwrap();
    // Three TTLs: without heartbeats the check would have turned critical.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fake.check_status("service:users-1").as_deref(), Some("passing"));
    let passes = count(&fake, "PUT /v1/agent/check/pass/service:users-1");
    assert!(passes >= 3, "{passes} heartbeats in three TTLs");
}

#[tokio::test]
async fn a_dropped_lease_turns_critical_after_its_ttl_then_is_removed() {
    let fake = FakeConsul::start().await;
    let consul = consul(&fake)
        .ttl(Duration::from_secs(1))
        .deregister_critical_after(Duration::from_secs(2));
    let lease = consul.register(record("users-1", 3001)).await.unwrap();
    let _other = consul.register(record("users-2", 3002)).await.unwrap();
    let mut watch = consul.watch("users").await.unwrap();
    until(&mut watch, "both instances", |i| i.len() == 2).await;

    // A crash: no deregistration, the heartbeat stops.
    drop(lease);
    until(&mut watch, "users-1 gone", |i| ids(i) == ["users-2"]).await;
    assert!(
        fake.service("users-1").is_none() || fake.check_status("service:users-1").as_deref() == Some("critical"),
        "gone from the passing list: critical"
    );
    eventually("Consul removing the critical instance", || {
        fake.service("users-1").is_none()
    })
    .await;
    assert_eq!(fake.service_ids(), ["users-2"]);
}

#[tokio::test]
async fn an_instance_the_agent_lost_is_registered_again() {
    let fake = FakeConsul::start().await;
    let consul = consul(&fake).ttl(Duration::from_secs(1));
    let users = record("users-1", 3001);
    let _lease = consul.register(users.clone()).await.unwrap();
    let mut watch = consul.watch("users").await.unwrap();
    until(&mut watch, "the instance", |i| i.len() == 1).await;

    // The agent restarted without its state: the next heartbeat finds no check.
    fake.forget("users-1");
    until(&mut watch, "the instance gone", |i| i.is_empty()).await;
    let now = until(&mut watch, "the instance registered again", |i| i.len() == 1).await;
    assert_eq!(&*now, [users]);
    assert_eq!(count(&fake, "PUT /v1/agent/service/register"), 2);
}

#[tokio::test]
async fn a_deregistered_instance_is_gone_and_its_heartbeat_stops() {
    let fake = FakeConsul::start().await;
    let consul = consul(&fake).ttl(Duration::from_millis(600));
    let lease = consul.register(record("users-1", 3001)).await.unwrap();
    let mut watch = consul.watch("users").await.unwrap();
    until(&mut watch, "the instance", |i| i.len() == 1).await;
    eventually("a heartbeat", || count(&fake, "PUT /v1/agent/check/pass/") > 0).await;

    lease.deregister().await.unwrap();
    until(&mut watch, "the instance gone", |i| i.is_empty()).await;
    assert!(fake.service_ids().is_empty());
    assert_eq!(fake.check_status("service:users-1"), None);
    let beats = count(&fake, "PUT /v1/agent/check/");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        count(&fake, "PUT /v1/agent/check/"),
        beats,
        "no heartbeat after deregistering"
    );
    assert_eq!(
        count(&fake, "PUT /v1/agent/service/register"),
        1,
        "not registered again"
    );
}

#[tokio::test]
async fn an_acl_token_is_sent_and_never_shown() {
    const TOKEN: &str = "b3f5c1de-token-never-shown";
    let fake = FakeConsul::with_token(TOKEN).await;

    let with = consul(&fake).token(TOKEN);
    let lease = with.register(record("users-1", 3001)).await.unwrap();
    assert_eq!(ids(&with.watch("users").await.unwrap().current()), ["users-1"]);
    let registry = Registry::new(with.clone());
    for shown in [
        format!("{with:?}"),
        with.describe(),
        format!("{lease:?}"),
        format!("{registry:?}"),
    ] {
        assert!(!shown.contains(TOKEN), "{shown}");
    }
    assert!(format!("{with:?}").contains("***"));

    let without = consul(&fake);
    let e = without.register(record("users-2", 3002)).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("403") && text.contains("Permission denied"), "{text}");
    assert!(text.contains("registering `users` instance users-2"), "{text}");
    let e = without.watch("users").await.unwrap_err().to_string();
    assert!(e.contains("403"), "{e}");

    let wrong = consul(&fake).token("not-the-token");
    let e = wrong.register(record("users-3", 3003)).await.unwrap_err();
    assert!(e.to_string().contains("ACL not found"), "{e}");

    // By URL: the token works, and shows nowhere.
    let url = format!("{}?token={TOKEN}&ttl=2s", fake.url());
    let by_url = Registry::connect(&url).await.unwrap();
    assert_eq!(by_url.instances("users").await.unwrap().len(), 1);
    let shown = format!("{by_url:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    let e = Registry::connect(&format!("{url}&bogus=1")).await.unwrap_err();
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(shown.contains("bogus") && !shown.contains(TOKEN), "{shown}");
    }

    lease.deregister().await.unwrap();
    assert!(fake.service_ids().is_empty());

    // Nor in the errors of an agent that does not answer.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let gone = Consul::new(address).token(TOKEN);
    for e in [
        gone.watch("users").await.unwrap_err(),
        gone.register(record("users-1", 3001)).await.unwrap_err(),
    ] {
        let mut all = format!("{e} {e:?}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            all.push_str(&format!(" {s} {s:?}"));
            source = s.source();
        }
        assert!(all.contains("no answer"), "{all}");
        assert!(!all.contains(TOKEN), "{all}");
    }
}

#[tokio::test]
async fn a_service_not_registered_by_switchboard_is_called_on_its_address() {
    let fake = FakeConsul::start().await;
    fake.put_service(json!({
        "ID": "legacy-1", "Name": "users", "Address": "10.1.2.3", "Port": 8080, "Tags": ["nestjs"],
        "Check": {"CheckID": "legacy-1-ttl", "TTL": "30s", "Status": "passing"},
    }));
    // No address of its own: the node's.
    fake.put_service(json!({"ID": "legacy-2", "Name": "users", "Port": 9090, "Meta": {"team": "core"}}));
    // A record that cannot be read.
    fake.put_service(json!({
        "ID": "legacy-3", "Name": "users", "Address": "10.0.0.9", "Port": 7000,
        "Meta": {"sb-n": "1", "sb-0": "{not json"},
    }));
    // Not passing: left out.
    fake.put_service(json!({
        "ID": "legacy-4", "Name": "users", "Address": "10.0.0.10", "Port": 7000,
        "Check": {"TTL": "30s"},
    }));

    let consul = consul(&fake);
    let mut watch = consul.watch("users").await.unwrap();
    let now = watch.current();
    assert_eq!(
        &*now,
        [
            Instance::new("users", "legacy-1", ["tcp://10.1.2.3:8080"]),
            Instance::new("users", "legacy-2", ["tcp://127.0.0.1:9090"]),
            Instance::new("users", "legacy-3", ["tcp://10.0.0.9:7000"]),
        ]
    );
    assert!(now.iter().all(|i| i.patterns.is_empty() && i.status == Status::Passing));

    // Side by side with a Switchboard instance.
    let _lease = consul.register(record("users-1", 3001)).await.unwrap();
    let now = until(&mut watch, "the Switchboard instance", |i| i.len() == 4).await;
    assert_eq!(now[3], record("users-1", 3001));
}

#[tokio::test]
async fn a_record_too_large_for_consuls_metadata_is_refused() {
    let fake = FakeConsul::start().await;
    let mut huge = record("users-1", 3001);
    huge.patterns = (0..1000)
        .map(|n| Pattern {
            route: format!("users.a_rather_long_pattern_name_{n}"),
            kind: PatternKind::Request,
            contract: Some(switchboard::Contract::from(n)),
        })
        .collect();
    let e = consul(&fake).register(huge).await.unwrap_err().to_string();
    assert!(e.contains("more than Consul's service metadata holds"), "{e}");
    assert!(e.contains("users-1"), "{e}");
    assert_eq!(count(&fake, "PUT"), 0, "nothing sent");

    // A record just within the limit goes through.
    let mut large = record("users-2", 3002);
    large.patterns.truncate(0);
    while large.to_json().len() < 63 * 512 - 200 {
        large.patterns.push(Pattern {
            route: format!("r{}", large.patterns.len()),
            kind: PatternKind::Event,
            contract: None,
        });
    }
    let _lease = consul(&fake).register(large.clone()).await.unwrap();
    assert_eq!(fake.service("users-2").unwrap().meta.len(), 64);
    assert_eq!(&*consul(&fake).watch("users").await.unwrap().current(), [large]);
}

#[tokio::test]
async fn an_index_that_goes_backwards_starts_the_queries_over() {
    let fake = FakeConsul::start().await;
    let consul = consul(&fake).wait(Duration::from_millis(500));
    let _first = consul.register(record("users-1", 3001)).await.unwrap();
    let mut watch = consul.watch("users").await.unwrap();
    eventually("the watch's blocking query", || fake.blocked() == 1).await;

    // A restored snapshot: the index is lower than the one the watch waits past.
    fake.rewind_index(2);
    let queries = fake.requests().len();
    eventually("a query without an index", || {
        fake.requests()[queries..]
            .iter()
            .any(|r| r == "GET /v1/health/service/users?passing=true")
    })
    .await;
    eventually("the watch's blocking query", || fake.blocked() == 1).await;
    let _second = consul.register(record("users-2", 3002)).await.unwrap();
    until(&mut watch, "the second instance", |i| i.len() == 2).await;
}

#[tokio::test]
async fn registry_urls_are_read_and_checked() {
    let fake = FakeConsul::start().await;
    let registry = Registry::connect(&format!(
        "{}?ttl=500ms&deregister_after=1m&wait=30s&balance=round_robin",
        fake.url()
    ))
    .await
    .unwrap();
    let shown = format!("{registry:?}");
    assert!(
        shown.contains(&format!("Consul agent at {}", fake.address())),
        "{shown}"
    );
    let _lease = registry.register(record("users-1", 3001)).await.unwrap();
    assert_eq!(registry.instances("users").await.unwrap().len(), 1);

    for (query, reason) in [
        ("?tll=10s", "unknown parameter `tll`"),
        ("?ttl=10", "not a duration"),
        ("?ttl=0s", "more than 0"),
        ("?wait=11m", "10m at most"),
        ("?token=", "empty"),
    ] {
        let e = Registry::connect(&format!("{}{query}", fake.url()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(reason), "{query}: {e}");
    }
    let e = Registry::connect("consul://a:8500,b:8500")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("one Consul agent"), "{e}");
    let default = Registry::connect("consul://").await.unwrap();
    assert!(format!("{default:?}").contains("127.0.0.1:8500"));
}

#[message_pattern("users.get")]
async fn get_user(id: u64) -> String {
    format!("user {id}")
}

#[tokio::test]
async fn a_microservice_registers_in_consul_and_a_client_finds_it() {
    let fake = FakeConsul::start().await;
    let registry = Registry::new(consul(&fake));
    let server = Microservice::new()
        .name("users")
        .handler(GET_USER)
        .register(registry.clone())
        .deregister_grace(Duration::from_millis(100))
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();

    let users = Client::discover("users", &registry).connect().await.unwrap();
    assert_eq!(users.send(GET_USER, 7).await.unwrap(), "user 7");

    let instances = registry.instances("users").await.unwrap();
    assert_eq!(instances.len(), 1);
    let pattern = instances[0]
        .patterns
        .iter()
        .find(|p| p.route == Message::route(&GET_USER));
    let pattern = pattern.expect("the pattern is registered");
    assert_eq!(pattern.contract, Message::contract(&GET_USER), "with its contract");
    let stored = fake.service(&instances[0].id).unwrap();
    assert_eq!(stored.address, "127.0.0.1");
    assert!(instances[0].urls.contains(&format!("tcp://127.0.0.1:{}", stored.port)));

    // Also by URL, as a service's configuration would say it.
    let by_url = switchboard_discovery::connect(&format!("{}/users", fake.url()))
        .await
        .unwrap();
    assert_eq!(by_url.send(GET_USER, 8).await.unwrap(), "user 8");

    server.shutdown().await.unwrap();
    assert!(fake.service_ids().is_empty(), "deregistered on shutdown");
}
