//! `--broker redis,nats,mqtt,amqp,kafka`: each broker transport against its bare client crate
//! doing the same NestJS request/reply by hand, in the same run.
//!
//! For every broker, in-flight level and run, both sides are measured in turns:
//! - **bare**: the broker's client crate by hand (one file per broker in this directory): a
//!   responder subscribed to the request channel/subject/topic/queue parses NestJS's
//!   `{"pattern","data","id"}` and publishes `{"response":…,"isDisposed":true,"id":…}` to the
//!   reply destination as NestJS does; a requester publishes requests and routes the replies
//!   to their callers by id ([`Pending`]);
//! - **switchboard**: a `Microservice` serving the `bench_add` handler on the broker's URL and
//!   a typed `switchboard::Client` calling it.
//!
//! Both run in this one process on one multi-threaded tokio runtime (the broker is its own
//! process; Kafka's is librdkafka's mock cluster, in this process too), under the same closed
//! loop ([`phase`]): N tasks, each keeping one call in flight, every reply checked against
//! `a + b`. Each run sets both sides up at once on their own routes, waits for one answered
//! call on each, warms each up, then cuts the measured time into slices of about a tenth of a
//! second that the sides take in turn, as the TCP rows do ([`measure`]); then it tears
//! everything down. A ratio is the median of the runs' ratios.

// Built without any broker feature, only the shared part is here, with nothing to drive it.
#![cfg_attr(
    not(any(
        feature = "redis",
        feature = "nats",
        feature = "mqtt",
        feature = "amqp",
        feature = "kafka"
    )),
    allow(dead_code)
)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard::prelude::*;
use switchboard::transport::redact;
use switchboard::{Client, Microservice};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::Failure;
use crate::driver::{SLICE, SLICE_WARMUP, add_time, cpu_over, nearest_rank};
use crate::frame::put_int;

#[cfg(feature = "amqp")]
mod amqp;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "mqtt")]
mod mqtt;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;

/// Target: Switchboard's req/s at least this share of the bare client's…
const THROUGHPUT_TARGET: f64 = 0.85;
/// …and its p50 at most this multiple of the bare client's.
const LATENCY_TARGET: f64 = 1.15;
/// Deadline of one call, on both sides.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The pattern Switchboard's side serves, as NestJS writes it, and its route (channel,
/// subject, topic). Its own name, so that tests running against the same brokers never see our
/// traffic.
pub const PATTERN: &str = r#"{"cmd":"bench_add"}"#;
pub const ROUTE: &str = PATTERN;
/// The bare side's: another route, so that both sides can be up on one broker at once, of the
/// same length, so that both sides' packets are the same size.
pub const BARE_PATTERN: &str = r#"{"cmd":"bench_raw"}"#;
pub const BARE_ROUTE: &str = BARE_PATTERN;

#[derive(Serialize, Deserialize)]
pub struct AddRequest {
    pub a: i64,
    pub b: i64,
}

#[derive(Serialize, Deserialize)]
pub struct AddReply {
    pub result: i64,
}

#[message_pattern({ cmd = "bench_add" })]
async fn bench_add(req: AddRequest) -> AddReply {
    AddReply {
        result: req.a.wrapping_add(req.b),
    }
}

// ---------------------------------------------------------------- what each broker provides

/// One broker: where it is, and the bare request/reply over its client crate.
pub trait Broker: Sized {
    /// The bare requester.
    type Bare: Caller;
    /// Prepares the broker for one measurement (Kafka: a fresh mock cluster).
    async fn start() -> anyhow::Result<Self>;
    /// The URL Switchboard's server and client use.
    fn url(&self) -> String;
    /// Starts the bare responder and requester; their background tasks go in `tasks`.
    async fn bare(&self, tasks: &mut JoinSet<()>) -> anyhow::Result<Self::Bare>;
}

/// Something that calls `bench_add(a, b)` and returns the result it got back.
pub trait Caller: Clone + Send + Sync + 'static {
    fn call(&self, a: i64, b: i64) -> impl Future<Output = anyhow::Result<i64>> + Send;
    /// Replies that matched no call in flight (and were ignored).
    fn strays(&self) -> u64 {
        0
    }
}

/// The Switchboard side's caller: the typed client, as a user calls.
#[derive(Clone)]
struct SwitchboardCaller(Client);

impl Caller for SwitchboardCaller {
    async fn call(&self, a: i64, b: i64) -> anyhow::Result<i64> {
        Ok(self.0.send(BENCH_ADD, AddRequest { a, b }).await?.result)
    }
}

// ---------------------------------------------------------------- the NestJS packets, by hand
//
// As a careful hand-written client would do it, so that the bare side is a ceiling: ids are
// numbers written as hex on the stack, packets are written straight into one buffer, requests
// and replies are parsed with borrowed fields, the pattern is compared as raw text (as NestJS
// writes it), and calls in flight are found by their number.

/// Request ids: 21 lowercase hex digits, like NestJS's; unique in this process.
#[derive(Clone, Copy)]
pub struct Id {
    n: u64,
    hex: [u8; ID_LEN],
}

const ID_LEN: usize = 21;

impl Id {
    fn next() -> Id {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut hex = [b'0'; ID_LEN];
        let mut v = n;
        for at in (0..ID_LEN).rev() {
            hex[at] = b"0123456789abcdef"[(v & 0xF) as usize];
            v >>= 4;
        }
        Id { n, hex }
    }

    /// The number an id's text stands for.
    fn parse(text: &str) -> Option<u64> {
        (text.len() == ID_LEN)
            .then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.hex).expect("hex digits")
    }
}

impl std::ops::Deref for Id {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"pattern":{"cmd":"bench_raw"},"data":{"a":…,"b":…},"id":"…"}`.
pub fn request_packet(id: &str, a: i64, b: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(br#"{"pattern":"#);
    out.extend_from_slice(BARE_PATTERN.as_bytes());
    out.extend_from_slice(br#","data":{"a":"#);
    put_int(&mut out, a);
    out.extend_from_slice(br#","b":"#);
    put_int(&mut out, b);
    out.extend_from_slice(br#"},"id":""#);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(br#""}"#);
    out
}

#[derive(Deserialize)]
struct RequestPacket<'a> {
    #[serde(borrow)]
    pattern: &'a RawValue,
    data: AddRequest,
    #[serde(borrow, default)]
    id: Option<&'a str>,
}

/// The responder's work on one NestJS request packet: its id and the reply packet, without
/// the id when `with_id` is false (RabbitMQ's replies); `None` for anything else.
pub fn answer(body: &[u8], with_id: bool) -> Option<(&str, Vec<u8>)> {
    let req: RequestPacket<'_> = serde_json::from_slice(body).ok()?;
    if req.pattern.get() != BARE_PATTERN {
        return None;
    }
    let id = req.id?;
    let mut reply = Vec::with_capacity(80);
    reply.extend_from_slice(br#"{"response":{"result":"#);
    put_int(&mut reply, req.data.a.wrapping_add(req.data.b));
    reply.extend_from_slice(br#"},"isDisposed":true"#);
    if with_id {
        reply.extend_from_slice(br#","id":""#);
        reply.extend_from_slice(id.as_bytes());
        reply.push(b'"');
    }
    reply.push(b'}');
    Some((id, reply))
}

/// `{"a":…,"b":…}`: a request's bare `data` (Kafka carries no envelope).
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub fn data_packet(a: i64, b: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(br#"{"a":"#);
    put_int(&mut out, a);
    out.extend_from_slice(br#","b":"#);
    put_int(&mut out, b);
    out.push(b'}');
    out
}

/// The handler's result for a bare `data` value (Kafka carries no envelope).
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub fn answer_data(value: &[u8]) -> Option<Vec<u8>> {
    let req: AddRequest = serde_json::from_slice(value).ok()?;
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(br#"{"result":"#);
    put_int(&mut out, req.a.wrapping_add(req.b));
    out.push(b'}');
    Some(out)
}

#[derive(Deserialize)]
struct ReplyPacket<'a> {
    #[serde(default)]
    response: Option<AddReply>,
    #[serde(default, rename = "isDisposed")]
    is_disposed: Option<bool>,
    #[serde(borrow, default)]
    id: Option<&'a str>,
    #[serde(borrow, default)]
    err: Option<&'a RawValue>,
}

/// A reply packet's id (if it has one) and what it means for the call.
pub fn read_reply(body: &[u8]) -> (Option<&str>, anyhow::Result<i64>) {
    let reply: ReplyPacket<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let text = String::from_utf8_lossy(body);
            return (None, Err(anyhow!("reply is not a NestJS packet ({e}): {text}")));
        }
    };
    let outcome = match (reply.err, reply.is_disposed, reply.response) {
        (Some(err), _, _) if err.get() != "null" => Err(anyhow!("the responder answered with an error: {err}")),
        (_, Some(true), Some(r)) => Ok(r.result),
        _ => Err(anyhow!(
            "reply without a response or without \"isDisposed\":true: {}",
            String::from_utf8_lossy(body)
        )),
    };
    (reply.id, outcome)
}

/// Hashes a call's number as itself (numbers are unique and sequential).
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Calls = HashMap<u64, oneshot::Sender<anyhow::Result<i64>>, std::hash::BuildHasherDefault<IdHasher>>;

/// The bare requester's calls in flight, by id.
#[derive(Default)]
pub struct Pending {
    calls: Mutex<Calls>,
    /// Replies to ids not (or no longer) waiting, ignored as NestJS's clients ignore them.
    stray: AtomicU64,
}

impl Pending {
    /// Registers a call, lets `publish` send it, and waits for its reply.
    pub async fn call<F>(&self, publish: impl FnOnce(Id) -> F) -> anyhow::Result<i64>
    where
        F: Future<Output = anyhow::Result<()>>,
    {
        let id = Id::next();
        let (tx, rx) = oneshot::channel();
        self.calls.lock().expect("pending").insert(id.n, tx);
        let forget = Forget(self, id.n);
        publish(id).await?;
        let reply = tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .map_err(|_| anyhow!("no reply to request {id} within {CALL_TIMEOUT:?}"))?
            .map_err(|_| anyhow!("the reply reader stopped"))?;
        // Answered: `complete` already removed it.
        std::mem::forget(forget);
        reply
    }

    /// Hands a reply to its call.
    pub fn complete(&self, id: &str, outcome: anyhow::Result<i64>) {
        let waiting = Id::parse(id).and_then(|n| self.calls.lock().expect("pending").remove(&n));
        match waiting {
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None => {
                self.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Hands a reply packet (with its `id`) to its call.
    pub fn complete_packet(&self, body: &[u8]) {
        match read_reply(body) {
            (Some(id), outcome) => self.complete(id, outcome),
            (None, outcome) => {
                if let Err(e) = outcome {
                    eprintln!("bare requester: {e:#}");
                }
                self.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn strays(&self) -> u64 {
        self.stray.load(Ordering::Relaxed)
    }
}

/// Removes a call that ended without its reply (error, timeout, cancellation).
struct Forget<'a>(&'a Pending, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.calls.lock().expect("pending").remove(&self.1);
    }
}

// ---------------------------------------------------------------- the closed loop

/// The load of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub in_flight: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub seed: u64,
}

/// One side's measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    pub completed: u64,
    pub window: Duration,
    /// Sorted, ns, of the calls started and answered inside the window's slices.
    pub latencies_ns: Vec<u64>,
    /// CPU this process (both ends of the side measured; the other side is idle) used in the
    /// window.
    pub process_cpu: Option<Duration>,
    /// CPU the whole machine used in the window.
    pub machine_busy: Option<Duration>,
}

impl Sample {
    fn empty() -> Sample {
        Sample {
            completed: 0,
            window: Duration::ZERO,
            latencies_ns: Vec::new(),
            process_cpu: Some(Duration::ZERO),
            machine_busy: Some(Duration::ZERO),
        }
    }

    pub fn req_per_sec(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64()
    }

    pub fn quantile_us(&self, q: f64) -> f64 {
        nearest_rank(&self.latencies_ns, q).map_or(f64::NAN, |ns| ns as f64 / 1000.0)
    }

    pub fn process_cores(&self) -> Option<f64> {
        Some(self.process_cpu?.as_secs_f64() / self.window.as_secs_f64())
    }

    /// Cores used by everything but this process: mostly the broker.
    pub fn other_cores(&self) -> Option<f64> {
        let other = self.machine_busy?.as_secs_f64() - self.process_cpu?.as_secs_f64();
        Some(other.max(0.0) / self.window.as_secs_f64())
    }
}

/// Waits until `caller` is answered once (subscriptions made, consumer groups joined); a call
/// lost while they settle is retried.
async fn first_call<C: Caller>(caller: &C) -> anyhow::Result<()> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match caller.call(20, 22).await {
            Ok(42) => return Ok(()),
            Ok(other) => bail!("first call: wrong result {other}, expected 42"),
            Err(e) if attempts < 3 => eprintln!("(first call failed, retrying: {e:#})"),
            Err(e) => return Err(e.context("the first call failed three times")),
        }
    }
}

/// `load.in_flight` tasks, each calling in a loop for `warmup`, then for `window`, every
/// result checked; adds what the window measured to `total` (latencies unsorted). `n` numbers
/// the phase, so that each gets operands of its own.
async fn phase<C: Caller>(
    caller: &C,
    load: Load,
    n: u64,
    warmup: Duration,
    window: Duration,
    total: &mut Sample,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let warm_end = start + warmup;
    let end = warm_end + window;
    let cpu = cpu_over([std::process::id()], warm_end, end);
    let mut tasks = JoinSet::new();
    for task in 0..load.in_flight {
        let caller = caller.clone();
        let stream = (n << 32) + task as u64 + 1;
        let mut rng = (load.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        tasks.spawn(async move {
            let (mut completed, mut latencies) = (0u64, Vec::new());
            loop {
                let (a, b) = (operand(&mut rng), operand(&mut rng));
                let sent = Instant::now();
                let result = caller.call(a, b).await?;
                let now = Instant::now();
                ensure!(result == a + b, "wrong result {result} for {a} + {b}");
                if now >= end {
                    return anyhow::Ok((completed, latencies));
                }
                if now >= warm_end {
                    completed += 1;
                    if sent >= warm_end {
                        latencies.push(now.duration_since(sent).as_nanos() as u64);
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (n, latencies) = done.context("a caller task panicked")??;
        total.completed += n;
        total.latencies_ns.extend(latencies);
    }
    let ([process_cpu], machine_busy) = cpu.await?;
    total.window += window;
    add_time(&mut total.process_cpu, process_cpu);
    add_time(&mut total.machine_busy, machine_busy);
    Ok(())
}

/// A value in ±10^9 with a varying number of digits (xorshift64*).
fn operand(rng: &mut u64) -> i64 {
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    let r = rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let magnitude = 10i64.pow((r >> 60) as u32 % 10);
    (r as i64 >> 4) % magnitude
}

/// One side of a broker measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Bare,
    Switchboard,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Bare => "bare",
            Side::Switchboard => "switchboard",
        }
    }
}

/// Both sides (or `only` one) on broker `B`: set up at once, each answered once and warmed up
/// once, then measured in turns. `load.duration` is cut into slices of about [`SLICE`], which
/// the sides take in turn, the first rotating each slice (and by `rotate`), so that a slower
/// spell of the machine falls on both alike. A side's sample sums its slices. Everything is
/// torn down after. Errors: [`Failure::WrongReply`] for a wrong or missing reply, else
/// [`Failure::Setup`].
async fn measure<B: Broker>(load: Load, only: Option<Side>, rotate: usize) -> Result<Measured, Failure> {
    let broker = B::start().await?;
    let mut tasks = JoinSet::new();
    let bare = match only {
        Some(Side::Switchboard) => None,
        _ => Some(broker.bare(&mut tasks).await.context("start the bare side")?),
    };
    let switchboard = match only {
        Some(Side::Bare) => None,
        _ => {
            let url = broker.url();
            let server = Microservice::new()
                .handler(BENCH_ADD)
                .listen(url.as_str())
                .start()
                .await
                .with_context(|| format!("start the server on {}", redact(&url)))?;
            let client = Client::builder(&url)
                .timeout(CALL_TIMEOUT)
                .connect()
                .await
                .with_context(|| format!("connect the client to {}", redact(&url)))?;
            Some((server, SwitchboardCaller(client)))
        }
    };
    let outcome = turns(bare.as_ref(), switchboard.as_ref().map(|(_, c)| c), load, rotate).await;
    let strays = bare.as_ref().map_or(0, Caller::strays);
    tasks.shutdown().await;
    if let Some((server, client)) = switchboard {
        client.0.close().await;
        server.shutdown().await.context("shut the server down")?;
    }
    let [bare, switchboard] = outcome.map_err(Failure::WrongReply)?;
    Ok(Measured {
        bare,
        switchboard,
        strays,
    })
}

/// What [`measure`] got: a sample per side measured, and the bare requester's stray replies.
struct Measured {
    bare: Option<Sample>,
    switchboard: Option<Sample>,
    strays: u64,
}

/// [`measure`]'s turns, over the sides that are up.
async fn turns<C: Caller>(
    bare: Option<&C>,
    switchboard: Option<&SwitchboardCaller>,
    load: Load,
    rotate: usize,
) -> anyhow::Result<[Option<Sample>; 2]> {
    if let Some(c) = bare {
        first_call(c).await.context("the bare side")?;
    }
    if let Some(c) = switchboard {
        first_call(c).await.context("the switchboard side")?;
    }
    let mut warm = Sample::empty();
    let mut totals = [bare.map(|_| Sample::empty()), switchboard.map(|_| Sample::empty())];
    let slices = (load.duration.as_secs_f64() / SLICE.as_secs_f64()).round().max(1.0) as u32;
    let slice = load.duration / slices;
    // The first round warms each side up; each later one is a slice for each.
    for k in 0..=slices as usize {
        for j in 0..2 {
            let side = (j + k + rotate) % 2;
            let Some(total) = totals[side].as_mut() else { continue };
            let (warmup, window, total) = match k {
                0 => (load.warmup, Duration::ZERO, &mut warm),
                _ => (SLICE_WARMUP, slice, total),
            };
            let n = (k * 2 + j) as u64;
            let done = match (side, bare, switchboard) {
                (0, Some(c), _) => phase(c, load, n, warmup, window, total).await,
                (1, _, Some(c)) => phase(c, load, n, warmup, window, total).await,
                _ => continue,
            };
            done.with_context(|| format!("the {} side", [Side::Bare, Side::Switchboard][side].label()))?;
        }
    }
    for sample in totals.iter_mut().flatten() {
        sample.latencies_ns.sort_unstable();
    }
    Ok(totals)
}

fn label_strays(strays: u64) -> String {
    if strays == 0 {
        String::new()
    } else {
        format!("  ({strays} stray replies ignored)")
    }
}

// ---------------------------------------------------------------- orchestration and report

/// The brokers compiled into this binary.
pub const COMPILED: &[&str] = &[
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "nats")]
    "nats",
    #[cfg(feature = "mqtt")]
    "mqtt",
    #[cfg(feature = "amqp")]
    "amqp",
    #[cfg(feature = "kafka")]
    "kafka",
];

async fn measure_named(name: &str, load: Load, only: Option<Side>, rotate: usize) -> Result<Measured, Failure> {
    match name {
        #[cfg(feature = "redis")]
        "redis" => measure::<redis::Redis>(load, only, rotate).await,
        #[cfg(feature = "nats")]
        "nats" => measure::<nats::Nats>(load, only, rotate).await,
        #[cfg(feature = "mqtt")]
        "mqtt" => measure::<mqtt::Mqtt>(load, only, rotate).await,
        #[cfg(feature = "amqp")]
        "amqp" => measure::<amqp::Amqp>(load, only, rotate).await,
        #[cfg(feature = "kafka")]
        "kafka" => measure::<kafka::Kafka>(load, only, rotate).await,
        _ => {
            let _ = (load, only, rotate);
            Err(anyhow!("unknown broker {name:?}").into())
        }
    }
}

/// What `--broker` runs.
pub struct Plan {
    pub brokers: Vec<String>,
    pub in_flight: Vec<usize>,
    pub runs: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub quiet_wait: Duration,
    /// Measure only this side (for profiling); no ratios then.
    pub only: Option<Side>,
}

/// Runs the plan and prints the table. Errors: a wrong or missing reply, or a broker that
/// could not be used.
pub fn run(plan: &Plan) -> Result<(), Failure> {
    if let Some(b) = plan.brokers.iter().find(|b| !COMPILED.contains(&b.as_str())) {
        return Err(anyhow!(
            "broker {b:?} is not compiled in (compiled: {COMPILED:?}); build with `--features {b}` or `--features brokers`"
        )
        .into());
    }
    if !plan.in_flight.iter().all(|&n| (1..=4096).contains(&n)) {
        return Err(anyhow!("--broker-in-flight values must be in 1..=4096").into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    println!(
        "switchboard-bench --broker: {} CPUs, load average {}; {} run(s) x ({:?} warm-up + {:?} measured)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        crate::load_average(),
        plan.runs,
        plan.warmup,
        plan.duration,
    );
    println!(
        "  both sides in this one process, on one multi-threaded tokio runtime ({} workers, placed by the \
         kernel); the broker is its own process (Kafka: librdkafka's mock cluster, in this process)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    // results[broker][in_flight][side]: a sample per run, both sides measured in the same runs.
    let mut results = vec![vec![vec![Vec::<Sample>::new(); 2]; plan.in_flight.len()]; plan.brokers.len()];
    for run in 0..plan.runs {
        for (bi, broker) in plan.brokers.iter().enumerate() {
            for (li, &in_flight) in plan.in_flight.iter().enumerate() {
                crate::wait_for_quiet(plan.quiet_wait);
                let load = Load {
                    in_flight,
                    warmup: plan.warmup,
                    duration: plan.duration,
                    seed: 0x5EED ^ ((run as u64) << 40) ^ ((li as u64) << 24) ^ ((bi as u64) << 20),
                };
                let what = || format!("{broker}, {in_flight} in flight, run {}", run + 1);
                let measured = rt
                    .block_on(measure_named(broker, load, plan.only, run + bi + li))
                    .map_err(|f| match f {
                        Failure::WrongReply(e) => Failure::WrongReply(e.context(what())),
                        Failure::Setup(e) => Failure::Setup(e.context(what())),
                    })?;
                let sides = [(Side::Bare, measured.bare), (Side::Switchboard, measured.switchboard)];
                for (si, (side, sample)) in sides.into_iter().enumerate() {
                    let Some(s) = sample else { continue };
                    eprintln!(
                        "run {}/{} {:<6} x{:<4} {:<12} {:>9.0} req/s  p50 {:>8.1} us  p99 {:>8.1} us  process {} other {} cores{}",
                        run + 1,
                        plan.runs,
                        broker,
                        in_flight,
                        side.label(),
                        s.req_per_sec(),
                        s.quantile_us(0.5),
                        s.quantile_us(0.99),
                        crate::fmt_opt(s.process_cores(), 2),
                        crate::fmt_opt(s.other_cores(), 2),
                        if side == Side::Bare {
                            label_strays(measured.strays)
                        } else {
                            String::new()
                        },
                    );
                    results[bi][li][si].push(s);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    report(plan, &results);
    Ok(())
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    crate::median(v.collect())
}

fn median_opt(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    v.collect::<Option<Vec<f64>>>().map(crate::median)
}

fn report(plan: &Plan, results: &[Vec<Vec<Vec<Sample>>>]) {
    println!();
    println!(
        "{:<7} {:>9} {:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "broker", "in-flight", "side", "req/s", "p50(us)", "p99(us)", "proc-cores", "oth-cores"
    );
    let mut verdicts = Vec::new();
    for (bi, broker) in plan.brokers.iter().enumerate() {
        for (li, in_flight) in plan.in_flight.iter().enumerate() {
            for (si, side) in [Side::Bare, Side::Switchboard].iter().enumerate() {
                let runs = &results[bi][li][si];
                if runs.is_empty() {
                    continue; // not measured (`--only`)
                }
                println!(
                    "{:<7} {:>9} {:<12} {:>10.0} {:>10.1} {:>10.1} {:>10} {:>10}",
                    broker,
                    in_flight,
                    side.label(),
                    median(runs.iter().map(Sample::req_per_sec)),
                    median(runs.iter().map(|s| s.quantile_us(0.5))),
                    median(runs.iter().map(|s| s.quantile_us(0.99))),
                    crate::fmt_opt(median_opt(runs.iter().map(Sample::process_cores)), 2),
                    crate::fmt_opt(median_opt(runs.iter().map(Sample::other_cores)), 2),
                );
            }
            if plan.only.is_some() {
                continue;
            }
            // Each run measured both sides in turns: a ratio is the median of the runs' ratios.
            let (bare, sb) = (&results[bi][li][0], &results[bi][li][1]);
            let ratio = |f: fn(&Sample) -> f64| median(bare.iter().zip(sb).map(|(b, s)| f(s) / f(b)));
            let (rps, p50) = (ratio(Sample::req_per_sec), ratio(|s| s.quantile_us(0.5)));
            println!(
                "{:<7} {:>9} {:<12} {:>10.2} {:>10.2} {:>10.2}",
                broker,
                in_flight,
                "ratio",
                rps,
                p50,
                ratio(|s| s.quantile_us(0.99))
            );
            let met = |ok: bool| if ok { "MET" } else { "NOT MET" };
            verdicts.push(format!(
                "{broker} x{in_flight}: throughput {rps:.3}x bare (target >= {THROUGHPUT_TARGET:.2}x): {}; \
                 p50 {p50:.3}x bare (target <= {LATENCY_TARGET:.2}x): {}",
                met(rps >= THROUGHPUT_TARGET),
                met(p50 <= LATENCY_TARGET)
            ));
        }
    }
    println!();
    println!(
        "medians of {} run(s), each measuring both sides in turns. ratio = median of the runs' switchboard / bare \
         (req/s: higher is better; latency: lower is better). proc-cores: CPU of this process (both ends of \
         the side measured); oth-cores: everything else, mostly the broker.",
        plan.runs
    );
    for v in verdicts {
        println!("target {v}");
    }
    #[cfg(feature = "kafka")]
    if plan.brokers.iter().any(|b| b == "kafka") {
        println!("note: {}", kafka::note());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare side in this process: adds, or, when `off_by` is not 0, answers wrongly.
    #[derive(Clone)]
    struct Adder {
        off_by: i64,
    }

    impl Caller for Adder {
        async fn call(&self, a: i64, b: i64) -> anyhow::Result<i64> {
            tokio::task::yield_now().await;
            Ok(a + b + self.off_by)
        }
    }

    #[test]
    fn sides_take_turns_and_each_gets_its_whole_window() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let url = "mem://bench-brokers-turns";
            let server = Microservice::new()
                .handler(BENCH_ADD)
                .listen(url)
                .start()
                .await
                .unwrap();
            let client = SwitchboardCaller(Client::builder(url).connect().await.unwrap());
            let load = Load {
                in_flight: 4,
                warmup: Duration::from_millis(30),
                duration: SLICE * 3,
                seed: 1,
            };
            let [bare, sb] = turns(Some(&Adder { off_by: 0 }), Some(&client), load, 1).await.unwrap();
            for sample in [bare.unwrap(), sb.unwrap()] {
                assert_eq!(sample.window, SLICE * 3, "three slices each");
                assert!(sample.completed > 0 && !sample.latencies_ns.is_empty());
                assert!(sample.latencies_ns.is_sorted());
            }

            // One side only: the other is neither measured nor called.
            let [bare, sb] = turns(None::<&Adder>, Some(&client), load, 0).await.unwrap();
            assert!(bare.is_none());
            assert_eq!(sb.unwrap().window, SLICE * 3);

            // A wrong result fails the measurement and names the side.
            let err = turns(Some(&Adder { off_by: 1 }), None, load, 0).await.unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("bare side") && text.contains("wrong result"), "{text}");

            client.0.close().await;
            server.shutdown().await.unwrap();
        });
    }

    #[test]
    fn bare_packets_round_trip() {
        let req = request_packet("000000000000000000001", 40, -2);
        let (id, reply) = answer(&req, true).expect("a request for our pattern");
        assert_eq!(id, "000000000000000000001");
        let (got, outcome) = read_reply(&reply);
        assert_eq!(got, Some(id));
        assert_eq!(outcome.unwrap(), 38);
        // RabbitMQ's reply has no id; the correlation id property carries it.
        let (_, reply) = answer(&req, false).unwrap();
        let (got, outcome) = read_reply(&reply);
        assert!(got.is_none());
        assert_eq!(outcome.unwrap(), 38);
    }

    #[test]
    fn ids_are_nestjs_shaped_and_found_again() {
        let (a, b) = (Id::next(), Id::next());
        assert_eq!(a.len(), 21);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(Id::parse(&a), Some(a.n));
        assert_eq!(Id::parse("x"), None);
        assert_eq!(Id::parse("00000000000000000000g"), None);
        let data = data_packet(-5, 7);
        assert_eq!(data, br#"{"a":-5,"b":7}"#);
        assert_eq!(answer_data(&data).unwrap(), br#"{"result":2}"#);
    }

    #[test]
    fn bare_packets_are_checked() {
        let other = br#"{"pattern":{"cmd":"sum"},"data":{"a":1,"b":2},"id":"x"}"#;
        assert!(answer(other, true).is_none(), "another pattern is not answered");
        for bad in [
            r#"{"err":{"message":"x"},"isDisposed":true,"id":"1"}"#,
            r#"{"response":{"result":3},"id":"1"}"#,
            r#"{"isDisposed":true,"id":"1"}"#,
            "not json",
        ] {
            assert!(read_reply(bad.as_bytes()).1.is_err(), "{bad}");
        }
    }
}
