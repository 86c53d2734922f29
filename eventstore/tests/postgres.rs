//! What only the PostgreSQL store has to show: several processes on one database (simulated by
//! several stores on one schema), commits of others seen through `NOTIFY`, and a URL's password
//! kept out of what it shows. Skipped without a server, failing instead when `CI` is set (see
//! `common/postgres.rs`).
#![cfg(feature = "postgres")]

#[path = "common/postgres.rs"]
mod pg_common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use switchboard_eventstore::postgres::sqlx;
use switchboard_eventstore::{Appended, Error, EventStore, ExpectedVersion, NewEvent, PgStore, StreamState};
use tokio::sync::Barrier;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Two stores on one fresh schema, as two processes would have, connecting at the same time
/// (the tables are created once, under the advisory lock).
async fn two_stores() -> Option<(PgStore, PgStore)> {
    let schema = pg_common::fresh_schema();
    let (a, b) = tokio::join!(pg_common::store_in(&schema), pg_common::store_in(&schema));
    Some((a?, b?))
}

fn event(n: u64) -> NewEvent {
    NewEvent::raw("TICKED", 1, format!(r#"{{"n":{n}}}"#))
}

const STREAMS: u64 = 50;
const TASKS_PER_STORE: u64 = 8;
const APPENDS_PER_TASK: u64 = 30;

/// One task's appends: to streams picked round the 50, 1 to 3 events each; odd tasks append
/// with `Any`, even ones read the stream's state and expect exactly it (retrying when another
/// writer got there first), so both the fast and the careful path race across the stores.
async fn writer(store: PgStore, task: u64, barrier: Arc<Barrier>) -> Vec<(String, Vec<Uuid>, Appended)> {
    barrier.wait().await;
    let mut done = Vec::new();
    for i in 0..APPENDS_PER_TASK {
        let stream = format!("s{}", (task * 7 + i * 3) % STREAMS);
        let events: Vec<NewEvent> = (0..(task + i) % 3 + 1)
            .map(|k| event(task * 10_000 + i * 10 + k))
            .collect();
        let ids = events.iter().map(|e| e.id).collect();
        let appended = loop {
            let expected = if task % 2 == 1 {
                ExpectedVersion::Any
            } else {
                match store.stream_state(&stream).await.unwrap() {
                    StreamState::At(r) => ExpectedVersion::Exact(r),
                    StreamState::NoStream => ExpectedVersion::NoStream,
                    StreamState::Deleted => panic!("nobody deletes {stream}"),
                }
            };
            match tokio::time::timeout(WAIT, store.append(&stream, expected, events.clone()))
                .await
                .expect("append hung")
            {
                Ok(appended) => break appended,
                Err(Error::WrongExpectedVersion { .. }) if task.is_multiple_of(2) => tokio::task::yield_now().await,
                Err(e) => panic!("task {task} append {i} to {stream}: {e}"),
            }
        };
        done.push((stream, ids, appended));
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_append_gaplessly_in_commit_order() {
    let Some((a, b)) = two_stores().await else { return };
    let barrier = Arc::new(Barrier::new(2 * TASKS_PER_STORE as usize));
    let mut handles = Vec::new();
    for task in 0..2 * TASKS_PER_STORE {
        let store = if task.is_multiple_of(2) { a.clone() } else { b.clone() };
        handles.push(tokio::spawn(writer(store, task, barrier.clone())));
    }
    let mut written = Vec::new();
    for handle in handles {
        written.extend(
            tokio::time::timeout(WAIT * 4, handle)
                .await
                .expect("a writer hung")
                .unwrap(),
        );
    }

    let n: u64 = written.iter().map(|(_, ids, _)| ids.len() as u64).sum();
    let all = a.read_all(0, usize::MAX).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.position).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "positions are gapless"
    );
    assert_eq!(
        b.read_all(0, usize::MAX).await.unwrap(),
        all,
        "both stores read the same"
    );
    let ids: HashSet<Uuid> = all.iter().map(|r| r.id).collect();
    assert_eq!(ids.len() as u64, n, "every event once");
    let written_ids: HashSet<Uuid> = written.iter().flat_map(|(_, ids, _)| ids.iter().copied()).collect();
    assert_eq!(ids, written_ids, "exactly the events written");

    // Each stream's revisions are gapless, and each append is where it was told it is, its
    // events together and in order.
    let by_id: HashMap<Uuid, _> = all.iter().map(|r| (r.id, r)).collect();
    let mut per_stream: HashMap<&str, Vec<u64>> = HashMap::new();
    for r in &all {
        per_stream.entry(&r.stream).or_default().push(r.revision);
    }
    for (stream, revisions) in &per_stream {
        assert_eq!(
            *revisions,
            (0..revisions.len() as u64).collect::<Vec<_>>(),
            "revisions of {stream}"
        );
        let state = a.stream_state(stream).await.unwrap();
        assert_eq!(state, StreamState::At(revisions.len() as u64 - 1), "state of {stream}");
    }
    for (stream, ids, appended) in &written {
        let last = by_id[ids.last().unwrap()];
        assert_eq!(
            (&last.stream, last.revision, last.position),
            (stream, appended.revision, appended.position)
        );
        for (k, id) in ids.iter().rev().enumerate() {
            let r = by_id[id];
            assert_eq!(
                (r.revision, r.position),
                (appended.revision - k as u64, appended.position - k as u64)
            );
        }
    }

    assert_eq!(a.head().await.unwrap(), n);
    assert_eq!(b.head().await.unwrap(), n);
    // Each watch sees the other store's commits too.
    for store in [&a, &b] {
        let mut rx = store.watch_head();
        tokio::time::timeout(WAIT, rx.wait_for(|h| *h == n))
            .await
            .expect("the watched head reaches the head")
            .unwrap();
    }
}

#[tokio::test]
async fn watch_head_sees_another_process_commit() {
    let Some((a, b)) = two_stores().await else { return };
    let mut rx = a.watch_head();
    assert_eq!(*rx.borrow_and_update(), 0);
    let appended = b
        .append("elsewhere", ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .unwrap();
    // Nothing on `a` is called: only the notification can move its head.
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .expect("the notification arrives")
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), appended.position);
    assert_eq!(appended.position, 2);
    // And in the other direction.
    let mut rx = b.watch_head();
    let appended = a.append("here", ExpectedVersion::Any, vec![event(3)]).await.unwrap();
    tokio::time::timeout(WAIT, rx.wait_for(|h| *h == appended.position))
        .await
        .expect("seen by b")
        .unwrap();
}

/// A commit soon after another is not notified by itself: the appender notifies it once idle.
#[tokio::test]
async fn watch_head_sees_the_last_of_a_burst_of_commits() {
    let Some((a, b)) = two_stores().await else { return };
    let mut rx = a.watch_head();
    let mut last = 0;
    for n in 0..50 {
        last = b
            .append("burst", ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap()
            .position;
    }
    // Nothing on `a` is called: only a notification can move its head there.
    tokio::time::timeout(WAIT, rx.wait_for(|h| *h == last))
        .await
        .expect("the last commit is notified")
        .unwrap();
}

#[tokio::test]
async fn watch_head_catches_up_after_the_listener_reconnects() {
    let Some((a, b)) = two_stores().await else { return };
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(a.pool())
        .await
        .unwrap();
    let channel = format!("{schema}_es_head");
    // Cut every listening connection of this schema (both stores'); their listeners reconnect.
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN \"' || $1 || '\"'",
    )
    .bind(&channel)
    .fetch_all(a.pool())
    .await
    .unwrap();
    assert_eq!(cut.len(), 2, "both stores listen");
    let appended = b
        .append(
            "after-the-cut",
            ExpectedVersion::Any,
            vec![event(1), event(2), event(3)],
        )
        .await
        .unwrap();
    let mut rx = a.watch_head();
    tokio::time::timeout(WAIT, rx.wait_for(|h| *h == appended.position))
        .await
        .expect("the head is read again after the reconnect")
        .unwrap();
}

#[tokio::test]
async fn no_password_in_errors_or_debug() {
    const URL: &str = "postgres://postgres:s3cret@127.0.0.1:1/x";
    let builder = PgStore::builder(URL)
        .schema("s")
        .acquire_timeout(Duration::from_millis(300));
    let shown = format!("{builder:?}");
    assert!(!shown.contains("s3cret") && shown.contains("127.0.0.1"), "{shown}");
    let e = builder.connect().await.expect_err("nothing listens on port 1");
    for shown in [
        format!("{e}"),
        format!("{e:?}"),
        format!("{:?}", std::error::Error::source(&e)),
    ] {
        assert!(!shown.contains("s3cret"), "{shown}");
    }
    let e = PgStore::builder("postgres://postgres:s3cret@127.0.0.1:notaport/x")
        .connect()
        .await
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains("s3cret"), "{e:?}");

    // A store connected with a password (ignored by the test server's trust authentication)
    // does not show it either.
    let url = pg_common::url();
    if let Some(rest) = url.strip_prefix("postgres://postgres@")
        && let Some(store) = pg_store(&format!("postgres://postgres:s3cret@{rest}")).await
    {
        let shown = format!("{store:?}");
        assert!(!shown.contains("s3cret") && shown.contains("PgStore"), "{shown}");
    }
}

async fn pg_store(url: &str) -> Option<PgStore> {
    pg_common::store().await?;
    Some(
        PgStore::builder(url)
            .schema(pg_common::fresh_schema())
            .connect()
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn appends_go_on_after_the_appender_loses_its_connection() {
    let Some(store) = pg_common::store().await else { return };
    let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let first = store
        .append("s", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    // The appender's connection is the one that moved the head last.
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'switchboard-eventstore ' || $1 AND query LIKE '%UPDATE es_head SET position%' AND pid <> pg_backend_pid()",
    )
    .bind(&schema)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(cut, [true], "one appender");
    let again = event(2);
    let second = store
        .append("s", ExpectedVersion::Exact(first.revision), vec![again.clone()])
        .await
        .unwrap();
    assert_eq!((second.revision, second.position), (1, 2));
    // And a retry of it is answered from what is stored.
    assert_eq!(
        store.append("s", ExpectedVersion::Exact(0), vec![again]).await.unwrap(),
        second
    );
}
