//! etcd for tests: the shared server at 127.0.0.1:2379 (`scripts/brokers.sh` starts it; the
//! env `SB_ETCD_ENDPOINT` names another), or a server of the test's own, which it can kill and
//! restart. Without either, a test is skipped (a failure when `CI` is set).
//!
//! Each test registers under a prefix of its own, `/sbtest/<random>`, so tests run in parallel.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_discovery::etcd::Etcd;
use switchboard_discovery::{Instance, Watch};

/// How long a test waits for something to happen before it fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The shared server's endpoint, `host:port`.
pub fn endpoint() -> String {
    std::env::var("SB_ETCD_ENDPOINT").unwrap_or_else(|_| "127.0.0.1:2379".into())
}

/// A fresh key prefix.
pub fn prefix() -> String {
    format!("/sbtest/{:016x}", fastrand::u64(..))
}

/// A registry on the shared server under a fresh prefix with `ttl`, or `None` (having said
/// why) when the server does not answer and `CI` is not set.
pub fn etcd(ttl_secs: u64) -> Option<Etcd> {
    etcd_at(&prefix(), ttl_secs)
}

/// A registry on the shared server under `prefix`, or `None` as for [`etcd`].
pub fn etcd_at(prefix: &str, ttl_secs: u64) -> Option<Etcd> {
    if !reachable(&endpoint()) {
        return skip(
            "etcd is missing",
            "start",
            &format!("nothing answers at {}", endpoint()),
        );
    }
    Some(
        Etcd::builder([endpoint()])
            .prefix(prefix)
            .ttl(Duration::from_secs(ttl_secs))
            .build()
            .expect("a valid registry"),
    )
}

/// A raw client of the server at `endpoint`.
pub async fn raw(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .expect("an etcd client")
}

fn reachable(endpoint: &str) -> bool {
    let Ok(addrs) = endpoint.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// Says why a test does not run (a panic when `CI` is set) and gives `None`; `remedy` is what
/// scripts/brokers.sh does about it (`start`, `install`).
pub fn skip<T>(what: &str, remedy: &str, why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{what} (CI is set, so this fails instead of skipping): {remedy} it with scripts/brokers.sh ({why})");
    }
    let line = format!("SKIPPED: {what}: {remedy} it with scripts/brokers.sh ({why})");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("SB_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(file, "{line}");
    }
    None
}

/// Waits until `watch` shows instances that satisfy `test`; panics after [`PATIENCE`], saying
/// `what` was awaited and what was seen.
pub async fn until(watch: &mut Watch, what: &str, test: impl Fn(&[Instance]) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if test(&watch.current()) {
            return;
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(true) => {}
            Ok(false) => panic!(
                "the watch stopped while waiting for {what}; last seen: {:?}",
                watch.current()
            ),
            Err(_) => panic!("no {what} within {PATIENCE:?}; last seen: {:?}", watch.current()),
        }
    }
}

/// The ids in `instances`, sorted.
pub fn ids(instances: &[Instance]) -> Vec<&str> {
    let mut ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    ids.sort();
    ids
}

/// An etcd server of a test's own: free ports, a data directory of its own, removed when
/// dropped (the server killed).
pub struct Server {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Server {
    /// A running server, or `None` (having said why) when the `etcd` binary is missing and
    /// `CI` is not set.
    pub async fn start() -> Option<Server> {
        if Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return skip("the etcd binary is missing", "install", "`etcd --version` does not run");
        }
        let (client_port, peer_port) = {
            let a = TcpListener::bind("127.0.0.1:0").expect("a free port");
            let b = TcpListener::bind("127.0.0.1:0").expect("a free port");
            (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
        };
        let dir = std::env::temp_dir().join(format!("sb-etcd-test-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut server = Server {
            dir,
            client_port,
            peer_port,
            child: None,
        };
        server.spawn().await;
        Some(server)
    }

    /// `127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// A registry on this server under a fresh prefix.
    pub fn etcd(&self, ttl_secs: u64) -> Etcd {
        Etcd::builder([self.endpoint()])
            .prefix(prefix())
            .ttl(Duration::from_secs(ttl_secs))
            .build()
            .expect("a valid registry")
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports: on the same data, or, with `wipe`, on an
    /// empty data directory (a new cluster that has lost every key and lease).
    pub async fn restart(&mut self, wipe: bool) {
        self.kill();
        if wipe {
            let _ = std::fs::remove_dir_all(self.dir.join("data"));
        }
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("a log file");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        self.ready().await;
    }

    /// Waits until the server answers a read.
    async fn ready(&self) {
        let started = Instant::now();
        loop {
            let answered = async {
                let mut client = etcd_client::Client::connect([self.endpoint()], None).await.ok()?;
                client.get("ready", None).await.ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), answered).await {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "etcd did not start on {}; see {}",
                self.endpoint(),
                self.dir.join("etcd.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
