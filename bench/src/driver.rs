//! The load generator: C connections, each keeping D NestJS requests in flight.
//!
//! Closed loop: every reply is checked and immediately replaced by a new request on the
//! same connection, so exactly D requests are outstanding per connection at all times.
//!
//! Kept cheap because it shares the two cores with the server under test:
//! - one thread (a current-thread tokio runtime), one task per connection, no channels,
//!   no split socket: each task reads a batch of replies, checks them, appends the
//!   replacement requests to one buffer and writes it with one `write_all`;
//! - no per-request allocation: requests are written straight into the buffer, request ids
//!   encode the slot they occupy (no hash map), replies are parsed with borrowed fields;
//! - timestamps per batch: the replies of one read share one receive time, the requests of
//!   one write one send time (both taken right next to the syscall).
//!
//! The same driver, with the same code path, measures both servers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::frame::{next_frame, put_frame, put_int};

/// How long, after the measured window, outstanding replies may take before it is an error.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The load to apply.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: usize,
    pub in_flight: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Seeds the a,b values (different per run so no two runs send identical bytes).
    pub seed: u64,
    /// What the requests look like.
    pub packets: Packets,
}

/// The shape of the request packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Packets {
    /// `{"pattern","data","id"}`, as NestJS clients write them.
    #[default]
    Canonical,
    /// As a Switchboard client writes them: NestJS 12's `metadata`, holding the caller's time
    /// left (`sb-timeout-ms`), between `data` and `id`.
    Switchboard,
    /// NestJS 12 packets with a trace context in `metadata` and the keys in another order
    /// (`id` first), which a server cannot take by its canonical-order fast path.
    OutOfOrder,
}

/// The outcome of one measurement.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Replies received inside the measured window.
    pub completed: u64,
    /// The measured window.
    pub window: Duration,
    /// Latencies (ns) of requests sent and answered inside the window, sorted.
    pub latencies_ns: Vec<u32>,
    /// CPU time the server process used during the window.
    pub server_cpu: Option<Duration>,
    /// CPU time this (driver) process used during the window.
    pub driver_cpu: Option<Duration>,
    /// CPU time the whole machine was busy during the window (10 ms resolution).
    pub machine_busy: Option<Duration>,
}

impl Measurement {
    /// Nothing measured yet: slices are added to it.
    fn empty() -> Measurement {
        Measurement {
            completed: 0,
            window: Duration::ZERO,
            latencies_ns: Vec::new(),
            server_cpu: Some(Duration::ZERO),
            driver_cpu: Some(Duration::ZERO),
            machine_busy: Some(Duration::ZERO),
        }
    }

    pub fn req_per_sec(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64()
    }

    /// The q-quantile latency in µs (nearest rank).
    pub fn quantile_us(&self, q: f64) -> f64 {
        nearest_rank(&self.latencies_ns, q).map_or(f64::NAN, |ns| f64::from(ns) / 1000.0)
    }

    /// Server CPU per request, in µs.
    pub fn server_cpu_us_per_req(&self) -> Option<f64> {
        self.server_cpu
            .map(|c| c.as_secs_f64() * 1e6 / self.completed.max(1) as f64)
    }

    /// Share of one core the driver used during the window.
    pub fn driver_cores(&self) -> Option<f64> {
        self.driver_cpu.map(|c| c.as_secs_f64() / self.window.as_secs_f64())
    }

    /// Share of cores the server used during the window.
    pub fn server_cores(&self) -> Option<f64> {
        self.server_cpu.map(|c| c.as_secs_f64() / self.window.as_secs_f64())
    }

    /// Cores busy with anything but the server and the driver (other processes, and
    /// interrupt time the kernel does not charge to them): a measure of interference.
    pub fn other_cores(&self) -> Option<f64> {
        let ours = self.server_cpu? + self.driver_cpu?;
        Some((self.machine_busy?.as_secs_f64() - ours.as_secs_f64()).max(0.0) / self.window.as_secs_f64())
    }
}

/// When the warm-up ends and the measured window ends.
#[derive(Debug, Clone, Copy)]
struct Times {
    warm_end: Instant,
    end: Instant,
}

/// The nearest-rank q-quantile of sorted values; `None` when there are none.
pub fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let n = sorted.len();
    (n > 0).then(|| sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
}

/// A server under load: where it listens and which process it is (for its CPU time).
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub port: u16,
    pub pid: u32,
}

/// The measured length of one slice, about. The servers take turns in slices this short so
/// that a slower spell of the machine (a neighbour on the host, a frequency change) falls on
/// all of them alike: on a shared 2-vCPU machine a fixed loop was seen to take 22 to 36 ms
/// from one try to the next, in spells of a few hundred milliseconds.
pub(crate) const SLICE: Duration = Duration::from_millis(100);

/// Load applied at the start of each slice before it counts: the server was idle while the
/// others had their turn, and its caches hold their data.
pub(crate) const SLICE_WARMUP: Duration = Duration::from_millis(20);

/// Applies `load` to each target in turn, on a single-threaded runtime of its own, and
/// returns one measurement per target, in order.
///
/// Each target is warmed up once (`load.warmup`), then `load.duration` is cut into slices of
/// about [`SLICE`] and the targets take turns, slice by slice, the order rotating by one each
/// slice (and by `rotate` more), so every target is measured under the same conditions. A
/// target's measurement sums its slices. Any wrong, missing or unexpected reply is an error.
pub fn run(targets: &[Target], load: Load, rotate: usize) -> anyhow::Result<Vec<Measurement>> {
    ensure!(
        load.connections >= 1 && load.connections <= 0xFFFF,
        "connections must be 1..=65535"
    );
    ensure!(
        load.in_flight >= 1 && load.in_flight <= 0xFFFF,
        "in-flight must be 1..=65535"
    );
    ensure!(!targets.is_empty(), "no server to measure");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        // Connect everything first, so connection set-up is not part of the run.
        let mut conns = Vec::with_capacity(targets.len());
        for target in targets {
            let mut these = Vec::with_capacity(load.connections);
            for i in 0..load.connections {
                let stream = TcpStream::connect(("127.0.0.1", target.port))
                    .await
                    .with_context(|| format!("connect to 127.0.0.1:{}", target.port))?;
                stream.set_nodelay(true)?;
                let seed = load.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                these.push(Conn::new(i as u16, stream, load.in_flight, seed, load.packets));
            }
            conns.push(these);
        }
        let mut warm = Measurement::empty();
        for (t, target) in targets.iter().enumerate() {
            phase(&mut conns[t], target.pid, load.warmup, Duration::ZERO, &mut warm).await?;
        }
        let slices = (load.duration.as_secs_f64() / SLICE.as_secs_f64()).round().max(1.0) as u32;
        let slice = load.duration / slices;
        let mut totals: Vec<Measurement> = targets.iter().map(|_| Measurement::empty()).collect();
        for k in 0..slices as usize {
            for j in 0..targets.len() {
                let t = (j + k + rotate) % targets.len();
                phase(&mut conns[t], targets[t].pid, SLICE_WARMUP, slice, &mut totals[t]).await?;
            }
        }
        for m in &mut totals {
            m.latencies_ns.sort_unstable();
        }
        Ok(totals)
    })
}

/// Drives `conns` (one server's connections) for `warmup`, then measures `window`, then lets
/// the outstanding requests drain; adds what it measured to `total` (latencies unsorted).
async fn phase(
    conns: &mut Vec<Conn>,
    server_pid: u32,
    warmup: Duration,
    window: Duration,
    total: &mut Measurement,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let times = Times {
        warm_end: start + warmup,
        end: start + warmup + window,
    };
    let mut tasks = JoinSet::new();
    for conn in conns.drain(..) {
        tasks.spawn(connection(conn, times));
    }
    let cpu = cpu_over([server_pid, std::process::id()], times.warm_end, times.end);
    while let Some(done) = tasks.join_next().await {
        let (mut conn, completed) = done.context("a driver task panicked")??;
        total.completed += completed;
        total.latencies_ns.extend_from_slice(&conn.latencies_ns);
        conn.latencies_ns.clear();
        conns.push(conn);
    }
    conns.sort_by_key(|c| c.id);
    let ([server_cpu, driver_cpu], machine_busy) = cpu.await?;
    total.window += window;
    add_time(&mut total.server_cpu, server_cpu);
    add_time(&mut total.driver_cpu, driver_cpu);
    add_time(&mut total.machine_busy, machine_busy);
    Ok(())
}

/// The CPU time of processes `pids`, and the machine's busy time, over exactly
/// `warm_end..end`: read by a task of its own, spawned now, at both ends.
pub(crate) fn cpu_over<const N: usize>(
    pids: [u32; N],
    warm_end: Instant,
    end: Instant,
) -> tokio::task::JoinHandle<([Option<Duration>; N], Option<Duration>)> {
    tokio::spawn(async move {
        tokio::time::sleep_until(warm_end.into()).await;
        let before = (pids.map(cpu_time), machine_busy());
        tokio::time::sleep_until(end.into()).await;
        let after = (pids.map(cpu_time), machine_busy());
        let diff = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
        (
            std::array::from_fn(|i| diff(before.0[i], after.0[i])),
            diff(before.1, after.1),
        )
    })
}

/// Adds `part` to a sum of slices' times, which is unknown once any part is.
pub(crate) fn add_time(sum: &mut Option<Duration>, part: Option<Duration>) {
    *sum = sum.zip(part).map(|(s, p)| s + p);
}

/// One outstanding request.
#[derive(Clone, Copy)]
struct Slot {
    seq: u64,
    expect: i64,
    sent: Instant,
    busy: bool,
}

/// One connection and what it keeps between phases (its request sequence, its buffers).
struct Conn {
    id: u16,
    stream: TcpStream,
    slots: Vec<Slot>,
    reqs: Gen,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    reissued: Vec<usize>,
    /// Latencies of the phase being driven, kept between phases for their capacity.
    latencies_ns: Vec<u32>,
}

impl Conn {
    fn new(id: u16, stream: TcpStream, depth: usize, seed: u64, packets: Packets) -> Conn {
        let slot = Slot {
            seq: 0,
            expect: 0,
            sent: Instant::now(),
            busy: false,
        };
        Conn {
            id,
            stream,
            slots: vec![slot; depth],
            reqs: Gen {
                rng: seed | 1,
                seq: 0,
                body: Vec::with_capacity(256),
                packets,
            },
            rbuf: Vec::with_capacity(64 * 1024),
            wbuf: Vec::with_capacity(16 * 1024),
            reissued: Vec::with_capacity(depth),
            latencies_ns: Vec::with_capacity(1 << 16),
        }
    }
}

/// The per-connection closed loop of one phase: fills every slot, replaces each reply by a
/// new request until `times.end`, then waits for the rest.
/// Returns the connection and the replies received inside the window.
async fn connection(mut c: Conn, times: Times) -> anyhow::Result<(Conn, u64)> {
    let conn = c.id;
    let mut completed = 0;
    let Conn {
        stream,
        slots,
        reqs,
        rbuf,
        wbuf,
        reissued,
        latencies_ns,
        ..
    } = &mut c;

    for (i, slot) in slots.iter_mut().enumerate() {
        reqs.request(conn, i, slot, wbuf);
    }
    let sent = Instant::now();
    slots.iter_mut().for_each(|s| s.sent = sent);
    stream.write_all(wbuf).await.context("write requests")?;
    wbuf.clear();
    let mut outstanding = slots.len();

    let deadline = tokio::time::sleep_until((times.end + DRAIN_TIMEOUT).into());
    tokio::pin!(deadline);
    while outstanding > 0 {
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(64 * 1024);
        }
        let read = tokio::select! {
            biased;
            read = stream.read_buf(rbuf) => read.context("read replies")?,
            () = &mut deadline => bail!(
                "connection {conn}: {outstanding} replies still missing {DRAIN_TIMEOUT:?} after the end of the run"
            ),
        };
        if read == 0 {
            bail!("connection {conn}: the server closed the connection with {outstanding} requests unanswered");
        }
        let now = Instant::now();
        let in_window = now >= times.warm_end && now < times.end;
        let stopping = now >= times.end;
        let mut used = 0;
        while let Some((range, len)) =
            next_frame(&rbuf[used..]).with_context(|| format!("connection {conn}: bad reply framing"))?
        {
            let body = &rbuf[used + range.start..used + range.end];
            let i = check_reply(conn, body, slots)?;
            outstanding -= 1;
            if in_window {
                completed += 1;
                if slots[i].sent >= times.warm_end {
                    let ns = now.duration_since(slots[i].sent).as_nanos();
                    latencies_ns.push(u32::try_from(ns).unwrap_or(u32::MAX));
                }
            }
            if !stopping {
                reqs.request(conn, i, &mut slots[i], wbuf);
                reissued.push(i);
                outstanding += 1;
            }
            used += len;
        }
        rbuf.drain(..used);
        if !wbuf.is_empty() {
            let sent = Instant::now();
            for i in reissued.drain(..) {
                slots[i].sent = sent;
            }
            stream.write_all(wbuf).await.context("write requests")?;
            wbuf.clear();
        }
    }
    ensure!(
        rbuf.is_empty(),
        "connection {conn}: {} bytes after the last reply",
        rbuf.len()
    );
    Ok((c, completed))
}

/// Writes requests: unique ids, varying operands.
struct Gen {
    rng: u64,
    seq: u64,
    body: Vec<u8>,
    packets: Packets,
}

/// The `metadata` of the out-of-order packets: a W3C trace context, as NestJS 12's hook would add.
const METADATA: &[u8] = br#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;

impl Gen {
    /// Appends a fresh framed request for slot `i` to `out` and records what to expect.
    fn request(&mut self, conn: u16, i: usize, slot: &mut Slot, out: &mut Vec<u8>) {
        let a = self.operand();
        let b = self.operand();
        self.seq += 1;
        *slot = Slot {
            seq: self.seq,
            expect: a + b,
            sent: slot.sent,
            busy: true,
        };
        let body = &mut self.body;
        body.clear();
        if self.packets == Packets::OutOfOrder {
            body.extend_from_slice(br#"{"id":""#);
            put_id(body, conn, i as u16, self.seq);
            body.extend_from_slice(br#"","pattern":{"cmd":"add"},"metadata":"#);
            body.extend_from_slice(METADATA);
            body.extend_from_slice(br#","data":{"b":"#);
            put_int(body, b);
            body.extend_from_slice(br#","a":"#);
            put_int(body, a);
            body.extend_from_slice(b"}}");
        } else {
            body.extend_from_slice(br#"{"pattern":{"cmd":"add"},"data":{"a":"#);
            put_int(body, a);
            body.extend_from_slice(br#","b":"#);
            put_int(body, b);
            body.extend_from_slice(match self.packets {
                // A Switchboard client's default timeout, as the time left when it sends.
                Packets::Switchboard => br#"},"metadata":{"sb-timeout-ms":"5000"},"id":""#,
                _ => br#"},"id":""#,
            });
            put_id(body, conn, i as u16, self.seq);
            body.extend_from_slice(b"\"}");
        }
        put_frame(out, body);
    }

    /// A value in ±10^9 with a varying number of digits (xorshift64*).
    fn operand(&mut self) -> i64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let magnitude = 10i64.pow((r >> 60) as u32 % 10); // 1 .. 10^9
        (r as i64 >> 4) % magnitude
    }
}

/// Request ids are 21 lowercase hex digits like NestJS's: connection (4), slot (4),
/// sequence number (13).
const ID_LEN: usize = 21;

fn put_id(out: &mut Vec<u8>, conn: u16, slot: u16, seq: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; ID_LEN];
    let fields = [(u64::from(conn), 0..4), (u64::from(slot), 4..8), (seq, 8..21)];
    for (value, range) in fields {
        let mut v = value;
        for at in range.rev() {
            id[at] = HEX[(v & 0xF) as usize];
            v >>= 4;
        }
    }
    out.extend_from_slice(&id);
}

fn parse_id(id: &str) -> Option<(u16, usize, u64)> {
    if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&id[r], 16).ok();
    Some((hex(0..4)? as u16, hex(4..8)? as usize, hex(8..21)?))
}

#[derive(Deserialize)]
struct ReplyPacket<'a> {
    #[serde(default)]
    response: Option<AddReply>,
    #[serde(default, rename = "isDisposed")]
    is_disposed: Option<bool>,
    #[serde(borrow)]
    id: &'a str,
    #[serde(default, borrow)]
    err: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AddReply {
    result: i64,
}

/// Checks one reply against its request; frees and returns its slot.
///
/// Replies in exactly the form NestJS (and both servers) write are checked by a strict
/// byte-level matcher; anything else goes through a full JSON parse and is checked field by
/// field. Either way the id, the result and `isDisposed` are verified. The matcher halves
/// the driver's cost per reply, which matters because the driver shares the machine with
/// the server: a slower driver would cap the ceiling and flatter Switchboard.
fn check_reply(conn: u16, body: &[u8], slots: &mut [Slot]) -> anyhow::Result<usize> {
    if let Some((result, id)) = canonical_reply(body) {
        return check_fields(conn, body, slots, id, None, Some(true), Some(result));
    }
    let text = || String::from_utf8_lossy(body).into_owned();
    let reply: ReplyPacket<'_> = serde_json::from_slice(body)
        .with_context(|| format!("connection {conn}: reply is not a NestJS reply packet: {}", text()))?;
    check_fields(
        conn,
        body,
        slots,
        reply.id,
        reply.err,
        reply.is_disposed,
        reply.response.map(|r| r.result),
    )
}

/// `{"response":{"result":<int>},"isDisposed":true,"id":"<21 chars>"}`, exactly.
fn canonical_reply(body: &[u8]) -> Option<(i64, &str)> {
    let rest = body.strip_prefix(br#"{"response":{"result":"#)?;
    let (negative, rest) = match rest.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // JSON integers: no leading zeros; at most 18 digits cannot overflow i64.
    if digits == 0 || digits > 18 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let magnitude = rest[..digits].iter().fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
    let rest = rest[digits..].strip_prefix(br#"},"isDisposed":true,"id":""#)?;
    let (id, tail) = rest.split_at_checked(ID_LEN)?;
    if tail != b"\"}" {
        return None;
    }
    Some((
        if negative { -magnitude } else { magnitude },
        std::str::from_utf8(id).ok()?,
    ))
}

fn check_fields(
    conn: u16,
    body: &[u8],
    slots: &mut [Slot],
    id: &str,
    err: Option<&RawValue>,
    is_disposed: Option<bool>,
    result: Option<i64>,
) -> anyhow::Result<usize> {
    let text = || String::from_utf8_lossy(body).into_owned();
    let Some((c, i, seq)) = parse_id(id) else {
        bail!("connection {conn}: reply carries an id that was never sent: {}", text());
    };
    let slot = match slots.get_mut(i) {
        Some(slot) if c == conn && slot.busy && slot.seq == seq => slot,
        _ => bail!(
            "connection {conn}: reply to an unknown or already answered request: {}",
            text()
        ),
    };
    if let Some(err) = err {
        bail!(
            "connection {conn}: the server answered with an error {}: {}",
            err.get(),
            text()
        );
    }
    ensure!(
        is_disposed == Some(true),
        "connection {conn}: reply without \"isDisposed\":true: {}",
        text()
    );
    let Some(result) = result else {
        bail!("connection {conn}: reply without a response: {}", text());
    };
    ensure!(
        result == slot.expect,
        "connection {conn}: wrong result {result}, expected {}: {}",
        slot.expect,
        text()
    );
    slot.busy = false;
    Ok(i)
}

/// Total CPU time of every thread of process `pid` (scheduler statistics, ns precision;
/// falls back to `stat` ticks, assumed 100 Hz, where schedstat is missing).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let mut total_ns: u64 = 0;
    let mut any = false;
    for task in std::fs::read_dir(&dir).ok()? {
        let path = task.ok()?.path();
        // A thread may exit between listing and reading: skip it.
        if let Ok(s) = std::fs::read_to_string(path.join("schedstat"))
            && let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok())
        {
            total_ns += ns;
            any = true;
        }
    }
    if any {
        return Some(Duration::from_nanos(total_ns));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Busy time of all CPUs together since boot, from `/proc/stat` (user, nice, system, irq,
/// softirq; ticks assumed 100 Hz).
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    let ticks = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_take_turns_and_each_gets_its_whole_window() {
        // Two ceiling servers in this process, on a runtime of their own.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let targets: Vec<Target> = (0..2)
            .map(|_| {
                let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
                let port = listener.local_addr().unwrap().port();
                rt.spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(crate::ceiling::connection(stream));
                    }
                });
                Target {
                    port,
                    pid: std::process::id(),
                }
            })
            .collect();
        let load = Load {
            connections: 2,
            in_flight: 4,
            warmup: Duration::from_millis(50),
            duration: SLICE * 3,
            seed: 1,
            packets: Packets::Canonical,
        };
        let measured = run(&targets, load, 1).unwrap();
        assert_eq!(measured.len(), 2);
        for m in &measured {
            assert_eq!(m.window, SLICE * 3, "three slices each");
            assert!(m.completed > 0 && !m.latencies_ns.is_empty());
            assert!(m.latencies_ns.is_sorted());
            assert!(m.server_cpu.is_some());
        }
    }

    #[test]
    fn ids_round_trip() {
        let mut out = Vec::new();
        put_id(&mut out, 3, 63, 0x1_2345_6789);
        let id = std::str::from_utf8(&out).unwrap();
        assert_eq!(id.len(), 21);
        assert_eq!(parse_id(id), Some((3, 63, 0x1_2345_6789)));
        assert_eq!(parse_id("0003003f000012345678G"), None);
    }

    /// One request of this shape, checked to expect its operands' sum: its body, and parsed.
    fn one_request(packets: Packets) -> (String, serde_json::Value) {
        let mut reqs = Gen {
            rng: 7,
            seq: 0,
            body: Vec::new(),
            packets,
        };
        let mut slot = Slot {
            seq: 0,
            expect: 0,
            sent: Instant::now(),
            busy: false,
        };
        let mut wire = Vec::new();
        reqs.request(0, 0, &mut slot, &mut wire);
        let (range, _) = next_frame(&wire).unwrap().unwrap();
        let body = std::str::from_utf8(&wire[range]).unwrap().to_owned();
        let req: serde_json::Value = serde_json::from_str(&body).unwrap();
        let sum = req["data"]["a"].as_i64().unwrap() + req["data"]["b"].as_i64().unwrap();
        assert_eq!(sum, slot.expect);
        (body, req)
    }

    #[test]
    fn meta_packets_are_nestjs_12_packets_in_another_order() {
        let (body, req) = one_request(Packets::OutOfOrder);
        assert!(body.starts_with(r#"{"id":""#), "{body}");
        assert_eq!(req["pattern"], serde_json::json!({"cmd": "add"}));
        assert!(req["metadata"]["traceparent"].is_string(), "{body}");
    }

    #[test]
    fn switchboard_packets_carry_the_time_left_where_a_switchboard_client_writes_it() {
        let (body, req) = one_request(Packets::Switchboard);
        // NestJS's own key order, which the server's fast path takes.
        assert!(body.starts_with(r#"{"pattern":{"cmd":"add"},"data":{"a":"#), "{body}");
        assert!(
            body.contains(r#"},"metadata":{"sb-timeout-ms":"5000"},"id":""#),
            "{body}"
        );
        assert_eq!(req["metadata"]["sb-timeout-ms"], "5000");
    }

    #[test]
    fn replies_are_checked() {
        let mut reqs = Gen {
            rng: 7,
            seq: 0,
            body: Vec::new(),
            packets: Packets::Canonical,
        };
        let mut slots = vec![
            Slot {
                seq: 0,
                expect: 0,
                sent: Instant::now(),
                busy: false
            };
            2
        ];
        let mut wire = Vec::new();
        reqs.request(0, 1, &mut slots[1], &mut wire);
        let (range, _) = next_frame(&wire).unwrap().unwrap();
        let req: serde_json::Value = serde_json::from_slice(&wire[range]).unwrap();
        let sum = req["data"]["a"].as_i64().unwrap() + req["data"]["b"].as_i64().unwrap();
        let id = req["id"].as_str().unwrap();
        let wrong = format!(
            r#"{{"response":{{"result":{}}},"isDisposed":true,"id":"{id}"}}"#,
            sum + 1
        );
        assert!(
            check_reply(0, wrong.as_bytes(), &mut slots)
                .unwrap_err()
                .to_string()
                .contains("wrong result")
        );
        let open = format!(r#"{{"response":{{"result":{sum}}},"id":"{id}"}}"#);
        assert!(check_reply(0, open.as_bytes(), &mut slots).is_err());
        let good = format!(r#"{{"response":{{"result":{sum}}},"isDisposed":true,"id":"{id}"}}"#);
        assert_eq!(check_reply(0, good.as_bytes(), &mut slots).unwrap(), 1);
        // The same reply twice is an unknown request.
        assert!(
            check_reply(0, good.as_bytes(), &mut slots)
                .unwrap_err()
                .to_string()
                .contains("unknown")
        );
    }

    #[test]
    fn fast_and_slow_paths_check_the_same_things() {
        let mut reqs = Gen {
            rng: 11,
            seq: 0,
            body: Vec::new(),
            packets: Packets::Canonical,
        };
        let mut slots = vec![
            Slot {
                seq: 0,
                expect: 0,
                sent: Instant::now(),
                busy: false
            };
            1
        ];
        let mut wire = Vec::new();
        reqs.request(0, 0, &mut slots[0], &mut wire);
        let (range, _) = next_frame(&wire).unwrap().unwrap();
        let req: serde_json::Value = serde_json::from_slice(&wire[range]).unwrap();
        let sum = req["data"]["a"].as_i64().unwrap() + req["data"]["b"].as_i64().unwrap();
        let id = req["id"].as_str().unwrap();
        let good = format!(r#"{{"response":{{"result":{sum}}},"isDisposed":true,"id":"{id}"}}"#);
        assert_eq!(canonical_reply(good.as_bytes()), Some((sum, id)));
        // Other key orders and spacing take the slow path and are checked just the same.
        let reordered = format!(r#"{{"isDisposed":true, "id":"{id}","response":{{"result":{sum}}}}}"#);
        assert!(canonical_reply(reordered.as_bytes()).is_none());
        assert_eq!(check_reply(0, reordered.as_bytes(), &mut slots).unwrap(), 0);
        for bad in [
            format!(r#"{{"response":{{"result":{sum}}},"isDisposed":false,"id":"{id}"}}"#),
            format!(
                r#"{{"response":{{"result":{}}},"isDisposed":true,"id":"{id}"}}"#,
                sum - 1
            ),
            format!(r#"{{"err":{{"message":"x"}},"isDisposed":true,"id":"{id}"}}"#),
            format!(r#"{{"isDisposed":true,"id":"{id}"}}"#),
        ] {
            slots[0].busy = true;
            assert!(check_reply(0, bad.as_bytes(), &mut slots).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_matcher_is_strict() {
        let ok = |s: &str| canonical_reply(s.as_bytes()).map(|(n, _)| n);
        let id = "000000010000000000001";
        assert_eq!(
            ok(&format!(
                r#"{{"response":{{"result":-12}},"isDisposed":true,"id":"{id}"}}"#
            )),
            Some(-12)
        );
        assert_eq!(
            ok(&format!(
                r#"{{"response":{{"result":0}},"isDisposed":true,"id":"{id}"}}"#
            )),
            Some(0)
        );
        assert_eq!(
            ok(&format!(
                r#"{{"response":{{"result":012}},"isDisposed":true,"id":"{id}"}}"#
            )),
            None
        );
        assert_eq!(
            ok(&format!(
                r#"{{"response":{{"result":1.5}},"isDisposed":true,"id":"{id}"}}"#
            )),
            None
        );
        assert_eq!(
            ok(&format!(
                r#"{{"response":{{"result":1}},"isDisposed":true,"id":"{id}"}} "#
            )),
            None
        );
        assert_eq!(
            ok(&format!(
                r#"{{"response":{{"result":1}},"isDisposed":true,"id":"{id}x"}}"#
            )),
            None
        );
    }
}
