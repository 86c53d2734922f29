//! The Kafka transport against librdkafka's mock cluster, run in this process (no Kafka
//! broker is installed here; `KafkaMock`, librdkafka's mock cluster, speaks the Kafka protocol
//! on a real TCP port, consumer groups and offset commits included). The conformance suite, the
//! NestJS wire format checked record by record, consumer-group load balancing, and
//! at-least-once delivery across a killed consumer process.

#![cfg(feature = "kafka")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::IntoFuture;
use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::nest;
use common::*;
use futures_util::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use switchboard::prelude::*;
use switchboard::transport::kafka::KafkaMock;
use switchboard::{Client, Error, Microservice};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The broker: librdkafka's mock cluster in this process, or (in a child process) its
/// parent's.
struct Mock {
    bootstrap: String,
    cluster: Option<KafkaMock>,
}

/// The cluster the conformance suite and most tests use.
fn mock() -> &'static Mock {
    static MOCK: OnceLock<Mock> = OnceLock::new();
    MOCK.get_or_init(|| {
        // A child process of this test uses its parent's broker.
        if let Ok(bootstrap) = std::env::var(CHILD_BROKERS) {
            return Mock {
                bootstrap,
                cluster: None,
            };
        }
        let cluster = KafkaMock::start().expect("librdkafka's mock cluster starts");
        // Kafka keeps order per partition: the ordering cases use one-partition topics, as a
        // NestJS consumer needs to keep order.
        for topic in ["ordered_evt", "keyed_evt", "kafka.blocked", "kafka.blocked_any"] {
            cluster.create_topic(topic, 1).expect("a one-partition topic");
        }
        Mock {
            bootstrap: cluster.bootstrap().to_owned(),
            cluster: Some(cluster),
        }
    })
}

impl Mock {
    /// Takes the broker down or back up (only the process that runs the cluster can).
    fn set_up(&self, up: bool) {
        let cluster = self.cluster.as_ref().expect("the cluster runs in this process");
        cluster.set_up(up).expect("mock broker up/down");
    }
}

/// The URL the conformance server listens on and its clients call.
fn mock_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| format!("kafka://{}?session_timeout_ms=6000", mock().bootstrap))
}

/// Takes the mock broker down (its port refuses connections, its data stays) and back up.
async fn restart_mock() {
    tokio::task::spawn_blocking(|| mock().set_up(false)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::spawn_blocking(|| mock().set_up(true)).await.unwrap();
}

switchboard_conformance! {
    url: mock_url(),
    broker: "librdkafka's mock cluster (in-process)",
    fix: "it runs inside the test; a failure to start it is a librdkafka build problem",
    restart: restart_mock,
}

/// A second server in the conformance server's group, for the tests below (the conformance
/// module keeps its own to itself); requests are handled by one of the two.
fn our_server() -> &'static str {
    static SERVER: OnceLock<Option<String>> = OnceLock::new();
    common::conformance::server(&SERVER, mock_url(), "librdkafka's mock cluster", "-").expect("mock runs")
}

/// While the broker is down, a call in flight fails at once with `ConnectionClosed` and a new
/// call fails with a `Connect` error (not at its deadline); once it is back, calls work again.
#[tokio::test]
async fn calls_fail_fast_while_the_broker_is_down() {
    let _broker = common::conformance::exclusive().await;
    let c = common::conformance::client(our_server())
        .await
        .with_timeout(Duration::from_secs(20));
    assert_eq!(c.send(DELAY, 1).await.unwrap(), 1);
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.send(DELAY, 4_000).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(|| mock().set_up(false)).await.unwrap();
    let down = std::time::Instant::now();
    let in_flight = tokio::time::timeout(Duration::from_secs(15), slow)
        .await
        .unwrap()
        .unwrap();
    let failed_after = down.elapsed();
    let new_call = c.send(DELAY, 1).await;
    let new_failed_after = down.elapsed();
    tokio::task::spawn_blocking(|| mock().set_up(true)).await.unwrap();
    assert!(
        matches!(in_flight, Err(Error::ConnectionClosed { .. })),
        "{in_flight:?}"
    );
    assert!(failed_after < Duration::from_secs(5), "failed after {failed_after:?}");
    assert!(matches!(new_call, Err(Error::Connect { .. })), "{new_call:?}");
    assert!(
        new_failed_after < Duration::from_secs(12),
        "failed after {new_failed_after:?}, by the connect timeout, not the call's 20 s"
    );
    let mut back = false;
    for _ in 0..60 {
        if c.with_timeout(Duration::from_secs(2)).send(DELAY, 1).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(back, "calls work again once the broker is back");
}

// ---------------------------------------------------------------------------------------
// NestJS's wire format, record by record, with a raw librdkafka producer and consumer.

fn raw_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &mock().bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("raw producer")
}

/// The records on `topic` (partition 0) until `want` arrived or 20 s passed.
/// A record's value and headers.
type RawRecord = (Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

fn read_records(topic: &str, want: usize) -> Vec<RawRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &mock().bootstrap)
        .set("group.id", "raw-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("raw consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want && std::time::Instant::now() < until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.payload().map(<[u8]>::to_vec), headers));
        }
    }
    out
}

/// Sends what a NestJS client sends: the bare value and the correlation headers.
async fn nest_request(p: &FutureProducer, topic: &str, value: Option<&[u8]>, id: &str, reply_topic: &str) {
    let h = OwnedHeaders::new()
        .insert(Header {
            key: "kafka_correlationId",
            value: Some(id),
        })
        .insert(Header {
            key: "kafka_replyTopic",
            value: Some(reply_topic),
        })
        .insert(Header {
            key: "kafka_replyPartition",
            value: Some("0"),
        });
    let mut r = FutureRecord::<[u8], [u8]>::to(topic).headers(h);
    if let Some(v) = value {
        r = r.payload(v);
    }
    p.send(r, Duration::from_secs(10)).await.expect("request delivered");
}

/// Our server answers NestJS-shaped requests with NestJS's records: value as kafkajs writes
/// it, `kafka_correlationId`, `kafka_nest-is-disposed` = 0x00 on the last, `kafka_nest-err`.
#[tokio::test]
async fn server_speaks_nestjs_records() {
    let _broker = common::conformance::shared().await;
    let c = common::conformance::client(our_server()).await;
    let p = raw_producer();
    let reply = format!("raw-{}.reply", std::process::id());
    // Create the reply topic before the server answers into it (the mock auto-creates on metadata).
    p.client().fetch_metadata(Some(&reply), Duration::from_secs(5)).unwrap();
    let marker = format!("raw-evt-{}", std::process::id());
    nest_request(&p, r#"{"cmd":"sum"}"#, Some(b"[1,2,3]"), "c-sum", &reply).await;
    nest_request(&p, "stream", None, "c-stream", &reply).await;
    nest_request(&p, "rpc_string", None, "c-err", &reply).await;
    nest_request(&p, "echo", Some("plain é".as_bytes()), "c-text", &reply).await;
    nest_request(&p, "len", Some(b"12345"), "c-num", &reply).await;
    nest_request(&p, "void_ret", None, "c-void", &reply).await;
    // Bytes starting with 0x00 are a Buffer to NestJS; bytes that are not UTF-8 are text.
    nest_request(&p, "echo", Some(&[0, 1, 2]), "c-buffer", &reply).await;
    nest_request(&p, "echo", Some(&[0xff, b'a']), "c-binary", &reply).await;
    // A request to an event handler is an event in NestJS's Kafka server: no reply.
    let evt = format!(r#"{{"marker":"{marker}"}}"#);
    nest_request(&p, "evt", Some(evt.as_bytes()), "c-evt", &reply).await;
    let records = tokio::task::spawn_blocking({
        let reply = reply.clone();
        move || read_records(&reply, 10)
    })
    .await
    .unwrap();
    type Reply = (Option<String>, HashMap<String, Vec<u8>>);
    let mut by_id: BTreeMap<String, Vec<Reply>> = BTreeMap::new();
    for (value, headers) in records {
        let headers: HashMap<_, _> = headers.into_iter().collect();
        let id = String::from_utf8(headers["kafka_correlationId"].clone()).unwrap();
        let value = value.map(|v| String::from_utf8(v).unwrap());
        by_id.entry(id).or_default().push((value, headers));
    }
    let disposed = |h: &HashMap<String, Vec<u8>>| h.get("kafka_nest-is-disposed").cloned();
    let summed = &by_id["c-sum"];
    assert_eq!(summed.len(), 1);
    assert_eq!(summed[0].0.as_deref(), Some("6"));
    assert_eq!(disposed(&summed[0].1), Some(vec![0u8]), "is-disposed is one 0x00 byte");
    let streamed = &by_id["c-stream"];
    let values: Vec<_> = streamed.iter().map(|(v, _)| v.clone().unwrap()).collect();
    assert_eq!(values, ["1", "2", "3"]);
    assert_eq!(
        streamed.iter().map(|(_, h)| disposed(h).is_some()).collect::<Vec<_>>(),
        [false, false, true],
        "only the last value carries is-disposed"
    );
    let err = &by_id["c-err"][0];
    assert_eq!(err.0, None);
    assert_eq!(
        err.1["kafka_nest-err"],
        br#"{"status":"error","message":"bad thing"}"#.to_vec()
    );
    assert!(disposed(&err.1).is_some());
    // No content-type: the value is read as KafkaParser reads it (plain text is a string;
    // a number is a string too) and a string reply is written raw.
    assert_eq!(by_id["c-text"][0].0.as_deref(), Some("plain é"));
    assert_eq!(by_id["c-num"][0].0.as_deref(), Some("5"), "\"12345\" has 5 characters");
    let void = &by_id["c-void"][0];
    assert_eq!(void.0, None, "completion without a value is a null value");
    assert!(disposed(&void.1).is_some());
    assert_eq!(
        by_id["c-buffer"][0].0.as_deref(),
        Some(r#"{"type":"Buffer","data":[0,1,2]}"#)
    );
    assert_eq!(by_id["c-binary"][0].0.as_deref(), Some("\u{fffd}a"));
    assert!(!by_id.contains_key("c-evt"), "an event handler never replies");
    assert_eq!(
        common::conformance::await_events(&c, &marker, 2).await,
        2,
        "both listeners ran"
    );
}

/// A NestJS server's replies, as our client reads them: primitives arrive as text (NestJS
/// writes no content-type), errors come from `kafka_nest-err`, and a null value with
/// is-disposed is completion (no extra `null`, unlike NestJS's client).
#[tokio::test]
async fn client_reads_nestjs_replies() {
    let _broker = common::conformance::shared().await;
    let route = format!("fake-nest-{}", std::process::id());
    let p = raw_producer();
    p.client().fetch_metadata(Some(&route), Duration::from_secs(5)).unwrap();
    // A fake NestJS server on `route`: a blocking reader hands requests to an async replier.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, i32, Vec<u8>, String)>();
    let topic = route.clone();
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &mock().bootstrap)
            .set("group.id", "fake-nest")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for part in 0..4 {
            tpl.add_partition_offset(&topic, part, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        while !tx.is_closed() {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let h: HashMap<String, Vec<u8>> = m
                .headers()
                .unwrap()
                .iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect();
            let text = |k: &str| String::from_utf8(h[k].clone()).unwrap();
            let what = m
                .payload()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let _ = tx.send((
                text("kafka_replyTopic"),
                text("kafka_replyPartition").parse().unwrap(),
                h["kafka_correlationId"].clone(),
                what,
            ));
        }
    });
    tokio::spawn(async move {
        while let Some((topic, part, id, what)) = rx.recv().await {
            let send = |value: Option<&'static str>, err: Option<&'static str>, last: bool| {
                let mut h = OwnedHeaders::new().insert(Header {
                    key: "kafka_correlationId",
                    value: Some(&id),
                });
                if let Some(e) = err {
                    h = h.insert(Header {
                        key: "kafka_nest-err",
                        value: Some(e),
                    });
                }
                if last {
                    h = h.insert(Header {
                        key: "kafka_nest-is-disposed",
                        value: Some(&[0u8][..]),
                    });
                }
                let mut r = FutureRecord::<[u8], [u8]>::to(&topic).partition(part).headers(h);
                if let Some(v) = value {
                    r = r.payload(v.as_bytes());
                }
                p.send(r, Duration::from_secs(5))
            };
            let _ = match what.as_str() {
                "num" => send(Some("6"), None, true).await,
                "obj" => send(Some(r#"{"a":1}"#), None, true).await,
                "stream" => {
                    send(Some("1"), None, false).await.unwrap();
                    send(None, None, true).await
                }
                "err" => send(None, Some(r#"{"status":"error","message":"bad"}"#), true).await,
                _ => send(None, Some(switchboard::error::NO_MESSAGE_HANDLER), false).await,
            };
        }
    });
    let c = Client::builder(mock_url())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    assert_eq!(c.send_raw::<Value>(&route, "num").await.unwrap(), json!("6"));
    assert_eq!(c.send_raw::<Value>(&route, "obj").await.unwrap(), json!({"a": 1}));
    let values: Vec<Value> = c
        .send_raw::<Value>(&route, "stream")
        .stream()
        .await
        .unwrap()
        .map(|v| v.unwrap())
        .collect()
        .await;
    assert_eq!(values, [json!("1")], "completion adds no value");
    let err = c.send_raw::<Value>(&route, "err").await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"status": "error", "message": "bad"})
    );
    let err = c.send_raw::<Value>(&route, "other").await.unwrap_err();
    assert!(
        matches!(&err, Error::NoHandler { pattern, .. } if *pattern == route),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Interop with real NestJS (kafkajs; common/nest.rs), each test on a cluster of its own: on
// Kafka every consumer group sees every message, so a server of ours and a NestJS server on
// one cluster would both answer.

/// What Kafka does in the shared scenarios: 1 MiB payloads; nothing answers an unknown
/// pattern, so both clients time out; no packet metadata; NestJS's `KafkaParser` and its
/// Kafka server as they are (runtime/docs/nestjs-wire.md §7.5): the expectations are NestJS's own
/// behaviour against NestJS, and our client reads NestJS's replies as its client does,
/// minus the extra `null` on completion.
const KAFKA: nest::Transport = nest::Transport {
    payload: 1 << 20,
    unknown: nest::Unknown::Silence,
    metadata_from_nest: false,
    metadata_to_nest: false,
    nest_client_concurrent: true,
    kafka_quirks: true,
};

async fn nest_client_calls_our_server(version: u8) {
    let cluster = KafkaMock::start().expect("librdkafka's mock cluster starts");
    // Kafka keeps order per partition (NestJS's producer spreads unkeyed records).
    cluster.create_topic("ordered_evt", 1).expect("a one-partition topic");
    let url = format!("kafka://{}?group=ours&max_wait_ms=100", cluster.bootstrap());
    if nest::nest_installed(version, &url) {
        nest::nest_client_calls_our_server(version, &url, &KAFKA).await;
    }
}

async fn our_client_calls_nest_server(version: u8) {
    let cluster = KafkaMock::start().expect("librdkafka's mock cluster starts");
    cluster.create_topic("evt", 1).expect("a one-partition topic");
    let url = format!("kafka://{}?group=nest&max_wait_ms=100", cluster.bootstrap());
    if nest::nest_installed(version, &url) {
        let nest = nest::NestServer::start(version, &url).await;
        nest::our_client_calls_nest_server(&nest, &KAFKA).await;
    }
}

nest_interop_tests! {
    nest_client: nest_client_calls_our_server,
    our_client: our_client_calls_nest_server,
}

// ---------------------------------------------------------------------------------------
// Child processes: consumers that can be killed, for load balancing and durability.

/// Set in a child process: the broker and the URL to serve.
const CHILD_BROKERS: &str = "SB_KAFKA_CHILD_BROKERS";
const CHILD_URL: &str = "SB_KAFKA_CHILD_URL";

fn is_child() -> bool {
    std::env::var_os(CHILD_URL).is_some()
}

/// Prints one handled message for the parent (only in a child process).
fn report(topic: &str, n: u64) {
    if is_child() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "HANDLED {topic} {n}");
        let _ = out.flush();
    }
}

#[event_pattern("kafka.durable")]
async fn durable_evt(n: u64) {
    if is_child() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report("kafka.durable", n);
}

#[event_pattern("kafka.graceful")]
async fn graceful_evt(n: u64) {
    if is_child() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report("kafka.graceful", n);
}

/// Set in a child process: the event of the `kafka.blocked*` patterns whose handler never ends.
const CHILD_BLOCK: &str = "SB_KAFKA_CHILD_BLOCK";

/// Reports the start, then never ends for the event `SB_KAFKA_CHILD_BLOCK` names.
async fn blocking(topic: &str, n: u64) {
    report(&format!("{topic}:started"), n);
    if std::env::var(CHILD_BLOCK).ok().and_then(|b| b.parse().ok()) == Some(n) {
        std::future::pending::<()>().await;
    }
    report(topic, n);
}

#[event_pattern("kafka.blocked")]
async fn blocked_evt(n: u64) {
    blocking("kafka.blocked", n).await;
}

#[event_pattern("kafka.blocked_any", concurrent)]
async fn blocked_any_evt(n: u64) {
    blocking("kafka.blocked_any", n).await;
}

#[event_pattern("kafka.lb")]
async fn lb_evt(n: u64) {
    report("kafka.lb", n);
}

/// Not a test on its own: the body of the consumer process the tests below start (this test
/// binary, re-run with `SB_KAFKA_CHILD_URL` set and `--ignored`).
#[test]
#[ignore = "run by the consumer-group and kill tests as a child process"]
fn child_consumer_process() {
    let url = std::env::var(CHILD_URL).expect("SB_KAFKA_CHILD_URL: run by the tests that start consumer processes");
    // The child's own log (errors, or what RUST_LOG asks for) goes to the test's stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let server = Microservice::new()
            .handler(DURABLE_EVT)
            .handler(LB_EVT)
            .handler(GRACEFUL_EVT)
            .handler(BLOCKED_EVT)
            .handler(BLOCKED_ANY_EVT)
            .listen(url)
            .start()
            .await
            .expect("child server starts");
        println!("READY");
        let _ = std::io::stdout().flush();
        switchboard::server::shutdown_signal().await;
        server.shutdown().await.unwrap();
        println!("STOPPED");
    });
}

/// A consumer process and the messages it reported.
struct ChildConsumer {
    child: Child,
    handled: Arc<Mutex<Vec<(String, u64)>>>,
}

fn start_consumer(url: &str) -> ChildConsumer {
    start_consumer_with(url, &[])
}

fn start_consumer_with(url: &str, env: &[(&str, &str)]) -> ChildConsumer {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_consumer_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_BROKERS, &mock().bootstrap)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the test binary re-runs itself");
    let handled = Arc::new(Mutex::new(Vec::new()));
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = handled.clone();
    tokio::spawn(async move {
        let mut lines = lines;
        while let Ok(Some(line)) = lines.next_line().await {
            let mut parts = line.split_whitespace();
            if parts.next() == Some("HANDLED")
                && let (Some(topic), Some(Ok(n))) = (parts.next(), parts.next().map(str::parse))
            {
                seen.lock().unwrap().push((topic.to_owned(), n));
            }
        }
    });
    ChildConsumer { child, handled }
}

impl ChildConsumer {
    fn seen(&self, topic: &str) -> Vec<u64> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// Waits (up to `secs`) until `done` holds.
async fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

async fn emit_all(c: &Client, topic: &str, ns: impl Iterator<Item = u64>) {
    let ns: Vec<u64> = ns.collect();
    for chunk in ns.chunks(100) {
        let sends = chunk.iter().map(|&n| c.emit_raw(topic, n).into_future());
        for r in futures_util::future::join_all(sends).await {
            r.expect("event accepted by the broker");
        }
    }
}

/// 1,000 events; the consumer process is killed (SIGKILL) in the middle of the batch and a
/// new one takes over in the same group: every event is handled at least once, and the new
/// one resumes from the offsets the first committed instead of starting over.
#[tokio::test]
async fn killed_consumer_loses_no_events() {
    let _broker = common::conformance::shared().await;
    let group = format!("durable-{}", std::process::id());
    let url = format!(
        "kafka://{}?group={group}&session_timeout_ms=6000&max_in_flight=2",
        mock().bootstrap
    );
    let c = Client::connect(mock_url()).await.unwrap();
    emit_all(&c, "kafka.durable", 0..1000).await;
    let mut first = start_consumer(&url);
    let started = tokio::time::Instant::now();
    assert!(
        wait_until(60, || first.seen("kafka.durable").len() >= 400).await,
        "the first consumer handles events"
    );
    // Past at least one auto-commit interval, and mid-batch.
    tokio::time::sleep_until(started + Duration::from_secs(3)).await;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    let by_first: HashSet<u64> = first.seen("kafka.durable").into_iter().collect();
    assert!(
        by_first.len() < 1000,
        "the consumer was killed mid-batch ({} handled)",
        by_first.len()
    );
    let second = start_consumer(&url);
    let all_seen = wait_until(90, || {
        let mut all = by_first.clone();
        all.extend(second.seen("kafka.durable"));
        all.len() == 1000
    })
    .await;
    let by_second = second.seen("kafka.durable");
    let mut all = by_first.clone();
    all.extend(&by_second);
    let missing: Vec<_> = (0..1000).filter(|n| !all.contains(n)).take(20).collect();
    assert!(all_seen, "events lost after the kill: {missing:?}…");
    let again = by_second.iter().filter(|n| by_first.contains(n)).count();
    eprintln!(
        "first consumer handled {}, second {} ({again} of them again)",
        by_first.len(),
        by_second.len()
    );
    assert!(
        by_second.len() < 1000,
        "the second consumer resumed from committed offsets, not from the start"
    );
}

/// The offset `group` has committed on partition 0 of `topic` (`None` before any commit).
fn committed(group: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &mock().bootstrap)
        .set("group.id", group)
        .create()
        .expect("raw consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = consumer.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    match got.find_partition(topic, 0)?.offset() {
        Offset::Offset(n) => Some(n),
        _ => None,
    }
}

/// One event's handler never ends (event 5 of 0..40, on one-partition topics, so offset = n).
/// The group commits up to it and no further — while events 0..4 are handled in order, and
/// while 6..39 are handled around it when the pattern is `concurrent` — and once the process is
/// SIGKILLed with it still running, the next consumer starts with exactly that event: of the
/// events the first one finished, none is handled again, and none is lost.
#[tokio::test]
async fn offsets_stop_at_a_handler_that_has_not_finished() {
    let _broker = common::conformance::shared().await;
    let group = format!("blocked-{}", std::process::id());
    let url = format!("kafka://{}?group={group}&session_timeout_ms=6000", mock().bootstrap);
    let c = Client::connect(mock_url()).await.unwrap();
    let (ordered, any) = ("kafka.blocked", "kafka.blocked_any");
    // One at a time, so that each event's offset is its number.
    for n in 0..40 {
        for topic in [ordered, any] {
            c.emit_raw(topic, n).await.expect("event accepted by the broker");
        }
    }
    let mut first = start_consumer_with(&url, &[(CHILD_BLOCK, "5")]);
    let started = |c: &ChildConsumer, t: &str| c.seen(&format!("{t}:started"));
    assert!(
        wait_until(60, || {
            started(&first, ordered).contains(&5) && first.seen(any).len() == 39 && started(&first, any).contains(&5)
        })
        .await,
        "the first consumer reaches the blocked event: in order {:?}, concurrent {:?}",
        first.seen(ordered),
        first.seen(any)
    );
    assert_eq!(
        first.seen(ordered),
        (0..5).collect::<Vec<_>>(),
        "in order: nothing passes the blocked event"
    );
    // The group commits every second: wait for a commit to reach the blocked event, then for
    // two more intervals, in which nothing may commit past it.
    // The server's group id carries NestJS's `-server` postfix.
    let server_group = format!("{group}-server");
    let at_block = wait_until(30, || {
        committed(&server_group, ordered) == Some(5) && committed(&server_group, any) == Some(5)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (o, a) = (committed(&server_group, ordered), committed(&server_group, any));
    assert!(at_block, "a commit reached the blocked event (committed: {o:?}, {a:?})");
    assert_eq!(
        (o, a),
        (Some(5), Some(5)),
        "nothing committed past a handler still running"
    );
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();

    let second = start_consumer(&url);
    assert!(
        wait_until(60, || second.seen(ordered).len() >= 35 && second.seen(any).len() >= 35).await,
        "the second consumer handles the rest: {:?} / {:?}",
        second.seen(ordered),
        second.seen(any)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        second.seen(ordered),
        (5..40).collect::<Vec<_>>(),
        "in order: resumes at the blocked event, each once"
    );
    let mut again = second.seen(any);
    again.sort_unstable();
    assert_eq!(
        again,
        (5..40).collect::<Vec<_>>(),
        "concurrent: resumes at the blocked event"
    );
}

/// SIGTERM in the middle of a batch: the consumer finishes what it has started, commits, and
/// leaves the group; the next one takes over exactly where it stopped (nothing handled twice,
/// nothing lost).
#[tokio::test]
async fn graceful_shutdown_commits_what_was_handled() {
    let _broker = common::conformance::shared().await;
    let group = format!("graceful-{}", std::process::id());
    let url = format!(
        "kafka://{}?group={group}&session_timeout_ms=6000&max_in_flight=4",
        mock().bootstrap
    );
    let c = Client::connect(mock_url()).await.unwrap();
    emit_all(&c, "kafka.graceful", 0..500).await;
    let mut first = start_consumer(&url);
    assert!(
        wait_until(60, || first.seen("kafka.graceful").len() >= 100).await,
        "the first consumer handles events"
    );
    let pid = first.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), first.child.wait())
        .await
        .expect("the consumer stops within 30 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "clean exit: {exit}");
    let by_first = first.seen("kafka.graceful");
    assert!(by_first.len() < 500, "stopped mid-batch ({} handled)", by_first.len());
    let second = start_consumer(&url);
    let by_first: HashSet<u64> = by_first.into_iter().collect();
    assert!(
        wait_until(60, || by_first.len() + second.seen("kafka.graceful").len() >= 500).await,
        "the second consumer handles the rest"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let by_second = second.seen("kafka.graceful");
    let again: Vec<_> = by_second.iter().filter(|n| by_first.contains(n)).collect();
    assert!(again.is_empty(), "handled again after a graceful stop: {again:?}");
    let mut all = by_first.clone();
    all.extend(&by_second);
    assert_eq!(all.len(), 500, "none lost");
}

/// Two servers in one consumer group share the partitions: each event is handled exactly
/// once, and both handle some.
#[tokio::test]
async fn consumer_group_balances_and_handles_each_once() {
    let _broker = common::conformance::shared().await;
    let group = format!("lb-{}", std::process::id());
    let url = format!("kafka://{}?group={group}&session_timeout_ms=6000", mock().bootstrap);
    let c = Client::connect(mock_url()).await.unwrap();
    let a = start_consumer(&url);
    let b = start_consumer(&url);
    // Warm up until both members own partitions (the group is stable).
    let mut k = 1_000_000;
    let stable = wait_until(60, || {
        let (a_ok, b_ok) = (
            a.seen("kafka.lb").iter().any(|&n| n >= 1_000_000),
            b.seen("kafka.lb").iter().any(|&n| n >= 1_000_000),
        );
        if !(a_ok && b_ok) {
            k += 1;
            let c = c.clone();
            let n = k;
            tokio::spawn(async move { c.emit_raw("kafka.lb", n).await });
        }
        a_ok && b_ok
    })
    .await;
    assert!(stable, "both consumers got partitions");
    emit_all(&c, "kafka.lb", 0..300).await;
    let count = |a: &ChildConsumer, b: &ChildConsumer| {
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for n in a.seen("kafka.lb").into_iter().chain(b.seen("kafka.lb")) {
            if n < 300 {
                *counts.entry(n).or_default() += 1;
            }
        }
        counts
    };
    assert!(
        wait_until(30, || count(&a, &b).len() == 300).await,
        "every event handled"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = count(&a, &b);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).map(|(n, _)| *n).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    let on_a = a.seen("kafka.lb").iter().filter(|&&n| n < 300).count();
    assert!(
        on_a > 0 && on_a < 300,
        "both members handled some ({on_a} of 300 on one; warm-up events: {:?} / {:?})",
        a.seen("kafka.lb")
            .iter()
            .filter(|&&n| n >= 1_000_000)
            .collect::<Vec<_>>(),
        b.seen("kafka.lb")
            .iter()
            .filter(|&&n| n >= 1_000_000)
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------
// Connection failures and URLs.

#[tokio::test]
async fn unreachable_broker_is_a_connect_error() {
    let started = std::time::Instant::now();
    let err = Client::builder("kafka://127.0.0.1:1")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails by its connect timeout"
    );
    let err = Microservice::new()
        .handler(ECHO)
        .listen("kafka://127.0.0.1:1")
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[tokio::test]
async fn unknown_url_parameters_are_refused() {
    let err = Client::builder("kafka://127.0.0.1:9092?groupid=x").build().unwrap_err();
    assert!(err.to_string().contains("unknown query parameter `groupid`"), "{err}");
    let err = Client::builder("kafka://127.0.0.1:9092?from_beginning=maybe")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("from_beginning"), "{err}");
}
