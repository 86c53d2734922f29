//! The NestJS peer (tests/nestjs: `@nestjs/microservices` 11 and 12, installed by
//! scripts/setup-nestjs.sh) and the two interop scenarios every transport runs against it:
//! a NestJS client calling our server, and our client calling a NestJS server. What
//! genuinely differs between transports is a [`Transport`]; the rest is written once here.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard::{Client, Error, MessageDef, Microservice, RunningServer, pattern};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::conformance::await_events;
use super::{User, missing};

// ---------------------------------------------------------------------------------------
// Finding and running the peer.

pub fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nestjs")
}

/// The npm package NestJS `version` loads for the transport of `url`, besides
/// `@nestjs/microservices` (TCP needs none).
fn transport_package(version: u8, url: &str) -> Option<&'static str> {
    match url.split_once("://").map_or(url, |(scheme, _)| scheme) {
        "redis" => Some("ioredis"),
        "nats" if version >= 12 => Some("@nats-io/transport-node"),
        "nats" => Some("nats"),
        "mqtt" => Some("mqtt"),
        "amqp" => Some("amqplib"),
        "kafka" => Some("kafkajs"),
        _ => None,
    }
}

/// True when node and NestJS `version` with the client library of `url`'s transport are
/// installed; otherwise fails under CI or skips loudly.
pub fn nest_installed(version: u8, url: &str) -> bool {
    let modules = peer_dir().join(format!("v{version}/node_modules"));
    let package = transport_package(version, url);
    let ok = ["@nestjs/microservices"]
        .into_iter()
        .chain(package)
        .all(|p| modules.join(p).join("package.json").exists())
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        let with = package.map(|p| format!(" with {p}")).unwrap_or_default();
        missing(
            &format!("NestJS {version}{with} (tests/nestjs/v{version}) or node"),
            "run scripts/setup-nestjs.sh",
        );
    }
    ok
}

/// Runs the NestJS client (tests/nestjs/client.mjs) on `url` with a script of operations;
/// returns one result each.
pub async fn nest_client(version: u8, url: &str, ops: &[Value]) -> Vec<Value> {
    nest_client_with(version, url, ops, &[], &[]).await
}

/// [`nest_client`] with more arguments (`--trace <name>`) and environment variables.
pub async fn nest_client_with(
    version: u8,
    url: &str,
    ops: &[Value],
    args: &[&str],
    envs: &[(&str, &str)],
) -> Vec<Value> {
    let mut child = Command::new("node")
        .arg(peer_dir().join("client.mjs"))
        .args(["--nest", &version.to_string(), "--url", url])
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(Value::from(ops.to_vec()).to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("NestJS client finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "NestJS client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "NestJS client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(results.len(), ops.len());
    results
}

// ---- The client script's operations (tests/nestjs/README.md) ----

/// A request with a 10 s timeout: `{"ok": [every value]}` or `{"err": …}`.
pub fn send(pattern: Value, data: Value) -> Value {
    send_within(pattern, data, 10_000)
}

pub fn send_within(pattern: Value, data: Value, timeout_ms: u64) -> Value {
    json!({"op": "send", "pattern": pattern, "data": data, "timeout_ms": timeout_ms})
}

/// Concurrent requests, one per item: `{"ok": [[values of the first], …]}`.
pub fn send_many(pattern: Value, data_list: Vec<Value>) -> Value {
    json!({"op": "send_many", "pattern": pattern, "data_list": data_list, "timeout_ms": 20_000})
}

/// An event: `{"ok": true}` once written.
pub fn emit(pattern: Value, data: Value) -> Value {
    json!({"op": "emit", "pattern": pattern, "data": data})
}

/// A request sent again until its reply's JSON holds `contains` `times` times (up to 10 s):
/// `{"ok": [values of the last reply]}`.
pub fn send_until(pattern: Value, data: Value, contains: &str, times: usize) -> Value {
    json!({"op": "send_until", "pattern": pattern, "data": data, "contains": contains, "times": times})
}

/// NestJS 12's packet metadata for the requests that follow.
pub fn set_metadata(metadata: Value) -> Value {
    json!({"op": "set_metadata", "metadata": metadata})
}

// ---- Servers ----

/// Polls `url` with our own client until `echo` answers (within 30 s): a server that has
/// announced itself may not yet have subscribed to its routes on a broker.
pub async fn wait_answers(url: &str) {
    let client = Client::builder(url)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("client connects to {url}: {e}"));
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.send_raw::<Value>("echo", "ready?").await {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < until,
                "nothing answers `echo` on {url} within 30 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.close().await;
}

/// Serves every handler of the test binary on `url` once it answers; returns the server and
/// the URL peers use (a TCP port 0 resolved).
pub async fn serve(url: &str) -> (RunningServer, String) {
    let server = Microservice::from_registry()
        .listen(url)
        .start()
        .await
        .unwrap_or_else(|e| panic!("our server starts on {url}: {e}"));
    // A TCP listener reports the port it got; a broker transport's URL is the one given.
    let url = if url.starts_with("tcp:") {
        server.local_url().to_owned()
    } else {
        url.to_owned()
    };
    wait_answers(&url).await;
    (server, url)
}

/// A NestJS server (tests/nestjs/server.mjs) on a transport URL; stopped when dropped.
pub struct NestServer {
    _child: Child,
    version: u8,
    url: String,
}

impl NestServer {
    /// Starts NestJS `version` on `url` (`tcp://127.0.0.1:0` picks a free port), waits for
    /// its READY line, then until `echo` answers. A transport that needs more (all routes
    /// subscribed, say) checks it after this returns.
    pub async fn start(version: u8, url: &str) -> NestServer {
        Self::start_with(version, url, &[], &[]).await
    }

    /// [`start`](Self::start) with more arguments (`--trace <name>`) and environment variables.
    pub async fn start_with(version: u8, url: &str, args: &[&str], envs: &[(&str, &str)]) -> NestServer {
        let mut child = Command::new("node")
            .arg(peer_dir().join("server.mjs"))
            .args(["--nest", &version.to_string(), "--url", url])
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("NestJS server starts within 30 s")
            .unwrap()
            .expect("NestJS server prints READY <port>");
        let port: u16 = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected line: {line}"));
        // TCP reports the port it listens on; broker transports report 0.
        let url = match url.rsplit_once(':') {
            Some((host, _)) if port != 0 => format!("{host}:{port}"),
            _ => url.to_owned(),
        };
        wait_answers(&url).await;
        NestServer {
            _child: child,
            version,
            url,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn version(&self) -> u8 {
        self.version
    }
}

// ---------------------------------------------------------------------------------------
// The two scenarios.

/// What a transport does differently in the scenarios.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// Bytes of the largest payload sent (as ASCII, and as 4-byte characters): 1 MiB, or
    /// less where the broker's message limit (minus the envelope) is lower.
    pub payload: usize,
    /// What a request to `nope`, a pattern nobody serves, does.
    pub unknown: Unknown,
    /// NestJS 12's client metadata reaches our handlers as headers.
    pub metadata_from_nest: bool,
    /// Our client's headers reach a NestJS 12 server as packet metadata (its handlers can
    /// read packet metadata on TCP and Redis only).
    pub metadata_to_nest: bool,
    /// NestJS's client gets every reply of 200 concurrent requests (its MQTT client loses
    /// replies to its reply-topic subscription race, so it sends one at a time there).
    pub nest_client_concurrent: bool,
    /// NestJS's Kafka peculiarities: its `KafkaParser` reads primitives in replies as text (a
    /// record has no type), both its client and ours; its client adds a `null` for a
    /// completion without a value; NestJS 11's Kafka server never answers a reply that
    /// completes without a value (and stalls its consumer), so `empty_stream` is not called
    /// there.
    pub kafka_quirks: bool,
}

/// What a request to a pattern nobody serves does, for a NestJS client and for ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// The server answers NestJS's "no matching message handler" error; our client turns it
    /// into `NoHandler` (TCP, RabbitMQ).
    HandlerError,
    /// The broker answers at once that nobody listens: the NestJS client gets its
    /// empty-response error, ours `NoHandler` (NATS no-responders).
    NoResponders,
    /// Only the publisher learns that nobody listens: ours fails at once with `NoHandler`,
    /// the NestJS client times out (Redis: PUBLISH reaches no subscriber).
    NoSubscribers,
    /// Nothing tells: both clients time out (MQTT).
    Silence,
}

const UNICODE: &str = "é😀 ünïcødé";
const NO_HANDLER: &str = "There is no matching message handler defined in the remote service.";

/// The `len` of `text` as NestJS counts it (UTF-16 units), which our handler copies.
fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// A number in a reply as NestJS reads it: as text where its `KafkaParser` reads replies.
fn num(t: &Transport, n: usize) -> Value {
    if t.kafka_quirks { json!(n.to_string()) } else { json!(n) }
}

/// ASCII, and characters outside the BMP, of `bytes` bytes each.
fn big_payloads(bytes: usize) -> [String; 2] {
    ["x".repeat(bytes), "😀".repeat(bytes / 4)]
}

/// A NestJS `version` client calls our server, serving this binary's handlers on `url`:
/// patterns of every shape, multi-value replies, errors, an unknown pattern, big and
/// non-ASCII payloads, events to both listeners, 200 concurrent requests, bad payloads,
/// late completion and (NestJS 12) metadata.
pub async fn nest_client_calls_our_server(version: u8, url: &str, t: &Transport) {
    let (server, url) = serve(url).await;
    let marker = format!("nest{version}-to-us-{}", std::process::id());
    let nope = match t.unknown {
        Unknown::HandlerError | Unknown::NoResponders => send(json!("nope"), json!({})),
        // Nothing will answer: wait a second, not ten.
        Unknown::NoSubscribers | Unknown::Silence => send_within(json!("nope"), json!({}), 1000),
    };
    let [ascii, astral] = big_payloads(t.payload);
    let concurrent = if t.nest_client_concurrent { 200 } else { 1 };
    let mut ops = vec![
        send(json!({"cmd": "sum"}), json!([1, 2, 3])),
        send(json!("echo"), json!({"x": UNICODE})),
        send(json!({"cmd": "get_user"}), json!("42")),
        send(
            json!({"nested": {"a": "x", "b": 1}, "v": 2, "role": "user", "cmd": "get"}),
            json!({}),
        ),
        send(json!("stream"), json!({})),
        send(json!("slow_stream"), json!({})),
        send(json!("empty_stream"), json!({})),
        send(json!("rpc_string"), json!({})),
        send(json!("rpc_object"), json!({})),
        send(json!("panics"), json!(1)),
        nope,
        send(json!("void_ret"), json!({})),
        send(json!("null_ret"), json!({})),
        send(json!("len"), json!(ascii)),
        send(json!("len"), json!(astral)),
        emit(json!("evt"), json!({"marker": marker})),
        emit(json!({"evt": 1}), json!({"ignored": true})),
        // Until both listeners recorded the marker; then what they saw.
        send_until(json!("events_seen"), json!({}), &marker, 2),
        send(json!("events_seen"), json!({})),
        send_many(json!("echo"), (0..concurrent).map(|i| json!({"i": i})).collect()),
        send(json!({"cmd": "sum"}), json!("not numbers")),
        send(json!("late_complete"), json!({})),
    ];
    // One NestJS sender's events for one pattern: handled in the order sent, one at a time.
    let ordered = format!("nest{version}-in-order-{}", std::process::id());
    ops.extend((0..20).map(|seq| emit(json!("ordered_evt"), json!({"marker": ordered, "seq": seq}))));
    let meta = ops.len() + 1;
    if version >= 12 {
        // v12's dispatch hook puts the metadata in the packet; our handlers see headers.
        ops.push(set_metadata(json!({"traceparent": "00-abc-def-01"})));
        ops.push(send(json!("meta"), json!({})));
    }
    let r = nest_client(version, &url, &ops).await;
    let num = |n| num(t, n);
    // A completion without a value, as NestJS's client surfaces it.
    let completed = |mut values: Vec<Value>| {
        if t.kafka_quirks {
            values.push(Value::Null);
        }
        json!({"ok": values})
    };
    assert_eq!(r[0], json!({"ok": [num(6)]}));
    assert_eq!(r[1], json!({"ok": [{"x": UNICODE}]}));
    assert_eq!(
        r[2],
        json!({"ok": [{"id": "42", "name": "John Doe", "email": "john@example.com"}]})
    );
    assert_eq!(r[3], json!({"ok": ["nested-ok"]}));
    assert_eq!(r[4], json!({"ok": [num(1), num(2), num(3)]}));
    assert_eq!(r[5], json!({"ok": [num(0), num(1), num(2)]}));
    assert_eq!(r[6], completed(vec![]));
    assert_eq!(r[7], json!({"err": {"status": "error", "message": "bad thing"}}));
    assert_eq!(
        r[8],
        json!({"err": {"code": 42, "message": "custom msg", "extra": true}})
    );
    if t.kafka_quirks {
        // NestJS's Kafka client sends the number as text, which `panics` refuses.
        let invalid = r[9]["err"]["message"].as_str().unwrap_or_default();
        assert!(invalid.starts_with("invalid payload for pattern panics"), "{}", r[9]);
    } else {
        assert_eq!(
            r[9],
            json!({"err": {"status": "error", "message": "Internal server error"}})
        );
    }
    match t.unknown {
        Unknown::HandlerError => assert_eq!(r[10], json!({"err": NO_HANDLER})),
        Unknown::NoResponders => {
            let message = r[10]["err"]["error_message"].as_str().unwrap_or_default();
            assert!(message.contains("no subscribers"), "{}", r[10]);
        }
        Unknown::NoSubscribers | Unknown::Silence => {
            assert_eq!(r[10]["err"]["name"], "TimeoutError", "{}", r[10])
        }
    }
    assert_eq!(r[11], completed(vec![]));
    assert_eq!(r[12], json!({"ok": [null]}));
    assert_eq!(r[13], json!({"ok": [num(utf16_len(&ascii))]}));
    assert_eq!(r[14], json!({"ok": [num(utf16_len(&astral))]}));
    assert_eq!(r[15], json!({"ok": true}));
    let seen = r[18]["ok"][0]
        .as_array()
        .unwrap_or_else(|| panic!("events_seen returns a list: {}", r[18]));
    for handler in ["a", "b"] {
        assert!(
            seen.iter()
                .any(|e| e["handler"] == handler && e["data"]["marker"] == json!(marker)),
            "{handler}: {seen:?}"
        );
    }
    assert!(
        !seen.iter().any(|e| e["data"]["ignored"] == json!(true)),
        "an unknown event runs nothing"
    );
    let many = r[19]["ok"]
        .as_array()
        .unwrap_or_else(|| panic!("{concurrent} replies: {}", r[19]));
    assert_eq!(many.len(), concurrent);
    for (i, values) in many.iter().enumerate() {
        assert_eq!(values, &json!([{"i": i}]));
    }
    let invalid = r[20]["err"]["message"].as_str().unwrap_or_default();
    assert!(invalid.starts_with("invalid payload for pattern"), "{}", r[20]);
    assert_eq!(
        r[21],
        completed(vec![json!("first")]),
        "completion in a separate packet"
    );
    if version >= 12 && t.metadata_from_nest {
        assert_eq!(r[meta], json!({"ok": [{"traceparent": "00-abc-def-01"}]}));
    }
    let ours = Client::builder(&url).connect().await.unwrap();
    let (seqs, most) = super::conformance::await_order(&ours, &ordered, 20).await;
    assert_eq!(
        seqs.get(""),
        Some(&(0..20).collect::<Vec<u64>>()),
        "NestJS's events in the order sent"
    );
    assert_eq!(most, 1, "one at a time");
    server.shutdown().await.unwrap();
}

const NEST_GET_USER: MessageDef<String, User> = MessageDef::new(pattern!({ cmd = "get_user" }));
/// A number, or text where NestJS's `KafkaParser` reads replies.
const NEST_SUM: MessageDef<Vec<i64>, Value> = MessageDef::new(pattern!({ cmd = "sum" }));
const NEST_NESTED: MessageDef<Value, String> =
    MessageDef::new(pattern!({ cmd = "get", role = "user", v = 2, nested = { b = 1, a = "x" } }));

/// Every value of a multi-value reply.
async fn values(client: &Client, pattern: &str) -> Vec<Value> {
    client
        .send_raw::<Value>(pattern, json!({}))
        .stream()
        .await
        .unwrap()
        .map(|v| v.unwrap())
        .collect()
        .await
}

/// Our client calls a NestJS server: typed and raw calls of every pattern shape,
/// multi-value replies in both of NestJS's shapes, errors, an unknown pattern, a timeout,
/// big and non-ASCII payloads, events to both listeners, 200 concurrent requests and
/// (NestJS 12) metadata.
pub async fn our_client_calls_nest_server(nest: &NestServer, t: &Transport) {
    let client = Client::builder(nest.url())
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("client connects to {}: {e}", nest.url()));

    let num = |n| num(t, n);
    assert_eq!(client.send(NEST_SUM, vec![1, 2, 3]).await.unwrap(), num(6));
    assert_eq!(
        client.send(NEST_GET_USER, "42".to_string()).await.unwrap(),
        User {
            id: "42".into(),
            name: "John Doe".into(),
            email: "john@example.com".into()
        }
    );
    assert_eq!(client.send(NEST_NESTED, json!({})).await.unwrap(), "nested-ok");
    // The same object patterns as JSON, keys in another order: NestJS's routes all the same.
    assert_eq!(
        client
            .send_raw::<Value>(json!({"cmd": "sum"}), [1, 2, 3])
            .await
            .unwrap(),
        num(6)
    );
    let user: Value = client.send_raw(json!({"cmd": "get_user"}), "42").await.unwrap();
    assert_eq!(user["name"], "John Doe");
    let nested: String = client
        .send_raw(
            json!({"nested": {"a": "x", "b": 1}, "v": 2, "role": "user", "cmd": "get"}),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(nested, "nested-ok");
    let unicode = json!({"x": UNICODE, "ключ": "値"});
    assert_eq!(client.send_raw::<Value>("echo", &unicode).await.unwrap(), unicode);

    // Multi-value replies: completion merged into the last value, or separate.
    assert_eq!(values(&client, "stream").await, [num(1), num(2), num(3)]);
    assert_eq!(values(&client, "slow_stream").await, [num(0), num(1), num(2)]);
    if !(t.kafka_quirks && nest.version() < 12) {
        assert_eq!(values(&client, "empty_stream").await, [Value::Null; 0]);
    }
    assert_eq!(
        client.send_raw::<Value>("stream", json!({})).await.unwrap(),
        num(3),
        "send gives the last value"
    );
    client.send_raw::<()>("void_ret", json!({})).await.unwrap();
    assert_eq!(
        client.send_raw::<Option<u32>>("null_ret", json!({})).await.unwrap(),
        None
    );

    // Errors.
    let err = client.send_raw::<Value>("rpc_string", json!({})).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"status": "error", "message": "bad thing"})
    );
    let err = client.send_raw::<Value>("rpc_object", json!({})).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"code": 42, "message": "custom msg", "extra": true})
    );
    let err = client.send_raw::<Value>("plain_error", json!({})).await.unwrap_err();
    assert_eq!(err.as_rpc().unwrap().message(), Some("Internal server error"));
    if t.unknown == Unknown::Silence {
        let err = client
            .with_timeout(Duration::from_millis(500))
            .send_raw::<Value>("nope", json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { pattern, .. } if pattern == "nope"),
            "{err}"
        );
    } else {
        // Where NestJS's own client may wait for its timeout, ours fails at once.
        let err = client.send_raw::<Value>("nope", json!({})).await.unwrap_err();
        assert!(
            matches!(&err, Error::NoHandler { pattern, .. } if pattern == "nope"),
            "{err}"
        );
    }
    let err = client
        .with_timeout(Duration::from_millis(200))
        .send_raw::<Value>("delay", 2000)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");

    // Big payloads, in ASCII and in characters outside the BMP (NestJS counts UTF-16 units).
    for text in big_payloads(t.payload) {
        assert_eq!(
            client.send_raw::<Value>("len", &text).await.unwrap(),
            num(utf16_len(&text))
        );
    }

    // Events reach both NestJS listeners.
    let marker = format!("us-to-nest{}-{}", nest.version(), std::process::id());
    client.emit_raw("evt", json!({"marker": marker})).await.unwrap();
    await_events(&client, &marker, 2).await;
    // One sender's events reach NestJS in the order sent (its listener records them as they come).
    let ordered = format!("us-to-nest{}-in-order-{}", nest.version(), std::process::id());
    for seq in 0..30 {
        client
            .emit_raw("evt", json!({"marker": ordered, "seq": seq}))
            .await
            .unwrap();
    }
    await_events(&client, &ordered, 60).await;
    let seen = client.send_raw::<Vec<Value>>("events_seen", json!({})).await.unwrap();
    let order: Vec<u64> = seen
        .iter()
        .filter(|e| e["handler"] == "a" && e["data"]["marker"] == json!(ordered))
        .map(|e| e["data"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        order,
        (0..30).collect::<Vec<u64>>(),
        "NestJS saw our events in the order sent"
    );
    let seen = client.send_raw::<Vec<Value>>("events_seen", json!({})).await.unwrap();
    for handler in ["a", "b"] {
        assert!(
            seen.iter()
                .any(|e| e["handler"] == handler && e["data"]["marker"] == json!(marker)),
            "{handler}: {seen:?}"
        );
    }

    // 200 concurrent requests, told apart by their ids alone.
    let calls = (0..200).map(|i| {
        let client = client.clone();
        async move { client.send_raw::<Value>("echo", json!({"i": i})).await }
    });
    for (i, r) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
        assert_eq!(r.unwrap(), json!({"i": i}));
    }

    // NestJS 12 reads our headers as packet metadata.
    if nest.version() >= 12 && t.metadata_to_nest {
        let traced = client.with_headers([("traceparent", "00-abc-def-01")].into_iter().collect());
        let mut metadata: Value = traced.send_raw("meta", json!({})).await.unwrap();
        // The time the call had left travels too (NestJS ignores it).
        let left = metadata.as_object_mut().and_then(|m| m.remove("sb-timeout-ms"));
        assert!(
            left.as_ref()
                .and_then(Value::as_str)
                .and_then(|ms| ms.parse::<u64>().ok())
                .is_some_and(|ms| ms <= 30_000),
            "{left:?}"
        );
        assert_eq!(metadata, json!({"traceparent": "00-abc-def-01"}));
    }
    client.close().await;
}

/// The four interop tests of a transport's binary, keeping their names in every binary:
/// NestJS 11 and 12 clients against our server (`$nest_client(version)`), and our client
/// against NestJS 11 and 12 servers (`$our_client(version)`).
#[macro_export]
macro_rules! nest_interop_tests {
    (nest_client: $nest_client:ident, our_client: $our_client:ident $(,)?) => {
        #[tokio::test]
        async fn nestjs_11_client_calls_our_server() {
            $nest_client(11).await;
        }

        #[tokio::test]
        async fn nestjs_12_client_calls_our_server() {
            $nest_client(12).await;
        }

        #[tokio::test]
        async fn our_client_calls_nestjs_11_server() {
            $our_client(11).await;
        }

        #[tokio::test]
        async fn our_client_calls_nestjs_12_server() {
            $our_client(12).await;
        }
    };
}
