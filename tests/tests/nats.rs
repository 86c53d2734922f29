#![cfg(feature = "nats")]
//! The NATS transport against real nats-servers on 127.0.0.1:
//! - the conformance suite on 4223 (tests/nats/nats.conf: an 8 MB max_payload for the
//!   suite's 1 MiB payloads; restarted by the suite's restart case),
//! - NATS wire bytes checked with a raw protocol client, queue-group load balancing,
//!   JetStream durable events (a consumer process killed mid-batch) and NestJS interop,
//!   on the machine's broker on 4222.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use common::conformance::await_events;
use common::*;
use serde_json::{Value, json};
use switchboard::prelude::*;
use switchboard::{Client, Error, Microservice};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The machine's NATS (with JetStream), default max_payload.
const NATS: &str = "nats://127.0.0.1:4222";
const NATS_ADDR: &str = "127.0.0.1:4222";
const NATS_FIX: &str = "start it: start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
                        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";
/// The suite's NATS (tests/nats/nats.conf).
const SUITE_ADDR: &str = "127.0.0.1:4223";
const SUITE_FIX: &str = "run scripts/brokers.sh (or: nats-server -c tests/nats/nats.conf)";
const SUITE_PID_FILE: &str = "/tmp/switchboard-nats-4223.pid";

switchboard_conformance! {
    url: "nats://127.0.0.1:4223",
    broker: "NATS (tests/nats/nats.conf) on 127.0.0.1:4223",
    fix: SUITE_FIX,
    restart: restart_suite_nats,
}

fn conf_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nats/nats.conf")
}

async fn accepts(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Stops the suite's nats-server (by the pid in its pid file) and starts it again.
async fn restart_suite_nats() {
    let pid = std::fs::read_to_string(SUITE_PID_FILE)
        .unwrap_or_else(|e| panic!("{SUITE_PID_FILE}: {e}; was the server started with tests/nats/nats.conf?"));
    let pid = pid.trim().to_owned();
    let status = std::process::Command::new("kill").arg(&pid).status().unwrap();
    assert!(status.success(), "kill {pid}");
    for _ in 0..100 {
        if !accepts(SUITE_ADDR).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!accepts(SUITE_ADDR).await, "nats-server on {SUITE_ADDR} did not stop");
    // The broker stays down for a moment, as a real outage would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // `setsid -f`: the broker runs in its own session, not as this test's child.
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
    let started = std::process::Command::new("setsid")
        .arg("-f")
        .arg(bin)
        .arg("-c")
        .arg(conf_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("setsid runs");
    assert!(
        started.success(),
        "setsid -f nats-server -c tests/nats/nats.conf: {started}"
    );
    for _ in 0..100 {
        if accepts(SUITE_ADDR).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nats-server on {SUITE_ADDR} did not come back");
}

/// True when the machine's NATS answers; otherwise fails under CI or skips loudly.
async fn nats_up() -> bool {
    let up = accepts(NATS_ADDR).await;
    if !up {
        missing(&format!("NATS on {NATS_ADDR}"), NATS_FIX);
    }
    up
}

/// Tests that run servers on 4222 (ours or NestJS's) take turns: two servers of the same
/// subjects would both answer, and `from_registry` serves this file's handlers too.
static ON_4222: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serve_common(url: &str) -> switchboard::RunningServer {
    Microservice::from_registry().listen(url).start().await.unwrap()
}

async fn client(url: &str) -> Client {
    Client::builder(url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// A raw NATS protocol client, to see and send exact bytes.

struct RawNats {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

#[derive(Debug)]
struct RawMsg {
    subject: String,
    reply: Option<String>,
    /// The header block (`NATS/1.0…`) of an HMSG.
    headers: Option<String>,
    payload: Vec<u8>,
}

impl RawMsg {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap()
    }
}

impl RawNats {
    async fn connect(addr: &str) -> RawNats {
        let (rd, wr) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut raw = RawNats {
            rd: BufReader::new(rd),
            wr,
        };
        let info = raw.line().await;
        assert!(info.starts_with("INFO "), "{info}");
        raw.send(
            "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1}\r\nPING\r\n",
        )
        .await;
        raw.sync().await;
        raw
    }

    async fn send(&mut self, s: impl AsRef<[u8]>) {
        self.wr.write_all(s.as_ref()).await.unwrap();
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.rd.read_line(&mut line))
            .await
            .expect("the NATS server answers")
            .unwrap();
        line.trim_end().to_owned()
    }

    /// Waits for the PONG to a PING: everything sent before has been processed.
    async fn sync(&mut self) {
        loop {
            let l = self.line().await;
            if l == "PONG" {
                return;
            }
            assert!(l == "+OK" || l.starts_with("INFO"), "unexpected: {l}");
        }
    }

    async fn ping(&mut self) {
        self.send("PING\r\n").await;
        self.sync().await;
    }

    /// The next MSG or HMSG, within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<RawMsg> {
        tokio::time::timeout(wait, self.next_msg()).await.ok()
    }

    async fn next_msg(&mut self) -> RawMsg {
        loop {
            let l = self.line().await;
            let parts: Vec<&str> = l.split(' ').collect();
            match parts[0] {
                "PING" => self.send("PONG\r\n").await,
                "MSG" => {
                    let (reply, size) = match parts.len() {
                        4 => (None, parts[3]),
                        _ => (Some(parts[3].to_owned()), parts[4]),
                    };
                    let payload = self.read_exact(size.parse().unwrap()).await;
                    return RawMsg {
                        subject: parts[1].to_owned(),
                        reply,
                        headers: None,
                        payload,
                    };
                }
                "HMSG" => {
                    let (reply, hlen, tlen) = match parts.len() {
                        5 => (None, parts[3], parts[4]),
                        _ => (Some(parts[3].to_owned()), parts[4], parts[5]),
                    };
                    let (hlen, tlen): (usize, usize) = (hlen.parse().unwrap(), tlen.parse().unwrap());
                    let all = self.read_exact(tlen).await;
                    return RawMsg {
                        subject: parts[1].to_owned(),
                        reply,
                        headers: Some(String::from_utf8(all[..hlen].to_vec()).unwrap()),
                        payload: all[hlen..].to_vec(),
                    };
                }
                _ => {}
            }
        }
    }

    async fn read_exact(&mut self, size: usize) -> Vec<u8> {
        let mut buf = vec![0; size + 2];
        self.rd.read_exact(&mut buf).await.unwrap();
        buf.truncate(size);
        buf
    }

    async fn publish(&mut self, subject: &str, reply: Option<&str>, payload: &[u8]) {
        let head = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        self.send(head).await;
        self.send(payload).await;
        self.send("\r\n").await;
    }

    async fn hpublish(&mut self, subject: &str, reply: &str, headers: &str, payload: &[u8]) {
        let h = format!("NATS/1.0\r\n{headers}\r\n");
        self.send(format!(
            "HPUB {subject} {reply} {} {}\r\n{h}",
            h.len(),
            h.len() + payload.len()
        ))
        .await;
        self.send(payload).await;
        self.send("\r\n").await;
    }

    /// A request/reply through a private inbox; returns the first reply.
    async fn request(&mut self, subject: &str, payload: &[u8]) -> RawMsg {
        let inbox = format!("_INBOX.raw{}", std::process::id());
        self.send(format!("SUB {inbox} 999\r\n")).await;
        self.publish(subject, Some(&inbox), payload).await;
        let msg = self.next(Duration::from_secs(10)).await.expect("a reply");
        self.send("UNSUB 999\r\n").await;
        msg
    }
}

// ---------------------------------------------------------------------------------------
// Wire format.

/// Our server answers a raw NATS request with NestJS's exact reply bytes, published to the
/// reply subject without headers; headers reach the handler; NestJS "external" messages
/// are events; non-JSON does not take the server down.
#[tokio::test]
async fn server_speaks_nestjs_bytes() {
    if !nats_up().await {
        return;
    }
    let _turn = ON_4222.lock().await;
    let server = serve_common(NATS).await;
    let mut raw = RawNats::connect(NATS_ADDR).await;

    let r = raw
        .request("echo", br#"{"pattern":"echo","data":{"q":"raw"},"id":"raw-1"}"#)
        .await;
    assert!(r.headers.is_none(), "replies carry no headers: {r:?}");
    assert_eq!(r.text(), r#"{"response":{"q":"raw"},"isDisposed":true,"id":"raw-1"}"#);
    // Routed by subject, as NestJS does; the body's pattern is not consulted.
    let r = raw
        .request(
            r#"{"cmd":"sum"}"#,
            br#"{"pattern":{"cmd":"sum"},"data":[1,2,3],"id":"432dcc70d56f5c497ed7f"}"#,
        )
        .await;
    assert_eq!(
        r.text(),
        r#"{"response":6,"isDisposed":true,"id":"432dcc70d56f5c497ed7f"}"#
    );
    let r = raw
        .request("rpc_string", br#"{"pattern":"rpc_string","data":{},"id":"e1"}"#)
        .await;
    assert_eq!(
        r.text(),
        r#"{"err":{"status":"error","message":"bad thing"},"isDisposed":true,"id":"e1"}"#
    );

    // A multi-value reply: one message per value, completion merged into the last.
    let inbox = "_INBOX.rawstream";
    raw.send(format!("SUB {inbox} 7\r\n")).await;
    raw.publish("stream", Some(inbox), br#"{"pattern":"stream","data":{},"id":"s1"}"#)
        .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            raw.next(Duration::from_secs(10))
                .await
                .expect("a stream packet")
                .text()
                .to_owned(),
        );
    }
    assert_eq!(
        got,
        [
            r#"{"response":1,"id":"s1"}"#,
            r#"{"response":2,"id":"s1"}"#,
            r#"{"response":3,"isDisposed":true,"id":"s1"}"#
        ]
    );
    raw.send("UNSUB 7\r\n").await;

    // NATS headers are the handler's context headers.
    raw.send("SUB _INBOX.rawmeta 8\r\n").await;
    raw.hpublish(
        "meta",
        "_INBOX.rawmeta",
        "x-trace: abc\r\nx-version: 1.0.0\r\n",
        br#"{"pattern":"meta","data":{},"id":"m1"}"#,
    )
    .await;
    let r = raw.next(Duration::from_secs(10)).await.unwrap();
    let v: Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(v["response"], json!({"x-trace": "abc", "x-version": "1.0.0"}));
    raw.send("UNSUB 8\r\n").await;

    // JSON without pattern/data is an event for the subject's handlers, with the whole
    // object as data, and gets no reply (NestJS's "external" message).
    let marker = format!("bare-{}", std::process::id());
    raw.send("SUB _INBOX.rawbare 9\r\n").await;
    let bare = json!({"marker": marker}).to_string();
    raw.publish("evt", Some("_INBOX.rawbare"), bare.as_bytes()).await;
    let c = client(NATS).await;
    assert_eq!(await_events(&c, &marker, 2).await, 2, "both evt listeners ran");

    // Not JSON: NestJS crashes here. We answer with an error packet and keep serving.
    raw.publish("echo", Some("_INBOX.rawbare"), b"notjson").await;
    let r = raw.next(Duration::from_secs(10)).await.expect("an error reply");
    let v: Value = serde_json::from_slice(&r.payload).unwrap();
    assert!(v["err"]["message"].as_str().unwrap().contains("invalid JSON"), "{v}");
    assert_eq!(v["isDisposed"], json!(true));
    raw.publish("evt", None, b"\xff\xfe not utf-8 either").await;
    raw.ping().await;
    assert_eq!(
        c.send_raw::<Value>("echo", json!({"still": "up"})).await.unwrap(),
        json!({"still": "up"})
    );
    // A request without a reply subject runs and is dropped; an event to a request-only
    // route runs that handler, as NestJS does.
    raw.publish(
        "record",
        None,
        br#"{"pattern":"record","data":{"marker":"noreply-m"},"id":"x"}"#,
    )
    .await;
    raw.publish("record", None, br#"{"pattern":"record","data":{"marker":"noreply-m"}}"#)
        .await;
    assert_eq!(await_events(&c, "noreply-m", 2).await, 2);
    c.close().await;
    server.shutdown().await.unwrap();
}

/// Our client's requests and events are NestJS's bytes on NestJS's subjects; a caller's
/// headers go as NATS headers (HPUB), Switchboard's own (the call's time left) in the packet's
/// `metadata`; replies come back to a per-request inbox.
#[tokio::test]
async fn client_speaks_nestjs_bytes() {
    if !nats_up().await {
        return;
    }
    let mut raw = RawNats::connect(NATS_ADDR).await;
    let subject = format!("sb_wire_{}", std::process::id());
    raw.send(format!("SUB {subject} 1\r\nSUB {{\"cmd\":\"sb_wire\"}} 2\r\n"))
        .await;
    raw.ping().await;
    let c = client(NATS).await;

    let call = {
        let (c, subject) = (c.clone(), subject.clone());
        tokio::spawn(async move { c.send_raw::<Value>(subject.as_str(), json!({"a": 1})).await })
    };
    let req = raw.next(Duration::from_secs(10)).await.expect("the request");
    assert_eq!(req.subject, subject);
    // No caller headers: a plain PUB, the time the call has left in the packet.
    assert_eq!(req.headers, None);
    let body: Value = serde_json::from_slice(&req.payload).unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 21);
    assert!(
        id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id}"
    );
    let left = body["metadata"]["sb-timeout-ms"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(left.parse::<u64>().is_ok_and(|ms| ms > 0 && ms <= 30_000), "{body}");
    assert_eq!(
        req.text(),
        format!(r#"{{"pattern":"{subject}","data":{{"a":1}},"metadata":{{"sb-timeout-ms":"{left}"}},"id":"{id}"}}"#)
    );
    let inbox = req.reply.expect("a reply subject");
    assert!(inbox.starts_with("_INBOX."), "{inbox}");
    // Two packets: a value, then completion. A packet for another id is ignored.
    raw.publish(&inbox, None, br#"{"response":1,"id":"000000000000000000000"}"#)
        .await;
    raw.publish(
        &inbox,
        None,
        format!(r#"{{"response":{{"ok":true}},"id":"{id}"}}"#).as_bytes(),
    )
    .await;
    raw.publish(&inbox, None, format!(r#"{{"isDisposed":true,"id":"{id}"}}"#).as_bytes())
        .await;
    assert_eq!(call.await.unwrap().unwrap(), json!({"ok": true}));

    // Object patterns: the subject is the normalised route, the body has the pattern.
    let call = {
        let c = c.clone();
        tokio::spawn(async move {
            c.send_raw::<Value>(json!({"cmd": "sb_wire"}), json!(null))
                .header("x-trace", "abc")
                .await
        })
    };
    let req = raw.next(Duration::from_secs(10)).await.expect("the request");
    assert_eq!(req.subject, r#"{"cmd":"sb_wire"}"#);
    let headers = req.headers.clone().expect("HPUB");
    assert!(
        headers.starts_with("NATS/1.0\r\n") && headers.contains("x-trace: abc\r\n") && !headers.contains("sb-"),
        "{headers:?}"
    );
    let body: Value = serde_json::from_slice(&req.payload).unwrap();
    assert_eq!(body["pattern"], json!({"cmd": "sb_wire"}));
    assert!(body["metadata"].get("sb-timeout-ms").is_some(), "{body}");
    assert!(body["metadata"].get("x-trace").is_none(), "{body}");
    let id = body["id"].as_str().unwrap();
    raw.publish(
        req.reply.as_deref().unwrap(),
        None,
        format!(r#"{{"err":{{"status":"error","message":"nope"}},"isDisposed":true,"id":"{id}"}}"#).as_bytes(),
    )
    .await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.as_rpc().unwrap().message(), Some("nope"));

    // An event: no id, no reply subject.
    c.emit_raw(subject.as_str(), "plain").await.unwrap();
    let ev = raw.next(Duration::from_secs(10)).await.expect("the event");
    assert_eq!(ev.reply, None);
    assert_eq!(ev.text(), format!(r#"{{"pattern":"{subject}","data":"plain"}}"#));
    c.close().await;
}

/// Nobody subscribed: the NATS server's 503 no-responders status fails the call at once
/// with `NoHandler` naming the pattern (NestJS: "Empty response. There are no subscribers").
#[tokio::test]
async fn no_responders_is_no_handler_at_once() {
    if !nats_up().await {
        return;
    }
    let c = Client::builder(NATS)
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = c.send_raw::<Value>("sb_nobody_listens", json!(1)).await.unwrap_err();
    assert!(
        matches!(&err, Error::NoHandler { pattern, .. } if pattern == "sb_nobody_listens"),
        "{err}"
    );
    // Far below the 30 s deadline: the broker said so, nobody waited for a timeout.
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    c.close().await;
}

/// A message over the broker's max_payload is a clear error, not a hang, both for a request
/// and for a reply.
#[tokio::test]
async fn oversized_messages_are_clear_errors() {
    if !nats_up().await {
        return;
    }
    let _turn = ON_4222.lock().await;
    let server = serve_common(NATS).await;
    let c = client(NATS).await;
    let err = c.send(LEN, "x".repeat(2 << 20)).await.unwrap_err();
    assert!(
        matches!(&err, Error::TooLarge { context, size, limit } if context.contains("max_payload") && size > limit),
        "{err}"
    );
    let err = c.emit_raw("evt", "x".repeat(2 << 20)).await.unwrap_err();
    assert!(err.to_string().contains("max_payload"), "{err}");
    // The request fits, its reply does not: the caller gets an error reply.
    let err = c.send(COUNT_TO_BYTES, 700_000).await.unwrap_err();
    assert!(
        err.as_rpc()
            .and_then(|e| e.message())
            .is_some_and(|m| m.contains("max_payload")),
        "{err}"
    );
    assert_eq!(c.send(LEN, "fits".to_string()).await.unwrap(), 4);
    c.close().await;
    server.shutdown().await.unwrap();
}

/// A reply about twice the size asked for (`n` characters of JSON-escaped text).
#[message_pattern("count_to_bytes")]
async fn count_to_bytes(n: usize) -> String {
    "\\".repeat(n)
}

/// A client whose broker is down fails at once with a connect error, not at its deadline.
#[tokio::test]
async fn unreachable_broker_fails_fast() {
    let c = Client::builder("nats://127.0.0.1:1")
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = c.send(ECHO, json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let Err(err) = Microservice::from_registry().listen("nats://127.0.0.1:1").start().await else {
        panic!("no server without its broker");
    };
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let err = Client::connect("nats://127.0.0.1:4222?qeue=x").await.unwrap_err();
    assert!(err.to_string().contains("unknown query parameter `qeue`"), "{err}");
}

/// Shutdown stops taking messages, lets the handler in flight finish and send its reply.
#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    if !nats_up().await {
        return;
    }
    let _turn = ON_4222.lock().await;
    let server = serve_common(NATS).await;
    let c = client(NATS).await;
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.send(DELAY, 500).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.shutdown().await.unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), 500, "the call in flight got its answer");
    let err = c.send(DELAY, 1).await.unwrap_err();
    assert!(
        matches!(err, Error::NoHandler { .. }),
        "nobody serves after shutdown: {err}"
    );
    c.close().await;
}

// ---------------------------------------------------------------------------------------
// Load balancing: queue groups.

/// (server thread, item) for every `lb_work` call handled.
static LB_SEEN: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

#[message_pattern("sb_lb_work")]
async fn lb_work(i: u64) -> u64 {
    let me = std::thread::current().name().unwrap_or("?").to_owned();
    LB_SEEN.lock().unwrap().push((me, i));
    i
}

#[event_pattern("sb_fanout_evt")]
async fn fanout_evt(i: u64) {
    let me = std::thread::current().name().unwrap_or("?").to_owned();
    LB_SEEN.lock().unwrap().push((me, 1_000_000 + i));
}

/// A server on its own single-threaded runtime on a thread named `name`, so a handler
/// knows which instance it runs in. Stops when the sender is dropped.
fn instance(name: &str, url: String) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Microservice::new()
                    .handler(LB_WORK)
                    .handler(FANOUT_EVT)
                    .listen(url)
                    .start()
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                let _ = stopped.await;
                server.shutdown().await.unwrap();
            })
        })
        .unwrap();
    ready_rx.recv_timeout(Duration::from_secs(20)).expect("instance starts");
    stop
}

/// Two servers in one queue group: each of 200 requests is handled exactly once, and both
/// servers take part.
#[tokio::test]
async fn queue_group_handles_each_request_once() {
    if !nats_up().await {
        return;
    }
    let _turn = ON_4222.lock().await;
    LB_SEEN.lock().unwrap().clear();
    let url = format!("{NATS}?queue=sb-lb-{}", std::process::id());
    let a = instance("lb-a", url.clone());
    let b = instance("lb-b", url.clone());
    let c = client(&url).await;
    let calls = (0..200u64).map(|i| {
        let c = c.clone();
        async move { c.send(LB_WORK, i).await }
    });
    for (i, r) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as u64);
    }
    drop((a, b));
    let seen = LB_SEEN.lock().unwrap().clone();
    let mut per_item: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_server: HashMap<String, usize> = HashMap::new();
    for (server, i) in &seen {
        *per_item.entry(*i).or_default() += 1;
        *per_server.entry(server.clone()).or_default() += 1;
    }
    assert_eq!(per_item.len(), 200);
    assert!(
        per_item.values().all(|&n| n == 1),
        "handled more than once: {per_item:?}"
    );
    assert_eq!(per_server.len(), 2, "both servers take part: {per_server:?}");
    c.close().await;
}

/// Without a queue group (NestJS's default) every replica gets every event.
#[tokio::test]
async fn without_queue_every_replica_gets_every_event() {
    if !nats_up().await {
        return;
    }
    let _turn = ON_4222.lock().await;
    LB_SEEN.lock().unwrap().clear();
    let a = instance("fan-a", NATS.to_owned());
    let b = instance("fan-b", NATS.to_owned());
    let c = client(NATS).await;
    for i in 0..20u64 {
        c.emit(FANOUT_EVT, i).await.unwrap();
    }
    let mut n = 0;
    for _ in 0..200 {
        n = LB_SEEN.lock().unwrap().len();
        if n >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((a, b));
    assert_eq!(n, 40, "20 events × 2 replicas");
    let seen = LB_SEEN.lock().unwrap().clone();
    for server in ["fan-a", "fan-b"] {
        assert_eq!(
            seen.iter().filter(|(s, _)| s == server).count(),
            20,
            "{server}: {seen:?}"
        );
    }
    c.close().await;
}

// ---------------------------------------------------------------------------------------
// Durable events: JetStream.

/// Appends each event's number to the file named by `SB_NATS_DURABLE_FILE` (when set), one
/// at a time and slowly, so that a batch takes a while to consume.
#[event_pattern("sb_durable_evt")]
async fn durable_evt(n: u64) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let Some(path) = std::env::var_os("SB_NATS_DURABLE_FILE") else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{n}").unwrap();
}

const DURABLE_STREAM: &str = "SB_TEST_DURABLE";

fn durable_url() -> String {
    format!("{NATS}?jetstream={DURABLE_STREAM}&durable=sb-kill-test&ack_wait_ms=2000")
}

/// Deletes a JetStream stream through the JetStream API (a request on `$JS.API…`).
async fn delete_stream(name: &str) {
    delete_stream_at(NATS_ADDR, name).await;
}

async fn delete_stream_at(addr: &str, name: &str) {
    let mut raw = RawNats::connect(addr).await;
    let r = raw.request(&format!("$JS.API.STREAM.DELETE.{name}"), b"").await;
    let v: Value = serde_json::from_slice(&r.payload).unwrap_or(Value::Null);
    assert!(
        v["success"] == json!(true) || v["error"]["code"] == json!(404),
        "deleting stream {name}: {v}"
    );
}

/// `num_pending` (not yet delivered) and `num_ack_pending` (delivered, not acked), summed
/// over a stream's JetStream consumers (the server makes one per route), from the JetStream API.
async fn stream_backlog(stream: &str) -> (u64, u64) {
    let mut raw = RawNats::connect(NATS_ADDR).await;
    let r = raw.request(&format!("$JS.API.CONSUMER.LIST.{stream}"), b"").await;
    let v: Value = serde_json::from_slice(&r.payload).unwrap_or(Value::Null);
    let consumers = v["consumers"]
        .as_array()
        .unwrap_or_else(|| panic!("no consumer list: {v}"));
    assert!(!consumers.is_empty(), "the stream has no consumer: {v}");
    let sum = |k: &str| consumers.iter().map(|c| c[k].as_u64().unwrap_or(u64::MAX)).sum::<u64>();
    (sum("num_pending"), sum("num_ack_pending"))
}

/// Waits (up to 3 s: acks follow the handlers at once) until the stream's consumers have
/// nothing pending or unacked; returns what is left.
async fn backlog_drains(stream: &str) -> (u64, u64) {
    let mut left = (u64::MAX, u64::MAX);
    for _ in 0..30 {
        left = stream_backlog(stream).await;
        if left == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    left
}

/// The consumer process of `durable_events_survive_a_killed_consumer` (this test binary run
/// again); does nothing when run directly.
#[tokio::test]
#[ignore = "run by durable_events_survive_a_killed_consumer as a child process"]
async fn durable_consumer_child_process() {
    if std::env::var_os("SB_NATS_DURABLE_FILE").is_none() {
        return;
    }
    let _server = Microservice::new()
        .handler(DURABLE_EVT)
        .listen(durable_url())
        .start()
        .await
        .unwrap();
    println!("READY");
    std::future::pending::<()>().await;
}

async fn consumer_process(file: &std::path::Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "durable_consumer_child_process", "--ignored", "--nocapture"])
        .env("SB_NATS_DURABLE_FILE", file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the consumer starts within 30 s")
            .unwrap()
            .expect("the consumer prints READY");
        if line.trim() == "READY" {
            break;
        }
    }
    // Keep reading, so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

fn handled(file: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// 1,000 durable events; the consuming process is killed (SIGKILL) in the middle of the
/// batch and started again: every event is handled at least once, none lost.
#[tokio::test]
async fn durable_events_survive_a_killed_consumer() {
    if !nats_up().await {
        return;
    }
    let _turn = ON_4222.lock().await;
    delete_stream(DURABLE_STREAM).await;
    let file = std::env::temp_dir().join(format!("sb-nats-durable-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&file);

    let mut first = consumer_process(&file).await;
    let c = client(&durable_url()).await;
    for n in 0..1000u64 {
        // Resolves once JetStream has stored the event.
        c.emit(DURABLE_EVT, n).await.unwrap();
    }
    for _ in 0..600 {
        if handled(&file).len() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().await.unwrap();
    let at_kill = handled(&file);
    assert!(
        at_kill.len() >= 200 && at_kill.len() < 1000,
        "the consumer was killed mid-batch ({} handled)",
        at_kill.len()
    );

    let mut second = consumer_process(&file).await;
    let mut missing_events = Vec::new();
    for _ in 0..600 {
        let seen: std::collections::HashSet<u64> = handled(&file).into_iter().collect();
        missing_events = (0..1000).filter(|n| !seen.contains(n)).collect();
        if missing_events.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backlog = backlog_drains(DURABLE_STREAM).await;
    second.kill().await.unwrap();
    let total = handled(&file).len();
    eprintln!(
        "handled {} before the kill, {total} in all ({} redelivered)",
        at_kill.len(),
        total - 1000
    );
    assert!(missing_events.is_empty(), "lost events: {missing_events:?}");
    assert_eq!(backlog, (0, 0), "every event acked: (pending, unacked)");
    c.close().await;
    delete_stream(DURABLE_STREAM).await;
    let _ = std::fs::remove_file(&file);
}

/// How often each `sb_flaky_evt` number was delivered.
static FLAKY: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Fails the first delivery of every event: odd ones by panicking.
#[event_pattern("sb_flaky_evt")]
async fn flaky_evt(n: u64) -> RpcResult<()> {
    let first = {
        let mut seen = FLAKY.lock().unwrap();
        seen.push(n);
        seen.iter().filter(|&&m| m == n).count() == 1
    };
    match first {
        true if n % 2 == 1 => panic!("first delivery panics"),
        true => Err(RpcError::new("first delivery fails")),
        false => Ok(()),
    }
}

/// A listener that fails or panics gets the event again (nak); once it succeeds it is acked: the
/// consumer has nothing left unacked, and nothing comes again after twice the ack wait. A
/// client without a stream covering the subject gets a clear error.
#[tokio::test]
async fn failed_durable_events_are_redelivered() {
    if !nats_up().await {
        return;
    }
    let _turn = ON_4222.lock().await;
    let stream_name = "SB_TEST_FLAKY";
    delete_stream(stream_name).await;
    let url = format!("{NATS}?jetstream={stream_name}&durable=flaky&ack_wait_ms=1000");
    let server = Microservice::new()
        .handler(FLAKY_EVT)
        .listen(&url)
        .start()
        .await
        .unwrap();
    let c = client(&url).await;
    // Not JSON: logged and terminated (never redelivered), and nothing else is disturbed.
    let mut raw = RawNats::connect(NATS_ADDR).await;
    raw.publish("sb_flaky_evt", None, b"notjson").await;
    raw.ping().await;
    for n in 0..5u64 {
        c.emit(FLAKY_EVT, n).await.unwrap();
    }
    for _ in 0..200 {
        if FLAKY.lock().unwrap().len() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let backlog = backlog_drains(stream_name).await;
    // Past twice the ack wait: an event delivered and never acked would have come again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(backlog, (0, 0), "every event acked: (pending, unacked)");
    let mut seen = FLAKY.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4],
        "each event twice: failed, then acked"
    );
    let err = c.emit_raw("sb_no_stream_here", 1).await.unwrap_err();
    assert!(err.to_string().contains("JetStream"), "{err}");
    c.close().await;
    server.shutdown().await.unwrap();
    delete_stream(stream_name).await;
}

/// Events seen by `restart_evt`.
static RESTART_SEEN: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[event_pattern("sb_restart_evt")]
async fn restart_evt(n: u64) {
    RESTART_SEEN.lock().unwrap().push(n);
}

/// The broker restarts between two batches of durable events: the server's JetStream
/// consumer resumes, the client reconnects, and no event is lost (on the suite's broker,
/// which keeps JetStream data on disk).
#[tokio::test]
async fn durable_events_survive_a_broker_restart() {
    if !accepts(SUITE_ADDR).await {
        missing(&format!("NATS (tests/nats/nats.conf) on {SUITE_ADDR}"), SUITE_FIX);
        return;
    }
    let _broker = common::conformance::exclusive().await;
    let stream_name = "SB_TEST_RESTART";
    delete_stream_at(SUITE_ADDR, stream_name).await;
    let url = format!("nats://{SUITE_ADDR}?jetstream={stream_name}&durable=restart&ack_wait_ms=2000");
    let server = Microservice::new()
        .handler(RESTART_EVT)
        .listen(&url)
        .start()
        .await
        .unwrap();
    let c = client(&url).await;
    for n in 0..100u64 {
        c.emit(RESTART_EVT, n).await.unwrap();
    }
    restart_suite_nats().await;
    let back = tokio::time::Instant::now() + Duration::from_secs(30);
    for n in 100..200u64 {
        // Fails fast while the client reconnects; the caller retries, as an app would.
        while let Err(e) = c.emit(RESTART_EVT, n).await {
            assert!(
                tokio::time::Instant::now() < back,
                "emit still fails 30 s after the restart: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut lost = Vec::new();
    for _ in 0..300 {
        let seen: std::collections::HashSet<u64> = RESTART_SEEN.lock().unwrap().iter().copied().collect();
        lost = (0..200).filter(|n| !seen.contains(n)).collect();
        if lost.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lost.is_empty(), "lost events: {lost:?}");
    c.close().await;
    server.shutdown().await.unwrap();
    delete_stream_at(SUITE_ADDR, stream_name).await;
}

// ---------------------------------------------------------------------------------------
// NestJS interop (tests/nestjs, common/nest.rs), on 4222.

/// What NATS on 4222 does in the shared scenarios: its default 1 MiB max_payload leaves
/// room for 512 KiB of data and the envelope; the broker answers no-responders for an
/// unknown pattern at once; NestJS 12's body metadata reaches our handlers, but NestJS reads
/// no NATS headers, where our client puts its metadata.
const NATS_PEER: nest::Transport = nest::Transport {
    payload: 1 << 19,
    unknown: nest::Unknown::NoResponders,
    metadata_from_nest: true,
    metadata_to_nest: false,
    nest_client_concurrent: true,
    kafka_quirks: false,
};

async fn nest_client_calls_our_server(version: u8) {
    if !nats_up().await || !nest::nest_installed(version, NATS) {
        return;
    }
    let _turn = ON_4222.lock().await;
    nest::nest_client_calls_our_server(version, NATS, &NATS_PEER).await;
}

async fn our_client_calls_nest_server(version: u8) {
    if !nats_up().await || !nest::nest_installed(version, NATS) {
        return;
    }
    let _turn = ON_4222.lock().await;
    let nest = nest::NestServer::start(version, NATS).await;
    nest::our_client_calls_nest_server(&nest, &NATS_PEER).await;
}

nest_interop_tests! {
    nest_client: nest_client_calls_our_server,
    our_client: our_client_calls_nest_server,
}
