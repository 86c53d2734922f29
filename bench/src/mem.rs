//! The in-process row: `mem://` calls through `Client` on one core, against a bare JSON round
//! trip (the least an in-process JSON transport does: encode the payload, decode it, call the
//! function, encode the reply, decode it) in the same run.
//!
//! One current-thread runtime pinned to one CPU runs `in_flight` tasks, each calling in a
//! loop and yielding every `BATCH` calls; every answer is checked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use switchboard::prelude::*;
use switchboard::resilience::{Bulkhead, CircuitBreaker, Policy, RateLimit, Retry};

/// Calls between yields.
const BATCH: u64 = 64;
/// What the in-process row should reach (Moleculer publishes 1.7 M local calls/s).
const MEM_TARGET: f64 = 3_000_000.0;

#[derive(Serialize, Deserialize)]
pub struct MemAdd {
    a: i64,
    b: i64,
}

#[derive(Serialize, Deserialize)]
pub struct MemSum {
    result: i64,
}

#[message_pattern({ cmd = "mem_add" })]
async fn mem_add(req: MemAdd) -> MemSum {
    MemSum {
        result: req.a.wrapping_add(req.b),
    }
}

/// The function the bare side calls.
fn add(req: MemAdd) -> MemSum {
    MemSum {
        result: req.a.wrapping_add(req.b),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Side {
    Bare,
    Switchboard,
    /// Through the client's layer stack, with a no-op layer: the baseline of the policy rows.
    Layered,
    /// With a closed circuit breaker.
    Breaker,
    /// With the whole policy (bulkhead, rate limit, breaker, retry, attempt timeout), none
    /// of it triggered, on calls marked idempotent.
    Policy,
    /// The whole policy on calls that are not idempotent (so the retry step passes them on).
    Guarded,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Bare => "bare-json",
            Side::Switchboard => "switchboard",
            Side::Layered => "no-op layer",
            Side::Breaker => "breaker",
            Side::Policy => "full policy",
            Side::Guarded => "policy, no retry",
        }
    }
}

/// The resilience rows: what a closed breaker and the whole client policy cost per call,
/// measured as `mem://` calls through the client's layers against the same with one no-op
/// layer (so the difference is the policy alone); then TCP calls from a client with the
/// whole policy (not triggered: closed breaker, no retry) against one without.
pub fn run_policy(runs: usize, duration: Duration, in_flight: usize) -> anyhow::Result<()> {
    let cpus = crate::allowed_cpus();
    let cpu = cpus.first().copied().unwrap_or(0);
    crate::pin_current_thread(&[cpu]).context("pin the policy benchmark")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mem = rt.block_on(policy_rows(
        "mem://switchboard-bench",
        &[Side::Layered, Side::Breaker, Side::Policy],
        runs,
        duration,
        in_flight,
    ))?;
    let ns = |rate: f64| 1e9 / rate;
    println!(
        "policy: a closed breaker costs {:.0} ns a call, the whole policy {:.0} ns (mem://, over a no-op layer)",
        ns(mem[1]) - ns(mem[0]),
        ns(mem[2]) - ns(mem[0])
    );
    let (one, two) = (closed_breaker_ns(1), closed_breaker_ns(2));
    println!(
        "policy: a closed breaker's own work (enter, then a success) is {one:.1} ns a call on one thread; two threads on one circuit: {two:.1} ns a call (of their total time; fastest of 30 passes)"
    );
    // The TCP server on the other CPUs, in its own runtime.
    let server_cpus: Vec<usize> = cpus.iter().copied().filter(|c| *c != cpu).collect();
    let url = crate::serve::spawn_tcp(Microservice::new().handler(MEM_ADD), server_cpus)?;
    let tcp = rt.block_on(policy_rows(
        &url,
        &[Side::Switchboard, Side::Guarded],
        runs,
        duration,
        in_flight,
    ))?;
    println!(
        "policy: over TCP the whole policy (not triggered) keeps {:.2} of the client's throughput without it (target >= 0.90)",
        tcp[1] / tcp[0]
    );
    Ok(())
}

/// What a closed breaker's own work costs, entering and recording a success, without the
/// call around it: the fastest of 30 passes of 200,000 calls a thread (the fastest, because a
/// pass that another process interrupts only ever measures slower), with `threads` threads on
/// one circuit, per call of all of them.
fn closed_breaker_ns(threads: usize) -> f64 {
    const N: u32 = 200_000;
    let breaker = CircuitBreaker::new();
    (0..30)
        .map(|_| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        for _ in 0..N {
                            if let Ok(pass) = breaker.try_enter("bench.add") {
                                pass.finish(false);
                            }
                        }
                    });
                }
            });
            start.elapsed().as_nanos() as f64 / (f64::from(N) * threads as f64)
        })
        .fold(f64::INFINITY, f64::min)
}

/// Measures each side against the service at `url`; prints the table, returns the medians.
async fn policy_rows(
    url: &str,
    sides: &[Side],
    runs: usize,
    duration: Duration,
    in_flight: usize,
) -> anyhow::Result<Vec<f64>> {
    let transport = url.split("://").next().unwrap_or_default();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for run in 0..runs {
        for (i, side) in sides.iter().enumerate().cycle().skip(run).take(sides.len()) {
            let rate = measure_at(url, *side, duration, in_flight.max(1)).await?;
            eprintln!(
                "run {}/{runs} {transport} x{in_flight:<4} {:<16} {rate:>12.0} calls/s",
                run + 1,
                side.name()
            );
            rates[i].push(rate);
        }
    }
    let medians: Vec<f64> = rates.into_iter().map(crate::median).collect();
    let ns = |rate: f64| 1e9 / rate;
    println!(
        "{:<10} {:<16} {:>10} {:>10} {:>12}",
        "scenario", "side", "calls/s", "ns/call", "over first"
    );
    for (side, rate) in sides.iter().zip(&medians) {
        println!(
            "{:<10} {:<16} {:>10.0} {:>10.0} {:>12.0}",
            format!("{transport} x{in_flight}"),
            side.name(),
            rate,
            ns(*rate),
            ns(*rate) - ns(medians[0])
        );
    }
    Ok(medians)
}

pub fn run(runs: usize, duration: Duration, in_flight: usize) -> anyhow::Result<()> {
    let cpu = crate::allowed_cpus().first().copied().unwrap_or(0);
    crate::pin_current_thread(&[cpu]).context("pin the in-process benchmark")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut bare = Vec::new();
    let mut switchboard = Vec::new();
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [Side::Bare, Side::Switchboard]
        } else {
            [Side::Switchboard, Side::Bare]
        };
        for side in order {
            let rate = rt.block_on(measure(side, duration, in_flight.max(1)))?;
            eprintln!(
                "run {}/{runs} mem x{in_flight:<4} {:<12} {rate:>12.0} calls/s",
                run + 1,
                side.name()
            );
            match side {
                Side::Bare => bare.push(rate),
                _ => switchboard.push(rate),
            }
        }
    }
    let (b, s) = (crate::median(bare), crate::median(switchboard));
    println!("{:<10} {:<12} {:>10}", "scenario", "side", "calls/s");
    println!("{:<10} {:<12} {:>10.0}", format!("mem x{in_flight}"), "bare-json", b);
    println!("{:<10} {:<12} {:>10.0}", format!("mem x{in_flight}"), "switchboard", s);
    println!("{:<10} {:<12} {:>10.2}", format!("mem x{in_flight}"), "ratio", s / b);
    println!(
        "target mem x{in_flight}: {:.2} M calls/s through Client on one core (target >= {:.1} M): {}",
        s / 1e6,
        MEM_TARGET / 1e6,
        if s >= MEM_TARGET { "MET" } else { "NOT MET" }
    );
    Ok(())
}

async fn measure(side: Side, duration: Duration, in_flight: usize) -> anyhow::Result<f64> {
    measure_at("mem://switchboard-bench", side, duration, in_flight).await
}

/// Calls/s of `side` against `url` (a `mem://` service is started here; any other must be up).
async fn measure_at(url: &str, side: Side, duration: Duration, in_flight: usize) -> anyhow::Result<f64> {
    let server = match side {
        Side::Bare => None,
        _ if !url.starts_with("mem://") => None,
        _ => Some(Microservice::new().handler(MEM_ADD).listen(url).start().await?),
    };
    let client = client_for(url, side).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    // Warm up for a tenth of the measurement, then count.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..in_flight {
        let (client, stop, calls) = (client.clone(), stop.clone(), calls.clone());
        tasks.spawn(async move {
            let mut i = t as i64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..BATCH {
                    i = i.wrapping_add(1);
                    let result = match side {
                        Side::Bare => bare_call(MemAdd { a: i, b: 2 })?.result,
                        Side::Policy => client.send(MEM_ADD, MemAdd { a: i, b: 2 }).idempotent().await?.result,
                        _ => client.send(MEM_ADD, MemAdd { a: i, b: 2 }).await?.result,
                    };
                    anyhow::ensure!(result == i.wrapping_add(2), "wrong answer {result} for {i} + 2");
                }
                calls.fetch_add(BATCH, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            anyhow::Ok(())
        });
    }
    let rate = window(tasks, &calls, &stop, duration).await?;
    if let Some(server) = server {
        server.shutdown().await?;
    }
    Ok(rate)
}

/// The client of `side` for `url`.
async fn client_for(url: &str, side: Side) -> anyhow::Result<Client> {
    let builder = Client::builder(url);
    let builder = match side {
        Side::Bare | Side::Switchboard => builder,
        Side::Layered => builder.layer(tower::layer::util::Identity::new()),
        Side::Breaker => builder.layer(CircuitBreaker::new()),
        Side::Policy | Side::Guarded => builder.layer(
            Policy::new()
                .bulkhead(Bulkhead::new(1 << 20))
                .rate_limit(RateLimit::per_second(u32::MAX))
                .circuit_breaker(CircuitBreaker::new())
                .retry(Retry::new())
                .attempt_timeout(Duration::from_secs(10)),
        ),
    };
    Ok(builder.connect().await?)
}

/// `--profile-calls <side>`: `requests` calls of `side`, 64 in flight, on one thread, against a
/// `mem://` service (or, with `tcp`, a TCP one in the same runtime): a fixed workload for
/// instruction counts (callgrind), where wall-clock numbers mean nothing.
pub fn profile_calls(side: Side, tcp: bool, requests: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let url = if tcp {
            "tcp://127.0.0.1:0"
        } else {
            "mem://switchboard-profile"
        };
        let server = Microservice::new().handler(MEM_ADD).listen(url).start().await?;
        let url = if tcp {
            server.local_url().to_owned()
        } else {
            url.to_owned()
        };
        let client = client_for(&url, side).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..64 {
            let client = client.clone();
            tasks.spawn(async move {
                for i in (t..requests as i64).step_by(64) {
                    let call = client.send(MEM_ADD, MemAdd { a: i, b: 2 });
                    let sum = match side {
                        Side::Policy => call.idempotent().await?,
                        _ => call.await?,
                    };
                    anyhow::ensure!(sum.result == i + 2, "wrong answer {} for {i} + 2", sum.result);
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        println!("{requests} calls");
        Ok(())
    })
}

/// The bare side: the JSON an in-process call cannot avoid, and the function.
/// The calls a second that `tasks` count in `calls` over `duration`, after a tenth of it to
/// warm up; then `stop` them and wait for them.
pub(crate) async fn window(
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    calls: &AtomicU64,
    stop: &AtomicBool,
    duration: Duration,
) -> anyhow::Result<f64> {
    tokio::time::sleep(duration / 10).await;
    let (start, before) = (Instant::now(), calls.load(Ordering::Relaxed));
    tokio::time::sleep(duration).await;
    let (elapsed, after) = (start.elapsed(), calls.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok((after - before) as f64 / elapsed.as_secs_f64())
}

fn bare_call(req: MemAdd) -> anyhow::Result<MemSum> {
    let payload = serde_json::to_vec(&req)?;
    let decoded: MemAdd = serde_json::from_slice(&payload)?;
    let reply = serde_json::to_vec(&add(decoded))?;
    Ok(serde_json::from_slice(&reply)?)
}
