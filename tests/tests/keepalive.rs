#![cfg(target_os = "linux")]
//! TCP keepalive on the connections of each transport that relies on it (TCP, gRPC, the Redis
//! subscribers), seen as the kernel sees this process's sockets: `/proc/net/tcp` shows a
//! keepalive timer (`tr` 2) on an idle established socket only when keepalive is on.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::{Client, Microservice};

/// This process's established IPv4 TCP sockets: (local port, remote port, timer kind).
fn own_sockets() -> Vec<(u16, u16, u8)> {
    let inodes: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap_or(""), 16).unwrap_or(0);
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (local, remote, state, timer, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(5)?, f.get(9)?);
            let established = *state == "01";
            let timer = u8::from_str_radix(timer.split(':').next()?, 16).ok()?;
            (established && inodes.contains(*inode)).then(|| (port(local), port(remote), timer))
        })
        .collect()
}

/// Waits (up to 5 s, for unacknowledged data to be acknowledged) until every socket of this
/// process that `pick` selects has its keepalive timer; returns how many there are.
async fn all_keepalive(what: &str, pick: impl Fn(u16, u16) -> bool) -> usize {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let picked: Vec<_> = own_sockets().into_iter().filter(|&(l, r, _)| pick(l, r)).collect();
        if !picked.is_empty() && picked.iter().all(|&(_, _, timer)| timer == 2) {
            return picked.len();
        }
        assert!(
            Instant::now() < until,
            "{what}: sockets (local, remote, timer) {picked:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves `echo` on `listen` (a URL with port 0), calls it once, and checks the server's and
/// the client's ends of their connections.
async fn both_ends(listen: &str) {
    let server = Microservice::new()
        .handler(common::ECHO)
        .listen(listen)
        .start()
        .await
        .unwrap();
    let url = server.local_url();
    let port: u16 = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
    let client = Client::connect(url).await.unwrap();
    let echoed: serde_json::Value = client.send_raw("echo", json!(1)).await.unwrap();
    assert_eq!(echoed, json!(1));
    all_keepalive(&format!("{listen}: the server's end"), |local, _| local == port).await;
    all_keepalive(&format!("{listen}: the client's end"), |_, remote| remote == port).await;
    client.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tcp_connections_of_both_ends() {
    both_ends("tcp://127.0.0.1:0").await;
}

#[cfg(feature = "grpc")]
#[tokio::test]
async fn grpc_connections_of_both_ends() {
    both_ends("grpc://127.0.0.1:0").await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_connections_of_both_ends() {
    if !common::conformance::reachable("redis://127.0.0.1:6379") {
        common::missing("Redis on 127.0.0.1:6379", "run scripts/brokers.sh");
        return;
    }
    let server = Microservice::new()
        .handler(common::ECHO)
        .listen("redis://127.0.0.1:6379")
        .start()
        .await
        .unwrap();
    let client = Client::connect("redis://127.0.0.1:6379").await.unwrap();
    let echoed: serde_json::Value = client.send_raw("echo", json!(1)).await.unwrap();
    assert_eq!(echoed, json!(1));
    // The server's subscriber and publisher, the client's subscriber and publisher.
    let n = all_keepalive("connections to Redis", |_, remote| remote == 6379).await;
    assert!(n >= 4, "{n}");
    client.close().await;
    server.shutdown().await.unwrap();
}
