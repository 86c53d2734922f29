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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Bare,
    Switchboard,
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
                if side == Side::Bare { "bare-json" } else { "switchboard" }
            );
            match side {
                Side::Bare => bare.push(rate),
                Side::Switchboard => switchboard.push(rate),
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
    let server = match side {
        Side::Switchboard => Some(
            Microservice::new()
                .handler(MEM_ADD)
                .listen("mem://switchboard-bench")
                .start()
                .await?,
        ),
        Side::Bare => None,
    };
    let client = Client::connect("mem://switchboard-bench").await?;
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
                        Side::Switchboard => client.send(MEM_ADD, MemAdd { a: i, b: 2 }).await?.result,
                        Side::Bare => bare_call(MemAdd { a: i, b: 2 })?.result,
                    };
                    anyhow::ensure!(result == i.wrapping_add(2), "wrong answer {result} for {i} + 2");
                }
                calls.fetch_add(BATCH, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(duration / 10).await;
    let (start, before) = (Instant::now(), calls.load(Ordering::Relaxed));
    tokio::time::sleep(duration).await;
    let (elapsed, after) = (start.elapsed(), calls.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    if let Some(server) = server {
        server.shutdown().await?;
    }
    Ok((after - before) as f64 / elapsed.as_secs_f64())
}

/// The bare side: the JSON an in-process call cannot avoid, and the function.
fn bare_call(req: MemAdd) -> anyhow::Result<MemSum> {
    let payload = serde_json::to_vec(&req)?;
    let decoded: MemAdd = serde_json::from_slice(&payload)?;
    let reply = serde_json::to_vec(&add(decoded))?;
    Ok(serde_json::from_slice(&reply)?)
}
