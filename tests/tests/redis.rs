#![cfg(feature = "redis")]
//! The Redis transport against real Redis: NestJS's exact bytes on the channels, the
//! client and server behaviours around them (no-handler, fan-out, external messages,
//! restarts, shutdown), and interop with NestJS 11 and 12.
//!
//! Tests other than the shared suite run against a private `redis-server` started for the
//! test on a free port, so that their subscriptions and restarts never meet the suite's
//! server (pub/sub channels are global to a Redis instance).

mod common;

switchboard_conformance! {
    url: "redis://127.0.0.1:6379",
    broker: "Redis on 127.0.0.1:6379",
    fix: "run scripts/brokers.sh",
    restart: restart_system_redis,
}

/// Stops the machine's Redis on 6379 and starts it again (environment.md's command), then
/// waits until it answers.
async fn restart_system_redis() {
    let down = Command::new("redis-cli")
        .args(["-p", "6379", "shutdown", "nosave"])
        .output()
        .await
        .expect("redis-cli runs");
    eprintln!("redis-cli shutdown: {}", String::from_utf8_lossy(&down.stdout).trim());
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        // The port may still be held for a moment after the shutdown returns.
        let _ = Command::new("redis-server")
            .args(["--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379"])
            .args(["--save", "", "--appendonly", "no", "--dir", "/var/lib/redis"])
            .args(["--logfile", "/var/log/redis/ci.log"])
            .status()
            .await;
        if wait_ready(6379, Duration::from_secs(2)).await {
            return;
        }
        assert!(Instant::now() < until, "Redis on 6379 did not come back");
    }
}

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use switchboard::prelude::*;
use switchboard::{Client, Error, Microservice, RunningServer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

// ---------------------------------------------------------------------------------------
// A private redis-server, and a bare RESP connection to look at the bytes.

/// A `redis-server` of our own on a free port; killed when dropped.
struct PrivateRedis {
    child: Option<Child>,
    port: u16,
}

impl PrivateRedis {
    /// Starts one, or reports it missing (fails under CI) and returns `None`.
    async fn start() -> Option<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = PrivateRedis { child: None, port };
        if r.spawn().await {
            Some(r)
        } else {
            missing("redis-server (to start a private Redis)", "run scripts/brokers.sh");
            None
        }
    }

    async fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--loglevel", "warning"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        wait_ready(self.port, Duration::from_secs(10)).await
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    async fn restart(&mut self) {
        self.stop().await;
        assert!(self.spawn().await, "private redis-server came back");
    }

    async fn raw(&self) -> Resp {
        Resp::connect(self.port).await
    }
}

/// Waits until Redis on `port` answers PING.
async fn wait_ready(port: u16, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(conn) = TcpStream::connect(("127.0.0.1", port)).await {
            let mut r = Resp::from_stream(conn);
            r.send(&["PING"]).await;
            if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(1), r.read()).await
                && v == R::Simple("PONG".into())
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A RESP2 value.
#[derive(Debug, Clone, PartialEq)]
enum R {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<R>),
}

impl R {
    fn text(&self) -> String {
        match self {
            R::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("not a bulk string: {other:?}"),
        }
    }
}

/// A hand-written RESP2 connection: what goes on the wire is exactly what we write.
struct Resp {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl Resp {
    async fn connect(port: u16) -> Resp {
        Resp::from_stream(TcpStream::connect(("127.0.0.1", port)).await.unwrap())
    }

    fn from_stream(s: TcpStream) -> Resp {
        let (r, w) = s.into_split();
        Resp {
            rd: BufReader::new(r),
            wr: w,
        }
    }

    async fn send_bytes(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.wr.write_all(&out).await.unwrap();
    }

    async fn send(&mut self, args: &[&str]) {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send_bytes(&args).await;
    }

    fn read(&mut self) -> futures_util::future::BoxFuture<'_, std::io::Result<R>> {
        Box::pin(async move {
            let mut line = String::new();
            if self.rd.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end_matches("\r\n");
            let (kind, rest) = line.split_at(1);
            Ok(match kind {
                "+" => R::Simple(rest.into()),
                "-" => R::Error(rest.into()),
                ":" => R::Int(rest.parse().unwrap()),
                "$" => {
                    let n: i64 = rest.parse().unwrap();
                    if n < 0 {
                        R::Bulk(None)
                    } else {
                        let mut buf = vec![0; n as usize + 2];
                        self.rd.read_exact(&mut buf).await?;
                        buf.truncate(n as usize);
                        R::Bulk(Some(buf))
                    }
                }
                "*" => {
                    let n: usize = rest.parse().unwrap();
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.read().await?);
                    }
                    R::Array(items)
                }
                other => panic!("unexpected RESP type {other:?}"),
            })
        })
    }

    async fn cmd(&mut self, args: &[&str]) -> R {
        self.send(args).await;
        self.read().await.unwrap()
    }

    /// SUBSCRIBE and wait for the acknowledgement.
    async fn subscribe(&mut self, channel: &str) {
        let ack = self.cmd(&["SUBSCRIBE", channel]).await;
        assert!(matches!(&ack, R::Array(a) if a[0].text() == "subscribe"), "{ack:?}");
    }

    /// The next pub/sub message: (channel, payload).
    async fn message(&mut self, within: Duration) -> (String, String) {
        let v = tokio::time::timeout(within, self.read())
            .await
            .expect("a message arrives in time")
            .unwrap();
        match v {
            R::Array(a) if a.len() == 3 && a[0].text() == "message" => (a[1].text(), a[2].text()),
            other => panic!("not a message: {other:?}"),
        }
    }

    async fn publish(&mut self, channel: &str, body: &str) -> i64 {
        match self.cmd(&["PUBLISH", channel, body]).await {
            R::Int(n) => n,
            other => panic!("PUBLISH answered {other:?}"),
        }
    }
}

async fn serve<S: Clone + Send + Sync + 'static>(url: &str, ms: Microservice<S>) -> RunningServer {
    ms.listen(url).start().await.expect("server starts")
}

async fn client(url: &str) -> Client {
    Client::builder(url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("client connects")
}

// ---------------------------------------------------------------------------------------
// Handlers of this binary's own tests (unique patterns, so the shared server's handlers
// are not disturbed).

/// Events seen by `redis_raw_evt`, for the external-message test.
static RAW_SEEN: Mutex<Vec<Value>> = Mutex::new(Vec::new());

#[event_pattern("redis_raw_evt")]
async fn redis_raw_evt(data: Value) {
    RAW_SEEN.lock().unwrap().push(data);
}

/// What the replicas of one test handled: (replica, message), each replica a server on a
/// thread of its own named after it (names unique to the test, so that the servers of other
/// tests running alongside, which serve the same handlers, count for nothing here).
static HANDLED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn handled(what: &str) {
    let me = std::thread::current().name().unwrap_or_default().to_owned();
    HANDLED.lock().unwrap().push((me, what.to_owned()));
}

/// How many `what` the replica `name` handled.
fn handled_by(name: &str, what: &str) -> usize {
    let all = HANDLED.lock().unwrap();
    all.iter().filter(|(r, w)| r == name && w == what).count()
}

#[message_pattern("redis_fanout")]
async fn redis_fanout(n: u64) -> u64 {
    handled("call");
    n
}

#[event_pattern("redis_fanout_evt")]
async fn redis_fanout_evt(_n: u64) {
    handled("event");
}

/// A server of every handler on `url`, on its own single-threaded runtime on a thread named
/// `name`; stops when the returned sender is dropped.
fn replica(name: &str, url: String) -> tokio::sync::oneshot::Sender<()> {
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
                let server = serve(&url, Microservice::from_registry()).await;
                ready_tx.send(()).unwrap();
                let _ = stopped.await;
                server.shutdown().await.unwrap();
            })
        })
        .unwrap();
    ready_rx.recv_timeout(Duration::from_secs(20)).expect("replica starts");
    stop
}

// ---------------------------------------------------------------------------------------
// Our server, seen from the wire.

#[tokio::test]
async fn our_server_answers_nestjs_packets_with_nestjs_bytes() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let s = serve(&redis.url(), Microservice::from_registry()).await;
    let mut sub = redis.raw().await;
    let mut publ = redis.raw().await;

    sub.subscribe(r#"{"cmd":"sum"}.reply"#).await;
    let n = publ
        .publish(
            r#"{"cmd":"sum"}"#,
            r#"{"pattern":{"cmd":"sum"},"data":[1,2,3],"id":"416713620c9dc6ce61ad4"}"#,
        )
        .await;
    assert_eq!(n, 1, "the server is subscribed to the route's literal channel");
    assert_eq!(
        sub.message(Duration::from_secs(5)).await,
        (
            r#"{"cmd":"sum"}.reply"#.to_string(),
            r#"{"response":6,"isDisposed":true,"id":"416713620c9dc6ce61ad4"}"#.to_string()
        )
    );

    // A multi-value reply: one PUBLISH per value, completion merged into the last.
    sub.subscribe("stream.reply").await;
    publ.publish("stream", r#"{"pattern":"stream","data":{},"id":"s1"}"#)
        .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.message(Duration::from_secs(5)).await.1);
    }
    assert_eq!(
        got,
        [
            r#"{"response":1,"id":"s1"}"#,
            r#"{"response":2,"id":"s1"}"#,
            r#"{"response":3,"isDisposed":true,"id":"s1"}"#
        ]
    );

    // Errors, and ids of any JSON type echoed back verbatim.
    sub.subscribe("rpc_string.reply").await;
    publ.publish("rpc_string", r#"{"pattern":"rpc_string","data":{},"id":7}"#)
        .await;
    assert_eq!(
        sub.message(Duration::from_secs(5)).await.1,
        r#"{"err":{"status":"error","message":"bad thing"},"isDisposed":true,"id":7}"#
    );
    sub.subscribe("void_ret.reply").await;
    publ.publish("void_ret", r#"{"pattern":"void_ret","data":null,"id":"v"}"#)
        .await;
    assert_eq!(
        sub.message(Duration::from_secs(5)).await.1,
        r#"{"isDisposed":true,"id":"v"}"#
    );

    // The handler is chosen by the channel, as NestJS does, whatever the packet's pattern.
    sub.subscribe("echo.reply").await;
    publ.publish("echo", r#"{"pattern":"something else","data":"via channel","id":"c"}"#)
        .await;
    assert_eq!(
        sub.message(Duration::from_secs(5)).await.1,
        r#"{"response":"via channel","isDisposed":true,"id":"c"}"#
    );

    // v12's metadata reaches the handler's context.
    sub.subscribe("meta.reply").await;
    publ.publish(
        "meta",
        r#"{"pattern":"meta","data":{},"metadata":{"traceparent":"00-abc-def-01"},"id":"m"}"#,
    )
    .await;
    assert_eq!(
        sub.message(Duration::from_secs(5)).await.1,
        r#"{"response":{"traceparent":"00-abc-def-01"},"isDisposed":true,"id":"m"}"#
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn non_nestjs_messages_reach_event_listeners_and_garbage_breaks_nothing() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let s = serve(
        &redis.url(),
        Microservice::new().handler(REDIS_RAW_EVT).handler(REDIS_FANOUT),
    )
    .await;
    let mut publ = redis.raw().await;
    // NestJS's external-message fallback: not JSON -> the text; JSON that is not a packet
    // -> the value itself; both as events on the channel's pattern.
    publ.publish("redis_raw_evt", "plain text, not JSON").await;
    publ.publish("redis_raw_evt", r#"{"hello":"from a non-Nest producer"}"#)
        .await;
    publ.publish("redis_raw_evt", "[1,2,3]").await;
    publ.publish("redis_raw_evt", r#"{"pattern":"redis_raw_evt","data":{"nest":true}}"#)
        .await;
    // Broken input: invalid UTF-8, truncated JSON, a packet with a broken id, a big message.
    publ.send_bytes(&[b"PUBLISH", b"redis_fanout", b"\xff\xfe{\"pattern\""])
        .await;
    publ.read().await.unwrap();
    publ.publish("redis_fanout", r#"{"pattern":"redis_fanout","data":1,"id":"#)
        .await;
    publ.publish("redis_fanout", &format!(r#"{{"junk":"{}"}}"#, "x".repeat(4 << 20)))
        .await;
    let until = Instant::now() + Duration::from_secs(5);
    while RAW_SEEN.lock().unwrap().len() < 4 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = RAW_SEEN.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            json!("plain text, not JSON"),
            json!({"hello": "from a non-Nest producer"}),
            json!([1, 2, 3]),
            json!({"nest": true}),
        ]
    );
    // The server still answers.
    let c = client(&redis.url()).await;
    assert_eq!(c.send_raw::<u64>("redis_fanout", 5).await.unwrap(), 5);
    s.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Our client, seen from the wire (a hand-written peer plays the NestJS server).

#[tokio::test]
async fn our_client_sends_nestjs_bytes_after_subscribing_to_the_reply_channel() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let mut fake = redis.raw().await;
    fake.subscribe(r#"{"cmd":"sum"}"#).await;
    fake.subscribe("evt_wire").await;
    let mut publ = redis.raw().await;
    let c = client(&redis.url()).await;

    let call = tokio::spawn({
        let c = c.clone();
        async move {
            use futures_util::StreamExt;
            let replies = c
                .send_raw::<Vec<u32>>(json!({"cmd": "sum"}), [1, 2, 3])
                .stream()
                .await?;
            Ok::<_, Error>(replies.collect::<Vec<_>>().await)
        }
    });
    let (channel, body) = fake.message(Duration::from_secs(5)).await;
    assert_eq!(channel, r#"{"cmd":"sum"}"#);
    let v: Value = serde_json::from_str(&body).unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    // NestJS 12's packet; its `metadata` carries the time the call has left.
    let left = v["metadata"]["sb-timeout-ms"].as_str().unwrap_or_default().to_owned();
    assert!(left.parse::<u64>().is_ok_and(|ms| ms <= 15_000), "{body}");
    assert_eq!(
        body,
        format!(r#"{{"pattern":{{"cmd":"sum"}},"data":[1,2,3],"metadata":{{"sb-timeout-ms":"{left}"}},"id":"{id}"}}"#)
    );
    assert!(
        id.len() == 21 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "NestJS-style id: {id}"
    );
    // The reply channel was subscribed before the request was published.
    let numsub = publ.cmd(&["PUBSUB", "NUMSUB", r#"{"cmd":"sum"}.reply"#]).await;
    assert_eq!(
        numsub,
        R::Array(vec![R::Bulk(Some(br#"{"cmd":"sum"}.reply"#.to_vec())), R::Int(1)])
    );

    // Reply as NestJS does: intermediate values, then completion; foreign ids are ignored.
    let reply = r#"{"cmd":"sum"}.reply"#;
    publ.publish(reply, r#"{"response":[9],"id":"000000000000000000000"}"#)
        .await;
    publ.publish(reply, &format!(r#"{{"response":[1],"id":"{id}"}}"#)).await;
    publ.publish(reply, &format!(r#"{{"response":[2],"isDisposed":true,"id":"{id}"}}"#))
        .await;
    publ.publish(reply, &format!(r#"{{"response":[3],"isDisposed":true,"id":"{id}"}}"#))
        .await;
    let got: Vec<Vec<u32>> = call.await.unwrap().unwrap().into_iter().map(Result::unwrap).collect();
    assert_eq!(got, [vec![1], vec![2]], "completes on the first final packet");

    // An event: no id, on the route's channel.
    c.emit_raw("evt_wire", json!({"hello": "world"})).await.unwrap();
    assert_eq!(
        fake.message(Duration::from_secs(5)).await,
        (
            "evt_wire".to_string(),
            r#"{"pattern":"evt_wire","data":{"hello":"world"}}"#.to_string()
        )
    );
    // Headers travel as v12's `metadata`.
    c.emit_raw("evt_wire", 1)
        .header("traceparent", "00-abc-def-01")
        .await
        .unwrap();
    assert_eq!(
        fake.message(Duration::from_secs(5)).await.1,
        r#"{"pattern":"evt_wire","data":1,"metadata":{"traceparent":"00-abc-def-01"}}"#
    );
}

#[tokio::test]
async fn a_request_nobody_is_subscribed_to_fails_at_once_naming_the_pattern() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let c = Client::builder(&redis.url())
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let err = c.send_raw::<Value>(json!({"cmd": "nobody_here"}), 1).await.unwrap_err();
    match &err {
        Error::NoHandler { pattern, addr } => {
            assert_eq!(pattern, r#"{"cmd":"nobody_here"}"#);
            assert_eq!(addr, &redis.url());
        }
        other => panic!("expected NoHandler, got {other}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "not at the 30 s deadline");
    // An event nobody listens to is not an error (as in NestJS).
    c.emit_raw("nobody_here", 1).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Fan-out, restarts, shutdown, configuration.

#[tokio::test]
async fn every_replica_receives_each_message_and_the_caller_gets_one_reply() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let names = [format!("fan-a-{}", redis.port), format!("fan-b-{}", redis.port)];
    let one = replica(&names[0], redis.url());
    let two = replica(&names[1], redis.url());
    let c = client(&redis.url()).await;
    let mut replies = c.send_raw::<u64>("redis_fanout", 7).stream().await.unwrap();
    use futures_util::StreamExt;
    assert_eq!(replies.next().await.unwrap().unwrap(), 7);
    assert!(
        replies.next().await.is_none(),
        "one reply, though both replicas answered"
    );
    c.emit_raw("redis_fanout_evt", 1).await.unwrap();
    let counts = || {
        names
            .iter()
            .flat_map(|n| [handled_by(n, "call"), handled_by(n, "event")])
            .collect::<Vec<_>>()
    };
    let until = Instant::now() + Duration::from_secs(5);
    while counts() != [1; 4] && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a duplicate every chance to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Redis pub/sub has no competing consumers: each replica handled each message once.
    assert_eq!(counts(), [1; 4], "(calls, events) of each replica");
    drop((one, two));
}

#[tokio::test]
async fn broker_restart_fails_calls_in_flight_and_both_ends_recover() {
    let Some(mut redis) = PrivateRedis::start().await else {
        return;
    };
    let s = serve(&redis.url(), Microservice::from_registry()).await;
    let c = client(&redis.url()).await;
    assert_eq!(c.send(ECHO, json!("before")).await.unwrap(), json!("before"));

    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.send(DELAY, 5_000).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    redis.stop().await;
    let err = in_flight.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ConnectionClosed { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed at once, not at the deadline"
    );

    // While Redis is down, calls fail with a connection error, quickly.
    let started = Instant::now();
    let err = c.send(ECHO, json!(1)).await.unwrap_err();
    assert!(
        matches!(err, Error::Connect { .. } | Error::ConnectionClosed { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let calls = (0..100).map(|i| {
        let c = c.clone();
        async move { c.send(ECHO, json!(i)).await }
    });
    for r in futures_util::future::join_all(calls).await {
        let err = r.unwrap_err();
        assert!(
            matches!(err, Error::Connect { .. } | Error::ConnectionClosed { .. }),
            "{err}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "concurrent calls fail fast too"
    );

    // Back up: the server subscribes again (after its backoff) and the same client works.
    redis.restart().await;
    let mut last = None;
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        match c.send(ECHO, json!("after")).await {
            Ok(v) => {
                last = Some(v);
                break;
            }
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        Error::NoHandler { .. } | Error::Connect { .. } | Error::ConnectionClosed { .. }
                    ),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(last, Some(json!("after")));
    assert_eq!(c.send(SUM, vec![1.0, 2.0]).await.unwrap(), 3.0);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_then_stops_consuming() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let s = serve(&redis.url(), Microservice::from_registry()).await;
    let c = client(&redis.url()).await;
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.send(DELAY, 300).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.shutdown().await.unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap(), 300, "the reply was published");
    let err = c.send(ECHO, json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::NoHandler { .. }), "unsubscribed: {err}");
}

#[tokio::test]
async fn urls_are_checked_and_an_unreachable_broker_is_a_clear_error() {
    let err = Client::connect("redis://127.0.0.1:6379?pool=3").await.unwrap_err();
    assert!(err.to_string().contains("unknown query parameter `pool`"), "{err}");
    let err = Microservice::from_registry()
        .listen("redis://127.0.0.1:6379?queue=x")
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown query parameter `queue`"), "{err}");
    let err = Client::connect("redis://127.0.0.1:6379?connect_timeout_ms=soon")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connect_timeout_ms"), "{err}");

    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = Client::connect(&url).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let c = Client::builder(&url).build().unwrap();
    let err = c.send(ECHO, json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let err = Microservice::from_registry().listen(&url).start().await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------
// Interop with NestJS 11 and 12 (tests/nestjs, common/nest.rs), on a private Redis.

/// What Redis does in the shared scenarios: 1 MiB payloads; nobody subscribes to an unknown
/// pattern, so our client fails at once (PUBLISH reaches no one) while NestJS's times out;
/// NestJS 12 metadata both ways.
const REDIS: nest::Transport = nest::Transport {
    payload: 1 << 20,
    unknown: nest::Unknown::NoSubscribers,
    metadata_from_nest: true,
    metadata_to_nest: true,
    nest_client_concurrent: true,
    kafka_quirks: false,
};

async fn nest_client_calls_our_server(version: u8) {
    if !nest::nest_installed(version, "redis://") {
        return;
    }
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    nest::nest_client_calls_our_server(version, &redis.url(), &REDIS).await;
}

/// Waits until the NestJS peer has subscribed to the channels the scenario uses beyond
/// `echo` (an event published before would reach no one).
async fn nest_subscribed(redis: &PrivateRedis) {
    let mut raw = redis.raw().await;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let subs = raw.cmd(&["PUBSUB", "NUMSUB", "echo", "evt", "meta"]).await;
        if subs
            == R::Array(vec![
                R::Bulk(Some(b"echo".to_vec())),
                R::Int(1),
                R::Bulk(Some(b"evt".to_vec())),
                R::Int(1),
                R::Bulk(Some(b"meta".to_vec())),
                R::Int(1),
            ])
        {
            return;
        }
        assert!(Instant::now() < until, "NestJS server did not subscribe: {subs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn our_client_calls_nest_server(version: u8) {
    if !nest::nest_installed(version, "redis://") {
        return;
    }
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let nest = nest::NestServer::start(version, &redis.url()).await;
    nest_subscribed(&redis).await;
    nest::our_client_calls_nest_server(&nest, &REDIS).await;
}

nest_interop_tests! {
    nest_client: nest_client_calls_our_server,
    our_client: our_client_calls_nest_server,
}

// ---------------------------------------------------------------------------------------
// Opt-in load balancing: replicas in one `group` claim each request.

#[message_pattern("redis_group_work")]
async fn redis_group_work(n: u64) -> u64 {
    handled("work");
    tokio::time::sleep(Duration::from_millis(5)).await;
    n * 2
}

#[tokio::test]
async fn replicas_in_a_group_handle_each_request_once() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    // Four at a time each: a replica that happens to read every PUBLISH first cannot also
    // claim them all (on a loaded machine one replica could otherwise win every race).
    let url = format!("{}?group=workers&max_in_flight=4", redis.url());
    let names = [format!("grp-a-{}", redis.port), format!("grp-b-{}", redis.port)];
    let one = replica(&names[0], url.clone());
    let two = replica(&names[1], url.clone());
    let mut raw = redis.raw().await;
    assert_eq!(
        raw.cmd(&["PUBSUB", "NUMSUB", "redis_group_work"]).await,
        R::Array(vec![R::Bulk(Some(b"redis_group_work".to_vec())), R::Int(2)]),
        "both replicas receive every request"
    );
    let c = client(&redis.url()).await;
    let calls = (0..200u64).map(|i| {
        let c = c.clone();
        async move { c.send_raw::<u64>("redis_group_work", i).await }
    });
    for (i, r) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as u64 * 2);
    }
    // Give a late duplicate every chance to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a, b) = (handled_by(&names[0], "work"), handled_by(&names[1], "work"));
    assert_eq!(a + b, 200, "each request handled exactly once");
    assert!(a > 0 && b > 0, "both replicas took part: {a} and {b}");
    let err = Microservice::new()
        .handler(REDIS_GROUP_WORK)
        .listen(format!("{}?group=", redis.url()))
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`group` needs a name"), "{err}");
    drop((one, two));
}

// ---------------------------------------------------------------------------------------
// A server that falls behind, and credentials.

/// Holds `redis_backlog` events until the test lets them go.
static BACKLOG: Gate = Gate::new();

#[event_pattern("redis_backlog")]
async fn redis_backlog(_data: Value) {
    BACKLOG.pass().await;
}

/// The ids of the connections subscribed to something.
async fn subscriber_ids(raw: &mut Resp) -> Vec<String> {
    let list = raw.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]).await.text();
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("id=")).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_server_that_falls_behind_leaves_its_backlog_in_redis() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let mut raw = redis.raw().await;
    // A subscriber more than 1 MiB behind is disconnected by Redis.
    let set = raw
        .cmd(&["CONFIG", "SET", "client-output-buffer-limit", "pubsub 1mb 0 0"])
        .await;
    assert_eq!(set, R::Simple("OK".into()));
    let s = serve(
        &format!("{}?max_in_flight=1", redis.url()),
        Microservice::new().handler(REDIS_BACKLOG).handler(ECHO),
    )
    .await;
    let before = subscriber_ids(&mut raw).await;
    assert_eq!(before.len(), 1, "the server's one subscriber connection");

    // 48 MiB of events at a server handling none: more than the socket buffers hold, so
    // Redis's own buffer for the subscriber passes its limit, unless the server reads them
    // all into memory (as it did through redis-rs's subscriber task).
    let data = "x".repeat(64 * 1024);
    let packet = json!({ "pattern": "redis_backlog", "data": data }).to_string();
    let published = 768;
    for _ in 0..published {
        raw.publish("redis_backlog", &packet).await;
    }
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let now = subscriber_ids(&mut raw).await;
        if !now.contains(&before[0]) {
            break;
        }
        assert!(
            Instant::now() < until,
            "Redis never disconnected the server: it read its backlog into its own memory"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Let the handler go: the server subscribes again and serves on.
    BACKLOG.open(published);
    let c = client(&redis.url()).await;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match c.send(ECHO, json!("back")).await {
            Ok(v) => break assert_eq!(v, json!("back")),
            Err(e) => assert!(Instant::now() < until, "the server did not come back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let handled = BACKLOG.passed();
    assert!(
        handled < published,
        "what Redis dropped is not handled (pub/sub is at most once): {handled}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_password_and_an_acl_user_are_sent_and_a_wrong_one_is_refused() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let mut raw = redis.raw().await;
    let user = raw
        .cmd(&["ACL", "SETUSER", "sb", "on", ">sb-pass", "~*", "&*", "+@all"])
        .await;
    assert_eq!(user, R::Simple("OK".into()));
    assert_eq!(
        raw.cmd(&["CONFIG", "SET", "requirepass", "default-pass"]).await,
        R::Simple("OK".into())
    );
    let port = redis.port;
    for url in [
        format!("redis://:default-pass@127.0.0.1:{port}"),
        format!("redis://sb:sb-pass@127.0.0.1:{port}"),
    ] {
        let s = serve(&url, Microservice::new().handler(ECHO)).await;
        let c = client(&url).await;
        assert_eq!(c.send(ECHO, json!(url)).await.unwrap(), json!(url));
        s.shutdown().await.unwrap();
    }
    for url in [
        format!("redis://127.0.0.1:{port}"),
        format!("redis://:wrong@127.0.0.1:{port}"),
        format!("redis://sb:wrong@127.0.0.1:{port}"),
    ] {
        let err = Microservice::new()
            .handler(ECHO)
            .listen(&url)
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{url}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("NOAUTH") || text.contains("WRONGPASS"),
            "{url}: Redis's reason is given: {text}"
        );
        assert!(!text.contains("wrong"), "{url}: no password shown: {text}");
    }
}

// ---------------------------------------------------------------------------------------
// A subscriber connection that goes silent: pinged, then replaced.

/// A TCP proxy to a private Redis whose connections the test can freeze: they stay open and
/// carry nothing either way, as a connection that a NAT or a load balancer dropped from its
/// table without telling either end. Connections made after the freeze pass.
struct FreezingProxy {
    port: u16,
    freezes: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(target: u16) -> FreezingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let freezes = tokio::sync::watch::Sender::new(0u64);
        let watch = freezes.subscribe();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = watch.clone();
                conns.spawn(async move {
                    let born = *watch.borrow_and_update();
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async { watch.wait_for(|&n| n != born).await.is_ok() } => {
                            // Frozen: both sockets held open, nothing read or written.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        FreezingProxy { port, freezes, task }
    }

    fn freeze(&self) {
        self.freezes.send_modify(|n| *n += 1);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `echo` answers through `c` within `within`, trying every 100 ms.
async fn answers_within(c: &Client, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let quick = c.with_timeout(Duration::from_millis(500));
        if quick.send(ECHO, json!("again")).await.ok() == Some(json!("again")) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_silent_subscriber_connection_is_pinged_then_replaced() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let proxy = FreezingProxy::start(redis.port).await;
    let url = format!("redis://127.0.0.1:{}?ping_interval_ms=200", proxy.port);
    let s = serve(&url, Microservice::new().handler(ECHO)).await;
    let c = client(&redis.url()).await;
    assert_eq!(c.send(ECHO, json!("before")).await.unwrap(), json!("before"));

    // The server's connections to Redis go silent; Redis still counts it subscribed and
    // writes its messages into the void.
    proxy.freeze();
    assert!(
        answers_within(&c, Duration::from_secs(15)).await,
        "the server kept waiting on its silent subscriber connection"
    );
    assert!(s.health().is_ready(), "{:?}", s.health().report());
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_whose_reply_connection_goes_silent_replaces_it() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let proxy = FreezingProxy::start(redis.port).await;
    let s = serve(&redis.url(), Microservice::new().handler(ECHO)).await;
    let url = format!("redis://127.0.0.1:{}?ping_interval_ms=200", proxy.port);
    let c = client(&url).await;
    assert_eq!(c.send(ECHO, json!("before")).await.unwrap(), json!("before"));

    // The client's connections go silent: its requests reach nobody, the replies nobody.
    proxy.freeze();
    assert!(
        answers_within(&c, Duration::from_secs(15)).await,
        "the client kept its silent reply connection, and every call timed out"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn ping_interval_ms_is_checked() {
    let Some(redis) = PrivateRedis::start().await else {
        return;
    };
    let Err(bad) = Microservice::new()
        .handler(ECHO)
        .listen(format!("{}?ping_interval_ms=soon", redis.url()))
        .start()
        .await
    else {
        panic!("a server with ping_interval_ms=soon started");
    };
    assert!(bad.to_string().contains("ping_interval_ms"), "{bad}");
    let Err(bad) = Client::connect(&format!("{}?ping_interval_ms=-1", redis.url())).await else {
        panic!("a client with ping_interval_ms=-1 was made");
    };
    assert!(bad.to_string().contains("ping_interval_ms"), "{bad}");
    // 0 turns it off: the server starts and serves.
    let s = serve(
        &format!("{}?ping_interval_ms=0", redis.url()),
        Microservice::new().handler(ECHO),
    )
    .await;
    let c = client(&redis.url()).await;
    assert_eq!(c.send(ECHO, json!(1)).await.unwrap(), json!(1));
    s.shutdown().await.unwrap();
}
