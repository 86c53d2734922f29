//! The event store rows: appends and replay on `SqliteStore`, each against a bare rusqlite
//! loop with the same durability settings in the same run (the ceiling), 256-byte events.
//!
//! - `normal ×4`: 4 writer tasks, one event per append, `synchronous=NORMAL`; ceiling: one
//!   connection inserting one row per transaction.
//! - `full ×32`: 32 writers, `synchronous=FULL` (group commit is what makes it fast); the
//!   same ceiling with FULL.
//! - `batch 1000`: appends of 1,000 events; ceiling: 1,000 rows per transaction.
//! - `replay`: a 200,000-event stream folded into a value, JSON decoded; ceiling: the same
//!   SELECT and decode by hand.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use switchboard_eventstore::{EventStore, ExpectedVersion, NewEvent, ReadStream, SqliteStore, Synchronous};

use crate::median;

#[derive(Serialize, Deserialize)]
struct Tick {
    n: u64,
    pad: String,
}

/// 256 bytes of JSON.
fn payload(n: u64) -> Vec<u8> {
    let mut json = serde_json::to_vec(&Tick { n, pad: String::new() }).unwrap();
    let pad = 256usize.saturating_sub(json.len());
    json = serde_json::to_vec(&Tick {
        n,
        pad: "x".repeat(pad),
    })
    .unwrap();
    json
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "sb-bench-store-{}-{tag}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Dir(dir))
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Events/s appended by `writers` tasks, `per_append` events each call, for `secs`.
async fn ours(
    path: &Path,
    sync: Synchronous,
    writers: usize,
    per_append: usize,
    secs: Duration,
) -> anyhow::Result<f64> {
    let store = SqliteStore::open_with(path, sync)?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, stop, count) = (store.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let events = (0..per_append)
                        .map(|i| NewEvent::raw("TICK", 1, payload(n + i as u64)))
                        .collect();
                    store
                        .append(format!("w{w}-{}", n % 1000), ExpectedVersion::Any, events)
                        .await?;
                    n += per_append as u64;
                    count.fetch_add(per_append as u64, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(secs).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Rows/s of a bare insert loop: one connection, `per_tx` rows per transaction.
fn bare(path: &Path, sync: Synchronous, per_tx: usize, secs: Duration) -> anyhow::Result<f64> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if sync == Synchronous::Full { "FULL" } else { "NORMAL" },
    )?;
    conn.execute_batch(
        "CREATE TABLE t (position INTEGER PRIMARY KEY, stream TEXT NOT NULL, revision INTEGER NOT NULL, id BLOB NOT NULL,
         name TEXT NOT NULL, version INTEGER NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL, recorded_at INTEGER NOT NULL);",
    )?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < secs {
        let tx = conn.unchecked_transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO t (position, stream, revision, id, name, version, data, metadata, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, '{}', 0)",
            )?;
            for _ in 0..per_tx {
                n += 1;
                let data = String::from_utf8(payload(n))?;
                insert.execute(rusqlite::params![
                    n as i64,
                    "s",
                    n as i64,
                    uuid::Uuid::now_v7().as_bytes(),
                    "TICK",
                    data
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Events/s folded from one stream of `n` events, and the bare SELECT-and-decode.
async fn replay(dir: &Dir, n: u64) -> anyhow::Result<(f64, f64)> {
    let path = dir.file("replay.db");
    let store = SqliteStore::open(&path)?;
    for chunk in 0..n / 1000 {
        let events = (0..1000)
            .map(|i| NewEvent::raw("TICK", 1, payload(chunk * 1000 + i)))
            .collect();
        store.append("replayed", ExpectedVersion::Any, events).await?;
    }
    let started = Instant::now();
    let mut sum = 0u64;
    let mut from = 0;
    loop {
        let events = store.read_stream("replayed", ReadStream::forwards(from, 4096)).await?;
        for e in &events {
            sum = sum.wrapping_add(serde_json::from_slice::<Tick>(&e.data)?.n);
        }
        match events.last() {
            Some(last) if events.len() == 4096 => from = last.revision + 1,
            _ => break,
        }
    }
    let ours = n as f64 / started.elapsed().as_secs_f64();
    let conn = rusqlite::Connection::open(&path)?;
    let started = Instant::now();
    let mut bare_sum = 0u64;
    let mut stmt = conn.prepare("SELECT data FROM es_events WHERE stream = 'replayed' ORDER BY revision")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let tick: Tick = serde_json::from_slice(row.get_ref(0)?.as_bytes()?)?;
        bare_sum = bare_sum.wrapping_add(tick.n);
    }
    let bare = n as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(sum == bare_sum, "replay read other events than the bare loop");
    Ok((ours, bare))
}

/// Runs every row `runs` times and prints medians.
pub fn run(runs: usize, secs: Duration) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "event store, SQLite (rusqlite, bundled), 256-byte events, medians of {runs}; ceiling = bare rusqlite loop, same settings"
    );
    println!("{:<22} {:>14} {:>14} {:>8}", "row", "ours/s", "ceiling/s", "ratio");
    let rows: [(&str, Synchronous, usize, usize, usize); 3] = [
        ("append normal x4", Synchronous::Normal, 4, 1, 1),
        ("append full x32", Synchronous::Full, 32, 1, 1),
        ("append batch 1000", Synchronous::Normal, 1, 1000, 1000),
    ];
    // SB_STORE_ROW=<prefix> runs only the rows whose name starts with it (profiling).
    let only = std::env::var("SB_STORE_ROW").unwrap_or_default();
    for (name, sync, writers, per_append, per_tx) in rows.into_iter().filter(|r| r.0.starts_with(&only)) {
        let (mut o, mut b) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let dir = Dir::new("append")?;
            b.push(bare(&dir.file("bare.db"), sync, per_tx, secs).context("bare loop")?);
            o.push(
                rt.block_on(ours(&dir.file("ours.db"), sync, writers, per_append, secs))
                    .context("store")?,
            );
        }
        let (o, b) = (median(o), median(b));
        println!("{name:<22} {o:>14.0} {b:>14.0} {:>8.2}", o / b);
    }
    if !"replay".starts_with(&only) {
        return Ok(());
    }
    let (mut o, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = Dir::new("replay")?;
        let (ours, bare) = rt.block_on(replay(&dir, 200_000))?;
        o.push(ours);
        b.push(bare);
    }
    let (o, b) = (median(o), median(b));
    println!("{:<22} {o:>14.0} {b:>14.0} {:>8.2}", "replay (decode)", o / b);
    Ok(())
}

/// Turns each side of a PostgreSQL run takes.
#[cfg(feature = "postgres")]
const SLICES: u32 = 6;

/// The PostgreSQL rows (feature `postgres`): appends/s and p99 at 1, 4 and 16 writers, one
/// 256-byte event per append, against a bare sqlx loop (one single-row INSERT per statement
/// per writer, each on its own connection, into a table with the same columns and indexes),
/// the two taking turns in [`SLICES`] slices of each run.
#[cfg(feature = "postgres")]
pub fn run_postgres(runs: usize, secs: Duration) -> anyhow::Result<()> {
    use switchboard_eventstore::PgStore;
    use switchboard_eventstore::postgres::sqlx;

    let url = std::env::var("SB_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "event store, PostgreSQL (sqlx), 256-byte events, medians of {runs}; ceiling = bare sqlx INSERT loop, a connection of its own per writer"
    );
    println!(
        "{:<22} {:>12} {:>10} {:>12} {:>10} {:>8}",
        "writers", "ours/s", "p99 ms", "ceiling/s", "p99 ms", "ratio"
    );

    /// What one side's calls did over its slices of a run.
    struct Tally {
        elapsed: Duration,
        latencies: Vec<Duration>,
        /// Each writer's next `n`: its calls number on from one slice to the next.
        next: Vec<u64>,
    }

    impl Tally {
        fn new(writers: usize) -> Tally {
            Tally {
                elapsed: Duration::ZERO,
                latencies: Vec::new(),
                next: vec![0; writers],
            }
        }

        /// Calls/s and p99 in ms.
        fn result(mut self) -> (f64, f64) {
            let rate = self.latencies.len() as f64 / self.elapsed.as_secs_f64();
            self.latencies.sort();
            let p99 = self
                .latencies
                .get(self.latencies.len() * 99 / 100)
                .copied()
                .unwrap_or_default();
            (rate, p99.as_secs_f64() * 1e3)
        }
    }

    /// Runs `writers` tasks calling `one(w, n)` for `secs`, into `tally`.
    async fn drive<F, Fut>(writers: usize, secs: Duration, tally: &mut Tally, one: F) -> anyhow::Result<()>
    where
        F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let (stop, one, mut n) = (stop.clone(), one.clone(), tally.next[w]);
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        one(w, n).await?;
                        latencies.push(t.elapsed());
                        n += 1;
                    }
                    anyhow::Ok((latencies, n))
                })
            })
            .collect();
        tokio::time::sleep(secs).await;
        stop.store(true, Ordering::Relaxed);
        for (w, task) in tasks.into_iter().enumerate() {
            let (latencies, next) = task.await??;
            tally.latencies.extend(latencies);
            tally.next[w] = next;
        }
        tally.elapsed += started.elapsed();
        Ok(())
    }

    // SB_PG_WRITERS=1,4 runs only those rows (profiling).
    let only: Vec<usize> = std::env::var("SB_PG_WRITERS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    for writers in [1usize, 4, 16]
        .into_iter()
        .filter(|w| only.is_empty() || only.contains(w))
    {
        let (mut ours, mut ours_p99, mut bare, mut bare_p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let schema = format!("sb_bench_{}", fastrand::u64(..));
            rt.block_on(async {
                let pool = sqlx::postgres::PgPoolOptions::new().max_connections(writers as u32 + 1).connect(&url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&pool).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE {schema}.t (position bigserial PRIMARY KEY, stream text NOT NULL, revision bigint NOT NULL,
                     id uuid NOT NULL UNIQUE, name text NOT NULL, version integer NOT NULL, data json NOT NULL,
                     metadata json NOT NULL, recorded_at bigint NOT NULL, UNIQUE (stream, revision))"
                )))
                .execute(&pool)
                .await?;
                let insert = format!(
                    "INSERT INTO {schema}.t (stream, revision, id, name, version, data, metadata, recorded_at)
                     VALUES ($1, 0, $2, 'TICK', 1, $3::json, '{{}}'::json, 0)"
                );
                // Each writer on a connection of its own, no pool in between.
                let mut conns = Vec::new();
                for _ in 0..writers {
                    let conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
                    conns.push(Arc::new(tokio::sync::Mutex::new(conn)));
                }
                let bare_one = move |w: usize, n: u64| {
                    let (conn, insert) = (conns[w].clone(), insert.clone());
                    async move {
                        let data = String::from_utf8(payload(n))?;
                        let mut conn = conn.lock().await;
                        sqlx::query(sqlx::AssertSqlSafe(insert))
                            .bind(format!("w{w}-{n}"))
                            .bind(uuid::Uuid::now_v7())
                            .bind(data)
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    }
                };
                let store = PgStore::builder(url.clone()).schema(format!("{schema}_es")).connect().await?;
                let ours_one = move |w: usize, n: u64| {
                    let store = store.clone();
                    async move {
                        let event = NewEvent::raw("TICK", 1, payload(n));
                        store.append(format!("w{w}-{}", n % 1000), ExpectedVersion::Any, vec![event]).await?;
                        Ok(())
                    }
                };
                // The two sides take turns in short slices, so that a disk whose fsync rate
                // drifts during a run (these VMs' do, by 2x within minutes) weighs on both alike.
                let (mut bare_tally, mut ours_tally) = (Tally::new(writers), Tally::new(writers));
                for _ in 0..SLICES {
                    drive(writers, secs / SLICES, &mut bare_tally, bare_one.clone()).await?;
                    drive(writers, secs / SLICES, &mut ours_tally, ours_one.clone()).await?;
                }
                let (rate, p99) = bare_tally.result();
                bare.push(rate);
                bare_p99.push(p99);
                let (rate, p99) = ours_tally.result();
                ours.push(rate);
                ours_p99.push(p99);
                for s in [schema.clone(), format!("{schema}_es")] {
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {s} CASCADE"))).execute(&pool).await?;
                }
                anyhow::Ok(())
            })
            .context("postgres row")?;
        }
        let (o, b) = (median(ours), median(bare));
        println!(
            "{writers:<22} {o:>12.0} {:>10.2} {b:>12.0} {:>10.2} {:>8.2}",
            median(ours_p99),
            median(bare_p99),
            o / b
        );
    }
    Ok(())
}
