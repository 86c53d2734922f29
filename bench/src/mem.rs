//! The in-process row: `mem://` calls through `Client` on one core, against a bare JSON round
//! trip (the least an in-process JSON transport does: encode the payload, decode it, call the
//! function, encode the reply, decode it) in the same run.
//!
//! One current-thread runtime pinned to one CPU runs `in_flight` tasks, each calling in a
//! loop and yielding every `BATCH` calls; every answer is checked. The sides take turns in
//! slices of a run ([`take_turns`]), as the TCP servers do, so a slower spell of the machine
//! falls on both alike.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use switchboard::prelude::*;
use switchboard::resilience::{Bulkhead, CircuitBreaker, Policy, RateLimit, Retry};

use crate::driver::{SLICE, SLICE_WARMUP};

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

/// Measures each side against the service at `url` (a `mem://` one is started here; any
/// other must be up), the sides taking turns; prints the table, returns the medians.
async fn policy_rows(
    url: &str,
    sides: &[Side],
    runs: usize,
    duration: Duration,
    in_flight: usize,
) -> anyhow::Result<Vec<f64>> {
    let transport = url.split("://").next().unwrap_or_default();
    let server = match url.starts_with("mem://") {
        true => Some(Microservice::new().handler(MEM_ADD).listen(url).start().await?),
        false => None,
    };
    let mut clients = Vec::with_capacity(sides.len());
    for side in sides {
        clients.push(client_for(url, *side).await?);
    }
    let names: Vec<&str> = sides.iter().map(|s| s.name()).collect();
    let rates = take_turns(
        &format!("{transport} x{in_flight}"),
        &names,
        runs,
        duration,
        |i, warmup, window| drive(sides[i], &clients[i], in_flight.max(1), warmup, window),
    )
    .await?;
    if let Some(server) = server {
        server.shutdown().await?;
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
    const URL: &str = "mem://switchboard-bench";
    let cpu = crate::allowed_cpus().first().copied().unwrap_or(0);
    crate::pin_current_thread(&[cpu]).context("pin the in-process benchmark")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let rates = rt.block_on(async {
        let server = Microservice::new().handler(MEM_ADD).listen(URL).start().await?;
        let client = client_for(URL, Side::Switchboard).await?;
        let sides = [Side::Bare, Side::Switchboard];
        let names = sides.map(Side::name);
        let rates = take_turns(
            &format!("mem x{in_flight}"),
            &names,
            runs,
            duration,
            |i, warmup, window| drive(sides[i], &client, in_flight.max(1), warmup, window),
        )
        .await?;
        server.shutdown().await?;
        anyhow::Ok(rates)
    })?;
    let ratio = crate::median(rates[1].iter().zip(&rates[0]).map(|(s, b)| s / b).collect());
    let [b, s] = [&rates[0], &rates[1]].map(|r| crate::median(r.clone()));
    println!("{:<10} {:<12} {:>10}", "scenario", "side", "calls/s");
    println!("{:<10} {:<12} {:>10.0}", format!("mem x{in_flight}"), "bare-json", b);
    println!("{:<10} {:<12} {:>10.0}", format!("mem x{in_flight}"), "switchboard", s);
    println!("{:<10} {:<12} {:>10.2}", format!("mem x{in_flight}"), "ratio", ratio);
    println!(
        "target mem x{in_flight}: {:.2} M calls/s through Client on one core (target >= {:.1} M): {}",
        s / 1e6,
        MEM_TARGET / 1e6,
        if s >= MEM_TARGET { "MET" } else { "NOT MET" }
    );
    Ok(())
}

/// `in_flight` tasks calling through `client` (or, for [`Side::Bare`], the bare round trip)
/// for `warmup`, then counted for `window`.
async fn drive(
    side: Side,
    client: &Client,
    in_flight: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Tally> {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
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
    self::window(tasks, &calls, &stop, warmup, window).await
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

/// Calls counted over a time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Tally {
    pub calls: u64,
    pub elapsed: Duration,
}

impl Tally {
    pub(crate) fn rate(self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

/// The calls that `tasks` count in `calls` over `duration`, after `warmup`; then `stop` them
/// and wait for them.
pub(crate) async fn window(
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    calls: &AtomicU64,
    stop: &AtomicBool,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Tally> {
    tokio::time::sleep(warmup).await;
    let (start, before) = (Instant::now(), calls.load(Ordering::Relaxed));
    tokio::time::sleep(duration).await;
    let (elapsed, after) = (start.elapsed(), calls.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(Tally {
        calls: after - before,
        elapsed,
    })
}

/// The rates of `names.len()` sides over `runs` runs (`[side][run]`), the sides taking turns:
/// each is warmed up once, then each run's `duration` is cut into slices of about [`SLICE`],
/// every side measured in each (after [`SLICE_WARMUP`]), the order rotating by one each slice
/// and each run, as the TCP servers take turns. `measure(side, warmup, window)` measures one.
pub(crate) async fn take_turns<F, Fut>(
    row: &str,
    names: &[&str],
    runs: usize,
    duration: Duration,
    mut measure: F,
) -> anyhow::Result<Vec<Vec<f64>>>
where
    F: FnMut(usize, Duration, Duration) -> Fut,
    Fut: Future<Output = anyhow::Result<Tally>>,
{
    for side in 0..names.len() {
        measure(side, duration / 10, SLICE_WARMUP).await?;
    }
    let slices = (duration.as_secs_f64() / SLICE.as_secs_f64()).round().max(1.0) as u32;
    let slice = duration / slices;
    let mut rates = vec![Vec::with_capacity(runs); names.len()];
    for run in 0..runs {
        let mut totals = vec![Tally::default(); names.len()];
        for k in 0..slices as usize {
            for j in 0..names.len() {
                let side = (j + k + run) % names.len();
                let tally = measure(side, SLICE_WARMUP, slice).await?;
                totals[side].calls += tally.calls;
                totals[side].elapsed += tally.elapsed;
            }
        }
        for (side, total) in totals.into_iter().enumerate() {
            eprintln!(
                "run {}/{runs} {row:<10} {:<16} {:>12.0} calls/s",
                run + 1,
                names[side],
                total.rate()
            );
            rates[side].push(total.rate());
        }
    }
    Ok(rates)
}

/// The bare side: the JSON an in-process call cannot avoid, and the function.
fn bare_call(req: MemAdd) -> anyhow::Result<MemSum> {
    let payload = serde_json::to_vec(&req)?;
    let decoded: MemAdd = serde_json::from_slice(&payload)?;
    let reply = serde_json::to_vec(&add(decoded))?;
    Ok(serde_json::from_slice(&reply)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_take_turns_in_rotating_order_and_each_gets_its_whole_window() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut order = Vec::new();
        let rates = rt
            .block_on(take_turns("test", &["a", "b"], 2, SLICE * 3, |side, warmup, window| {
                order.push((side, warmup, window));
                std::future::ready(Ok(Tally {
                    calls: 10 * (side as u64 + 1),
                    elapsed: window,
                }))
            }))
            .unwrap();
        // One warm-up each, then three slices a run, both sides in each, the order rotating.
        let sides: Vec<usize> = order.iter().map(|(side, _, _)| *side).collect();
        assert_eq!(sides, [0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0]);
        assert!(order[2..].iter().all(|(_, w, d)| *w == SLICE_WARMUP && *d == SLICE));
        // Each side's rate is its calls over its own three slices.
        let per_sec = |calls: f64| calls * 3.0 / (SLICE * 3).as_secs_f64();
        assert_eq!(rates, [vec![per_sec(10.0); 2], vec![per_sec(20.0); 2]]);
    }

    #[test]
    fn the_mem_row_measures_both_sides_and_checks_every_answer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rates = rt.block_on(async {
            let url = "mem://take-turns-test";
            let server = Microservice::new().handler(MEM_ADD).listen(url).start().await.unwrap();
            let client = client_for(url, Side::Switchboard).await.unwrap();
            let sides = [Side::Bare, Side::Switchboard];
            let rates = take_turns("mem", &sides.map(Side::name), 1, SLICE * 2, |i, warmup, window| {
                drive(sides[i], &client, 4, warmup, window)
            })
            .await
            .unwrap();
            server.shutdown().await.unwrap();
            rates
        });
        assert_eq!(rates.len(), 2);
        assert!(rates.iter().all(|r| r.len() == 1 && r[0] > 0.0), "{rates:?}");
    }
}
