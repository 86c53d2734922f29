//! `PgReadModel`: a read model in PostgreSQL whose checkpoint commits with its rows, so every
//! event is in it exactly once, across failed batches, concurrent runners, rebuilds and a
//! runner SIGKILLed mid-batch. Skipped without a server, failing instead when `CI` is set (see
//! `common/postgres.rs`).
#![cfg(feature = "postgres")]

#[path = "common/postgres.rs"]
mod pg_common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use switchboard_eventstore::postgres::sqlx;
use switchboard_eventstore::{Error, EventStore, ExpectedVersion, NewEvent, PgReadModel, PgStore};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Appends `n` events over 17 streams, 100 per append.
async fn fill(store: &PgStore, n: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let events = chunk
            .iter()
            .map(|i| NewEvent::raw("TICKED", 1, format!(r#"{{"n":{i}}}"#)))
            .collect();
        store
            .append(format!("ticks-{}", chunk[0] % 17), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
}

async fn applied_table(store: &PgStore) {
    sqlx::query("CREATE TABLE IF NOT EXISTS applied (position BIGINT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
}

/// Rows in the model, distinct positions among them, and the highest.
async fn rows(store: &PgStore) -> (i64, i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT position), coalesce(max(position), 0) FROM applied")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// A model that inserts each event's position; it fails at position `fail_at` while `failing`.
async fn model(store: &PgStore, failing: Arc<AtomicBool>, fail_at: u64) -> PgReadModel {
    PgReadModel::connect(store.pool().clone(), "ticks", move |tx, event| {
        let fail = failing.load(Ordering::SeqCst) && event.position == fail_at;
        async move {
            if fail {
                return Err(Error::Invalid(format!("failing at {}", event.position)));
            }
            sqlx::query("INSERT INTO applied (position) VALUES ($1)")
                .bind(event.position as i64)
                .execute(&mut *tx)
                .await?;
            Ok(())
        }
        .boxed()
    })
    .await
    .unwrap()
}

/// A batch that fails is rolled back with its checkpoint: the rows are exactly the events up to
/// the checkpoint; the next run applies the rest once; a rebuild replays everything once.
#[tokio::test]
async fn a_failed_batch_rolls_back_with_its_checkpoint_and_a_rebuild_replays_once() {
    let Some(store) = pg_common::store().await else { return };
    applied_table(&store).await;
    fill(&store, 3000).await;
    let failing = Arc::new(AtomicBool::new(true));
    let model = model(&store, failing.clone(), 2500).await;

    let err = model.catch_up(&store).await.unwrap_err();
    assert!(err.to_string().contains("failing at 2500"), "{err}");
    // Batches of 1,024: the first two committed, the third rolled back whole.
    assert_eq!(model.position().await.unwrap(), 2048);
    assert_eq!(rows(&store).await, (2048, 2048, 2048));

    failing.store(false, Ordering::SeqCst);
    assert_eq!(model.catch_up(&store).await.unwrap(), 3000);
    assert_eq!(rows(&store).await, (3000, 3000, 3000));
    // Nothing new: nothing applied again.
    assert_eq!(model.catch_up(&store).await.unwrap(), 3000);
    assert_eq!(rows(&store).await, (3000, 3000, 3000));

    let rebuilt = model
        .rebuild(&store, |tx| {
            async move {
                sqlx::query("DELETE FROM applied").execute(&mut *tx).await?;
                Ok(())
            }
            .boxed()
        })
        .await
        .unwrap();
    assert_eq!(rebuilt, 3000);
    assert_eq!(rows(&store).await, (3000, 3000, 3000));
}

/// Two runners of one model (as two processes would be) take turns on its checkpoint row:
/// each event is applied once, and `run` follows appends made while it runs.
#[tokio::test]
async fn two_runners_of_one_model_apply_each_event_once() {
    let Some(store) = pg_common::store().await else { return };
    applied_table(&store).await;
    fill(&store, 2000).await;
    let never = Arc::new(AtomicBool::new(false));
    let (a, b) = (model(&store, never.clone(), 0).await, model(&store, never, 0).await);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let runner = |m: PgReadModel| {
        let (store, mut stop) = (store.clone(), stop_rx.clone());
        tokio::spawn(async move {
            m.run(&store, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let (ra, rb) = (runner(a.clone()), runner(b));
    fill(&store, 1000).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while a.position().await.unwrap() < 3000 {
        assert!(tokio::time::Instant::now() < deadline, "the runners did not reach 3000");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    ra.await.unwrap().unwrap();
    rb.await.unwrap().unwrap();
    assert_eq!(rows(&store).await, (3000, 3000, 3000));
}

const KILLED_TOTAL: u64 = 6_000;

/// The runner process: follows the model in the schema `SB_RM_SCHEMA`, slowly (a pause every
/// 100 events, so a kill lands inside a batch). Does nothing when run directly.
#[tokio::test]
#[ignore = "run by a_killed_runner_leaves_each_event_in_the_model_once as a child process"]
async fn read_model_runner_child_process() {
    let Ok(schema) = std::env::var("SB_RM_SCHEMA") else {
        return;
    };
    let store = PgStore::builder(pg_common::url())
        .schema(schema)
        .connect()
        .await
        .unwrap();
    let model = PgReadModel::connect(store.pool().clone(), "ticks", |tx, event| {
        async move {
            sqlx::query("INSERT INTO applied (position) VALUES ($1)")
                .bind(event.position as i64)
                .execute(&mut *tx)
                .await?;
            if event.position % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(())
        }
        .boxed()
    })
    .await
    .unwrap();
    println!("READY");
    model.run(&store, std::future::pending()).await.unwrap();
}

/// SIGKILL the runner five times at random moments: after each kill the model holds exactly
/// the events up to its checkpoint, once each; a last runner finishes with every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_leaves_each_event_in_the_model_once() {
    let Some(store) = pg_common::store().await else { return };
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(store.pool())
        .await
        .unwrap();
    applied_table(&store).await;
    fill(&store, KILLED_TOTAL).await;
    let checkpoint = || async {
        sqlx::query_scalar::<_, i64>("SELECT position FROM sb_read_models WHERE name = 'ticks'")
            .fetch_optional(store.pool())
            .await
            .unwrap()
            .unwrap_or(0)
    };
    let spawn = || {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "read_model_runner_child_process", "--ignored", "--nocapture"])
            .env("SB_RM_SCHEMA", &schema)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        (child, lines)
    };
    let mut mid_batch = 0;
    for kill in 0..5 {
        let (mut child, mut lines) = spawn();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("the runner starts within 60 s")
                .unwrap()
                .expect("the runner prints READY");
            if line.trim() == "READY" {
                break;
            }
        }
        // Killed once it committed a batch, at a random moment of the next one.
        let before = checkpoint().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while checkpoint().await == before && before < KILLED_TOTAL as i64 {
            assert!(tokio::time::Instant::now() < deadline, "the runner commits nothing");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..100))).await;
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        // One snapshot for both: the killed runner's last COMMIT may still be on its way
        // through its server process (it was sent before the kill) and land between two
        // reads; it holds the rows and the checkpoint together or neither.
        let (at, n, distinct, max): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT coalesce((SELECT position FROM sb_read_models WHERE name = 'ticks'), 0),
                    count(*), count(DISTINCT position), coalesce(max(position), 0) FROM applied",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(
            (n, distinct, max),
            (at, at, at),
            "after kill {kill}: rows, distinct, highest vs checkpoint {at}"
        );
        if at > 0 && at < KILLED_TOTAL as i64 {
            mid_batch += 1;
        }
    }
    assert!(mid_batch > 0, "no kill landed while the runner was part way through");
    let (mut child, _lines) = spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while checkpoint().await < KILLED_TOTAL as i64 {
        assert!(tokio::time::Instant::now() < deadline, "the last runner did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let total = KILLED_TOTAL as i64;
    assert_eq!(rows(&store).await, (total, total, total));
}
