//! The saga rows: three-step sagas run by an `Orchestrator` over its durable log, each against
//! the same three calls made directly with the typed client (the ceiling) in the same run.
//!
//! The saga: `reserve` (compensated by `release`) → `charge`, the pivot → `ship`, retriable;
//! every step succeeds. The participants are `#[message_pattern]` handlers of a `Microservice`
//! served over `mem://` in this process, so what the rows measure is the orchestrator and its
//! log, not a network.
//!
//! - throughput: `in_flight` starters (1,000 by default), each running one saga after another
//!   (`Sagas::run`: start, then wait for the outcome), a warm-up and then the measured window;
//!   sagas/s completed in the window. The ceiling: as many tasks making the three calls with
//!   the client, one after another.
//! - added latency per step: one saga at a time for the duration, each paired with the three
//!   bare calls just before it; (saga duration, from `start` to `wait`'s return, − the bare
//!   calls' duration) / 3, p50 and p99.
//!
//! Rows: `sqlite normal` (`SqliteLog`, `synchronous=NORMAL`: survives a process kill),
//! `sqlite full` (`synchronous=FULL`: survives a power loss; group commit is what makes it
//! fast), and with the `postgres` feature `postgres` (`PgLog` on 127.0.0.1:5432 or
//! `SB_POSTGRES_URL`, a fresh schema per run, dropped after). `SB_SAGA_ROW=<prefix>` runs only
//! the rows whose name starts with it (profiling).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use switchboard::prelude::*;
use switchboard::{Client, RunningServer};
use switchboard_eventstore::Synchronous;
use switchboard_saga::log::{SagaLog, SqliteLog};
use switchboard_saga::{AfterPivot, Orchestrator, Saga, Sagas, Status, Step};

/// Sagas/s on SQLite with `synchronous=NORMAL`.
const NORMAL_TARGET: f64 = 5_000.0;
/// Sagas/s on SQLite with `synchronous=FULL` (group commit).
const FULL_TARGET: f64 = 500.0;
/// p50 added latency per step, ms.
const STEP_LATENCY_TARGET_MS: f64 = 2.0;
/// Steps in the saga.
const STEPS: f64 = 3.0;

#[message_pattern("bench.inventory.reserve")]
async fn reserve(qty: u32) -> u64 {
    1000 + qty as u64
}

#[message_pattern("bench.inventory.release")]
async fn release(_reservation: u64) {}

#[message_pattern("bench.payment.charge")]
async fn charge(amount: u64) -> u64 {
    2000 + amount
}

#[message_pattern("bench.shipping.ship")]
async fn ship(payment: u64) -> u64 {
    3000 + payment
}

/// The saga's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Order {
    qty: u32,
    amount: u64,
    reservation: Option<u64>,
    payment: Option<u64>,
    shipment: Option<u64>,
}

impl Order {
    fn new(n: u64) -> Self {
        Order {
            qty: (n % 100) as u32,
            amount: n % 10_000,
            ..Order::default()
        }
    }

    /// What every step puts into the state.
    fn done(&self) -> (u64, u64, u64) {
        let payment = 2000 + self.amount;
        (1000 + self.qty as u64, payment, 3000 + payment)
    }
}

/// reserve (release) → charge, the pivot → ship, retriable.
fn order_saga(c: &Client) -> Saga<Order, AfterPivot> {
    Saga::<Order>::new("bench-order")
        .step(
            Step::new("reserve", c, RESERVE, |o: &Order| o.qty)
                .on_reply(|o, r| o.reservation = Some(*r))
                .compensate(RELEASE, |_, r| *r),
        )
        .pivot(Step::new("charge", c, CHARGE, |o: &Order| o.amount).on_reply(|o, p| o.payment = Some(*p)))
        .step(
            Step::new("ship", c, SHIP, |o: &Order| o.payment.unwrap_or(0))
                .on_reply(|o, s| o.shipment = Some(*s))
                .retriable(),
        )
}

/// The ceiling: the same three calls, made directly.
async fn bare_calls(c: &Client, order: Order) -> anyhow::Result<()> {
    let expected = order.done();
    let reservation = c.send(RESERVE, order.qty).await?;
    let payment = c.send(CHARGE, order.amount).await?;
    let shipment = c.send(SHIP, payment).await?;
    anyhow::ensure!(
        (reservation, payment, shipment) == expected,
        "a bare call answered wrongly"
    );
    Ok(())
}

/// One saga, run to its end and checked.
async fn one_saga<L: SagaLog>(sagas: &Sagas<Order, L>, id: String, order: Order) -> anyhow::Result<()> {
    let expected = order.done();
    let done = sagas
        .run(id.clone(), order)
        .await
        .with_context(|| format!("saga {id}"))?;
    let s = &done.state;
    anyhow::ensure!(
        done.status == Status::Completed
            && (s.reservation, s.payment, s.shipment) == (Some(expected.0), Some(expected.1), Some(expected.2)),
        "saga {id} ended {} with {s:?} ({:?})",
        done.status,
        done.error
    );
    Ok(())
}

/// What every row does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Runs of each row; the table shows medians.
    pub runs: usize,
    /// Sagas (or bare call triples) in flight in the throughput measurement.
    pub in_flight: usize,
    /// Load applied before the throughput window, not counted (the first sagas of 1,000
    /// starters all finish together, late).
    pub warmup: Duration,
    /// The throughput window, and the latency probe's duration.
    pub duration: Duration,
}

/// Runs `plan.in_flight` tasks calling `one(task, n)` one after another through the warm-up
/// and the window: calls/s completed in the window.
async fn closed_loop<F, Fut>(plan: Plan, one: F) -> anyhow::Result<f64>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..plan.in_flight)
        .map(|t| {
            let (stop, count, one) = (stop.clone(), count.clone(), one.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    one(t, n).await?;
                    n += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                    // `mem://` calls can complete without ever pending: without a yield the
                    // bare tasks would keep the workers from the timer that ends the window.
                    tokio::task::yield_now().await;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(plan.warmup).await;
    let (before, started) = (count.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(plan.duration).await;
    // What finished within the window; those in flight finish after it, uncounted.
    let done = count.load(Ordering::Relaxed) - before;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let drain = async {
        for h in handles {
            h.await??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), drain)
        .await
        .context("the in-flight sagas did not finish within 60 s")??;
    Ok(done as f64 / elapsed.as_secs_f64())
}

/// One saga at a time for `duration`, each after the same three calls made bare: the added
/// latency per step of every pair, in ms, sorted, and the sagas' durations in ms, sorted.
async fn latency<L: SagaLog>(
    sagas: &Sagas<Order, L>,
    client: &Client,
    duration: Duration,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let started = Instant::now();
    let (mut added, mut whole) = (Vec::new(), Vec::new());
    let mut n = 0u64;
    while started.elapsed() < duration {
        let t = Instant::now();
        bare_calls(client, Order::new(n)).await?;
        let bare = t.elapsed();
        let t = Instant::now();
        one_saga(sagas, format!("probe-{n}"), Order::new(n)).await?;
        let saga = t.elapsed();
        added.push((saga.as_secs_f64() - bare.as_secs_f64()) * 1e3 / STEPS);
        whole.push(saga.as_secs_f64() * 1e3);
        n += 1;
    }
    added.sort_by(f64::total_cmp);
    whole.sort_by(f64::total_cmp);
    Ok((added, whole))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// One run of one row's saga side over `log`: (sagas/s, step p50 ms, step p99 ms, saga p50 ms).
async fn ours<L: SagaLog>(log: L, client: &Client, plan: Plan) -> anyhow::Result<(f64, f64, f64, f64)> {
    let orchestrator = Orchestrator::builder(log).build();
    let sagas = orchestrator.register(order_saga(client));
    orchestrator.start();
    let result = async {
        let s = sagas.clone();
        let rate = closed_loop(plan, move |t, n| {
            let s = s.clone();
            async move { one_saga(&s, format!("{t}-{n}"), Order::new(n)).await }
        })
        .await?;
        let (added, whole) = latency(&sagas, client, plan.duration).await?;
        anyhow::Ok((
            rate,
            quantile(&added, 0.50),
            quantile(&added, 0.99),
            quantile(&whole, 0.50),
        ))
    }
    .await;
    orchestrator.shutdown();
    result
}

/// The ceiling's sagas/s: the three calls, `in_flight` at a time.
async fn bare(client: &Client, plan: Plan) -> anyhow::Result<f64> {
    let c = client.clone();
    closed_loop(plan, move |_, n| {
        let c = c.clone();
        async move { bare_calls(&c, Order::new(n)).await }
    })
    .await
}

/// The medians of one row over its runs.
#[derive(Default)]
struct Row {
    ours: Vec<f64>,
    bare: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    saga_p50: Vec<f64>,
}

impl Row {
    fn push(&mut self, name: &str, plan: Plan, bare: f64, (ours, p50, p99, saga_p50): (f64, f64, f64, f64)) {
        eprintln!(
            "run {}/{} {name:<14} {ours:>8.0} sagas/s, ceiling {bare:>8.0}/s, step p50 {p50:.3} ms p99 {p99:.3} ms, \
             saga p50 {saga_p50:.3} ms; load average {}",
            self.ours.len() + 1,
            plan.runs,
            crate::load_average()
        );
        self.bare.push(bare);
        self.ours.push(ours);
        self.p50.push(p50);
        self.p99.push(p99);
        self.saga_p50.push(saga_p50);
    }

    /// Prints the row and returns its target lines.
    fn print(self, name: &str, throughput_target: Option<f64>) -> Vec<String> {
        let m = |v: Vec<f64>| crate::median(v);
        let (o, b, p50, p99, saga_p50) = (m(self.ours), m(self.bare), m(self.p50), m(self.p99), m(self.saga_p50));
        println!(
            "{name:<16} {o:>10.0} {b:>11.0} {:>8.4} {p50:>12.3} {p99:>12.3} {saga_p50:>12.3}",
            o / b
        );
        let met = |ok: bool| if ok { "MET" } else { "NOT MET" };
        let mut targets = Vec::new();
        if let Some(t) = throughput_target {
            targets.push(format!("{name}: {o:.0} sagas/s (target >= {t:.0}): {}", met(o >= t)));
        }
        targets.push(format!(
            "{name}: p50 added latency per step {p50:.3} ms (target <= {STEP_LATENCY_TARGET_MS:.0} ms): {}",
            met(p50 <= STEP_LATENCY_TARGET_MS)
        ));
        targets
    }
}

fn header(what: &str, plan: Plan) {
    println!(
        "sagas on {what}: three steps (reserve, compensated by release; charge, the pivot; ship, retriable), \
         participants served over mem:// in this process, {} in flight ({:?} warm-up + {:?} measured), \
         medians of {}; ceiling = the same three calls through the typed client, no orchestrator; \
         load average {}",
        plan.in_flight,
        plan.warmup,
        plan.duration,
        plan.runs,
        crate::load_average()
    );
    println!(
        "{:<16} {:>10} {:>11} {:>8} {:>12} {:>12} {:>12}",
        "row", "sagas/s", "ceiling/s", "ratio", "step p50 ms", "step p99 ms", "saga p50 ms"
    );
}

fn footer(targets: Vec<String>) {
    println!(
        "step p50/p99: (saga duration, start to wait's return, - the same three bare calls' duration) / 3, \
         one saga at a time; saga p50: that duration"
    );
    for t in targets {
        println!("target {t}");
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The participants, and a client of theirs.
async fn participants() -> anyhow::Result<(RunningServer, Client)> {
    let url = format!("mem://sb-bench-saga-{}", fastrand::u64(..));
    let server = Microservice::new()
        .handler(RESERVE)
        .handler(RELEASE)
        .handler(CHARGE)
        .handler(SHIP)
        .listen(&url)
        .start()
        .await?;
    let client = Client::connect(&url).await?;
    Ok((server, client))
}

/// Only rows whose name starts with `SB_SAGA_ROW` (all when unset).
fn selected(name: &str) -> bool {
    name.starts_with(&std::env::var("SB_SAGA_ROW").unwrap_or_default())
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "sb-bench-saga-{}-{tag}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Dir(dir))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The SQLite rows, every one `runs` times; prints medians.
pub fn run(plan: Plan) -> anyhow::Result<()> {
    let rt = runtime()?;
    let rows = [
        ("sqlite normal", Synchronous::Normal, NORMAL_TARGET),
        ("sqlite full", Synchronous::Full, FULL_TARGET),
    ];
    if !rows.iter().any(|r| selected(r.0)) {
        return Ok(());
    }
    header("SQLite (SqliteLog, WAL)", plan);
    let (_server, client) = rt.block_on(participants()).context("start the participants")?;
    let mut targets = Vec::new();
    for (name, sync, target) in rows.into_iter().filter(|r| selected(r.0)) {
        let mut row = Row::default();
        for _ in 0..plan.runs {
            let b = rt.block_on(bare(&client, plan)).context("bare calls")?;
            let dir = Dir::new("log")?;
            let log = SqliteLog::open_with(dir.0.join("sagas.db"), sync)?;
            let o = rt
                .block_on(ours(log, &client, plan))
                .with_context(|| format!("{name} sagas"))?;
            row.push(name, plan, b, o);
        }
        targets.extend(row.print(name, Some(target)));
    }
    footer(targets);
    Ok(())
}

/// The PostgreSQL row (feature `postgres`): `PgLog` in a fresh schema per run, dropped after.
#[cfg(feature = "postgres")]
pub fn run_postgres(plan: Plan) -> anyhow::Result<()> {
    use switchboard_saga::log::PgLog;
    use switchboard_saga::log::postgres::sqlx;

    let name = "postgres";
    if !selected(name) {
        return Ok(());
    }
    let url = std::env::var("SB_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let rt = runtime()?;
    header("PostgreSQL (PgLog)", plan);
    let (_server, client) = rt.block_on(participants()).context("start the participants")?;
    let mut row = Row::default();
    for _ in 0..plan.runs {
        let b = rt.block_on(bare(&client, plan)).context("bare calls")?;
        let schema = format!("sb_bench_saga_{}", fastrand::u64(..));
        let o = rt
            .block_on(async {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await?;
                let log = PgLog::builder(url.clone()).schema(schema.clone()).connect().await?;
                let result = ours(log, &client, plan).await;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
                    .execute(&pool)
                    .await?;
                result
            })
            .context("postgres sagas")?;
        row.push(name, plan, b, o);
    }
    footer(row.print(name, None));
    Ok(())
}
