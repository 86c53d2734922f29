//! The etcd registry against a real etcd: registration, watches, updates, a crashed process's
//! lease expiring, watches and leases surviving etcd restarts (with and without its data).
#![cfg(feature = "etcd")]

#[path = "common/etcd.rs"]
mod common;

use std::time::Duration;

use etcd_client::GetOptions;
use switchboard::Contract;
use switchboard::prelude::*;
use switchboard_discovery::etcd::Etcd;
use switchboard_discovery::{Instance, Pattern, PatternKind, Registry, Status};

use common::{PATIENCE, Server, ids, until};

/// An instance of `service` with a version and patterns, one with a contract.
fn instance(service: &str, id: &str) -> Instance {
    let mut instance = Instance::new(service, id, [format!("tcp://10.0.0.1:{}", 3000 + id.len())]);
    instance.version = Some("1.2.3".into());
    instance.patterns = vec![
        Pattern {
            route: format!("{service}.get"),
            kind: PatternKind::Request,
            contract: Some(Contract::of(&[1, 2])),
        },
        Pattern {
            route: format!("{service}.created"),
            kind: PatternKind::Event,
            contract: None,
        },
    ];
    instance
}

#[tokio::test]
async fn registered_instance_is_watched() {
    let Some(etcd) = common::etcd(3) else { return };
    let prefix = etcd.prefix().to_owned();
    let registry = Registry::new(etcd);
    let users = instance("users", "users-1");
    let lease = registry.register(users.clone()).await.unwrap();

    // Found by a watch that starts afterwards, the record as registered.
    let mut watch = registry.watch("users").await.unwrap();
    assert_eq!(&*watch.current(), &[users.clone()][..]);
    assert!(registry.instances("orders").await.unwrap().is_empty());

    // Stored as JSON at <prefix>/<service>/<id>, under a lease.
    let mut raw = common::raw(&common::endpoint()).await;
    let key = format!("{prefix}/users/users-1");
    let got = raw.get(key.as_str(), None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_ne!(kv.lease(), 0, "the key is attached to a lease");
    assert_eq!(Instance::from_json(&key, kv.value()).unwrap(), users);

    // A second instance is seen by the running watch.
    let other = instance("users", "users-2");
    let lease2 = registry.register(other.clone()).await.unwrap();
    until(&mut watch, "both instances", |now| ids(now) == ["users-1", "users-2"]).await;
    assert_eq!(&*watch.current(), &[users, other][..]);
    lease.deregister().await.unwrap();
    lease2.deregister().await.unwrap();
}

#[tokio::test]
async fn updated_status_is_watched() {
    let Some(etcd) = common::etcd(3) else { return };
    let registry = Registry::new(etcd);
    let mut users = instance("users", "users-1");
    let lease = registry.register(users.clone()).await.unwrap();
    let mut watch = registry.watch("users").await.unwrap();
    assert_eq!(watch.current()[0].status, Status::Passing);

    users.status = Status::Critical;
    lease.update(users.clone()).await.unwrap();
    until(&mut watch, "the instance critical", |now| {
        now.len() == 1 && now[0].status == Status::Critical
    })
    .await;
    assert_eq!(&*watch.current(), &[users][..]);
    lease.deregister().await.unwrap();
}

#[tokio::test]
async fn deregistered_instance_is_gone_at_once() {
    let Some(etcd) = common::etcd(30) else { return };
    let registry = Registry::new(etcd);
    let lease = registry.register(instance("users", "users-1")).await.unwrap();
    let mut watch = registry.watch("users").await.unwrap();
    assert_eq!(watch.current().len(), 1);

    lease.deregister().await.unwrap();
    // The lease was revoked: gone now, not after its TTL of 30 s.
    assert!(registry.instances("users").await.unwrap().is_empty());
    until(&mut watch, "no instance", |now| now.is_empty()).await;
}

#[tokio::test]
async fn two_watchers_see_the_same() {
    let Some(etcd) = common::etcd(3) else { return };
    let registry = Registry::new(etcd);
    let mut first = registry.watch("users").await.unwrap();
    let mut second = registry.watch("users").await.unwrap();
    assert!(first.current().is_empty() && second.current().is_empty());

    let a = registry.register(instance("users", "a")).await.unwrap();
    let b = registry.register(instance("users", "b")).await.unwrap();
    until(&mut first, "a and b", |now| ids(now) == ["a", "b"]).await;
    until(&mut second, "a and b", |now| ids(now) == ["a", "b"]).await;

    a.deregister().await.unwrap();
    until(&mut first, "b alone", |now| ids(now) == ["b"]).await;
    until(&mut second, "b alone", |now| ids(now) == ["b"]).await;
    b.deregister().await.unwrap();
}

#[tokio::test]
async fn invalid_records_are_skipped() {
    let Some(etcd) = common::etcd(3) else { return };
    let prefix = etcd.prefix().to_owned();
    let registry = Registry::new(etcd);
    let mut raw = common::raw(&common::endpoint()).await;
    // Written by hand before the watch: not JSON, not an instance, another service's record,
    // a key deeper than an instance's.
    raw.put(format!("{prefix}/users/broken"), "not json {", None)
        .await
        .unwrap();
    raw.put(format!("{prefix}/users/odd"), r#"{"hello":"world"}"#, None)
        .await
        .unwrap();
    raw.put(
        format!("{prefix}/users/stray"),
        instance("orders", "stray").to_json(),
        None,
    )
    .await
    .unwrap();
    raw.put(
        format!("{prefix}/users/deep/er"),
        instance("users", "deep").to_json(),
        None,
    )
    .await
    .unwrap();
    raw.put(
        format!("{prefix}/users/by-hand"),
        instance("users", "by-hand").to_json(),
        None,
    )
    .await
    .unwrap();
    let lease = registry.register(instance("users", "users-1")).await.unwrap();

    let mut watch = registry.watch("users").await.unwrap();
    assert_eq!(ids(&watch.current()), ["by-hand", "users-1"]);

    // And while watching: an invalid record is skipped, a valid one that turns invalid leaves,
    // the others are still seen.
    raw.put(format!("{prefix}/users/broken-2"), "\u{0}\u{1}", None)
        .await
        .unwrap();
    raw.put(
        format!("{prefix}/users/late"),
        instance("users", "late").to_json(),
        None,
    )
    .await
    .unwrap();
    until(&mut watch, "the late instance", |now| {
        ids(now) == ["by-hand", "late", "users-1"]
    })
    .await;
    raw.put(format!("{prefix}/users/by-hand"), "[]", None).await.unwrap();
    until(&mut watch, "by-hand gone", |now| ids(now) == ["late", "users-1"]).await;

    lease.deregister().await.unwrap();
    raw.delete(prefix.as_str(), Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
}

#[tokio::test]
async fn password_is_never_shown() {
    // Nothing listens on port 1: every operation fails, and says so without the password.
    let registry = Registry::connect("etcd://user:secret@127.0.0.1:1?ttl=3").await.unwrap();
    let shown = format!("{registry:?} {}", registry.backend().describe());
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("127.0.0.1:1"), "{shown}");

    let e = registry.instances("users").await.unwrap_err();
    assert_secret_hidden(&e);
    let e = registry.register(instance("users", "users-1")).await.unwrap_err();
    assert_secret_hidden(&e);
    let e = switchboard_discovery::connect("etcd://user:secret@127.0.0.1:1/users")
        .await
        .unwrap_err();
    assert_secret_hidden(&e);

    // A refused URL does not show it either.
    let e = Registry::connect("etcd://user:secret@127.0.0.1:1?ttl=1")
        .await
        .unwrap_err();
    assert_secret_hidden(&e);
    let built = Etcd::builder(["127.0.0.1:1"]).user("user", "secret");
    assert!(!format!("{built:?}").contains("secret"));
    assert!(!format!("{:?}", built.build().unwrap()).contains("secret"));
}

fn assert_secret_hidden(e: &(dyn std::error::Error + 'static)) {
    let mut all = format!("{e} {e:?}");
    let mut source = e.source();
    while let Some(s) = source {
        all.push_str(&format!(" / {s} {s:?}"));
        source = s.source();
    }
    assert!(!all.contains("secret"), "{all}");
    assert!(all.contains("127.0.0.1:1"), "the error says where: {all}");
}

/// Registered by hand in a child process ([`child_registers`]), which is SIGKILLed: its key
/// stays until its lease expires, then goes.
#[tokio::test]
async fn crashed_process_leaves_with_its_lease() {
    const TTL: u64 = 3;
    let Some(etcd) = common::etcd(TTL) else { return };
    let registry = Registry::new(etcd.clone());
    let mut watch = registry.watch("users").await.unwrap();

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_registers", "--nocapture"])
        .env(
            "SB_ETCD_CHILD",
            format!("{} {} {TTL}", common::endpoint(), etcd.prefix()),
        )
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let registered = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("REGISTERED") {
                return true;
            }
        }
        false
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(30), registered).await.unwrap(),
        "the child process registers"
    );
    until(&mut watch, "the child's instance", |now| ids(now) == ["child"]).await;

    child.start_kill().unwrap(); // SIGKILL: no deregistration.
    child.wait().await.unwrap();
    // Still there: only its lease's expiry removes it.
    assert_eq!(ids(&registry.instances("users").await.unwrap()), ["child"]);

    let deadline = Duration::from_secs(TTL + 2);
    let gone = tokio::time::timeout(deadline, async {
        while !watch.current().is_empty() {
            assert!(watch.changed().await, "the watch runs");
        }
    });
    assert!(
        gone.await.is_ok(),
        "the killed child's instance is gone within {deadline:?}"
    );
    assert!(registry.instances("users").await.unwrap().is_empty());
}

/// The child of [`crashed_process_leaves_with_its_lease`]: registers, says so, and waits to be
/// killed. Does nothing unless `SB_ETCD_CHILD` is `endpoint prefix ttl`.
#[tokio::test]
async fn child_registers() {
    let Ok(spec) = std::env::var("SB_ETCD_CHILD") else {
        return;
    };
    let [endpoint, prefix, ttl] = spec.split(' ').collect::<Vec<_>>()[..] else {
        panic!("SB_ETCD_CHILD is `endpoint prefix ttl`: {spec}")
    };
    let etcd = Etcd::builder([endpoint])
        .prefix(prefix)
        .ttl(Duration::from_secs(ttl.parse().unwrap()))
        .build()
        .unwrap();
    let lease = Registry::new(etcd)
        .register(Instance::new("users", "child", ["tcp://10.0.0.9:1"]))
        .await
        .unwrap();
    println!("REGISTERED");
    tokio::time::sleep(Duration::from_secs(120)).await;
    drop(lease);
}

/// etcd is killed and restarted on the same data: the watch follows, and the registration
/// is kept (its lease kept alive, or granted again).
#[tokio::test]
async fn watch_and_lease_survive_an_etcd_restart() {
    survive_restart(false).await;
}

/// etcd is killed and restarted with an empty data directory: every key and lease is lost;
/// the registration's keep-alive grants a new lease and writes the record again.
#[tokio::test]
async fn registration_comes_back_after_etcd_loses_its_data() {
    survive_restart(true).await;
}

async fn survive_restart(wipe: bool) {
    const TTL: u64 = 3;
    let Some(mut server) = Server::start().await else {
        return;
    };
    let etcd = server.etcd(TTL);
    let registry = Registry::new(etcd.clone());
    let a = registry.register(instance("users", "a")).await.unwrap();
    let mut watch = registry.watch("users").await.unwrap();
    assert_eq!(ids(&watch.current()), ["a"]);

    server.kill();
    // An update while etcd is down fails, and is written once etcd is back.
    let mut critical = instance("users", "a");
    critical.status = Status::Critical;
    assert!(a.update(critical.clone()).await.is_err(), "etcd is down");
    server.restart(wipe).await;
    if wipe {
        // The new etcd has nothing until the keep-alive task writes `a` again.
        let mut raw = common::raw(&server.endpoint()).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let got = raw
                .get(etcd.prefix(), Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            if got.kvs().len() == 1 {
                assert_ne!(got.kvs()[0].lease(), 0, "written again under a new lease");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`a` is registered again in the new etcd"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let b = registry.register(instance("users", "b")).await.unwrap();
    until(&mut watch, "a (critical) and b after the restart", |now| {
        ids(now) == ["a", "b"] && now[0] == critical
    })
    .await;

    // Kept alive past a few TTLs: the lease of `a` is alive in this etcd, not a leftover.
    tokio::time::sleep(Duration::from_secs(2 * TTL)).await;
    assert_eq!(ids(&registry.instances("users").await.unwrap()), ["a", "b"]);
    assert_eq!(ids(&watch.current()), ["a", "b"]);

    // And an update after the restart is written and seen.
    a.update(instance("users", "a")).await.unwrap();
    until(&mut watch, "a passing", |now| {
        now.iter().any(|i| i.id == "a" && i.status == Status::Passing)
    })
    .await;

    a.deregister().await.unwrap();
    b.deregister().await.unwrap();
    until(&mut watch, "no instance", |now| now.is_empty()).await;
}

/// A lease lost while the process lives (revoked here by hand; etcd partitioned away for
/// longer than the TTL does the same): a new lease is granted and the record written again.
#[tokio::test]
async fn lost_lease_is_granted_again() {
    let Some(etcd) = common::etcd(3) else { return };
    let key = format!("{}/users/users-1", etcd.prefix());
    let registry = Registry::new(etcd);
    let lease = registry.register(instance("users", "users-1")).await.unwrap();
    let mut raw = common::raw(&common::endpoint()).await;
    let first = raw.get(key.as_str(), None).await.unwrap().kvs()[0].lease();
    raw.lease_revoke(first).await.unwrap();

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = raw.get(key.as_str(), None).await.unwrap();
        if let Some(kv) = got.kvs().first() {
            assert_ne!(kv.lease(), first, "the revoked lease holds no key");
            assert_eq!(
                Instance::from_json(&key, kv.value()).unwrap(),
                instance("users", "users-1")
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the record is written again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut watch = registry.watch("users").await.unwrap();
    until(&mut watch, "the instance", |now| ids(now) == ["users-1"]).await;
    lease.deregister().await.unwrap();
    assert!(registry.instances("users").await.unwrap().is_empty());
}

#[message_pattern("users.get")]
async fn get_user(id: u64) -> String {
    format!("user {id}")
}

/// A microservice registers itself in etcd by URL; a client finds it by URL and calls it; on
/// shutdown it is withdrawn.
#[tokio::test]
async fn microservice_is_found_through_etcd() {
    let Some(etcd) = common::etcd(3) else { return };
    let url = format!("etcd://{}?prefix={}&ttl=3", common::endpoint(), etcd.prefix());
    let registry = Registry::connect(&url).await.unwrap();
    let server = Microservice::new()
        .name("users")
        .handler(GET_USER)
        .register(registry.clone())
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client_url = format!(
        "etcd://{}/users?prefix={}&balance=round_robin",
        common::endpoint(),
        etcd.prefix()
    );
    let users = switchboard_discovery::connect(&client_url).await.unwrap();
    assert_eq!(users.send(GET_USER, 7).await.unwrap(), "user 7");

    let found = registry.instances("users").await.unwrap();
    assert_eq!(found.len(), 1);
    assert!(
        found[0]
            .patterns
            .iter()
            .any(|p| p.route == "users.get" && p.contract.is_some())
    );

    server.shutdown().await.unwrap();
    assert!(registry.instances("users").await.unwrap().is_empty());
}
