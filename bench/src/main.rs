//! Switchboard's TCP transport against a bare tokio "ceiling" server, in one run; and, with
//! `--broker`, each broker transport against its bare client crate (see [`brokers`]).
//!
//! ```text
//! cargo run --release -p switchboard-bench -- [--runs 3] [--duration-secs 5] [--scenario 4x64,1x1]
//! cargo run --release -p switchboard-bench --features brokers -- --broker redis,nats,mqtt,amqp,kafka \
//!     [--broker-in-flight 1,32] [--runs 3] [--duration-secs 5]
//! ```
//!
//! Each run starts a fresh child process per server (this binary re-executed with the hidden
//! `--serve bare|switchboard|…`), each with its own multi-threaded tokio runtime, so the driver
//! and a server never share a runtime. The driver (this process, one thread, current-thread
//! runtime) applies the same closed-loop load to every server, the servers taking turns in
//! slices of a tenth of a second (see [`driver::run`]) so that a drift of the machine's speed
//! falls on all of them alike; it checks every reply and prints, per server, the median of
//! the runs and, against the ceiling, the median of the runs' ratios.
//!
//! CPU placement (`--pin`, default `auto`): throughput scenarios put the driver on one CPU
//! and the server on the others; the 1x1 latency scenario puts both on one CPU. Left to the
//! kernel (`--pin none`), results on a 2-vCPU machine are bimodal; see [`Placement::of`].
//!
//! It is a measurement, not a test: it exits 0 whether or not the targets are met, 1 when a
//! server gave a wrong or missing reply, 2 when the benchmark could not run, 3 when it ran
//! out of time. Server children exit when this process does, however it ends (they watch
//! their stdin, which only this process holds).

mod brokers;
mod ceiling;
mod codec;
mod driver;
mod frame;
mod mem;
mod profile;
mod saga;
mod serve;
mod store;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

use driver::{Load, Measurement, Packets};

/// Throughput target: switchboard/ceiling req/s in the multi-request scenarios.
const THROUGHPUT_TARGET: f64 = 0.95;
/// Server CPU target: switchboard/ceiling CPU time per request in the multi-request scenarios.
const CPU_TARGET: f64 = 1.10;
/// Latency target: switchboard/ceiling p50 in the 1×1 scenario.
const LATENCY_TARGET: f64 = 1.05;

#[derive(Parser, Debug)]
#[command(
    about = "Throughput and latency of Switchboard's TCP transport against a bare tokio ceiling, \
             or (--broker) of its broker transports against their bare client crates"
)]
struct Args {
    /// Measure these broker transports instead of TCP, each against its bare client crate doing
    /// the same NestJS request/reply by hand (comma-separated: redis,nats,mqtt,amqp,kafka; each
    /// needs its cargo feature, or `--features brokers`). Brokers on 127.0.0.1 at their default
    /// ports (RabbitMQ as guest/guest); Kafka is librdkafka's mock cluster, in this process.
    #[arg(long, value_delimiter = ',')]
    broker: Vec<String>,
    /// With --broker: calls in flight, one level per measurement (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32])]
    broker_in_flight: Vec<usize>,
    /// Scenarios as CONNECTIONSxIN_FLIGHT, comma-separated; `+sb` for packets as a Switchboard
    /// client writes them (its time left in `metadata`), `+meta` for NestJS 12 packets with a
    /// trace context in `metadata` and another key order (default: 4x64,4x64+sb,4x64+meta,1x1,
    /// then the `mem://` and policy rows; scenarios named here run alone).
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Adds a scenario with this many connections (with --in-flight, default 64).
    #[arg(long)]
    connections: Option<usize>,
    /// Adds a scenario with this many requests in flight per connection (with --connections, default 4).
    #[arg(long)]
    in_flight: Option<usize>,
    /// Measured seconds per server, scenario and run.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Warm-up seconds before measuring (load applied, nothing recorded); over TCP and with
    /// --broker, for each server (side) at the start of each run.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Runs; tables show their medians. Over TCP (and with --broker) the servers (the two
    /// sides) take turns in slices within a run, and a ratio is the median of the runs' ratios.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Worker threads of each server's runtime (0: tokio's default, one per CPU the server may use).
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    /// CPU placement. split: driver on the first allowed CPU, server on the others;
    /// same: driver and server both on the first CPU; none: the kernel decides;
    /// auto: split for throughput scenarios, same for 1x1 (see `Placement::of`).
    #[arg(long, value_enum, default_value = "auto")]
    pin: Pin,
    /// Before each measurement (over TCP and with --broker, each run) wait (up to this long) until the machine
    /// is idle, since other processes' bursts skew results; 0 disables.
    #[arg(long, default_value_t = 20.0)]
    quiet_wait_secs: f64,
    /// Measure only one server (for profiling; with --broker: `bare` or `switchboard`); no
    /// ratios then.
    #[arg(long, value_enum)]
    only: Option<Kind>,
    /// Also measure these variants of the Switchboard server, each against the same ceiling
    /// (comma-separated): `layer` (one no-op `Microservice::layer`), `state` (the handler
    /// takes `State`).
    #[arg(long, value_enum, value_delimiter = ',')]
    with: Vec<Kind>,
    /// The in-process row only: `mem://` calls through `Client` on one core, against a bare
    /// JSON round trip (see `mem`).
    #[arg(long)]
    mem_only: bool,
    /// The codec rows only: `Client` calls with NestJS's JSON against the same with
    /// `?codec=msgpack`, over TCP and `mem://`, as msgpack/JSON ratios (see `codec`).
    #[arg(long)]
    codec_only: bool,
    /// The event store rows only: appends and replay on SQLite against a bare rusqlite loop,
    /// and with `--features postgres` PostgreSQL against a bare sqlx loop (see `store`).
    #[arg(long)]
    store_only: bool,
    /// The saga rows only: three-step sagas over `mem://` participants on the SQLite saga log
    /// (NORMAL and FULL), and with `--features postgres` on PostgreSQL, each against the same
    /// three calls made with the client directly (see `saga`).
    #[arg(long)]
    saga_only: bool,
    /// Sagas in flight (concurrent starters, each in a closed loop) in the saga rows.
    #[arg(long, default_value_t = 1000)]
    saga_in_flight: usize,
    /// The resilience row only: what a closed breaker and the whole client policy cost per
    /// `mem://` call (see `mem::run_policy`).
    #[arg(long)]
    policy_only: bool,
    /// Calls in flight for the in-process row.
    #[arg(long, default_value_t = 64)]
    mem_in_flight: usize,
    /// Profiling: serve this kind and drive it with `--requests` pipelined requests in one
    /// thread, a fixed workload for instruction counts (callgrind); prints nothing else.
    #[arg(long, value_enum)]
    profile: Option<Kind>,
    /// Profiling: `--requests` calls through a client with this policy side (`layered`,
    /// `breaker`, `policy`, `guarded`, `switchboard`), 64 in flight, on one thread, a fixed
    /// workload for instruction counts (callgrind); `--profile-tcp` calls over TCP.
    #[arg(long, value_enum)]
    profile_calls: Option<mem::Side>,
    /// With `--profile`: NestJS 12 packets with `metadata` (a trace context, between `data`
    /// and `id`, as NestJS 12 writes them).
    #[arg(long)]
    profile_meta: bool,
    /// With `--profile-calls`: over TCP instead of `mem://`.
    #[arg(long)]
    profile_tcp: bool,
    /// Requests for `--profile`.
    #[arg(long, default_value_t = 100_000)]
    requests: usize,
    /// Internal: run as the server child process of this kind.
    #[arg(long, value_enum, hide = true)]
    serve: Option<Kind>,
    /// Internal: CPUs the server child pins itself to.
    #[arg(long, value_delimiter = ',', hide = true)]
    cpus: Vec<usize>,
    /// Internal: run as the OTLP collector child that the `traced` server exports to.
    #[arg(long, hide = true)]
    collect: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// The hand-written tokio server.
    #[value(name = "bare", alias = "ceiling")]
    Ceiling,
    /// `Microservice` with the `add` handler.
    Switchboard,
    /// The same with one no-op `Microservice::layer`.
    #[value(name = "layer")]
    SwitchboardLayer,
    /// The same with a handler that takes `State`.
    #[value(name = "state")]
    SwitchboardState,
    /// Tracing on (feature `observability`): every span sampled and exported in batches over
    /// OTLP to a collector in a process of its own, as in production (`--profile traced`: in
    /// the server's process, its decoding counted).
    #[value(name = "traced")]
    Traced,
    /// Tracing compiled in and set up, sampling nothing (`OTEL_TRACES_SAMPLER=always_off`).
    #[value(name = "unsampled")]
    Unsampled,
    /// Metrics on: the Prometheus recorder installed.
    #[value(name = "metered")]
    Metered,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Ceiling => "ceiling",
            Kind::Switchboard => "switchboard",
            Kind::SwitchboardLayer => "sb+layer",
            Kind::SwitchboardState => "sb+state",
            Kind::Traced => "sb+traced",
            Kind::Unsampled => "sb+unsampled",
            Kind::Metered => "sb+metered",
        }
    }
    fn arg(self) -> &'static str {
        match self {
            Kind::Ceiling => "bare",
            Kind::Switchboard => "switchboard",
            Kind::SwitchboardLayer => "layer",
            Kind::SwitchboardState => "state",
            Kind::Traced => "traced",
            Kind::Unsampled => "unsampled",
            Kind::Metered => "metered",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pin {
    Auto,
    Split,
    Same,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scenario {
    connections: usize,
    in_flight: usize,
    /// What the requests look like (`+sb`, `+meta`).
    packets: Packets,
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (shape, packets) = [Packets::Switchboard, Packets::OutOfOrder]
            .into_iter()
            .find_map(|p| Some((s.strip_suffix(suffix(p))?, p)))
            .unwrap_or((s, Packets::Canonical));
        let (c, d) = shape
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("expected CONNECTIONSxIN_FLIGHT[+sb|+meta] like 4x64, got {s:?}"))?;
        let num = |v: &str| v.trim().parse::<usize>().ok().filter(|n| (1..=0xFFFF).contains(n));
        match (num(c), num(d)) {
            (Some(connections), Some(in_flight)) => Ok(Scenario {
                connections,
                in_flight,
                packets,
            }),
            _ => Err(format!("expected two numbers in 1..=65535 like 4x64, got {s:?}")),
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}{}", self.connections, self.in_flight, suffix(self.packets))
    }
}

/// How a scenario's name says the shape of its packets.
fn suffix(packets: Packets) -> &'static str {
    match packets {
        Packets::Canonical => "",
        Packets::Switchboard => "+sb",
        Packets::OutOfOrder => "+meta",
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.collect {
        return match serve::collect_child() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("collector: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(kind) = args.serve {
        return match serve_child(kind, args.server_threads, &args.cpus) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{} server: {e:#}", kind.label());
                ExitCode::from(2)
            }
        };
    }
    if let Some(kind) = args.profile {
        return match profile::run(kind, args.requests, args.profile_meta) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("profile: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(side) = args.profile_calls {
        return finished(mem::profile_calls(side, args.profile_tcp, args.requests));
    }
    if !args.broker.is_empty() {
        return run_brokers(&args);
    }
    if args.policy_only {
        return finished(mem::run_policy(
            args.runs,
            Duration::from_secs_f64(args.duration_secs),
            args.mem_in_flight,
        ));
    }
    if args.store_only {
        let secs = Duration::from_secs_f64(args.duration_secs);
        #[cfg(feature = "postgres")]
        let result = store::run(args.runs, secs).and_then(|()| store::run_postgres(args.runs, secs));
        #[cfg(not(feature = "postgres"))]
        let result = store::run(args.runs, secs);
        return finished(result);
    }
    if args.saga_only {
        let plan = saga::Plan {
            runs: args.runs.max(1),
            in_flight: args.saga_in_flight.max(1),
            warmup: Duration::from_secs_f64(args.warmup_secs),
            duration: Duration::from_secs_f64(args.duration_secs),
        };
        // Bound the whole run: every row's runs get their time (the ceiling's and the sagas'
        // warm-up and window, the latency probe, the drain) and some slack.
        let budget = (plan.warmup * 2 + plan.duration * 3 + Duration::from_secs(75)) * (plan.runs as u32 * 3)
            + Duration::from_secs(90);
        std::thread::spawn(move || {
            std::thread::sleep(budget);
            eprintln!("error: the benchmark did not finish within {budget:?}; giving up");
            std::process::exit(3);
        });
        #[cfg(feature = "postgres")]
        let result = saga::run(plan).and_then(|()| saga::run_postgres(plan));
        #[cfg(not(feature = "postgres"))]
        let result = saga::run(plan);
        return finished(result);
    }
    if args.codec_only {
        return finished(codec::run(
            args.runs,
            Duration::from_secs_f64(args.duration_secs),
            args.mem_in_flight,
        ));
    }
    if args.mem_only {
        return finished(mem::run(
            args.runs,
            Duration::from_secs_f64(args.duration_secs),
            args.mem_in_flight,
        ));
    }
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::WrongReply(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Err(Failure::Setup(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_brokers(args: &Args) -> ExitCode {
    let secs = [args.duration_secs, args.warmup_secs, args.quiet_wait_secs];
    if !(secs.iter().all(|v| v.is_finite() && *v >= 0.0 && *v < 1e6) && args.duration_secs > 0.0 && args.runs >= 1) {
        eprintln!("error: need --duration-secs > 0, --warmup-secs >= 0, --quiet-wait-secs >= 0, --runs >= 1");
        return ExitCode::from(2);
    }
    let plan = brokers::Plan {
        brokers: args.broker.iter().map(|b| b.trim().to_ascii_lowercase()).collect(),
        in_flight: args.broker_in_flight.clone(),
        runs: args.runs,
        warmup: Duration::from_secs_f64(args.warmup_secs),
        duration: Duration::from_secs_f64(args.duration_secs),
        quiet_wait: Duration::from_secs_f64(args.quiet_wait_secs),
        only: match args.only {
            None => None,
            Some(Kind::Ceiling) => Some(brokers::Side::Bare),
            Some(Kind::Switchboard) => Some(brokers::Side::Switchboard),
            Some(other) => {
                eprintln!("error: with --broker, --only takes bare or switchboard, not {other:?}");
                return ExitCode::from(2);
            }
        },
    };
    // Bound the whole run, as for TCP.
    let measurements = (plan.runs * plan.brokers.len() * plan.in_flight.len() * 2) as u32;
    let budget = (plan.warmup + plan.duration + plan.quiet_wait + Duration::from_secs(45)) * measurements
        + Duration::from_secs(90);
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!("error: the benchmark did not finish within {budget:?}; giving up");
        std::process::exit(3);
    });
    match brokers::run(&plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::WrongReply(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Err(Failure::Setup(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The machine's load averages (1, 5, 15 min).
/// The exit of a run that printed its own results: 1, saying why, when it failed.
fn finished(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------- server child processes

/// Runs as a server child: exits as soon as the parent goes away (stdin closes), whatever
/// way the parent ended — normal exit, panic, watchdog or SIGKILL.
fn serve_child(kind: Kind, threads: usize, cpus: &[usize]) -> anyhow::Result<()> {
    if !cpus.is_empty() {
        // Before the runtime exists: its workers inherit the mask, and tokio's default
        // worker count (available_parallelism) follows it.
        pin_current_thread(cpus).context("pin the server")?;
    }
    exit_with_parent();
    match kind {
        Kind::Ceiling => ceiling::run(threads),
        kind => serve::run(kind, threads),
    }
}

/// Exits this child process once the parent goes away (its stdin closes).
pub(crate) fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

/// The runtime both servers use: multi-threaded, one worker per core unless told otherwise.
pub(crate) fn server_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    b.enable_all().build()
}

/// Tells the parent where the child listens, from its URL (`scheme://host:port`).
pub(crate) fn announce_url(url: &str) -> anyhow::Result<()> {
    let port = url
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {url:?}"))?;
    announce_port(port);
    Ok(())
}

/// Tells the parent where the child listens.
pub(crate) fn announce_port(port: u16) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "port={port}");
    let _ = out.flush();
}

/// A server child process; killed when dropped (also while unwinding from a panic).
struct ServerProc {
    child: Child,
    port: u16,
    /// The `traced` server's OTLP collector: a process of its own, as in production, so that
    /// decoding the spans is not counted as the server's CPU.
    collector: Option<Child>,
}

/// The port a child announces on its first line of stdout (`port=<n>`), within 30 s.
fn announced_port(child: &mut Child, what: &str) -> anyhow::Result<u16> {
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("the {what} did not report its port within 30 s"))?;
    line.trim()
        .strip_prefix("port=")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("the {what} did not start (said {:?})", line.trim()))
}

/// Asks a child to exit by closing its stdin; kills it if it has not within 10 s.
fn stop_child(child: &mut Child) {
    drop(child.stdin.take());
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl ServerProc {
    fn spawn(kind: Kind, threads: usize, cpus: &[usize]) -> anyhow::Result<ServerProc> {
        let exe = std::env::current_exe().context("locate this executable")?;
        // For profiling: SWITCHBOARD_BENCH_WRAP="valgrind --tool=callgrind" runs the server under it.
        let wrap = std::env::var("SWITCHBOARD_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(tool) => {
                let mut cmd = Command::new(tool);
                cmd.args(words).arg(&exe);
                cmd
            }
            None => Command::new(&exe),
        };
        cmd.args(["--serve", kind.arg(), "--server-threads", &threads.to_string()]);
        let mut collector = None;
        match kind {
            Kind::Traced => {
                let mut child = Command::new(&exe)
                    .arg("--collect")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("start the OTLP collector")?;
                // On failure the child goes with its stdin, which makes it exit.
                let port = announced_port(&mut child, "OTLP collector")?;
                collector = Some(child);
                // Every span exported: at these rates the specification's queue of 2048 would
                // drop some (a dropped span costs nothing, and the server says so).
                if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
                    cmd.env("OTEL_BSP_MAX_QUEUE_SIZE", "65536");
                }
                cmd.env("OTEL_TRACES_SAMPLER", "always_on")
                    .env(serve::OTLP_ENDPOINT, format!("http://127.0.0.1:{port}"))
            }
            Kind::Unsampled => cmd.env("OTEL_TRACES_SAMPLER", "always_off"),
            _ => &mut cmd,
        };
        if !cpus.is_empty() {
            cmd.arg("--cpus")
                .arg(cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(","));
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start the {} server", kind.label()))?;
        let mut proc = ServerProc {
            child,
            port: 0,
            collector,
        };
        proc.port = announced_port(&mut proc.child, &format!("{} server", kind.label()))?;
        Ok(proc)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // Closing stdin asks the server to exit, so a profiler wrapping it can write its report.
        stop_child(&mut self.child);
        if let Some(collector) = &mut self.collector {
            stop_child(collector);
        }
    }
}

/// Where the driver and the server run for one scenario.
struct Placement {
    driver_cpus: Vec<usize>,
    server_cpus: Vec<usize>,
    workers: usize,
}

impl Placement {
    /// Why `auto` pins: on this kind of machine (2 vCPUs) leaving placement to the kernel
    /// makes results bimodal. Measured with `--pin none`: the same 1x1 ceiling at 6.5 us or
    /// 68 us p50 depending on whether the kernel happens to put driver and server on one CPU
    /// (local wake-ups) or on two (cross-CPU wake-ups, ~30 us each in this VM); the same
    /// 4x64 ceiling at 2.7M or 1.4M req/s. So:
    /// - throughput (C*D > 1): driver alone on one CPU, server alone on the rest: each side
    ///   gets a whole core, nothing else competes, and the server (not the driver) is the
    ///   bottleneck for both servers, so req/s compares server efficiency;
    /// - latency (1x1): driver and server on one CPU: no cross-CPU wake-up noise, so the
    ///   latency is the request's real path (both processes' work plus two context
    ///   switches) and a server's overhead shows in full.
    fn of(pin: Pin, scenario: Scenario, allowed: &[usize], threads: usize) -> anyhow::Result<Placement> {
        let split = || {
            anyhow::ensure!(allowed.len() >= 2, "--pin split needs at least 2 CPUs");
            Ok((allowed[..1].to_vec(), allowed[1..].to_vec()))
        };
        let same = || (allowed[..1].to_vec(), allowed[..1].to_vec());
        let (driver_cpus, server_cpus) = match pin {
            Pin::Split => split()?,
            Pin::Same => same(),
            Pin::None => (allowed.to_vec(), allowed.to_vec()),
            Pin::Auto if scenario.connections * scenario.in_flight > 1 && allowed.len() >= 2 => split()?,
            Pin::Auto => same(),
        };
        // tokio's default worker count follows the affinity mask.
        let workers = if threads == 0 { server_cpus.len() } else { threads };
        Ok(Placement {
            driver_cpus,
            server_cpus,
            workers,
        })
    }

    fn describe(&self) -> String {
        format!(
            "server: multi-threaded tokio runtime, {} worker(s), CPUs {:?}; driver: current-thread runtime, CPUs {:?}",
            self.workers, self.server_cpus, self.driver_cpus
        )
    }
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Restricts the calling thread (and threads it spawns later) to `cpus`.
pub(crate) fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: as above; sched_setaffinity(0, …) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- orchestration

enum Failure {
    /// A server answered wrongly, not at all, or dropped the connection.
    WrongReply(anyhow::Error),
    /// The benchmark could not be set up.
    Setup(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Setup(e)
    }
}

fn bench(args: &Args) -> Result<(), Failure> {
    let mut scenarios = args.scenario.clone();
    let default_set = scenarios.is_empty() && args.connections.is_none() && args.in_flight.is_none();
    if args.connections.is_some() || args.in_flight.is_some() {
        let s = Scenario {
            connections: args.connections.unwrap_or(4),
            in_flight: args.in_flight.unwrap_or(64),
            packets: Packets::Canonical,
        };
        if !(1..=0xFFFF).contains(&s.connections) || !(1..=0xFFFF).contains(&s.in_flight) {
            return Err(anyhow::anyhow!("--connections and --in-flight must be in 1..=65535").into());
        }
        scenarios.push(s);
    }
    if scenarios.is_empty() {
        scenarios = ["4x64", "4x64+sb", "4x64+meta", "1x1"]
            .iter()
            .map(|s| s.parse().expect("default scenarios parse"))
            .collect();
    }
    let finite = [args.duration_secs, args.warmup_secs, args.quiet_wait_secs]
        .iter()
        .all(|v| v.is_finite() && *v < 1e6);
    if !(finite && args.duration_secs > 0.0 && args.warmup_secs >= 0.0 && args.quiet_wait_secs >= 0.0 && args.runs >= 1)
    {
        return Err(anyhow::anyhow!(
            "need --duration-secs > 0, --warmup-secs >= 0, --quiet-wait-secs >= 0 (all finite), --runs >= 1"
        )
        .into());
    }
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let duration = Duration::from_secs_f64(args.duration_secs);
    let kinds: Vec<Kind> = match args.only {
        Some(k) => vec![k],
        None => {
            let mut kinds = vec![Kind::Ceiling, Kind::Switchboard];
            kinds.extend(
                args.with
                    .iter()
                    .filter(|k| !kinds.contains(k))
                    .copied()
                    .collect::<Vec<_>>(),
            );
            kinds
        }
    };

    // Bound the whole run: every measurement gets its time, the wait for a quiet machine, the
    // driver's drain timeout and some slack. Past that, exit; the children follow when their
    // stdin closes.
    let measurements = (args.runs * scenarios.len() * kinds.len()) as u32;
    let quiet = Duration::from_secs_f64(args.quiet_wait_secs);
    let budget = (warmup + duration + quiet + Duration::from_secs(15)) * measurements + Duration::from_secs(90);
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!("error: the benchmark did not finish within {budget:?}; giving up");
        std::process::exit(3);
    });

    let allowed = allowed_cpus();
    println!(
        "switchboard-bench: {} CPUs, load average {}; {} run(s) x ({:?} warm-up + {:?} measured per server); \
         fresh server processes each run, taking turns in slices",
        allowed.len(),
        load_average(),
        args.runs,
        warmup,
        duration,
    );
    let mut placements = Vec::new();
    for &scenario in &scenarios {
        let p = Placement::of(args.pin, scenario, &allowed, args.server_threads)?;
        println!("  {scenario:<8} {}", p.describe());
        placements.push(p);
    }

    // results[scenario][kind] = one Measurement per run
    let mut results: Vec<Vec<Vec<Measurement>>> = vec![vec![Vec::new(); kinds.len()]; scenarios.len()];
    for run in 0..args.runs {
        for (si, &scenario) in scenarios.iter().enumerate() {
            let place = &placements[si];
            wait_for_quiet(Duration::from_secs_f64(args.quiet_wait_secs));
            // Fresh processes each run: no thread placement, allocator or socket state
            // carried over from the previous one. All of them are up at once and take turns.
            let servers = kinds
                .iter()
                .map(|&kind| ServerProc::spawn(kind, args.server_threads, &place.server_cpus))
                .collect::<anyhow::Result<Vec<_>>>()?;
            // The driver's runtime runs on this thread.
            pin_current_thread(&place.driver_cpus).context("pin the driver")?;
            let load = Load {
                connections: scenario.connections,
                in_flight: scenario.in_flight,
                warmup,
                duration,
                seed: 0x5EED ^ ((run as u64) << 32) ^ ((si as u64) << 16),
                packets: scenario.packets,
            };
            let targets: Vec<driver::Target> = servers
                .iter()
                .map(|s| driver::Target {
                    port: s.port,
                    pid: s.child.id(),
                })
                .collect();
            let measured = driver::run(&targets, load, run)
                .map_err(|e| Failure::WrongReply(e.context(format!("scenario {scenario}, run {}", run + 1))))?;
            drop(servers);
            for (ki, m) in measured.into_iter().enumerate() {
                eprintln!(
                    "run {}/{} {:<8} {:<12} {:>10.0} req/s  p50 {:>8.1} us  p99 {:>8.1} us  server {} driver {} other {} cores",
                    run + 1,
                    args.runs,
                    scenario.to_string(),
                    kinds[ki].label(),
                    m.req_per_sec(),
                    m.quantile_us(0.50),
                    m.quantile_us(0.99),
                    fmt_opt(m.server_cores(), 2),
                    fmt_opt(m.driver_cores(), 2),
                    fmt_opt(m.other_cores(), 2),
                );
                results[si][ki].push(m);
            }
            // Let the closed connections settle.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    report(&scenarios, &kinds, &results);
    if args.only.is_none() && default_set {
        println!();
        mem::run(args.runs, duration, args.mem_in_flight).map_err(Failure::WrongReply)?;
        println!();
        mem::run_policy(args.runs, duration, args.mem_in_flight).map_err(Failure::WrongReply)?;
    }
    Ok(())
}

/// Waits until the machine has been nearly idle (< 0.1 core busy) for half a second, at most
/// `limit`. Our own processes are idle between measurements, so what is busy is someone else.
fn wait_for_quiet(limit: Duration) {
    let start = std::time::Instant::now();
    let mut warned = false;
    while start.elapsed() < limit {
        let Some(before) = driver::machine_busy() else { return };
        std::thread::sleep(Duration::from_millis(500));
        let Some(after) = driver::machine_busy() else { return };
        let cores = after.saturating_sub(before).as_secs_f64() / 0.5;
        if cores < 0.1 {
            return;
        }
        if !warned {
            eprintln!("(machine busy with other work: {cores:.2} cores; waiting up to {limit:?} for it to calm down)");
            warned = true;
        }
    }
    if warned {
        eprintln!("(still busy; measuring anyway; see the `other` column)");
    }
}

// ---------------------------------------------------------------- report

/// Medians over the runs of one server in one scenario.
#[derive(Clone, Copy)]
struct Summary {
    rps: f64,
    p50: f64,
    p99: f64,
    cpu_per_req: Option<f64>,
    server_cores: Option<f64>,
    driver_cores: Option<f64>,
    other_cores: Option<f64>,
}

fn summarize(runs: &[Measurement]) -> Summary {
    let opt = |v: Vec<Option<f64>>| v.into_iter().collect::<Option<Vec<f64>>>().map(median);
    Summary {
        rps: median(runs.iter().map(Measurement::req_per_sec).collect()),
        p50: median(runs.iter().map(|m| m.quantile_us(0.50)).collect()),
        p99: median(runs.iter().map(|m| m.quantile_us(0.99)).collect()),
        cpu_per_req: opt(runs.iter().map(Measurement::server_cpu_us_per_req).collect()),
        server_cores: opt(runs.iter().map(Measurement::server_cores).collect()),
        driver_cores: opt(runs.iter().map(Measurement::driver_cores).collect()),
        other_cores: opt(runs.iter().map(Measurement::other_cores).collect()),
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn report(scenarios: &[Scenario], kinds: &[Kind], results: &[Vec<Vec<Measurement>>]) {
    println!();
    println!(
        "{:<10} {:<12} {:>10} {:>9} {:>9} {:>12} {:>10} {:>10} {:>10}",
        "scenario", "server", "req/s", "p50(us)", "p99(us)", "cpu/req(us)", "srv-cores", "drv-cores", "oth-cores"
    );
    let mut verdicts = Vec::new();
    for (si, scenario) in scenarios.iter().enumerate() {
        let sums: Vec<Summary> = results[si].iter().map(|runs| summarize(runs)).collect();
        for (ki, kind) in kinds.iter().enumerate() {
            let s = sums[ki];
            println!(
                "{:<10} {:<12} {:>10.0} {:>9.1} {:>9.1} {:>12} {:>10} {:>10} {:>10}",
                scenario.to_string(),
                kind.label(),
                s.rps,
                s.p50,
                s.p99,
                fmt_opt(s.cpu_per_req, 2),
                fmt_opt(s.server_cores, 2),
                fmt_opt(s.driver_cores, 2),
                fmt_opt(s.other_cores, 2)
            );
        }
        if kinds.len() < 2 || kinds[0] != Kind::Ceiling {
            continue;
        }
        let ceiling = &results[si][0];
        for (ki, kind) in kinds.iter().enumerate().skip(1) {
            // Each run measured both in alternating slices, so a run's ratio compares like with
            // like; the row is the median of the runs' ratios.
            let ratio = |f: &dyn Fn(&Measurement) -> Option<f64>| {
                results[si][ki]
                    .iter()
                    .zip(ceiling)
                    .map(|(s, c)| Some(f(s)? / f(c)?))
                    .collect::<Option<Vec<f64>>>()
                    .map(median)
            };
            let rps = ratio(&|m| Some(m.req_per_sec())).unwrap_or(f64::NAN);
            let p50 = ratio(&|m| Some(m.quantile_us(0.50))).unwrap_or(f64::NAN);
            let p99 = ratio(&|m| Some(m.quantile_us(0.99))).unwrap_or(f64::NAN);
            let cpu_ratio = ratio(&Measurement::server_cpu_us_per_req);
            let label = format!("{}/ceil", kind.label());
            println!(
                "{:<10} {:<12} {:>10.2} {:>9.2} {:>9.2} {:>12}",
                scenario.to_string(),
                label,
                rps,
                p50,
                p99,
                fmt_opt(cpu_ratio, 2)
            );
            let met = |ok: bool| if ok { "MET" } else { "NOT MET" };
            if scenario.connections * scenario.in_flight > 1 {
                let r = rps;
                verdicts.push(format!(
                    "{scenario} {}: throughput {r:.3}x the ceiling (target >= {THROUGHPUT_TARGET:.2}x): {}",
                    kind.label(),
                    met(r >= THROUGHPUT_TARGET)
                ));
                if let Some(r) = cpu_ratio {
                    verdicts.push(format!(
                        "{scenario} {}: server CPU per request {r:.3}x the ceiling's (target <= {CPU_TARGET:.2}x): {}",
                        kind.label(),
                        met(r <= CPU_TARGET)
                    ));
                }
            } else {
                let r = p50;
                verdicts.push(format!(
                    "{scenario} {}: p50 latency {r:.3}x the ceiling (target <= {LATENCY_TARGET:.2}x): {}",
                    kind.label(),
                    met(r <= LATENCY_TARGET)
                ));
            }
        }
    }
    println!();
    println!(
        "ratio = switchboard / ceiling, the median of the runs' ratios (req/s: higher is better; latency and \
         cpu/req: lower is better). cpu/req: server CPU time per request; srv-/drv-/oth-cores: CPU used by the server, the driver and \
         everything else during the window."
    );
    for v in verdicts {
        println!("target {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_name_their_packets_and_print_as_written() {
        for (text, packets) in [
            ("4x64", Packets::Canonical),
            ("4x64+sb", Packets::Switchboard),
            ("4x64+meta", Packets::OutOfOrder),
        ] {
            let scenario: Scenario = text.parse().unwrap();
            assert_eq!(
                (scenario.connections, scenario.in_flight, scenario.packets),
                (4, 64, packets)
            );
            assert_eq!(scenario.to_string(), text);
        }
        assert!("4x64+json".parse::<Scenario>().is_err());
        assert!("0x64".parse::<Scenario>().is_err());
    }
}
