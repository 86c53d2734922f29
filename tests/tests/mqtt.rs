#![cfg(feature = "mqtt")]
//! The MQTT transport against a real Mosquitto on 127.0.0.1:1883: the conformance suite
//! (broker restart included), NestJS's bytes on the wire, plain messages from non-Nest
//! producers, load balancing through shared subscriptions, and at-least-once events across
//! a killed consumer.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::prelude::*;
use switchboard::{Client, Microservice};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BROKER: &str = "Mosquitto on 127.0.0.1:1883";
const FIX: &str = "start it: mosquitto -d -c /etc/mosquitto/mosquitto.conf (or run scripts/brokers.sh)";
const URL: &str = "mqtt://127.0.0.1:1883";
const PID_FILE: &str = "/run/mosquitto/mosquitto.pid";

switchboard_conformance! {
    url: URL,
    broker: BROKER,
    fix: FIX,
    restart: restart_mosquitto,
}

/// True when the broker answers; otherwise fails under CI or skips loudly.
fn broker_up() -> bool {
    let up = std::net::TcpStream::connect_timeout(&"127.0.0.1:1883".parse().unwrap(), Duration::from_secs(2)).is_ok();
    if !up {
        missing(BROKER, FIX);
    }
    up
}

/// Stops Mosquitto (by the PID in its pid file) and starts it again with the system config.
async fn restart_mosquitto() {
    let pid = std::fs::read_to_string(PID_FILE)
        .unwrap_or_else(|e| panic!("cannot read {PID_FILE} to restart Mosquitto: {e}"))
        .trim()
        .to_owned();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "mosquitto",
        "{PID_FILE} names pid {pid}, which is not Mosquitto"
    );
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -TERM {pid} failed");
    for _ in 0..100 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Down for a moment, so that clients notice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::process::Command::new("mosquitto")
        .args(["-d", "-c", "/etc/mosquitto/mosquitto.conf"])
        .status()
        .unwrap();
    assert!(started.success(), "mosquitto did not start again");
    for _ in 0..100 {
        if std::net::TcpStream::connect("127.0.0.1:1883").is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Mosquitto does not listen again after a restart");
}

async fn client(url: &str) -> Client {
    Client::builder(url)
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("client connects to {url}: {e}"))
}

/// Starts a server with every handler of this binary and waits until it answers.
async fn start_server(url: &str) -> switchboard::RunningServer {
    let server = Microservice::from_registry().listen(url).start().await.unwrap();
    let c = client(url).await;
    for _ in 0..50 {
        if c.with_timeout(Duration::from_millis(200)).send(DELAY, 0).await.is_ok() {
            break;
        }
    }
    server
}

/// `mosquitto_sub` printing `topic payload` lines for `topics`.
struct Spy {
    _child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    probe: String,
}

/// Starts `mosquitto_sub` on `topics` and returns once it is subscribed: it has no
/// "subscribed" signal, so it also subscribes (in the same SUBSCRIBE) to a probe topic, which
/// is published to until the probe comes through.
async fn watch(port: u16, topics: &[&str]) -> Spy {
    let probe = format!("sb-probe-{}-{port}", std::process::id());
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v", "-t", &probe]);
    for t in topics {
        cmd.args(["-t", t]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (package mosquitto-clients) runs");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = out.next_line().await {
            seen.lock().unwrap().push(line);
        }
    });
    let spy = Spy {
        _child: child,
        lines,
        probe,
    };
    for _ in 0..100 {
        let probe = spy.probe.clone();
        tokio::task::spawn_blocking(move || mosquitto_pub(port, &probe, "ready"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if spy.lines.lock().unwrap().iter().any(|l| l.starts_with(&spy.probe)) {
            return spy;
        }
    }
    panic!("mosquitto_sub did not subscribe within 10 s");
}

impl Spy {
    /// The first `count` lines off the probe topic (waiting up to 20 s for them).
    async fn lines(&self, count: usize) -> Vec<String> {
        let got = || -> Vec<String> {
            let lines = self.lines.lock().unwrap();
            lines.iter().filter(|l| !l.starts_with(&self.probe)).cloned().collect()
        };
        for _ in 0..200 {
            if got().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        got()
    }
}

fn mosquitto_pub(port: u16, topic: &str, message: &str) {
    let ok = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic, "-m", message])
        .status()
        .expect("mosquitto_pub (package mosquitto-clients) runs");
    assert!(ok.success());
}

/// A Mosquitto of this test's own on a free port, so that no other server of this binary
/// (which all serve the same topics) answers or listens in. Stopped when dropped.
struct PrivateBroker {
    _child: Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivateBroker {
    async fn start() -> PrivateBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("sb-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the mosquitto binary runs");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return PrivateBroker {
                    _child: child,
                    dir,
                    port,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("a private mosquitto on port {port} did not start");
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What our client and server put on the wire is what NestJS puts there (mqtt.txt):
/// the request on the route's topic, the reply on `<topic>/reply`, events without an id.
#[tokio::test]
async fn wire_format_is_nestjs() {
    if !broker_up() {
        return;
    }
    let broker = PrivateBroker::start().await;
    let _server = start_server(&broker.url()).await;
    let c = client(&broker.url()).await;
    let spy = watch(broker.port, &[r#"{"cmd":"sum"}"#, r#"{"cmd":"sum"}/reply"#, "evt"]).await;
    assert_eq!(c.send(SUM, vec![1.0, 2.0, 3.0]).await.unwrap(), 6.0);
    c.emit_raw("evt", json!({"wire": 1})).await.unwrap();
    spy.lines(3).await;
    // Anything more (a duplicate, say) would show up by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = spy.lines(3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    let (topic, request) = got[0].split_once(' ').unwrap();
    assert_eq!(topic, r#"{"cmd":"sum"}"#);
    // NestJS 12's packet, its `metadata` carrying the time the call has left.
    let id = request
        .strip_prefix(r#"{"pattern":{"cmd":"sum"},"data":[1,2,3],"metadata":{"sb-timeout-ms":""#)
        .and_then(|rest| rest.split_once(r#""},"id":""#))
        .filter(|(left, _)| left.parse::<u64>().is_ok_and(|ms| ms <= 15_000))
        .and_then(|(_, rest)| rest.strip_suffix(r#""}"#))
        .unwrap_or_else(|| panic!("request is not NestJS's packet: {request}"));
    assert!(id.len() == 21 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(
        got[1],
        format!(r#"{{"cmd":"sum"}}/reply {{"response":6,"isDisposed":true,"id":"{id}"}}"#)
    );
    assert_eq!(got[2], r#"evt {"pattern":"evt","data":{"wire":1}}"#);
}

/// Messages from producers that are not NestJS reach event listeners as NestJS delivers
/// them: JSON without `pattern`/`data` is the data itself, anything else arrives as a string.
#[tokio::test]
async fn plain_messages_reach_event_listeners() {
    if !broker_up() {
        return;
    }
    let broker = PrivateBroker::start().await;
    let _server = start_server(&broker.url()).await;
    let c = client(&broker.url()).await;
    let marker = format!("plain-{}", std::process::id());
    mosquitto_pub(
        broker.port,
        "evt",
        &json!({"marker": marker, "from": "mosquitto_pub"}).to_string(),
    );
    mosquitto_pub(broker.port, "evt", "not json at all");
    // Not UTF-8: dropped with a logged error.
    let junk = std::env::temp_dir().join(format!("sb-mqtt-junk-{}", std::process::id()));
    std::fs::write(&junk, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let ok = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", "evt", "-f"])
        .arg(&junk)
        .status()
        .unwrap();
    let _ = std::fs::remove_file(&junk);
    assert!(ok.success());
    // Still serving after the junk.
    assert_eq!(common::conformance::await_events(&c, &marker, 2).await, 2);
    let seen = c.send(EVENTS_SEEN, ()).await.unwrap();
    assert!(
        seen.iter()
            .any(|e| e["data"] == json!({"marker": marker, "from": "mosquitto_pub"})),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| e["data"] == json!("not json at all")), "{seen:?}");
    assert_eq!(c.send(SUM, vec![1.0]).await.unwrap(), 1.0);
    // Junk on a reply topic the client listens to is skipped (NestJS's client throws).
    mosquitto_pub(broker.port, r#"{"cmd":"sum"}/reply"#, "not json");
    mosquitto_pub(
        broker.port,
        r#"{"cmd":"sum"}/reply"#,
        r#"{"response":1,"id":"not-ours"}"#,
    );
    assert_eq!(c.send(SUM, vec![2.0]).await.unwrap(), 2.0);
}

/// Requests with no server answer fail at the call's deadline, naming the pattern; they do
/// not hang, and the client keeps working.
#[tokio::test]
async fn unknown_pattern_times_out_naming_it() {
    if !broker_up() {
        return;
    }
    let _broker = common::conformance::shared().await;
    let c = client(URL).await;
    let err = c
        .with_timeout(Duration::from_millis(500))
        .send_raw::<Value>(json!({"cmd": "nobody_serves_this"}), json!(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, switchboard::Error::Timeout { pattern, .. } if pattern == r#"{"cmd":"nobody_serves_this"}"#),
        "{err}"
    );
}

#[test]
fn bad_urls_are_refused_clearly() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (url, needle) in [
        ("mqtt://127.0.0.1:1883?qos=7", "qos"),
        ("mqtt://127.0.0.1:1883?queue=x", "unknown query parameter `queue`"),
        ("mqtt://127.0.0.1:1883?clean_session=false", "client_id"),
    ] {
        let err = rt
            .block_on(Microservice::from_registry().listen(url).start())
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{url}: {err}");
    }
    if broker_up() {
        let err = rt
            .block_on(async {
                let c = client(&format!("{URL}?max_packet_size=1000")).await;
                c.emit_raw("evt", "x".repeat(2000)).await
            })
            .unwrap_err();
        assert!(err.to_string().contains("exceeds max_packet_size"), "{err}");
    }
    let err = rt.block_on(
        Client::builder("mqtt://127.0.0.1:1?connect_timeout_ms=300")
            .timeout(Duration::from_secs(5))
            .connect(),
    );
    assert!(
        matches!(err, Err(switchboard::Error::Connect { .. })),
        "a dead broker fails the connect: {err:?}"
    );
}

/// Shutdown stops taking messages but lets the requests in flight finish and answer.
#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    if !broker_up() {
        return;
    }
    let broker = PrivateBroker::start().await;
    let server = start_server(&broker.url()).await;
    let c = client(&broker.url()).await;
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.send(DELAY, 400).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.shutdown().await.unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), 400, "the request in flight was answered");
    let err = c
        .with_timeout(Duration::from_millis(500))
        .send(DELAY, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, switchboard::Error::Timeout { .. }),
        "nobody serves after shutdown: {err}"
    );
}

/// `max_in_flight` bounds the handlers running at once, at QoS 0 and at QoS 1, while the
/// replies of those running keep flowing: every request is answered.
#[tokio::test]
async fn max_in_flight_bounds_the_handlers_running() {
    if !broker_up() {
        return;
    }
    let broker = PrivateBroker::start().await;
    for qos in [0, 1] {
        let url = format!("{}?qos={qos}&max_in_flight=2", broker.url());
        let server = start_server(&url).await;
        let c = client(&url).await;
        let calls = (0..12).map(|_| {
            let c = c.clone();
            async move { c.send(TRACKED, 100).await }
        });
        for r in futures_util::future::join_all(calls).await {
            assert_eq!(r.unwrap(), 100, "qos {qos}");
        }
        assert_eq!(c.send(MOST_RUNNING, ()).await.unwrap(), 2, "qos {qos}");
        server.shutdown().await.unwrap();
    }
}

/// Holds `mqtt_qos0_backlog` events until the test lets them go.
static QOS0: Gate = Gate::new();

#[event_pattern("mqtt_qos0_backlog")]
async fn mqtt_qos0_backlog(_data: String) {
    QOS0.pass().await;
}

/// QoS 0 has no flow control: a server that falls behind keeps at most 64 MiB of payloads
/// waiting and drops QoS 0 messages past that, instead of holding all of them.
#[tokio::test]
async fn qos0_messages_past_the_backlog_bound_are_dropped() {
    if !broker_up() {
        return;
    }
    // Counted too, with metrics on.
    #[cfg(feature = "metrics")]
    switchboard::metrics::install().unwrap();
    let broker = PrivateBroker::start().await;
    let url = format!("{}?qos=0&max_in_flight=1", broker.url());
    let server = start_server(&url).await;
    let c = client(&url).await;
    // 256 MiB at a server whose one slot is taken by the first event; the pauses let the
    // messages reach it before the gate opens.
    let big = "x".repeat(1 << 20);
    let sent = 256;
    for batch in 0..sent / 16 {
        for _ in 0..16 {
            c.emit(MQTT_QOS0_BACKLOG, big.clone()).await.unwrap();
        }
        if batch % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    QOS0.open(sent);
    // One message at a time: once a later request is answered, every event kept before it
    // has been handled. (The request may itself be dropped while the backlog is full.)
    let mut answered = false;
    for _ in 0..100 {
        if c.with_timeout(Duration::from_millis(500)).send(DELAY, 0).await.is_ok() {
            answered = true;
            break;
        }
    }
    assert!(answered, "the server serves on");
    let handled = QOS0.passed();
    assert!(handled > 0, "the first events were handled");
    // About 64 kept (more only if some arrived after the gate opened); all 256 without the
    // bound.
    assert!(
        handled < sent / 2,
        "{handled} of {sent} 1 MiB events handled: far more than 64 MiB were kept waiting"
    );
    #[cfg(feature = "metrics")]
    {
        let text = switchboard::metrics::render().unwrap();
        let line = r#"switchboard_messages_dropped_total{transport="mqtt",reason="backlog"} "#;
        let dropped: usize = text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("no dropped messages counted:\n{text}"))
            .parse()
            .unwrap();
        // The broker may drop some too (QoS 0), so not exactly the rest.
        assert!(
            dropped >= 1 && handled + dropped <= sent,
            "{handled} handled, {dropped} dropped of {sent}"
        );
    }
    server.shutdown().await.unwrap();
}

// ---- load balancing ------------------------------------------------------------------

/// Which server instance handled each `lb_hit` request, by the runtime thread it ran on.
static LB_HITS: std::sync::Mutex<Vec<(u64, String)>> = std::sync::Mutex::new(Vec::new());

#[message_pattern("lb_hit")]
async fn lb_hit(n: u64) -> u64 {
    let thread = std::thread::current().name().unwrap_or_default().to_owned();
    // Servers of other tests (the conformance one) answer too; only the two here count.
    if thread.starts_with("lb-") {
        LB_HITS.lock().unwrap().push((n, thread));
    }
    n
}

/// Starts a server on its own runtime, whose threads are named `name`.
fn server_on_thread(name: &'static str, url: String) -> std::sync::mpsc::Sender<()> {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = Microservice::new().handler(LB_HIT).listen(url).start().await.unwrap();
            ready_tx.send(()).unwrap();
            tokio::task::spawn_blocking(move || stop_rx.recv()).await.unwrap().ok();
            server.shutdown().await.unwrap();
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("server starts");
    stop_tx
}

/// Two servers in one shared-subscription group: every request is handled exactly once,
/// and both take a share.
#[tokio::test]
async fn group_load_balances_each_request_once() {
    if !broker_up() {
        return;
    }
    let _broker = common::conformance::shared().await;
    let group = format!("lb{}", std::process::id());
    let url = format!("{URL}?group={group}&qos=1");
    let a = server_on_thread("lb-a", url.clone());
    let b = server_on_thread("lb-b", url.clone());
    // No wait needed: each server starts once the broker acknowledged its SUBSCRIBE.
    let c = client(URL).await;
    const N: u64 = 200;
    let calls = (0..N).map(|n| {
        let c = c.clone();
        async move { c.send(LB_HIT, n).await }
    });
    for (n, r) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
        assert_eq!(r.unwrap(), n as u64);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hits = std::mem::take(&mut *LB_HITS.lock().unwrap());
    let mut per_n: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_server: HashMap<String, usize> = HashMap::new();
    for (n, server) in hits {
        *per_n.entry(n).or_default() += 1;
        *per_server.entry(server).or_default() += 1;
    }
    assert_eq!(per_n.len() as u64, N, "every request handled");
    assert!(per_n.values().all(|&k| k == 1), "each handled exactly once: {per_n:?}");
    assert_eq!(per_server.len(), 2, "both servers took a share: {per_server:?}");
    let _ = a.send(());
    let _ = b.send(());
}

// ---- at-least-once events across a killed consumer -----------------------------------

const DURABLE_LOG: &str = "SWITCHBOARD_MQTT_DURABLE_LOG";
const DURABLE_ID: &str = "SWITCHBOARD_MQTT_DURABLE_ID";
const EVENTS: u64 = 1000;

/// Records each event in the file named by `SWITCHBOARD_MQTT_DURABLE_LOG` (set only in the
/// consumer child process).
#[event_pattern("durable_evt")]
async fn durable_evt(data: Value) {
    let Some(path) = std::env::var_os(DURABLE_LOG) else {
        return;
    };
    // Slow enough that the consumer is killed with messages in flight.
    tokio::time::sleep(Duration::from_millis(40)).await;
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{data}").unwrap();
}

fn durable_url(client_id: &str) -> String {
    format!("{URL}?qos=1&clean_session=false&client_id={client_id}")
}

/// The consumer process of `durable_events_survive_a_killed_consumer` (re-executed test
/// binary); does nothing when run on its own.
#[tokio::test]
#[ignore = "helper process of durable_events_survive_a_killed_consumer"]
async fn durable_consumer_process() {
    let (Some(_), Some(id)) = (std::env::var_os(DURABLE_LOG), std::env::var(DURABLE_ID).ok()) else {
        return;
    };
    let server = Microservice::new()
        .handler(DURABLE_EVT)
        .listen(durable_url(&id))
        .start()
        .await
        .unwrap();
    println!("READY");
    std::future::pending::<()>().await;
    drop(server);
}

fn spawn_consumer(log: &std::path::Path, id: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "durable_consumer_process", "--ignored", "--nocapture"])
        .env(DURABLE_LOG, log)
        .env(DURABLE_ID, id)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_ready(child: &mut Child) {
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = out.next_line().await.unwrap() {
            if line.contains("READY") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(ready, Ok(true)), "the consumer process started");
}

/// The `n`s recorded for run `run`.
fn handled(log: &std::path::Path, run: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["run"] == run)
        .filter_map(|v| v["n"].as_u64())
        .collect()
}

/// QoS 1, a kept session and acks after the handler: kill the consumer (SIGKILL) in the
/// middle of 1,000 events, start it again, and every event has been handled at least once.
#[tokio::test]
async fn durable_events_survive_a_killed_consumer() {
    if !broker_up() {
        return;
    }
    let _broker = common::conformance::shared().await;
    let id = format!("sb-durable-{}", std::process::id());
    let log = std::env::temp_dir().join(format!("{id}.log"));
    let _ = std::fs::remove_file(&log);
    let c = client(&format!("{URL}?qos=1")).await;

    let mut consumer = spawn_consumer(&log, &id);
    wait_ready(&mut consumer).await;
    // The first run creates the session: wait until its subscription is live.
    let mut live = false;
    for _ in 0..100 {
        c.emit(DURABLE_EVT, json!({"run": "probe", "n": 0})).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !handled(&log, "probe").is_empty() {
            live = true;
            break;
        }
    }
    assert!(live, "the consumer receives events");

    // 600 events, SIGKILL once 100 are handled (about 20 more are in flight, unacknowledged),
    // 400 more while the consumer is down (the broker queues them for the kept session).
    let run = "batch";
    for n in 0..600 {
        c.emit(DURABLE_EVT, json!({"run": run, "n": n})).await.unwrap();
    }
    for _ in 0..600 {
        if handled(&log, run).len() >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.kill().await.unwrap();
    let killed_after = handled(&log, run).len();
    assert!(
        (100..600).contains(&killed_after),
        "the consumer was killed mid-batch ({killed_after} handled)"
    );
    for n in 600..EVENTS {
        c.emit(DURABLE_EVT, json!({"run": run, "n": n})).await.unwrap();
    }

    let mut consumer = spawn_consumer(&log, &id);
    wait_ready(&mut consumer).await;
    let mut seen = Vec::new();
    for _ in 0..600 {
        seen = handled(&log, run);
        seen.sort_unstable();
        seen.dedup();
        if seen.len() as u64 == EVENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = handled(&log, run).len();
    consumer.kill().await.unwrap();
    // Forget the kept session on the broker.
    let cleanup = Microservice::new()
        .handler(DURABLE_EVT)
        .listen(format!("{URL}?client_id={id}"))
        .start()
        .await
        .unwrap();
    cleanup.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&log);
    let missing: Vec<u64> = (0..EVENTS).filter(|n| seen.binary_search(n).is_err()).collect();
    eprintln!(
        "killed after {killed_after} events; {total} handlings of {} distinct events (redelivered: handled, not yet acknowledged)",
        seen.len()
    );
    assert!(missing.is_empty(), "events lost: {missing:?}");
}

// ---- NestJS interop (tests/nestjs, common/nest.rs), each on a private broker ----------

/// What MQTT does in the shared scenarios: 1 MiB payloads; nothing answers an unknown
/// pattern, so both clients time out; NestJS 12's packet metadata reaches our handlers (its
/// MQTT handlers cannot read ours); NestJS's own client loses replies under concurrency.
const MQTT: nest::Transport = nest::Transport {
    payload: 1 << 20,
    unknown: nest::Unknown::Silence,
    metadata_from_nest: true,
    metadata_to_nest: false,
    nest_client_concurrent: false,
    kafka_quirks: false,
};

async fn nest_client_calls_our_server(version: u8) {
    if nest::nest_installed(version, URL) {
        let broker = PrivateBroker::start().await;
        nest::nest_client_calls_our_server(version, &broker.url(), &MQTT).await;
    }
}

async fn our_client_calls_nest_server(version: u8) {
    if nest::nest_installed(version, URL) {
        let broker = PrivateBroker::start().await;
        // NestJS prints READY before its SUBACKs are in: `start` waits until it answers.
        let nest = nest::NestServer::start(version, &broker.url()).await;
        nest::our_client_calls_nest_server(&nest, &MQTT).await;
    }
}

nest_interop_tests! {
    nest_client: nest_client_calls_our_server,
    our_client: our_client_calls_nest_server,
}
