//! The codec rows (`--codec-only`): the same calls through `Client` with NestJS's JSON and
//! with Switchboard's MessagePack (`?codec=msgpack`), over TCP and in-process, in one run;
//! reported as msgpack/JSON ratios.
//!
//! Two payloads: `add` (two numbers in, one out: framing dominates) and `order` (a record of
//! a dozen line items, 880 bytes of JSON: the codec dominates). The TCP server runs on the
//! other CPUs in its own runtime; the clients on one current-thread runtime pinned to the
//! first CPU, `in_flight` tasks each calling in a loop, JSON and MessagePack taking turns in
//! slices of each run. Every answer is checked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use switchboard::prelude::*;

use crate::mem::{Tally, take_turns};

/// Calls between yields.
const BATCH: u64 = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    sku: String,
    quantity: u32,
    unit_price: f64,
    gift: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    id: u64,
    customer: String,
    email: String,
    lines: Vec<Line>,
    notes: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct Add {
    a: i64,
    b: i64,
}

#[message_pattern({ cmd = "codec_add" })]
async fn codec_add(req: Add) -> i64 {
    req.a.wrapping_add(req.b)
}

/// The order back, its id bumped (so every reply is checked against its request).
#[message_pattern({ cmd = "codec_order" })]
async fn codec_order(mut order: Order) -> Order {
    order.id = order.id.wrapping_add(1);
    order
}

fn order(id: u64) -> Order {
    Order {
        id,
        customer: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
        lines: (0..12)
            .map(|i| Line {
                sku: format!("SKU-{i:05}"),
                quantity: i + 1,
                // Exact in binary: serde_json's default float parsing may be 1 ULP off
                // otherwise (its `float_roundtrip` feature is off), and every reply is compared.
                unit_price: 9.75 + f64::from(i),
                gift: i % 3 == 0,
            })
            .collect(),
        notes: Some("leave at the door".into()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Payload {
    Add,
    Order,
}

pub fn run(runs: usize, duration: Duration, in_flight: usize) -> anyhow::Result<()> {
    let cpus = crate::allowed_cpus();
    let cpu = cpus.first().copied().unwrap_or(0);
    let server_cpus: Vec<usize> = cpus.iter().copied().filter(|c| *c != cpu).collect();
    let tcp = crate::serve::spawn_tcp(Microservice::new().handler(CODEC_ADD).handler(CODEC_ORDER), server_cpus)?;
    crate::pin_current_thread(&[cpu]).context("pin the codec benchmark")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _mem = rt.block_on(
        Microservice::new()
            .handler(CODEC_ADD)
            .handler(CODEC_ORDER)
            .listen("mem://codec-bench")
            .start(),
    )?;
    println!(
        "{:<16} {:>12} {:>12} {:>14}",
        "scenario", "json calls/s", "msgpack", "msgpack/json"
    );
    for (name, base) in [("tcp", tcp.as_str()), ("mem", "mem://codec-bench")] {
        let clients = rt.block_on(async {
            let json = Client::builder(base).connect().await?;
            let packed = Client::builder(&format!("{base}?codec=msgpack")).connect().await?;
            anyhow::Ok([json, packed])
        })?;
        for payload in [Payload::Add, Payload::Order] {
            let row = format!("{name} {payload:?} x{in_flight}").to_lowercase();
            let rates = rt.block_on(take_turns(
                &row,
                &["json", "msgpack"],
                runs,
                duration,
                |k, warmup, window| drive(&clients[k], payload, in_flight.max(1), warmup, window),
            ))?;
            let ratio = crate::median(rates[1].iter().zip(&rates[0]).map(|(p, j)| p / j).collect());
            let [json, packed] = [&rates[0], &rates[1]].map(|r| crate::median(r.clone()));
            println!("{row:<16} {json:>12.0} {packed:>12.0} {ratio:>14.2}");
        }
        for client in clients {
            rt.block_on(client.close());
        }
    }
    Ok(())
}

/// `in_flight` tasks making `payload` calls through `client` for `warmup`, then counted for
/// `window`.
async fn drive(
    client: &Client,
    payload: Payload,
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
            let mut i = t as u64 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..BATCH {
                    i = i.wrapping_add(1);
                    match payload {
                        Payload::Add => {
                            let got = client.send(CODEC_ADD, Add { a: i as i64, b: 2 }).await?;
                            anyhow::ensure!(got == i as i64 + 2, "wrong sum {got} for {i} + 2");
                        }
                        Payload::Order => {
                            let got = client.send(CODEC_ORDER, order(i)).await?;
                            let mut want = order(i);
                            want.id += 1;
                            anyhow::ensure!(got == want, "wrong order back for {i}: {got:?}, not {want:?}");
                        }
                    }
                }
                calls.fetch_add(BATCH, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            anyhow::Ok(())
        });
    }
    crate::mem::window(tasks, &calls, &stop, warmup, window).await
}
