//! DNS SRV discovery against a real DNS server over UDP (an in-process authoritative
//! responder on 127.0.0.1, `common/dns.rs`).

#![cfg(feature = "dns")]

#[path = "common/dns.rs"]
mod responder;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use switchboard::prelude::*;
use switchboard_discovery::dns::Dns;
use switchboard_discovery::{Backend, Balance, Instance, Registry, Status, Watch};

use responder::{Responder, srv};

const USERS: &str = "_users._tcp.example.test";
/// A generous bound for waiting on an event that should come within a couple of seconds.
const DEADLINE: Duration = Duration::from_secs(20);

fn dns(responder: &Responder) -> Dns {
    Dns::with_resolver(responder.addr()).domain("example.test")
}

fn ids(instances: &[Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.id.as_str()).collect()
}

/// Waits until the watch's instances have exactly these ids.
async fn until_ids(watch: &mut Watch, wanted: &[&str]) {
    let waiting = async {
        loop {
            if ids(&watch.current()) == wanted {
                return;
            }
            assert!(watch.changed().await, "the backend stopped watching");
        }
    };
    if tokio::time::timeout(DEADLINE, waiting).await.is_err() {
        panic!(
            "still {:?} after {DEADLINE:?}, waiting for {wanted:?}",
            ids(&watch.current())
        );
    }
}

#[tokio::test]
async fn two_srv_records_are_two_instances() {
    let dns_server = Responder::start().await;
    dns_server.set_ttl(30);
    dns_server.set_srv(
        USERS,
        vec![srv(10, 3001, "a.example.test"), srv(10, 3002, "b.example.test")],
    );
    dns_server.set_host("a.example.test", Ipv4Addr::new(127, 0, 0, 2));
    dns_server.set_host("b.example.test", Ipv4Addr::new(127, 0, 0, 3));

    let registry = Registry::new(dns(&dns_server));
    let instances = registry.instances("users").await.unwrap();
    assert_eq!(ids(&instances), ["a.example.test:3001", "b.example.test:3002"]);
    assert_eq!(instances[0].urls, ["tcp://127.0.0.2:3001"]);
    assert_eq!(instances[1].urls, ["tcp://127.0.0.3:3002"]);
    for instance in &instances {
        assert_eq!(instance.service, "users");
        assert_eq!(instance.status, Status::Passing);
        assert!(instance.patterns.is_empty(), "patterns are not known from DNS");
    }

    // A name that starts with `_` (or ends with `.`) is the SRV name as it is.
    let as_is = Dns::with_resolver(dns_server.addr());
    assert_eq!(
        ids(&Registry::new(as_is.clone()).instances(USERS).await.unwrap()).len(),
        2
    );
    assert_eq!(
        ids(&Registry::new(as_is)
            .instances("_users._tcp.example.test.")
            .await
            .unwrap())
        .len(),
        2
    );

    // The scheme of the URLs is the transport's; `tls` names the target for its certificate.
    let grpc = Registry::connect(&format!(
        "dns://{}?domain=example.test&transport=grpc",
        dns_server.addr()
    ))
    .await
    .unwrap();
    assert_eq!(
        grpc.instances("users").await.unwrap()[0].urls,
        ["grpc://127.0.0.2:3001"]
    );
    let tls = dns(&dns_server).transport("tls");
    assert_eq!(
        Registry::new(tls).instances("users").await.unwrap()[0].urls,
        ["tls://127.0.0.2:3001?server_name=a.example.test"]
    );
}

#[tokio::test]
async fn addresses_are_looked_up_when_the_answer_has_none() {
    let dns_server = Responder::start().await;
    dns_server.set_glue(false);
    dns_server.set_srv(
        USERS,
        vec![srv(0, 3001, "a.example.test"), srv(0, 3002, "nowhere.example.test")],
    );
    dns_server.set_host("a.example.test", Ipv4Addr::new(127, 0, 0, 2));

    let instances = Registry::new(dns(&dns_server)).instances("users").await.unwrap();
    // A target without an address is skipped.
    assert_eq!(ids(&instances), ["a.example.test:3001"]);
    assert_eq!(instances[0].urls, ["tcp://127.0.0.2:3001"]);
}

/// Without addresses in the answer, the targets' are looked up together, not one after
/// another (a slow server would time each): this server answers none until asked for all.
#[tokio::test]
async fn the_targets_addresses_are_looked_up_together() {
    let dns_server = Responder::start().await;
    dns_server.set_glue(false);
    let targets: Vec<String> = (0..6).map(|i| format!("t{i}.example.test")).collect();
    let records = (0..6).map(|i| srv(0, 3000 + i, &targets[usize::from(i)])).collect();
    dns_server.set_srv(USERS, records);
    for (i, target) in (2..).zip(&targets) {
        dns_server.set_host(target, Ipv4Addr::new(127, 0, 0, i));
    }
    dns_server.hold_addresses(targets.len());

    let instances = Registry::new(dns(&dns_server)).instances("users").await.unwrap();
    let expected: Vec<String> = (0..6).map(|i| format!("t{i}.example.test:{}", 3000 + i)).collect();
    assert_eq!(ids(&instances), expected, "every target, in the records' order");
    assert_eq!(instances[5].urls, ["tcp://127.0.0.7:3005"]);
}

/// A target whose address query goes unanswered fails the resolution (the last list is
/// kept) rather than leaving the list as if it had no address.
#[tokio::test]
async fn an_unanswered_address_query_is_a_failure_not_an_empty_target() {
    let dns_server = Responder::start().await;
    dns_server.set_glue(false);
    dns_server.set_srv(
        USERS,
        vec![srv(0, 3001, "a.example.test"), srv(0, 3002, "b.example.test")],
    );
    dns_server.set_host("a.example.test", Ipv4Addr::new(127, 0, 0, 2));
    dns_server.set_host("b.example.test", Ipv4Addr::new(127, 0, 0, 3));
    // A queries are held until three names are asked for: never, with two targets.
    dns_server.hold_addresses(3);
    let found = Registry::new(dns(&dns_server)).instances("users").await;
    assert!(found.is_err(), "{found:?}");
}

#[tokio::test]
async fn changed_records_are_seen_once_their_ttl_runs_out() {
    let dns_server = Responder::start().await;
    dns_server.set_ttl(1);
    dns_server.set_srv(
        USERS,
        vec![srv(10, 3001, "a.example.test"), srv(10, 3002, "b.example.test")],
    );
    dns_server.set_host("a.example.test", Ipv4Addr::new(127, 0, 0, 2));
    dns_server.set_host("b.example.test", Ipv4Addr::new(127, 0, 0, 3));
    dns_server.set_host("c.example.test", Ipv4Addr::new(127, 0, 0, 4));

    let mut watch = dns(&dns_server).watch("users").await.unwrap();
    assert_eq!(ids(&watch.current()), ["a.example.test:3001", "b.example.test:3002"]);

    // b leaves, c comes.
    dns_server.set_srv(
        USERS,
        vec![srv(10, 3001, "a.example.test"), srv(10, 3003, "c.example.test")],
    );
    until_ids(&mut watch, &["a.example.test:3001", "c.example.test:3003"]).await;
    assert_eq!(watch.current()[1].urls, ["tcp://127.0.0.4:3003"]);

    // An address changes.
    dns_server.set_host("a.example.test", Ipv4Addr::new(127, 0, 0, 5));
    let moved = async {
        while watch.current()[0].urls != ["tcp://127.0.0.5:3001"] {
            assert!(watch.changed().await);
        }
    };
    tokio::time::timeout(DEADLINE, moved)
        .await
        .expect("the new address is seen");
}

#[tokio::test]
async fn only_the_lowest_priority_is_used() {
    let dns_server = Responder::start().await;
    dns_server.set_srv(
        USERS,
        vec![
            srv(20, 3002, "b.example.test"),
            srv(10, 3001, "a.example.test"),
            srv(10, 3003, "c.example.test"),
            srv(30, 3004, "d.example.test"),
        ],
    );
    for (host, last) in [("a", 2), ("b", 3), ("c", 4), ("d", 5)] {
        dns_server.set_host(&format!("{host}.example.test"), Ipv4Addr::new(127, 0, 0, last));
    }

    let mut watch = dns(&dns_server).watch("users").await.unwrap();
    assert_eq!(ids(&watch.current()), ["a.example.test:3001", "c.example.test:3003"]);

    // Once the first group is gone, the next one is used.
    dns_server.set_srv(
        USERS,
        vec![srv(20, 3002, "b.example.test"), srv(30, 3004, "d.example.test")],
    );
    until_ids(&mut watch, &["b.example.test:3002"]).await;
}

#[tokio::test]
async fn nxdomain_is_an_empty_list() {
    let dns_server = Responder::start().await;
    let registry = Registry::new(dns(&dns_server));
    assert!(registry.instances("users").await.unwrap().is_empty());

    // A client finds no instance to call.
    let err = Client::discover("users", &registry).connect().await.unwrap_err();
    assert!(err.to_string().contains("no instance of `users`"), "{err}");
}

#[tokio::test]
async fn a_failing_server_fails_the_first_watch_then_the_last_list_is_kept() {
    let dns_server = Responder::start().await;
    dns_server.set_srv(USERS, vec![srv(10, 3001, "a.example.test")]);
    dns_server.set_host("a.example.test", Ipv4Addr::new(127, 0, 0, 2));

    dns_server.set_failing(true);
    let err = dns(&dns_server).watch("users").await.unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("cannot resolve the SRV records `_users._tcp.example.test.`"),
        "{shown}"
    );

    dns_server.set_failing(false);
    let mut watch = dns(&dns_server).watch("users").await.unwrap();
    assert_eq!(ids(&watch.current()), ["a.example.test:3001"]);

    // While the server fails the list stays; once it answers again, changes are seen.
    dns_server.set_failing(true);
    let asked = dns_server.queries();
    let failed_again = async {
        while dns_server.queries() < asked + 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(DEADLINE, failed_again)
        .await
        .expect("the watch asks again");
    assert_eq!(ids(&watch.current()), ["a.example.test:3001"]);

    dns_server.set_srv(USERS, vec![srv(10, 3002, "a.example.test")]);
    dns_server.set_failing(false);
    until_ids(&mut watch, &["a.example.test:3002"]).await;
}

#[tokio::test]
async fn registering_is_refused() {
    let dns_server = Responder::start().await;
    let registry = Registry::new(dns(&dns_server));
    let err = registry
        .register(Instance::new("users", "users-1", ["tcp://127.0.0.1:3001"]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("DNS cannot register `users`"), "{err}");
}

#[tokio::test]
async fn urls_are_checked() {
    for bad in [
        "dns://not-an-ip:53",
        "dns://?domain=x&colour=red",
        "dns://?transport=mem",
    ] {
        let err = Registry::connect(bad).await.unwrap_err();
        assert!(err.to_string().contains("invalid registry url"), "{bad}: {err}");
    }
    for good in [
        "dns://",
        "dns://10.96.0.10",
        "dns://[::1]:5353?domain=svc.cluster.local",
        "dns://10.96.0.10:53?transport=tcp",
    ] {
        Registry::connect(good).await.unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[derive(Clone)]
struct Who(&'static str);

#[message_pattern("users.whoami")]
async fn whoami(State(who): State<Who>) -> String {
    who.0.to_owned()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_client_balances_over_the_services_dns_names() {
    let a = Microservice::new()
        .with_state(Who("a"))
        .name("users")
        .handler(WHOAMI)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let b = Microservice::new()
        .with_state(Who("b"))
        .name("users")
        .handler(WHOAMI)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();

    let dns_server = Responder::start().await;
    dns_server.set_srv(
        USERS,
        vec![
            srv(10, port_of(a.local_url()), "a.example.test"),
            srv(10, port_of(b.local_url()), "b.example.test"),
        ],
    );
    dns_server.set_host("a.example.test", Ipv4Addr::LOCALHOST);
    dns_server.set_host("b.example.test", Ipv4Addr::LOCALHOST);

    let registry = Registry::new(dns(&dns_server)).balance(Balance::RoundRobin);
    let users = Client::discover("users", &registry).connect().await.unwrap();
    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..50 {
        *served.entry(users.send(WHOAMI, ()).await.unwrap()).or_default() += 1;
    }
    assert_eq!(served.len(), 2, "both instances called: {served:?}");
    assert!(served["a"] > 0 && served["b"] > 0, "{served:?}");

    // The same through a URL.
    let url = format!(
        "dns://{}/users?domain=example.test&balance=round_robin",
        dns_server.addr()
    );
    let users = switchboard_discovery::connect(&url).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(users.send(WHOAMI, ()).await.unwrap());
    }
    assert!(
        seen.iter().any(|s| s == "a") && seen.iter().any(|s| s == "b"),
        "{seen:?}"
    );

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
