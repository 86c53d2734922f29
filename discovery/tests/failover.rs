//! Failover through a real etcd: three instances of `users` (child processes of this test)
//! register themselves; a client finds them by name and calls at about 1,000 calls/s while
//! one is SIGKILLed, restarted, and then all three are restarted one after another.
//!
//! Each reply says which process answered and at which attempt: a call whose first attempt
//! went to the killed instance (refused, or cut off in flight) is answered at attempt 2 or
//! later. etcd is started by scripts/brokers.sh (127.0.0.1:2379).
#![cfg(feature = "etcd")]

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard::prelude::*;
use switchboard_discovery::Registry;
use tokio::time::Instant;

const CHILD_ENV: &str = "SB_FAILOVER_CHILD";
const TTL_SECS: u64 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Who {
    pid: u32,
    attempt: u32,
}

#[message_pattern("users.who", idempotent, retries = 5)]
async fn who(_id: u64, headers: Headers) -> Who {
    Who {
        pid: std::process::id(),
        attempt: headers.get("sb-attempt").and_then(|a| a.parse().ok()).unwrap_or(1),
    }
}

fn registry_url(prefix: &str) -> String {
    format!("etcd://127.0.0.1:2379?prefix={prefix}&ttl={TTL_SECS}")
}

/// The child: one instance of `users`, registered under the prefix in `CHILD_ENV`, serving
/// until SIGTERM (then deregistering before it drains).
#[test]
fn child_instance() {
    let Ok(prefix) = std::env::var(CHILD_ENV) else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let registry = Registry::connect(&registry_url(&prefix)).await.unwrap();
        Microservice::new()
            .name("users")
            .handler(WHO)
            .register(registry)
            .deregister_grace(Duration::from_millis(500))
            .listen("tcp://127.0.0.1:0")
            .on_ready(|_| {
                println!("READY");
                std::io::stdout().flush().unwrap();
            })
            .run()
            .await
            .unwrap();
    });
}

struct Instance {
    child: Child,
}

impl Instance {
    fn start(prefix: &str) -> Instance {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_instance", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, prefix)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("READY") => break,
                Some(Ok(_)) => continue,
                other => panic!("the instance did not start: {other:?}"),
            }
        }
        // Keep reading so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Instance { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.child.wait().unwrap();
    }

    fn terminate(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert!(
            self.child.wait().unwrap().success(),
            "a terminated instance exits cleanly"
        );
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call's story: when it was sent, and who answered at which attempt (or its error).
#[derive(Debug, Clone)]
struct Outcome {
    sent: Instant,
    answer: Result<Who, String>,
}

/// Calls `users.who` about every millisecond until stopped.
fn load(
    users: Client,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<Mutex<Vec<Outcome>>>,
    tokio::sync::watch::Sender<bool>,
) {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = {
        let outcomes = outcomes.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut calls = tokio::task::JoinSet::new();
            let mut id = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                id += 1;
                let (users, outcomes) = (users.clone(), outcomes.clone());
                calls.spawn(async move {
                    let sent = Instant::now();
                    let answer = users.send(WHO, id).await.map_err(|e| e.to_string());
                    outcomes.lock().unwrap().push(Outcome { sent, answer });
                });
                while calls.try_join_next().is_some() {}
            }
            while calls.join_next().await.is_some() {}
        })
    };
    (task, outcomes, stop)
}

fn etcd_is_up() -> bool {
    std::net::TcpStream::connect_timeout(&"127.0.0.1:2379".parse().unwrap(), Duration::from_secs(2)).is_ok()
}

fn skip(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!(
            "etcd is missing (CI is set, so this fails instead of skipping): start it with scripts/brokers.sh ({why})"
        );
    }
    let line = format!("SKIPPED: etcd is missing: start it with scripts/brokers.sh ({why})");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("SB_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

/// Waits until `registry` lists `n` instances of `users`; how long it took.
async fn until_listed(registry: &Registry, n: usize, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let now = registry.instances("users").await.unwrap().len();
        if now == n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{now} instances listed after {within:?}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn answered_by(outcomes: &[Outcome], after: Instant, pid: u32) -> usize {
    outcomes
        .iter()
        .filter(|o| o.sent >= after && o.answer.as_ref().is_ok_and(|w| w.pid == pid))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_fail_over_rejoin_and_restart_without_losing_a_call() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    if !etcd_is_up() {
        return skip("nothing answers on 127.0.0.1:2379");
    }
    let prefix = format!("/sb-failover-{:016x}", fastrand::u64(..));
    let registry = Registry::connect(&registry_url(&prefix)).await.unwrap();
    let mut instances: Vec<Instance> = (0..3).map(|_| Instance::start(&prefix)).collect();
    until_listed(&registry, 3, Duration::from_secs(10)).await;
    let users = Client::discover("users", &registry).connect().await.unwrap();
    let (task, outcomes, stop) = load(users);

    // Spread: every instance answers a fair part (the balancer favours the faster ones, and a
    // busy machine makes one slower for a while: 2 % of the calls at least).
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let seen = outcomes.lock().unwrap();
        for i in &instances {
            let n = answered_by(&seen, started, i.pid());
            assert!(
                n * 50 > seen.len(),
                "instance {} answered {n} of {} calls",
                i.pid(),
                seen.len()
            );
        }
    }

    // SIGKILL one: after a second no call is sent to it, and it leaves etcd within its TTL.
    let killed = instances.remove(0);
    let killed_at = Instant::now();
    killed.kill();
    let gone_after = until_listed(&registry, 2, Duration::from_secs(TTL_SECS + 5)).await;
    // etcd expires leases on a half-second tick: a second of slack.
    assert!(
        gone_after <= Duration::from_secs(TTL_SECS + 1),
        "the killed instance left the registry {gone_after:?} after it died (lease TTL {TTL_SECS} s)"
    );
    {
        let seen = outcomes.lock().unwrap();
        let late_retries: Vec<&Outcome> = seen
            .iter()
            .filter(|o| o.sent >= killed_at + Duration::from_secs(1))
            .filter(|o| o.answer.as_ref().is_ok_and(|w| w.attempt > 1))
            .collect();
        assert!(
            late_retries.is_empty(),
            "calls sent a second after the kill still went to the dead instance first: {late_retries:?}"
        );
    }

    // Restart it: it rejoins and takes calls again.
    let rejoined = Instance::start(&prefix);
    until_listed(&registry, 3, Duration::from_secs(10)).await;
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        answered_by(&outcomes.lock().unwrap(), back, rejoined.pid()) > 50,
        "the restarted instance takes calls again"
    );
    instances.push(rejoined);

    // A rolling restart of all three, one after another.
    for _ in 0..3 {
        let old = instances.remove(0);
        old.terminate();
        instances.push(Instance::start(&prefix));
        until_listed(&registry, 3, Duration::from_secs(10)).await;
    }
    // Each new instance takes calls once the client's watch has seen it (the registry listing
    // it does not mean the client has heard yet; a busy machine can take a while).
    let rolled = Instant::now();
    loop {
        let waiting: Vec<u32> = {
            let seen = outcomes.lock().unwrap();
            instances
                .iter()
                .map(Instance::pid)
                .filter(|&pid| answered_by(&seen, rolled, pid) == 0)
                .collect()
        };
        if waiting.is_empty() {
            break;
        }
        assert!(
            rolled.elapsed() < Duration::from_secs(15),
            "instances {waiting:?} took no call in the 15 s after the rolling restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop.send_replace(true);
    task.await.unwrap();
    let seen = outcomes.lock().unwrap();
    let failed: Vec<&Outcome> = seen.iter().filter(|o| o.answer.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} idempotent calls failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(seen.len() > 3000, "the load ran: {} calls", seen.len());
}
