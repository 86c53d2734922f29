//! `switchboard bench`: load on one pattern of a running service, and what it did to latency.
//!
//! - closed loop (default): `-c` calls in flight over `-k` connections, each answered call
//!   replaced at once; latency from each call's send;
//! - open loop (`--rate R`): a call due every `1/R` s, at most `-c` in flight; latency from
//!   each call's *intended* start, so a stall counts for every call it delayed (corrected for
//!   coordinated omission). A closed loop has no schedule to correct against: its latencies
//!   are as measured, which is what a closed loop can say;
//! - `-n` calls or `-d` of time, after `--warmup`; HDR histograms (3 significant digits),
//!   kept per task and merged, so no lock or atomic is shared per call;
//! - on `tcp://` in a closed loop the pipelined driver ([`wire`]) writes NestJS packets
//!   itself, as the repository's benchmark does, so that the tool is not the bottleneck;
//!   elsewhere (and with `--driver client`) calls go through [`switchboard::Client`];
//! - `mem://NAME` is served in this process by a built-in echo handler (the URL cannot reach
//!   another process): the tool's own ceiling.
//!
//! ```text
//! switchboard bench tcp://127.0.0.1:3001 '{"cmd":"sum"}' '[1,2,3]' -k 4 -c 256 -d 10s
//! switchboard bench tcp://127.0.0.1:3001 '{"cmd":"sum"}' '[1,2,3]' --rate 20000 -d 30s --save base.json
//! switchboard bench tcp://127.0.0.1:3001 '{"cmd":"sum"}' '[1,2,3]' --compare base.json --plot latency.svg
//! switchboard bench mem://self echo '"hi"' -c 64 -n 1000000 --json
//! ```

mod load;
mod plot;
mod report;
mod tally;
mod wire;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde_json::Value;
use serde_json::value::RawValue;
use switchboard::prelude::*;
use switchboard::{Payload, Reply, Request};

use crate::input;
use crate::outcome::{Failure, Output};
use load::{Body, Clock, Pattern};
use report::{Comparison, Report, Setup, Style};
use tally::Shards;

/// The most calls in flight (each holds a task and a slot).
const MAX_CONCURRENCY: usize = 100_000;
/// The most connections.
const MAX_CONNECTIONS: usize = 4096;
/// The highest `--rate`.
const MAX_RATE: f64 = 100_000_000.0;
/// The most request bytes the pipelined driver keeps in flight on one connection: it writes
/// and reads in turn, so larger batches are left to the client, which does both at once.
const MAX_PIPELINED_BYTES: usize = 1 << 20;
/// The largest saved run `--compare` reads.
const MAX_SAVED: u64 = 16 << 20;

const EXAMPLES: &str = "\
Examples:
  # closed loop: 256 calls in flight over 4 connections, for 10 s
  switchboard bench tcp://127.0.0.1:3001 '{\"cmd\":\"sum\"}' '[1,2,3]' -k 4 -c 256 -d 10s
  # open loop: 20,000 calls/s for 30 s, latency corrected for coordinated omission; kept
  switchboard bench tcp://127.0.0.1:3001 '{\"cmd\":\"sum\"}' '[1,2,3]' --rate 20000 -d 30s --save base.json
  # the same again, against the saved run, with a latency plot
  switchboard bench tcp://127.0.0.1:3001 '{\"cmd\":\"sum\"}' '[1,2,3]' --rate 20000 -d 30s \\
      --compare base.json --plot latency.svg
  # exactly 100,000 calls, as JSON for a script
  switchboard bench nats://127.0.0.1:4222 user.get '\"42\"' -n 100000 --json
  # the tool's own ceiling: an echo handler served in this process
  switchboard bench mem://self echo '\"hi\"' -c 64 -d 5s

Closed loop (default): each answered call is replaced at once; latency runs from the send.
Open loop (--rate): calls are due at fixed intervals whatever the replies do; latency runs
from when each call was due, so a stall counts for every call it held up (coordinated
omission corrected). On tcp:// a closed loop writes NestJS packets itself (the pipelined
driver) so the tool is not the bottleneck; --driver client goes through Switchboard's Client.
mem://NAME cannot reach another process: bench serves an echo handler on it, in this process,
and measures the tool's own ceiling.

A progress line goes to stderr every second when it is a terminal (not with --json).
Failed calls are counted by kind (timeout, no_handler, handler_error, connection, other) and
do not change the exit code; a service that cannot be reached at the start exits 5, bad usage 2.";

/// Which code path sends the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    /// The pipelined driver on tcp:// in a closed loop, the client elsewhere.
    Auto,
    /// Through `switchboard::Client`, any transport.
    Client,
    /// NestJS packets written on the socket (tcp:// only, closed loop only).
    Pipelined,
}

/// `switchboard bench`'s arguments.
#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct BenchArgs {
    /// The service: tcp://host:port, tls://…, redis://…, nats://…, mqtt://…, amqp://…,
    /// kafka://…, grpc://…, or mem://NAME (an echo handler served in this process).
    url: String,
    /// The pattern: text (`sum`), or JSON for object and number patterns (`{"cmd":"sum"}`).
    pattern: String,
    /// The payload of every call, as JSON (`-` reads it from stdin); `null` when left out.
    payload: Option<String>,
    /// Calls in flight (closed loop; default 64), or at most in flight (open loop; default
    /// 1000: more than rate × latency, or calls wait for a slot and count as late).
    #[arg(short = 'c', long, value_name = "N")]
    concurrency: Option<usize>,
    /// Connections (clients) the calls are spread over.
    #[arg(short = 'k', long, default_value_t = 1, value_name = "N")]
    connections: usize,
    /// Open loop: this many calls a second, due at fixed intervals (`20000`, `50k`, `1.5M`).
    #[arg(long, value_name = "CALLS_PER_S")]
    rate: Option<String>,
    /// Stop after this many calls (after the warm-up).
    #[arg(short = 'n', long, value_name = "N", conflicts_with = "duration")]
    count: Option<u64>,
    /// Stop after this long (after the warm-up); 10s unless --count is given.
    #[arg(short = 'd', long, value_name = "DURATION")]
    duration: Option<String>,
    /// Load applied first and not recorded; default 1s with a duration, none with --count.
    #[arg(long, value_name = "DURATION")]
    warmup: Option<String>,
    /// A call not answered within this long counts as a timeout (in an open loop, so does a
    /// call whose turn comes this long after it was due: it is not sent).
    #[arg(short, long, default_value = "10s", value_name = "DURATION")]
    timeout: String,
    /// A header (NestJS 12 `metadata`) on every call, `name=value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Which code path sends the calls.
    #[arg(long, value_enum, default_value = "auto")]
    driver: Driver,
    /// Worker threads of the load generator (default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// The report as one JSON object on stdout (`"format":1`; fields are only ever added):
    /// `calls`, `ok`, `errors` by kind, `throughput` (calls/s, failed ones included),
    /// `elapsed_s`, `latency_us` (`min`, `mean`, `p50` … `p99.9`, `max`), `latency_from`
    /// (`send` or `intended`), `curve` ([percentile, µs] pairs), and the run's settings.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to FILE, for a later --compare.
    #[arg(long, value_name = "FILE")]
    save: Option<std::path::PathBuf>,
    /// Print the change from a run saved with --save (throughput and each percentile).
    #[arg(long, value_name = "FILE")]
    compare: Option<std::path::PathBuf>,
    /// Write a latency-by-percentile plot (SVG) to FILE.svg.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

/// When a run stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    Count(u64),
    Duration(Duration),
}

/// The load, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub concurrency: usize,
    pub connections: usize,
    pub rate: Option<f64>,
    pub stop: Stop,
    pub warmup: Duration,
    pub timeout: Duration,
}

/// Runs `switchboard bench` on a runtime of its own (multi-threaded: the load generator uses
/// every core it is given).
pub fn run(args: &BenchArgs, out: &Output) -> Result<(), Failure> {
    let plan = plan(args)?;
    let pattern = input::pattern(&args.pattern);
    let payload = input::payload(Some(args.payload.as_deref().unwrap_or("null")))?;
    let headers = args
        .headers
        .iter()
        .map(|h| input::header(h))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(plot) = &args.plot
        && plot.extension().is_none_or(|e| !e.eq_ignore_ascii_case("svg"))
    {
        return Err(Failure::usage(format!(
            "--plot {}: only SVG plots are written (name the file *.svg)",
            plot.display()
        )));
    }
    let before = match &args.compare {
        Some(path) => Some(saved(path)?),
        None => None,
    };
    let pattern_json = pattern.to_string();
    let data = serde_json::to_string(&payload).expect("JSON values serialise");
    let template = wire::Template::new(&pattern_json, &data, &headers);
    let depth = plan.concurrency.div_ceil(plan.connections);
    // Request ids number slots in 4 hex digits.
    let fits = template.len().saturating_mul(depth) <= MAX_PIPELINED_BYTES && depth <= 0xFFFF;
    let pipelined = match args.driver {
        Driver::Client => false,
        Driver::Pipelined if !args.url.starts_with("tcp://") || plan.rate.is_some() => {
            return Err(Failure::usage(
                "--driver pipelined works on tcp:// URLs in a closed loop (without --rate)",
            ));
        }
        Driver::Pipelined if !fits => {
            return Err(Failure::usage(format!(
                "--driver pipelined keeps at most {} KiB of requests in flight a connection: use more -k, \
                 less -c, or --driver client",
                MAX_PIPELINED_BYTES >> 10
            )));
        }
        Driver::Pipelined => true,
        Driver::Auto => args.url.starts_with("tcp://") && !args.url.contains('?') && plan.rate.is_none() && fits,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        if !(1..=256).contains(&n) {
            return Err(Failure::usage("--threads must be 1..=256"));
        }
        rt.worker_threads(n);
    }
    let rt = rt
        .enable_all()
        .build()
        .map_err(|e| Failure::other(format!("cannot start the runtime: {e}")))?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let shards = Arc::new(Shards::new(threads * 2));
    let progress = (!args.json && std::io::stderr().is_terminal()).then_some(());

    let (clock, driver) = rt.block_on(async {
        let in_process = args.url.starts_with("mem://");
        let server = match in_process {
            true => Some(
                Microservice::new()
                    .handler(BENCH_ECHO)
                    .layer(Echo)
                    .listen(&args.url)
                    .start()
                    .await
                    .map_err(Failure::from)?,
            ),
            false => None,
        };
        let driver;
        let clock;
        if pipelined {
            driver = "pipelined";
            let addr = args.url["tcp://".len()..].trim_end_matches('/').to_owned();
            let template = Arc::new(template);
            let mut streams = Vec::with_capacity(plan.connections);
            let shown = switchboard::transport::redact(&args.url);
            for _ in 0..plan.connections {
                let connect = tokio::net::TcpStream::connect(addr.as_str());
                let stream = match tokio::time::timeout(plan.timeout.min(Duration::from_secs(5)), connect).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(Failure::unreachable(format!("cannot connect to {shown}: {e}"))),
                    Err(_) => return Err(Failure::unreachable(format!("cannot connect to {shown}: timed out"))),
                };
                let _ = stream.set_nodelay(true);
                streams.push(stream);
            }
            clock = start_clock(&plan);
            let watch = progress.map(|()| watch(shards.clone(), clock));
            let mut tasks = tokio::task::JoinSet::new();
            for (c, stream) in streams.into_iter().enumerate() {
                let job = wire::Job {
                    conn: c as u16,
                    addr: addr.clone(),
                    depth: load::share(plan.concurrency as u64, plan.connections, c) as usize,
                    quota: match plan.stop {
                        Stop::Count(n) => Some(load::share(n, plan.connections, c)),
                        Stop::Duration(_) => None,
                    },
                    timeout: plan.timeout,
                };
                tasks.spawn(wire::connection(job, stream, template.clone(), clock, shards.clone()));
            }
            while tasks.join_next().await.is_some() {}
            drop(watch);
        } else {
            driver = if in_process { "in-process" } else { "client" };
            let route = match &pattern {
                Value::String(s) => switchboard_pattern::route_of_str(s.clone()),
                other => switchboard_pattern::Pattern::from_json_value(other).route(),
            };
            let message = Pattern::new(pattern_json, route);
            let body = Arc::new(Body(RawValue::from_string(data).expect("serialised JSON is JSON")));
            let mut clients = Vec::with_capacity(plan.connections);
            for _ in 0..plan.connections {
                let client = Client::builder(&args.url)
                    .timeout(plan.timeout)
                    .connect_timeout(plan.timeout.min(Duration::from_secs(5)))
                    .pool_size(1)
                    .headers(headers.iter().cloned().collect())
                    .connect()
                    .await
                    .map_err(Failure::from)?;
                clients.push(client);
            }
            clock = start_clock(&plan);
            let watch = progress.map(|()| watch(shards.clone(), clock));
            match plan.rate {
                Some(rate) => load::open(&plan, &clients, message, body, clock, shards.clone(), rate).await,
                None => load::closed(&plan, &clients, message, body, clock, shards.clone()).await,
            }
            drop(watch);
            for client in &clients {
                client.close().await;
            }
        }
        if let Some(server) = server {
            let _ = server.shutdown().await;
        }
        Ok::<_, Failure>((clock, driver))
    })?;
    // The runtime's tasks are done; do not wait for anything it still holds.
    rt.shutdown_background();

    let totals = shards.merged();
    let elapsed = match (totals.last, plan.stop) {
        (Some(last), _) => last.saturating_duration_since(clock.measured),
        (None, Stop::Duration(d)) => d,
        (None, Stop::Count(_)) => Duration::ZERO,
    };
    // The report is printed and saved: a password in the URL stays out of it.
    let url = switchboard::transport::redact(&args.url);
    let setup = Setup {
        url: &url,
        pattern,
        driver,
        open: plan.rate.is_some(),
        concurrency: plan.concurrency,
        connections: plan.connections,
        rate: plan.rate,
        warmup_s: plan.warmup.as_secs_f64(),
        elapsed_s: elapsed.as_secs_f64(),
    };
    let report = Report::new(setup, &totals);
    let comparison = before.as_ref().map(|(path, b)| Comparison::new(path, b, &report));
    if let Some(path) = &args.save {
        let json = serde_json::to_string_pretty(&report).expect("reports serialise");
        std::fs::write(path, json + "\n")
            .map_err(|e| Failure::other(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.plot {
        let svg = plot::svg(&report, before.as_ref().map(|(p, b)| (p.as_str(), b)));
        std::fs::write(path, svg).map_err(|e| Failure::other(format!("cannot write {}: {e}", path.display())))?;
    }
    if out.json {
        let mut json = serde_json::to_value(&report).expect("reports serialise");
        if let Some(c) = &comparison {
            json["compare"] = serde_json::to_value(c).expect("comparisons serialise");
        }
        println!("{json}");
    } else {
        let style = Style::detect();
        print!("{}", report.table(style));
        if let Some(c) = &comparison {
            print!("{}", c.table(style));
        }
    }
    Ok(())
}

/// The arguments, checked: bad usage is exit 2 with what to change.
fn plan(args: &BenchArgs) -> Result<Plan, Failure> {
    let c = args.concurrency.unwrap_or(if args.rate.is_some() { 1000 } else { 64 });
    let k = args.connections;
    if !(1..=MAX_CONCURRENCY).contains(&c) {
        return Err(Failure::usage(format!("-c must be 1..={MAX_CONCURRENCY}")));
    }
    if !(1..=MAX_CONNECTIONS).contains(&k) {
        return Err(Failure::usage(format!("-k must be 1..={MAX_CONNECTIONS}")));
    }
    if c < k {
        return Err(Failure::usage(format!(
            "-c {c} is fewer calls in flight than -k {k} connections: each connection needs at least one"
        )));
    }
    let rate = args.rate.as_deref().map(rate).transpose()?;
    let named = |flag: &str, text: &str| {
        // Zero is a duration too here (no warm-up), though not a pattern's timeout.
        if matches!(text.trim(), "0" | "0s" | "0ms") {
            return Ok(Duration::ZERO);
        }
        input::duration(text)
            .map_err(|_| Failure::usage(format!("{flag} {text:?} is not a duration like 500ms, 5s or 1m")))
    };
    let timeout = named("--timeout", &args.timeout)?;
    if timeout.is_zero() {
        return Err(Failure::usage("--timeout must be more than 0"));
    }
    let stop = match (args.count, &args.duration) {
        (Some(0), _) => return Err(Failure::usage("-n must be at least 1")),
        (Some(n), _) => Stop::Count(n),
        (None, Some(d)) => Stop::Duration(named("--duration", d)?),
        (None, None) => Stop::Duration(Duration::from_secs(10)),
    };
    if matches!(stop, Stop::Duration(d) if d.is_zero()) {
        return Err(Failure::usage("--duration must be more than 0"));
    }
    let warmup = match (&args.warmup, stop) {
        (Some(w), _) => named("--warmup", w)?,
        (None, Stop::Duration(_)) => Duration::from_secs(1),
        (None, Stop::Count(_)) => Duration::ZERO,
    };
    Ok(Plan {
        concurrency: c,
        connections: k,
        rate,
        stop,
        warmup,
        timeout,
    })
}

/// `20000`, `50k`, `1.5M` calls a second.
fn rate(text: &str) -> Result<f64, Failure> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1e3),
        None => match t.strip_suffix('M') {
            Some(n) => (n, 1e6),
            None => (t, 1.0),
        },
    };
    match number.parse::<f64>().map(|n| n * scale) {
        // Below one call a second a run measures nothing, and the pacing's intervals outgrow
        // what a `Duration` holds.
        Ok(r) if (1.0..=MAX_RATE).contains(&r) => Ok(r),
        _ => Err(Failure::usage(format!(
            "--rate {text:?} is not a rate of calls per second (like 20000, 50k or 1.5M; from 1 to 100M)"
        ))),
    }
}

/// A run saved with `--save`.
fn saved(path: &std::path::Path) -> Result<(String, Report), Failure> {
    use std::io::Read;
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Failure::usage(format!("--compare {shown}: {e}")))?;
    let mut text = String::new();
    file.take(MAX_SAVED + 1)
        .read_to_string(&mut text)
        .map_err(|e| Failure::usage(format!("--compare {shown}: {e}")))?;
    if text.len() as u64 > MAX_SAVED {
        return Err(Failure::usage(format!(
            "--compare {shown}: larger than a saved run can be"
        )));
    }
    let report: Report = serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("--compare {shown}: not a run saved by `bench --save`: {e}")))?;
    if report.format != report::FORMAT {
        return Err(Failure::usage(format!(
            "--compare {shown}: saved in format {}, this version reads {}",
            report.format,
            report::FORMAT
        )));
    }
    Ok((shown, report))
}

fn start_clock(plan: &Plan) -> Clock {
    let start = Instant::now();
    let measured = start + plan.warmup;
    Clock {
        start,
        measured,
        end: match plan.stop {
            Stop::Duration(d) => Some(measured + d),
            Stop::Count(_) => None,
        },
    }
}

/// The progress line: every second on stderr until dropped; the line is cleared at the end.
struct Watch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shards: Arc<Shards>, clock: Clock) -> Watch {
    let (tx, rx) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let mut last = (Instant::now(), 0u64);
        while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(1)) {
            let now = Instant::now();
            let line = if now < clock.measured {
                format!("warming up: {:.0} s left", (clock.measured - now).as_secs_f64().ceil())
            } else {
                let totals = shards.merged();
                let calls = totals.calls();
                let rate = (calls - last.1.min(calls)) as f64 / (now - last.0).as_secs_f64();
                last = (now, calls);
                let p = |q: f64| report::duration_us(totals.hist.value_at_quantile(q) as f64 / 1e3);
                format!(
                    "{:>6.1} s  {:>12} calls  {:>10} calls/s  {} errors  p50 {}  p99 {}",
                    (now - clock.measured).as_secs_f64(),
                    report::thousands(calls as f64),
                    report::thousands(rate),
                    report::thousands((calls - totals.ok) as f64),
                    if totals.hist.is_empty() { "-".into() } else { p(0.5) },
                    if totals.hist.is_empty() { "-".into() } else { p(0.99) },
                )
            };
            eprint!("\r\x1b[2K{line}");
        }
        eprint!("\r\x1b[2K");
    });
    Watch {
        stop: Some(tx),
        thread: Some(thread),
    }
}

/// What `mem://` serves besides the echo: a service needs one handler to start.
#[message_pattern("switchboard.bench.echo")]
async fn bench_echo(value: Value) -> Value {
    value
}

/// Answers every request on a `mem://` bench service with its own payload, whatever its
/// pattern: the least a handler can do, so the run measures the tool.
#[derive(Clone, Copy)]
struct Echo;

impl<S> tower::Layer<S> for Echo {
    type Service = Echo;
    fn layer(&self, _: S) -> Echo {
        Echo
    }
}

impl tower::Service<Request> for Echo {
    type Response = Reply;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Reply, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let reply = match req.take_payload() {
            Some(Payload::Json(json)) => Reply::json(json),
            _ => Reply::json(bytes::Bytes::from_static(b"null")),
        };
        std::future::ready(Ok(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_like_people_write_them() {
        assert_eq!(rate("20000").unwrap(), 20_000.0);
        assert_eq!(rate("50k").unwrap(), 50_000.0);
        assert_eq!(rate("1.5M").unwrap(), 1_500_000.0);
        for bad in ["0", "-5", "fast", "NaN", "inf", "1e12"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
    }
}
