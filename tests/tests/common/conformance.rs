//! The transport conformance suite: the behaviour every transport must show, written once.
//!
//! A transport's test binary instantiates it with [`switchboard_conformance!`]; each case
//! becomes its own `#[tokio::test]`. One server per suite serves the common handlers, on a
//! background runtime that outlives the individual tests.

use std::collections::HashMap;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard::{Client, Error, Microservice, pattern};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::*;

/// Held by every case; the broker-restart case takes it exclusively.
static BROKER: RwLock<()> = RwLock::const_new(());

/// Keeps the broker up while a test uses it (the restart case waits for every holder).
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    BROKER.read().await
}

/// Excludes every other test of this binary while the broker is restarted.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    BROKER.write().await
}

/// Starts the suite's server once (on its own runtime) and returns the URL clients use; `None`
/// when the broker is unreachable outside CI (the reason is printed; under CI it panics).
pub fn server(
    cell: &'static OnceLock<Option<String>>,
    url: &'static str,
    broker: &str,
    fix: &str,
) -> Option<&'static str> {
    cell.get_or_init(|| {
        if !reachable(url) {
            missing(broker, fix);
            return None;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("conformance-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("server runtime");
                rt.block_on(async move {
                    match Microservice::from_registry().listen(url).start().await {
                        Ok(server) => {
                            let _ = tx.send(Ok(server.local_url().to_owned()));
                            std::future::pending::<()>().await
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                })
            })
            .expect("server thread");
        match rx.recv().expect("server thread reports") {
            Ok(local) => Some(local),
            Err(e) => panic!("the server on {url} did not start: {e}"),
        }
    })
    .as_deref()
}

/// True when something accepts TCP connections at the URL's host:port (always for `mem`).
pub fn reachable(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if scheme == "mem" {
        return true;
    }
    // User info runs to the last `@` before the query (a password may hold a `/` or `?`).
    let (authority, _) = switchboard::transport::split_query(rest);
    let hostport = authority.rsplit('@').next().unwrap_or_default();
    let hostport = hostport.split('/').next().unwrap_or_default();
    let first = hostport.split(',').next().unwrap_or_default();
    if first.ends_with(":0") {
        return true; // a server we bind ourselves
    }
    use std::net::ToSocketAddrs;
    first
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// A client with a 15 s deadline per call.
pub async fn client(url: &str) -> Client {
    Client::builder(url)
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("client connects to {url}: {e}"))
}

/// Typed and NestJS-style calls with object and string patterns.
pub async fn patterns(c: &Client) {
    let user = c.send(GET_USER, "42".to_string()).await.unwrap();
    assert_eq!(
        user,
        User {
            id: "42".into(),
            name: "John Doe".into(),
            email: "john@example.com".into()
        }
    );
    assert_eq!(c.send(SUM, vec![1.0, 2.5]).await.unwrap(), 3.5);
    assert_eq!(c.send(NESTED, ()).await.unwrap(), "nested-ok");
    let v: Value = c.send_raw(json!({"cmd": "sum"}), json!([5, 3])).await.unwrap();
    if msgpack(c) {
        // Between Switchboard peers a float stays a float.
        assert_eq!(v, json!(8.0));
    } else {
        assert_eq!(v, json!(8), "numbers are written as JavaScript writes them");
    }
    let v: String = c
        .send_raw(
            json!({"nested": {"a": "x", "b": 1}, "v": 2, "cmd": "get", "role": "user"}),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(v, "nested-ok", "object patterns match in any key order");
    const ADD: switchboard::MessageDef<Vec<f64>, f64> = switchboard::MessageDef::new(pattern!({ cmd = "sum" }));
    assert_eq!(c.send(ADD, vec![2.0, 2.0]).await.unwrap(), 4.0);
    c.send(VOID_RET, ()).await.unwrap();
    assert_eq!(c.send(NULL_RET, ()).await.unwrap(), None);
}

/// Observable-style replies: the last value, every value, none, and an error mid-stream.
pub async fn multi_value_replies(c: &Client) {
    assert_eq!(c.send(STREAM, ()).await.unwrap(), 3);
    let all: Vec<u32> = c
        .send(SLOW_STREAM, ())
        .stream()
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(all, [0, 1, 2]);
    let many: Vec<u64> = c
        .send(COUNT_TO, 50)
        .stream()
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(many, (1..=50).collect::<Vec<_>>(), "values arrive in order");
    let none: Vec<_> = c.send(EMPTY_STREAM, ()).stream().await.unwrap().collect().await;
    assert!(none.is_empty());
    let mixed: Vec<_> = c.send(STREAM_ERR, ()).stream().await.unwrap().collect().await;
    assert_eq!(mixed.len(), 2, "{mixed:?}");
    assert_eq!(*mixed[0].as_ref().unwrap(), 1);
    assert_eq!(
        mixed[1].as_ref().unwrap_err().as_rpc().unwrap().message(),
        Some("mid-stream")
    );
}

/// Errors keep NestJS's shapes; bad payloads and replies are clear errors.
pub async fn errors(c: &Client) {
    let err = c.send(RPC_STRING, ()).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"status": "error", "message": "bad thing"})
    );
    let err = c.send(RPC_OBJECT, ()).await.unwrap_err();
    assert_eq!(
        err.as_rpc().unwrap().value(),
        &json!({"code": 42, "message": "custom msg", "extra": true})
    );
    let err = c.send(PANICS, 1).await.unwrap_err();
    assert_eq!(err.as_rpc().unwrap().message(), Some("Internal server error"));
    assert_eq!(
        c.send(PANICS, 0).await.unwrap(),
        0,
        "the server survives a panicking handler"
    );
    let err = c
        .send_raw::<Value>(json!({"cmd": "sum"}), json!("not numbers"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid payload for pattern"), "{err}");
    let err = c.send_raw::<u32>("echo", json!("text")).await.unwrap_err();
    assert!(
        matches!(err, Error::Codec { .. } | Error::MsgPack { .. }),
        "a reply of the wrong type is a decode error: {err}"
    );
    // A bad payload's error names the problem briefly: 512 KiB of text where numbers belong
    // comes back as a short excerpt, and no Rust type name reaches the caller.
    let big = "x".repeat(512 * 1024);
    let err = c
        .send_raw::<Value>(json!({"cmd": "sum"}), json!(big))
        .await
        .unwrap_err();
    let message = err.as_rpc().and_then(|e| e.message()).unwrap_or_default().to_owned();
    assert!(message.starts_with("invalid payload for pattern"), "{err}");
    assert!(message.len() < 400, "{} bytes: {message}", message.len());
    let err = c.send_raw::<Value>("add_point", json!("nope")).await.unwrap_err();
    let message = err.as_rpc().and_then(|e| e.message()).unwrap_or_default().to_owned();
    assert!(message.contains("expected an object"), "{message}");
    assert!(
        !message.contains("Point"),
        "a Rust type name reached the caller: {message}"
    );
}

/// True for a client that speaks MessagePack (`?codec=msgpack`).
fn msgpack(c: &Client) -> bool {
    c.url().contains("codec=msgpack")
}

/// A pattern nobody serves fails, naming the pattern: at once where the transport can tell,
/// at the deadline where it cannot. It never hangs.
pub async fn unknown_pattern(c: &Client) {
    let err = c
        .with_timeout(Duration::from_secs(3))
        .send_raw::<Value>("sum_typo", json!(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoHandler { pattern, .. } | Error::Timeout { pattern, .. } if pattern == "sum_typo"),
        "{err}"
    );
}

/// Every call has a deadline.
pub async fn deadlines(c: &Client) {
    let err = c
        .with_timeout(Duration::from_millis(200))
        .send(DELAY, 2_000)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { pattern, .. } if pattern == "delay"),
        "{err}"
    );
    assert_eq!(c.send(DELAY, 1).await.unwrap(), 1, "the client works after a timeout");
}

/// Unicode (astral characters included) survives both ways.
pub async fn unicode(c: &Client) {
    let text = "é😀 ünïcødé ".repeat(8);
    assert_eq!(
        c.send_raw::<Value>("echo", json!({"x": text, "ключ": "値"}))
            .await
            .unwrap(),
        json!({"x": text, "ключ": "値"})
    );
}

/// A 1 MiB payload, ASCII and astral.
pub async fn one_mib_payload(c: &Client) {
    let big = "x".repeat(1 << 20);
    assert_eq!(c.send(LEN, big).await.unwrap(), 1 << 20);
    let big_unicode = "😀".repeat(1 << 18);
    assert_eq!(c.send(LEN, big_unicode).await.unwrap(), 1 << 19);
}

/// 200 concurrent requests on one client, each answered with its own value.
pub async fn concurrent_requests(c: &Client) {
    let calls = (0..200).map(|i| {
        let c = c.clone();
        async move { c.send_raw::<Value>("echo", json!({"i": i})).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    for (i, r) in replies.into_iter().enumerate() {
        assert_eq!(r.unwrap(), json!({"i": i}));
    }
}

/// The handler sees the pattern, that it is a request, and the caller's headers.
pub async fn context_and_headers(c: &Client) {
    let info: Value = c.send(CTX_INFO, json!(null)).await.unwrap();
    assert_eq!(info["pattern"], "ctx_info");
    assert_eq!(info["event"], false);
    let traced = c.with_headers([("traceparent", "00-abc-def-01")].into_iter().collect());
    let headers = traced.send(META, ()).await.unwrap();
    assert_eq!(headers.get("traceparent").map(String::as_str), Some("00-abc-def-01"));
}

/// An event reaches every listener, typed or raw.
pub async fn events(c: &Client, marker: &str) {
    c.emit(EVT_A, json!({"marker": marker})).await.unwrap();
    c.emit_raw("evt", json!({"marker": marker})).await.unwrap();
    assert_eq!(await_events(c, marker, 4).await, 4, "two events × two listeners");
}

/// Waits until `want` events with `marker` have been handled (or 10 s passed); returns how many.
pub async fn await_events(c: &Client, marker: &str, want: usize) -> usize {
    let mut seen = 0;
    for _ in 0..200 {
        let events = c.send(EVENTS_SEEN, ()).await.unwrap();
        seen = events.iter().filter(|e| e["data"]["marker"] == json!(marker)).count();
        if seen >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// Waits until `want` events of `marker` were recorded by the ordering listeners (or 20 s
/// passed): their seqs per key, and the most that ran at once.
pub async fn await_order(c: &Client, marker: &str, want: usize) -> (HashMap<String, Vec<u64>>, usize) {
    let mut last = (HashMap::new(), 0);
    for _ in 0..400 {
        let seen: Value = c.send_raw("order_seen", marker).await.unwrap();
        let seqs: HashMap<String, Vec<u64>> = serde_json::from_value(seen["seqs"].clone()).unwrap();
        let most = seen["most"].as_u64().unwrap() as usize;
        let n = seqs.values().map(Vec::len).sum::<usize>();
        last = (seqs, most);
        if n >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// One sender's events for one pattern are handled in the order sent, one after another
/// (their listener takes longer for earlier events, so any overlap would reorder them);
/// five rounds of 20.
pub async fn events_in_order(c: &Client) {
    for round in 0..5 {
        let marker = format!("in-order-{}-{round}-{}", std::process::id(), unique());
        for seq in 0..20u64 {
            c.emit_raw("ordered_evt", json!({"marker": marker, "seq": seq}))
                .await
                .unwrap();
        }
        let (seqs, most) = await_order(c, &marker, 20).await;
        assert_eq!(
            seqs.get(""),
            Some(&(0..20).collect::<Vec<_>>()),
            "round {round}: handled in the order sent"
        );
        assert_eq!(most, 1, "round {round}: one at a time");
    }
}

/// Events declared `key = "key"` keep their order per key and run concurrently across keys;
/// events declared `concurrent` run at once.
pub async fn events_by_key_and_concurrent(c: &Client) {
    let marker = format!("by-key-{}-{}", std::process::id(), unique());
    for seq in 0..24u64 {
        let key = format!("k{}", seq % 3);
        c.emit_raw("keyed_evt", json!({"marker": marker, "seq": seq, "key": key}))
            .await
            .unwrap();
    }
    let (seqs, most) = await_order(c, &marker, 24).await;
    for k in 0..3u64 {
        let want: Vec<u64> = (0..24).filter(|s| s % 3 == k).collect();
        assert_eq!(seqs.get(&format!("k{k}")), Some(&want), "in order within key k{k}");
    }
    assert!(most > 1, "keys ran concurrently (most at once: {most})");

    let marker = format!("concurrent-{}-{}", std::process::id(), unique());
    for seq in 0..8u64 {
        c.emit_raw("concurrent_evt", json!({"marker": marker, "seq": seq}))
            .await
            .unwrap();
    }
    let (seqs, most) = await_order(c, &marker, 8).await;
    assert_eq!(seqs.get("").map(Vec::len), Some(8));
    assert!(most > 1, "declared concurrent, yet one at a time");
}

/// A listener that panics does not stop the pattern's other listener, nor the next event of
/// its pattern (its turn is given back), nor the server (a durable transport delivers the
/// event again, as after any failure); a reply stream that panics midway
/// gives the caller the values so far, then NestJS's `Internal server error`.
pub async fn panics_are_contained(c: &Client) {
    for round in 0..2 {
        let marker = format!("panic-{}-{round}-{}", std::process::id(), unique());
        c.emit_raw("panic_evt", json!({"marker": marker})).await.unwrap();
        // More than once where a failed event is delivered again (RabbitMQ's retries).
        assert!(
            await_events(c, &marker, 1).await >= 1,
            "round {round}: the other listener ran"
        );
    }
    let got: Vec<_> = c.send(STREAM_PANICS, ()).stream().await.unwrap().collect().await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        (got[0].as_ref().ok(), got[1].as_ref().ok()),
        (Some(&1), Some(&2)),
        "{got:?}"
    );
    let err = got[2].as_ref().unwrap_err();
    assert_eq!(
        err.as_rpc().and_then(RpcError::message),
        Some("Internal server error"),
        "{err:?}"
    );
    assert_eq!(c.send(ECHO, json!("still here")).await.unwrap(), json!("still here"));
}

/// A number no other call in this process got.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The broker goes away and comes back: a call in flight ends (with an error or its answer,
/// never a hang), and once the broker is back, calls and events work again through the same
/// server (it resubscribed) and the same client (it reconnected).
pub async fn broker_restart<F: Future<Output = ()>>(url: &str, restart: impl FnOnce() -> F) {
    let c = client(url).await;
    assert_eq!(c.send(DELAY, 1).await.unwrap(), 1);
    let slow = {
        let c = c.with_timeout(Duration::from_secs(10));
        tokio::spawn(async move { c.send(DELAY, 1_500).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    restart().await;
    let outcome = tokio::time::timeout(Duration::from_secs(12), slow)
        .await
        .expect("the in-flight call ends by its deadline")
        .expect("no panic");
    eprintln!("call in flight during the restart ended with: {outcome:?}");
    match outcome {
        Ok(v) => assert_eq!(v, 1_500, "the call in flight got its own answer"),
        Err(e) => assert!(
            matches!(
                e,
                Error::ConnectionClosed { .. } | Error::Connect { .. } | Error::Timeout { .. }
            ) || e.as_rpc().is_some_and(RpcError::is_unavailable),
            "the call in flight ends with a transport error or its deadline, not {e:?}"
        ),
    }

    let back = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = match c.with_timeout(Duration::from_secs(2)).send(DELAY, 1).await {
            Ok(1) => break,
            other => format!("{other:?}"),
        };
        assert!(
            tokio::time::Instant::now() < back,
            "calls still fail 30 s after the broker came back: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for i in 0..20 {
        assert_eq!(
            c.send_raw::<Value>("echo", json!({"i": i})).await.unwrap(),
            json!({"i": i})
        );
    }
    let marker = format!("restart-{}", std::process::id());
    c.emit_raw("evt", json!({"marker": marker})).await.unwrap();
    assert_eq!(
        await_events(&c, &marker, 2).await,
        2,
        "events flow again after the restart"
    );
}

/// Instantiates the conformance suite for one transport: one `#[tokio::test]` per case.
///
/// ```ignore
/// switchboard_conformance! {
///     url: "redis://127.0.0.1:6379",
///     broker: "Redis on 127.0.0.1:6379",
///     fix: "run scripts/brokers.sh",
///     restart: restart_redis,            // optional: async fn() that restarts the broker
/// }
/// ```
/// Put `mod name,` first to instantiate it more than once in one binary; `client_query:
/// "?codec=msgpack"` last, for clients whose URL differs from the server's by a query.
#[macro_export]
macro_rules! switchboard_conformance {
    (url: $url:expr, broker: $broker:expr, fix: $fix:expr $(, restart: $restart:path)? $(,)?) => {
        $crate::switchboard_conformance!(mod conformance, url: $url, broker: $broker, fix: $fix $(, restart: $restart)?);
    };
    (mod $name:ident, url: $url:expr, broker: $broker:expr, fix: $fix:expr $(, restart: $restart:path)? $(, client_query: $query:expr)? $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::common::conformance as suite;

            static SERVER: ::std::sync::OnceLock<Option<String>> = ::std::sync::OnceLock::new();

            /// The shared server's URL and a client for it (its URL with `client_query`
            /// added), or `None` when skipped.
            async fn target() -> Option<(&'static str, ::switchboard::Client)> {
                let url = suite::server(&SERVER, $url, $broker, $fix)?;
                let query: &[&str] = &[$($query)?];
                Some((url, suite::client(&format!("{url}{}", query.concat())).await))
            }

            $crate::switchboard_conformance!(@cases patterns multi_value_replies errors unknown_pattern deadlines unicode one_mib_payload concurrent_requests context_and_headers events_in_order events_by_key_and_concurrent panics_are_contained);

            #[tokio::test]
            async fn events_reach_every_listener() {
                let _broker = suite::shared().await;
                let Some((url, c)) = target().await else { return };
                suite::events(&c, &format!("{url}-{}", module_path!())).await;
            }

            $(
                #[tokio::test]
                async fn broker_restart() {
                    let _broker = suite::exclusive().await;
                    let Some((url, _)) = target().await else { return };
                    suite::broker_restart(url, $restart).await;
                }
            )?
        }
    };
    (@cases $($case:ident)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let _broker = suite::shared().await;
                let Some((_, c)) = target().await else { return };
                suite::$case(&c).await;
            }
        )*
    };
}

/// Every case in turn against one URL, for transports set up by hand (TLS).
pub async fn all(url: &str) {
    let c = client(url).await;
    patterns(&c).await;
    multi_value_replies(&c).await;
    errors(&c).await;
    unknown_pattern(&c).await;
    deadlines(&c).await;
    unicode(&c).await;
    one_mib_payload(&c).await;
    concurrent_requests(&c).await;
    context_and_headers(&c).await;
    events(&c, url).await;
    events_in_order(&c).await;
    events_by_key_and_concurrent(&c).await;
    panics_are_contained(&c).await;
}
