#![cfg(feature = "amqp")]
//! The RabbitMQ transport against a real broker on 127.0.0.1:5672 (guest/guest).

mod common;

use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard::prelude::*;
use switchboard::{Client, Error, Microservice};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BROKER: &str = "127.0.0.1:5672";

switchboard_conformance! {
    url: "amqp://127.0.0.1:5672?queue=sb-conformance&durable=false",
    broker: "RabbitMQ on 127.0.0.1:5672",
    fix: "run scripts/brokers.sh",
    restart: restart_rabbitmq,
}

/// Restarts RabbitMQ's application (every connection drops), then waits until the broker
/// answers the AMQP protocol header again.
async fn restart_rabbitmq() {
    for step in ["stop_app", "start_app"] {
        let out = tokio::process::Command::new("rabbitmqctl")
            .arg(step)
            .output()
            .await
            .expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !speaks_amqp().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "RabbitMQ did not come back within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// True when the broker answers the protocol header with `connection.start`.
async fn speaks_amqp() -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(BROKER).await else {
        return false;
    };
    let mut frame = [0u8; 1];
    s.write_all(b"AMQP\x00\x00\x09\x01").await.is_ok()
        && matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read(&mut frame)).await,
            Ok(Ok(1)) if frame[0] == 1
        )
}

/// True when RabbitMQ answers; otherwise fails under CI or skips loudly.
async fn broker_up() -> bool {
    let up = tokio::net::TcpStream::connect(BROKER).await.is_ok();
    if !up {
        missing(&format!("RabbitMQ on {BROKER}"), "run scripts/brokers.sh");
    }
    up
}

/// A URL on a queue of its own, so tests do not see each other's messages.
fn url(queue: &str, extra: &str) -> String {
    format!("amqp://{BROKER}?queue=sb-test-{queue}&durable=false{extra}")
}

// ---- Handlers of this binary's own tests ----

/// `lb_work` requests handled by this process.
static HANDLED: AtomicUsize = AtomicUsize::new(0);

/// Answers with the id of the process that handled it.
#[message_pattern("lb_work")]
async fn lb_work(_n: u32) -> u32 {
    tokio::time::sleep(Duration::from_millis(5)).await;
    HANDLED.fetch_add(1, SeqCst);
    std::process::id()
}

/// Appends the event's number to the file named by `SB_AMQP_LOG`, slowly enough that a
/// batch of 1,000 takes seconds.
#[event_pattern("durable_evt")]
async fn durable_evt(n: u32) {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let path = std::env::var("SB_AMQP_LOG").expect("SB_AMQP_LOG is set");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{n}\n").as_bytes()).unwrap();
}

/// Attempts per marker of the failing event handlers below.
static ATTEMPTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn attempts(marker: &str) -> usize {
    ATTEMPTS.lock().unwrap().iter().filter(|m| *m == marker).count()
}

/// Fails on its first delivery, panics on the second, succeeds on the third.
#[event_pattern("fails_twice")]
async fn fails_twice(marker: String) -> RpcResult<()> {
    ATTEMPTS.lock().unwrap().push(marker.clone());
    match attempts(&marker) {
        1 => Err(RpcError::new("not yet")),
        2 => panic!("listener bug"),
        _ => Ok(()),
    }
}

#[event_pattern("always_fails")]
async fn always_fails(marker: String) -> RpcResult<()> {
    ATTEMPTS.lock().unwrap().push(marker);
    Err(RpcError::new("always"))
}

/// Not a test of its own: the consumer process of the load-balancing and kill tests, when
/// they re-run this binary with `SB_AMQP_CHILD=<url>`. Serves until stdin closes, then shuts
/// down gracefully and prints how many `lb_work` requests it handled.
#[tokio::test]
#[ignore = "run by the load-balancing and kill tests as a child process"]
async fn child_process() {
    let url = std::env::var("SB_AMQP_CHILD").expect("SB_AMQP_CHILD: run by the tests that start a consumer process");
    let server = Microservice::from_registry().listen(&url).start().await.unwrap();
    println!("READY");
    let _ = tokio::task::spawn_blocking(|| std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())).await;
    server.shutdown().await.unwrap();
    println!("HANDLED {}", HANDLED.load(SeqCst));
}

/// A consumer process serving `url`.
struct ChildServer {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ChildServer {
    async fn start(url: &str, log: Option<&std::path::Path>) -> ChildServer {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SB_AMQP_CHILD", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
        if let Some(log) = log {
            cmd.env("SB_AMQP_LOG", log);
        }
        let mut child = cmd.spawn().expect("the test binary re-runs itself");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // libtest may have written `test child_process ... ` on the same line.
                if line.ends_with("READY") {
                    return true;
                }
            }
            false
        });
        assert!(
            ready.await.expect("the child serves within 30 s"),
            "the child exited before READY"
        );
        ChildServer { child, lines }
    }

    /// Graceful stop: closes stdin; returns the `lb_work` requests the child handled.
    async fn stop(mut self) -> usize {
        drop(self.child.stdin.take());
        let handled = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                if let Some((_, n)) = line.split_once("HANDLED ") {
                    return n.parse().unwrap();
                }
            }
            panic!("the child exited without reporting");
        });
        let n = handled.await.expect("the child stops within 30 s");
        let _ = self.child.wait().await;
        n
    }
}

/// Empties a queue (left over from an earlier run); a queue that does not exist is fine.
async fn purge(queue: &str) {
    let _ = Command::new("rabbitmqctl").args(["purge_queue", queue]).output().await;
}

/// Messages ready in a queue, as RabbitMQ counts them.
async fn ready_messages(queue: &str) -> Option<u64> {
    let out = Command::new("rabbitmqctl")
        .args(["list_queues", "name", "messages_ready", "--quiet"])
        .output()
        .await
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|line| {
        let (name, n) = line.split_once('\t')?;
        (name == queue).then(|| n.trim().parse().ok())?
    })
}

#[tokio::test]
async fn two_servers_on_one_queue_handle_each_request_once() {
    let _broker = common::conformance::shared().await;
    if !broker_up().await {
        return;
    }
    let url = url("load-balance", "&prefetch=8");
    purge("sb-test-load-balance").await;
    let local = Microservice::from_registry().listen(&url).start().await.unwrap();
    let child = ChildServer::start(&url, None).await;
    let child_pid = child.child.id().unwrap();
    let client = Client::builder(&url)
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    let calls = (0..200).map(|i| {
        let client = client.clone();
        async move { client.send_raw::<u32>("lb_work", i).await.unwrap() }
    });
    let pids = futures_util::future::join_all(calls).await;
    let here = pids.iter().filter(|&&p| p == std::process::id()).count();
    let there = pids.iter().filter(|&&p| p == child_pid).count();
    assert_eq!(here + there, 200, "every reply comes from one of the two servers");
    assert!(
        here > 0 && there > 0,
        "both servers took requests: {here} here, {there} in the child"
    );
    let child_handled = child.stop().await;
    local.shutdown().await.unwrap();
    assert_eq!(
        child_handled, there,
        "the child handled exactly the requests it answered"
    );
    assert_eq!(
        HANDLED.load(SeqCst),
        here,
        "this process handled exactly the requests it answered"
    );
}

#[tokio::test]
async fn a_killed_consumer_loses_no_events() {
    let _broker = common::conformance::shared().await;
    if !broker_up().await {
        return;
    }
    // Durable queue, persistent messages, acks after the handler (the default).
    let url = format!("amqp://{BROKER}?queue=sb-test-kill&durable=true&persistent=true&prefetch=10");
    purge("sb-test-kill").await;
    let log = std::env::temp_dir().join(format!("sb-amqp-kill-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let handled = |log: &std::path::Path| -> Vec<u32> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    let client = Client::builder(&url)
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    for n in 0..1000u32 {
        client.emit_raw("durable_evt", n).await.unwrap();
    }

    let first = ChildServer::start(&url, Some(&log)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while handled(&log).len() < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer handled too little within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut first = first.child;
    first.kill().await.unwrap(); // SIGKILL: no graceful shutdown, unacked messages in flight
    let at_kill = handled(&log).len();
    assert!(
        at_kill < 1000,
        "the consumer was killed in the middle of the batch ({at_kill} handled)"
    );

    let second = ChildServer::start(&url, Some(&log)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut seen = handled(&log);
        seen.sort_unstable();
        seen.dedup();
        if seen.len() == 1000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 1000 events handled after the restart (killed at {at_kill})",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.stop().await;
    let all = handled(&log);
    let mut distinct = all.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct,
        (0..1000).collect::<Vec<_>>(),
        "every event handled at least once"
    );
    eprintln!(
        "killed after {at_kill} events; {} handled twice (redelivered after the kill)",
        all.len() - 1000
    );
    assert_eq!(
        ready_messages("sb-test-kill").await,
        Some(0),
        "nothing left in the queue"
    );
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn failing_events_are_retried_then_dead_lettered() {
    let _broker = common::conformance::shared().await;
    if !broker_up().await {
        return;
    }
    let url = url("retry", "&max_retries=2");
    purge("sb-test-retry").await;
    purge("sb-test-retry.dlq").await;
    let server = Microservice::from_registry().listen(&url).start().await.unwrap();
    let client = Client::builder(&url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let (flaky, doomed) = (
        format!("flaky-{}", std::process::id()),
        format!("doomed-{}", std::process::id()),
    );
    client.emit_raw("fails_twice", &flaky).await.unwrap();
    client.emit_raw("always_fails", &doomed).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while attempts(&flaky) < 3 || attempts(&doomed) < 3 || ready_messages("sb-test-retry.dlq").await != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flaky: {} attempts, doomed: {} attempts, dead letters: {:?}",
            attempts(&flaky),
            attempts(&doomed),
            ready_messages("sb-test-retry.dlq").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a wrongly redelivered message time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        attempts(&flaky),
        3,
        "succeeded on the third delivery and was not delivered again"
    );
    assert_eq!(attempts(&doomed), 3, "one delivery plus max_retries=2 retries");
    assert_eq!(
        ready_messages("sb-test-retry.dlq").await,
        Some(1),
        "the doomed event is in <queue>.dlq"
    );
    assert_eq!(ready_messages("sb-test-retry").await, Some(0));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unhandled_messages_do_not_block_a_prefetch_of_one() {
    let _broker = common::conformance::shared().await;
    if !broker_up().await {
        return;
    }
    // NestJS with noAck:false and prefetch 1 used to freeze on an unknown pattern (#11641):
    // we nack those without requeue, so the next message still arrives.
    let url = url("prefetch-one", "&prefetch=1");
    purge("sb-test-prefetch-one").await;
    let server = Microservice::from_registry().listen(&url).start().await.unwrap();
    let client = Client::builder(&url)
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    client.emit_raw("nobody_listens", json!({})).await.unwrap();
    let err = client.send_raw::<Value>("nobody_answers", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, Error::NoHandler { pattern, .. } if pattern == "nobody_answers"),
        "{err}"
    );
    for i in 0..5 {
        assert_eq!(client.send_raw::<Value>("echo", json!(i)).await.unwrap(), json!(i));
    }
    assert_eq!(
        ready_messages("sb-test-prefetch-one").await,
        Some(0),
        "nothing requeued"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_leaves_the_rest_queued() {
    let _broker = common::conformance::shared().await;
    if !broker_up().await {
        return;
    }
    let url = url("shutdown", "");
    purge("sb-test-shutdown").await;
    let server = Microservice::from_registry().listen(&url).start().await.unwrap();
    let client = Client::builder(&url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    assert_eq!(client.send(DELAY, 1).await.unwrap(), 1);
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.send(DELAY, 700).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.shutdown().await.unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), 700, "the request in flight was answered");
    // Stopped: a new request waits in the queue for the next server instead of being taken.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.send(DELAY, 2).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nobody consumes after shutdown");
    let next = Microservice::from_registry().listen(&url).start().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), 2, "the next server answers it");
    next.shutdown().await.unwrap();
}

/// `max_in_flight` bounds the handlers running at once below `prefetch`; with `noack` too
/// the broker sends no more than `prefetch` ahead of the handlers (the rest stays in the
/// queue, not in the server's memory), and what the server had not taken when it stopped goes
/// back to the queue, for the next server.
#[tokio::test]
async fn max_in_flight_bounds_handlers_and_noack_leaves_the_rest_in_the_queue() {
    let _broker = common::conformance::shared().await;
    if !broker_up().await {
        return;
    }
    let bounded = url("in-flight", "&prefetch=8&max_in_flight=2");
    purge("sb-test-in-flight").await;
    let server = Microservice::from_registry().listen(&bounded).start().await.unwrap();
    let client = Client::builder(&bounded)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let calls = (0..12).map(|_| {
        let client = client.clone();
        async move { client.send(TRACKED, 100).await }
    });
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.unwrap(), 100);
    }
    assert_eq!(client.send(MOST_RUNNING, ()).await.unwrap(), 2);
    server.shutdown().await.unwrap();

    let noack = url("noack-drain", "&noack=true&prefetch=4&max_in_flight=1");
    purge("sb-test-noack-drain").await;
    let server = Microservice::from_registry().listen(&noack).start().await.unwrap();
    let client = Client::builder(&noack)
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    // The first request holds the server's one slot while the others arrive.
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.send(DELAY, 1_500).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = 40;
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.send(DELAY, 1).await })
        })
        .collect();
    // Four delivered ahead (prefetch; the running one is acked already), the rest in the queue.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = ready_messages("sb-test-noack-drain").await;
        if ready == Some(n - 4) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{ready:?} of {n} left in the queue: the broker pushed past prefetch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!first.is_finished(), "the server was still busy with the first request");
    server.shutdown().await.unwrap();
    assert_eq!(
        first.await.unwrap().unwrap(),
        1_500,
        "the request it had taken was answered"
    );
    // What it had not taken went back; the next server answers it.
    let next = Microservice::from_registry().listen(&noack).start().await.unwrap();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 1, "every request was answered");
    }
    next.shutdown().await.unwrap();
    assert_eq!(ready_messages("sb-test-noack-drain").await, Some(0));
}

#[tokio::test]
async fn bad_urls_are_refused() {
    let err = Client::builder("amqp://127.0.0.1:5672?queue=x&prefech=1")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("unknown query parameter `prefech`"), "{err}");
    let err = Microservice::from_registry()
        .listen("amqp://127.0.0.1:5672?durable=maybe")
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("durable"), "{err}");
}

#[tokio::test]
async fn an_unreachable_broker_fails_fast() {
    // Nothing listens on port 1.
    let err = Microservice::from_registry()
        .listen("amqp://127.0.0.1:1")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let client = Client::builder("amqp://127.0.0.1:1")
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = client.send_raw::<Value>("echo", 1).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[tokio::test]
async fn round_trip() {
    let _broker = common::conformance::shared().await;
    if !broker_up().await {
        return;
    }
    let url = url("round-trip", "");
    let server = Microservice::from_registry().listen(&url).start().await.unwrap();
    let client = Client::builder(&url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        client.send_raw::<f64>(json!({"cmd": "sum"}), [1, 2, 3]).await.unwrap(),
        6.0
    );
    let values: Vec<u32> = client
        .send_raw::<u32>("stream", json!({}))
        .stream()
        .await
        .unwrap()
        .map(|v| v.unwrap())
        .collect()
        .await;
    assert_eq!(values, [1, 2, 3]);
    let err = client.send_raw::<Value>("rpc_string", json!({})).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"status": "error", "message": "bad thing"})
    );
    let err = client.send_raw::<Value>("nope", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, Error::NoHandler { pattern, .. } if pattern == "nope"),
        "{err}"
    );
    client.emit_raw("evt", json!({"marker": "rt"})).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = client.send_raw::<Vec<Value>>("events_seen", json!({})).await.unwrap();
        if seen.iter().filter(|e| e["data"]["marker"] == "rt").count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen.iter().filter(|e| e["data"]["marker"] == "rt").count(),
        2,
        "{seen:?}"
    );
    server.shutdown().await.unwrap();
}

// ---- NestJS interop (tests/nestjs, common/nest.rs) ----

/// What RabbitMQ does in the shared scenarios: 1 MiB payloads, NestJS's no-handler error for
/// an unknown pattern; NestJS 12's body metadata reaches our handlers, but NestJS reads no
/// AMQP headers, where our client puts its metadata.
const RMQ: nest::Transport = nest::Transport {
    payload: 1 << 20,
    unknown: nest::Unknown::HandlerError,
    metadata_from_nest: true,
    metadata_to_nest: false,
    nest_client_concurrent: true,
    kafka_quirks: false,
};

async fn nest_client_calls_our_server(version: u8) {
    let _broker = common::conformance::shared().await;
    let url = url(&format!("nest{version}-to-us"), "");
    if broker_up().await && nest::nest_installed(version, &url) {
        nest::nest_client_calls_our_server(version, &url, &RMQ).await;
    }
}

async fn our_client_calls_nest_server(version: u8) {
    let _broker = common::conformance::shared().await;
    let url = url(&format!("us-to-nest{version}"), "");
    if broker_up().await && nest::nest_installed(version, &url) {
        let nest = nest::NestServer::start(version, &url).await;
        nest::our_client_calls_nest_server(&nest, &RMQ).await;
    }
}

nest_interop_tests! {
    nest_client: nest_client_calls_our_server,
    our_client: our_client_calls_nest_server,
}
