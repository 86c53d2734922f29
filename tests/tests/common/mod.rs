//! Handlers shared by the integration tests: the same set the NestJS peer app serves
//! (tests/nestjs/server.mjs), so one test can run against either.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard::prelude::*;

#[message_pattern({ cmd = "sum" })]
pub async fn sum(numbers: Vec<f64>) -> f64 {
    numbers.iter().sum()
}

#[message_pattern("echo")]
pub async fn echo(data: Value) -> Value {
    data
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
}

#[message_pattern({ cmd = "get_user" })]
pub async fn get_user(id: String) -> User {
    User {
        id,
        name: "John Doe".into(),
        email: "john@example.com".into(),
    }
}

#[message_pattern({ cmd = "get", role = "user", v = 2, nested = { b = 1, a = "x" } })]
pub async fn nested() -> String {
    "nested-ok".into()
}

#[message_pattern("stream")]
pub async fn stream() -> ReplyStream<u32> {
    ReplyStream::iter([1, 2, 3])
}

#[message_pattern("slow_stream")]
pub async fn slow_stream() -> ReplyStream<u32> {
    ReplyStream::from_stream(futures_util::stream::unfold(0u32, |n| async move {
        if n == 3 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some((n, n + 1))
    }))
}

#[message_pattern("late_complete")]
pub async fn late_complete() -> ReplyStream<String> {
    let first = futures_util::stream::iter(["first".to_string()]);
    let pause =
        futures_util::stream::once(tokio::time::sleep(Duration::from_millis(50))).filter_map(|()| async { None });
    ReplyStream::from_stream(first.chain(pause))
}

#[message_pattern("empty_stream")]
pub async fn empty_stream() -> ReplyStream<u32> {
    ReplyStream::empty()
}

#[message_pattern("stream_err")]
pub async fn stream_err() -> ReplyStream<u32> {
    ReplyStream::new(futures_util::stream::iter([
        Ok(1),
        Err(RpcError::new("mid-stream")),
        Ok(2),
    ]))
}

#[message_pattern("rpc_string")]
pub async fn rpc_string() -> RpcResult<u32> {
    Err(RpcError::new("bad thing"))
}

#[message_pattern("rpc_object")]
pub async fn rpc_object() -> Result<u32, RpcError> {
    Err(RpcError::from_value(
        json!({"code": 42, "message": "custom msg", "extra": true}),
    ))
}

#[message_pattern("panics")]
pub async fn panics(n: u32) -> u32 {
    if n > 0 {
        panic!("handler bug");
    }
    n
}

/// Two values, then a panic.
#[message_pattern("stream_panics")]
pub async fn stream_panics() -> ReplyStream<u32> {
    ReplyStream::from_stream(futures_util::stream::iter([1, 2, 3]).map(|n| {
        assert!(n < 3, "stream bug");
        n
    }))
}

/// `panic_evt` has a listener that panics and one that records the event in [`SEEN`].
#[event_pattern("panic_evt")]
pub async fn panic_evt_boom(_data: Value) {
    panic!("listener bug");
}

#[event_pattern("panic_evt")]
pub async fn panic_evt_kept(data: Value) {
    SEEN.lock().unwrap().push(json!({"handler": "kept", "data": data}));
}

#[message_pattern("void_ret")]
pub async fn void_ret() {}

#[message_pattern("null_ret")]
pub async fn null_ret() -> Option<u32> {
    None
}

#[message_pattern("len")]
pub async fn len(text: String) -> usize {
    // NestJS's `data.length` counts UTF-16 units; so do we, to compare like with like.
    text.encode_utf16().count()
}

#[message_pattern("delay")]
pub async fn delay(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[message_pattern("meta")]
pub async fn meta(ctx: Context) -> HashMap<String, String> {
    ctx.headers()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[message_pattern("ctx_info")]
pub async fn ctx_info(_data: Value, ctx: Context) -> Value {
    json!({"pattern": ctx.route(), "transport": ctx.transport(), "event": ctx.is_event()})
}

/// Events received by the two `evt` listeners, in arrival order.
pub static SEEN: Mutex<Vec<Value>> = Mutex::new(Vec::new());

#[event_pattern("evt")]
pub async fn evt_a(data: Value) {
    SEEN.lock().unwrap().push(json!({"handler": "a", "data": data}));
}

#[event_pattern("evt")]
pub async fn evt_b(data: Value, ctx: Context) {
    SEEN.lock()
        .unwrap()
        .push(json!({"handler": "b", "data": data, "event": ctx.is_event()}));
}

#[message_pattern("events_seen")]
pub async fn events_seen() -> Vec<Value> {
    SEEN.lock().unwrap().clone()
}

/// Handlers of `tracked` running right now, and the most seen at once.
pub static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
pub static RUNNING_MAX: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[message_pattern("tracked")]
pub async fn tracked(ms: u64) -> u64 {
    use std::sync::atomic::Ordering::SeqCst;
    let now = RUNNING.fetch_add(1, SeqCst) + 1;
    RUNNING_MAX.fetch_max(now, SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    RUNNING.fetch_sub(1, SeqCst);
    ms
}

#[message_pattern("most_running")]
pub async fn most_running() -> usize {
    RUNNING_MAX.load(std::sync::atomic::Ordering::SeqCst)
}

#[event_pattern("slow_evt")]
pub async fn slow_evt(data: Value) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    SEEN.lock().unwrap().push(json!({"handler": "slow", "data": data}));
}

/// What the ordering listeners saw, per marker: the `seq`s in the order handled (per key for
/// `keyed_evt`), how many ran at once right now, and the most that ever did.
#[derive(Default)]
pub struct OrderLog {
    seqs: HashMap<String, Vec<u64>>,
    running: usize,
    most: usize,
}

pub static ORDER: Mutex<Option<HashMap<String, OrderLog>>> = Mutex::new(None);

#[derive(serde::Deserialize)]
pub struct Ordered {
    marker: String,
    seq: u64,
    #[serde(default)]
    key: String,
}

/// Runs one ordering listener: counts it as running, waits `ms` (shorter for later events,
/// so that events run at once would finish out of order), records its seq.
async fn ordered(ev: Ordered, ms: u64) {
    let start = |log: &mut OrderLog| {
        log.running += 1;
        log.most = log.most.max(log.running);
    };
    with_log(&ev.marker, start);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    with_log(&ev.marker, |log| {
        log.running -= 1;
        log.seqs.entry(ev.key.clone()).or_default().push(ev.seq);
    });
}

fn with_log<R>(marker: &str, f: impl FnOnce(&mut OrderLog) -> R) -> R {
    let mut all = ORDER.lock().unwrap();
    f(all
        .get_or_insert_with(HashMap::new)
        .entry(marker.to_owned())
        .or_default())
}

/// In order, one at a time (the default).
#[event_pattern("ordered_evt")]
pub async fn ordered_evt(ev: Ordered) {
    let ms = 5 - ev.seq % 5;
    ordered(ev, ms).await;
}

/// In order per `key`, concurrently across keys.
#[event_pattern("keyed_evt", key = "key")]
pub async fn keyed_evt(ev: Ordered) {
    let ms = 20 - ev.seq % 20;
    ordered(ev, ms).await;
}

/// All at once.
#[event_pattern("concurrent_evt", concurrent)]
pub async fn concurrent_evt(ev: Ordered) {
    ordered(ev, 100).await;
}

/// `{seqs: {key: [seq, ...]}, most: n}` for a marker.
#[message_pattern("order_seen")]
pub async fn order_seen(marker: String) -> Value {
    with_log(&marker, |log| json!({"seqs": log.seqs, "most": log.most}))
}

#[derive(serde::Deserialize)]
pub struct Point {
    x: i64,
    y: i64,
}

/// A payload that is a Rust struct (its name must not reach a caller in an error).
#[message_pattern("add_point")]
pub async fn add_point(p: Point) -> i64 {
    p.x + p.y
}

/// A request handler that also records its payload, to see events sent to it.
#[message_pattern("record")]
pub async fn record(data: Value) -> usize {
    let mut seen = SEEN.lock().unwrap();
    seen.push(json!({"handler": "record", "data": data}));
    seen.len()
}

#[message_pattern("count_to")]
pub async fn count_to(n: u64) -> ReplyStream<u64> {
    ReplyStream::iter(1..=n)
}

/// Fails the test when CI is set; otherwise explains loudly why it is skipped.
pub fn missing(what: &str, fix: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing (CI is set, so this fails instead of skipping): {fix}");
    }
    eprintln!("SKIPPED: {what} is missing: {fix}");
    // libtest hides a passing test's output: the test command counts skips from this file.
    if let Some(path) = std::env::var_os("SB_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "SKIPPED: {what} is missing: {fix}");
        }
    }
}
/// Holds a test's handler until the test opens it, counting those that passed: for a server
/// whose slots are all taken.
pub struct Gate {
    permits: tokio::sync::Semaphore,
    passed: std::sync::atomic::AtomicUsize,
}

impl Gate {
    pub const fn new() -> Self {
        Gate {
            permits: tokio::sync::Semaphore::const_new(0),
            passed: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Waits until the gate lets one more through.
    pub async fn pass(&self) {
        self.permits.acquire().await.unwrap().forget();
        self.passed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Lets `n` more through.
    pub fn open(&self, n: usize) {
        self.permits.add_permits(n);
    }

    pub fn passed(&self) -> usize {
        self.passed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub mod conformance;
pub mod nest;
pub mod raw;
