//! Projections under concurrent writers: 16 writers with random delays append 1,000,000
//! events while live subscriptions, a projection of `#[event_pattern]` handlers and an SQLite
//! read model follow; none skips or repeats an event. Then a rebuild from position 0, and a
//! read model whose process is killed mid-batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::prelude::*;
use switchboard_eventstore::{
    EventStore, ExpectedVersion, NewEvent, Projection, Recorded, SqliteReadModel, SqliteStore, Subscription,
};

const WRITERS: u64 = 16;
const TOTAL: u64 = 1_000_000;
const STREAMS: u64 = 256;

#[derive(Clone, Default)]
struct Tally {
    per_stream: Arc<Mutex<HashMap<String, u64>>>,
    handled: Arc<AtomicU64>,
}

#[event_pattern("TICKED")]
async fn ticked(State(tally): State<Tally>, ctx: Context, _tick: serde_json::Value) {
    let stream = ctx.headers().get("event-stream").unwrap_or("?").to_owned();
    *tally.per_stream.lock().unwrap().entry(stream).or_default() += 1;
    tally.handled.fetch_add(1, Ordering::Relaxed);
}

/// Appends TOTAL events from WRITERS tasks, 1 to 8 events per append, random pauses between.
async fn write(store: SqliteStore) {
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut written = 0;
                let share = TOTAL / WRITERS;
                while written < share {
                    let n = fastrand::u64(1..=8).min(share - written);
                    let stream = format!("s-{}", fastrand::u64(0..STREAMS));
                    let events = (0..n)
                        .map(|i| NewEvent::raw("TICKED", 1, format!("[{w},{}]", written + i)))
                        .collect();
                    store.append(stream, ExpectedVersion::Any, events).await.unwrap();
                    written += n;
                    if fastrand::u8(..) < 8 {
                        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2000))).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Follows the store live, checking every position is the one after the last.
async fn follow(store: SqliteStore, name: String, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let mut last = 0;
    let mut stop = stop;
    Subscription::new(store, name)
        .batch(2048)
        .run(
            |event: Recorded| {
                assert_eq!(event.position, last + 1, "a gap or a repeat after position {last}");
                last = event.position;
                async { Ok(()) }
            },
            async move { drop(stop.wait_for(|s| *s).await) },
        )
        .await
        .unwrap();
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_events_from_sixteen_writers_reach_every_projection_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db")).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);

    let followers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(follow(store.clone(), format!("follower-{i}"), stopped.clone())))
        .collect();

    // `#[event_pattern]` handlers as a projection.
    let tally = Tally::default();
    let router = Microservice::new()
        .with_state(tally.clone())
        .handler(TICKED)
        .into_router()
        .unwrap();
    let projection = Projection::new(store.clone(), "tally", router);
    let mut projection_stop = stopped.clone();
    let projected = tokio::spawn(async move {
        projection
            .run(async move { drop(projection_stop.wait_for(|s| *s).await) })
            .await
    });

    // A read model with a primary key per event: a repeat would fail its insert.
    let model = SqliteReadModel::open(dir.path().join("model.db"), "ticks", |tx, event| {
        tx.prepare_cached("CREATE TABLE IF NOT EXISTS ticks (position INTEGER PRIMARY KEY, stream TEXT NOT NULL)")?
            .execute([])?;
        tx.prepare_cached("INSERT INTO ticks (position, stream) VALUES (?1, ?2)")?
            .execute(rusqlite::params![event.position as i64, event.stream])?;
        Ok(())
    })
    .unwrap();
    let model_store = store.clone();
    let model_run = model.clone();
    let mut model_stop = stopped.clone();
    let modelled = tokio::spawn(async move {
        model_run
            .run(&model_store, async move { drop(model_stop.wait_for(|s| *s).await) })
            .await
    });

    write(store.clone()).await;
    let head = store.head().await.unwrap();
    assert_eq!(head, TOTAL);

    // Let everyone catch up to the head, then stop them.
    tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let mut done = true;
            for name in ["follower-0", "follower-1", "follower-2", "tally"] {
                done &= store.checkpoint(name).await.unwrap() == Some(TOTAL);
            }
            done &= model.position().await.unwrap() == TOTAL;
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every reader reaches the head");
    stop.send(true).unwrap();
    for follower in followers {
        assert_eq!(follower.await.unwrap(), TOTAL);
    }
    projected.await.unwrap().unwrap();
    modelled.await.unwrap().unwrap();

    assert_eq!(
        tally.handled.load(Ordering::Relaxed),
        TOTAL,
        "each event handled once by the projection"
    );
    for (stream, n) in tally.per_stream.lock().unwrap().iter() {
        assert!(
            stream.starts_with("s-"),
            "the handler sees the event's stream: {stream}"
        );
        let _ = n;
    }
    let rows: i64 = model
        .query(|c| Ok(c.query_row("SELECT count(*) FROM ticks", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(rows as u64, TOTAL);
    // The model agrees with the store stream by stream.
    let per_stream: Vec<(String, i64)> = model
        .query(|c| {
            let mut stmt = c.prepare("SELECT stream, count(*) FROM ticks GROUP BY stream")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
        .unwrap();
    for (stream, n) in per_stream {
        let state = store.stream_state(&stream).await.unwrap();
        assert_eq!(state.next_revision(), n as u64, "stream {stream}");
    }

    // Rebuilding from 0 gives the same model.
    let rebuilt = model
        .rebuild(&store, |tx| Ok(tx.execute_batch("DELETE FROM ticks")?))
        .await
        .unwrap();
    assert_eq!(rebuilt, TOTAL);
    let rows: i64 = model
        .query(|c| Ok(c.query_row("SELECT count(*) FROM ticks", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(rows as u64, TOTAL);
}

/// A projection that is stopped (its task dropped mid-run) and started again resumes after its
/// checkpoint: every event reaches it, none is lost; repeats happen only after the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db")).unwrap();
    for i in 0..5_000u64 {
        store
            .append(
                format!("s-{}", i % 10),
                ExpectedVersion::Any,
                vec![NewEvent::raw("TICKED", 1, "{}")],
            )
            .await
            .unwrap();
    }
    let tally = Tally::default();
    let router = Microservice::new()
        .with_state(tally.clone())
        .handler(TICKED)
        .into_router()
        .unwrap();
    let projection = Projection::new(store.clone(), "tally", router).subscription(|s| s.batch(100));
    let first = tokio::spawn({
        let projection = projection.clone();
        async move { projection.run(std::future::pending()).await }
    });
    tokio::time::timeout(Duration::from_secs(60), async {
        while tally.handled.load(Ordering::Relaxed) < 1_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    first.abort();
    let _ = first.await;
    // A checkpoint the aborted task had queued is still committed by the writer thread (the
    // task was dropped, the job was not): a write queued after it lands once it has.
    store.save_checkpoint("barrier", 0).await.unwrap();
    let saved = store.checkpoint("tally").await.unwrap().unwrap();
    let handled_before = tally.handled.load(Ordering::Relaxed);
    assert!(handled_before >= saved, "the checkpoint never passes what was handled");
    projection.catch_up().await.unwrap();
    let total = tally.handled.load(Ordering::Relaxed);
    assert_eq!(
        total - handled_before,
        5_000 - saved,
        "resumed right after the checkpoint"
    );
    assert_eq!(store.checkpoint("tally").await.unwrap(), Some(5_000));
}
