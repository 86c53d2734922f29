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
use switchboard_eventstore::{
    Appended, Error, EventStore, ExpectedVersion, NewEvent, PgStore, ReadStream, StreamState,
};
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

/// Commits close together share a notification: the last of a burst is notified all the same.
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

/// Several appenders of two stores expecting the same revision of one stream, round after
/// round: exactly one wins each round, the others are told the winner's revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_expectations_across_stores_have_one_winner_per_revision() {
    let Some((a, b)) = two_stores().await else { return };
    for round in 0..20u64 {
        let expected = match round {
            0 => ExpectedVersion::NoStream,
            r => ExpectedVersion::Exact(r - 1),
        };
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let store = if t % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { store.append("s", expected, vec![event(round * 100 + t)]).await })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match tokio::time::timeout(WAIT, task).await.expect("append hung").unwrap() {
                Ok(appended) => {
                    assert_eq!(appended.revision, round);
                    wins += 1;
                }
                Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, StreamState::At(round)),
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    let events = a.read_stream("s", ReadStream::forwards(0, 100)).await.unwrap();
    assert_eq!(
        events.iter().map(|r| r.revision).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    assert_eq!(b.stream_state("s").await.unwrap(), StreamState::At(19));
}

/// A transaction holding the head's row lock: appends, truncations and tombstones queue behind
/// it until it commits.
async fn hold_head(store: &PgStore) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM es_head WHERE id = 0 FOR NO KEY UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

/// Waits until `n` statements of the stores in `schema` whose text contains `like` wait for a
/// lock.
async fn until_waiting(store: &PgStore, schema: &str, like: &str, n: i64) {
    let waiting = async {
        loop {
            let count: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'switchboard-eventstore ' || $1 AND wait_event_type = 'Lock'
                 AND query LIKE '%' || $2 || '%'",
            )
            .bind(schema)
            .bind(like)
            .fetch_one(store.pool())
            .await
            .unwrap();
            if count >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, waiting)
        .await
        .unwrap_or_else(|_| panic!("{n} statements like `{like}` never waited"));
}

/// An append reads the stream with the snapshot its statement started with; when a tombstone,
/// or an append and a truncation, of another process commit while it waits for the head's lock,
/// what it read is stale. It must see that and start over: neither append to the deleted
/// stream nor take a revision another append took and a truncation deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletions_committed_while_an_append_waits_are_seen() {
    let schema = pg_common::fresh_schema();
    let (Some(a), Some(b)) = tokio::join!(pg_common::store_in(&schema), pg_common::store_in(&schema)) else {
        return;
    };
    a.append("gone", ExpectedVersion::NoStream, vec![event(0)])
        .await
        .unwrap();
    a.append("cut", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();

    // Tombstone: queued behind a lock on the head, then an append of the other store.
    let holder = hold_head(&a).await;
    let tombstone = tokio::spawn({
        let b = b.clone();
        async move { b.tombstone("gone", ExpectedVersion::Any).await }
    });
    until_waiting(&a, &schema, "deletions = deletions + 1", 1).await;
    let append = tokio::spawn({
        let a = a.clone();
        async move { a.append("gone", ExpectedVersion::Any, vec![event(2)]).await }
    });
    until_waiting(&a, &schema, "SET position = position +", 1).await;
    holder.commit().await.unwrap();
    tombstone.await.unwrap().unwrap();
    // PostgreSQL usually grants the head's lock in the order asked, but does not promise it:
    // the append may go before the tombstone, and then succeeds (and its event is deleted).
    let appended = append.await.unwrap();
    assert!(matches!(appended, Ok(_) | Err(Error::StreamDeleted(_))), "{appended:?}");
    assert_eq!(a.stream_state("gone").await.unwrap(), StreamState::Deleted);
    assert!(a.read_all(0, 100).await.unwrap().iter().all(|r| r.stream != "gone"));

    // Truncation: an append of `b` (revision 1) and its truncation queue first, then `a`'s append,
    // whose snapshot sees revision 0 as the last.
    let holder = hold_head(&a).await;
    let first = tokio::spawn({
        let b = b.clone();
        async move { b.append("cut", ExpectedVersion::Any, vec![event(3)]).await }
    });
    until_waiting(&a, &schema, "SET position = position +", 1).await;
    // Before revision 2: whether `a`'s append (revision 2) commits before or after the
    // truncation (the lock's order is not promised), what is left is the same.
    let truncate = tokio::spawn({
        let b = b.clone();
        async move { b.truncate_before("cut", 2).await }
    });
    until_waiting(&a, &schema, "deletions = deletions + 1", 1).await;
    let second = tokio::spawn({
        let a = a.clone();
        async move { a.append("cut", ExpectedVersion::Any, vec![event(4)]).await }
    });
    until_waiting(&a, &schema, "SET position = position +", 2).await;
    holder.commit().await.unwrap();
    assert_eq!(first.await.unwrap().unwrap().revision, 1);
    truncate.await.unwrap().unwrap();
    assert_eq!(second.await.unwrap().unwrap().revision, 2);
    let left = a.read_stream("cut", ReadStream::forwards(0, 100)).await.unwrap();
    assert_eq!(left.iter().map(|r| r.revision).collect::<Vec<_>>(), [2]);
    assert_eq!(b.stream_state("cut").await.unwrap(), StreamState::At(2));
}

/// Tables made before appends stopped writing `es_streams` (and before `es_head.deletions`):
/// their stream rows hold revisions, which the events may since have passed; a store connecting
/// to them adds what is missing and goes on from the right revisions.
#[tokio::test]
async fn tables_of_the_earlier_layout_keep_working() {
    let Some(probe) = pg_common::store().await else { return };
    let schema = pg_common::fresh_schema();
    // The name is `es_t_` and 32 hex digits: safe to quote.
    let setup = format!(
        "CREATE SCHEMA \"{schema}\";
         SET LOCAL search_path = \"{schema}\";
         CREATE TABLE es_events (
             position bigint PRIMARY KEY, stream text NOT NULL, revision bigint NOT NULL, id uuid NOT NULL,
             name text NOT NULL, version bigint NOT NULL, data json NOT NULL, metadata json NOT NULL,
             recorded_at bigint NOT NULL,
             CONSTRAINT es_events_stream UNIQUE (stream, revision), CONSTRAINT es_events_id UNIQUE (id));
         CREATE TABLE es_streams (stream text PRIMARY KEY, revision bigint NOT NULL, deleted boolean NOT NULL DEFAULT false);
         CREATE TABLE es_head (id integer PRIMARY KEY CHECK (id = 0), position bigint NOT NULL);
         CREATE TABLE es_checkpoints (name text PRIMARY KEY, position bigint NOT NULL);
         CREATE TABLE es_snapshots (stream text PRIMARY KEY, revision bigint NOT NULL, schema text NOT NULL, data json NOT NULL);
         INSERT INTO es_head VALUES (0, 4);
         INSERT INTO es_events VALUES
             (1, 'kept', 0, gen_random_uuid(), 'E', 1, '{{}}', '{{}}', 0),
             (2, 'kept', 1, gen_random_uuid(), 'E', 1, '{{}}', '{{}}', 0),
             (4, 'dead', 0, gen_random_uuid(), 'E', 1, '{{}}', '{{}}', 0);
         INSERT INTO es_streams VALUES ('kept', 1, false), ('cut', 2, false), ('dead', 0, false), ('tomb', -1, true);"
    );
    let mut tx = probe.pool().begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let store = pg_common::store_in(&schema).await.unwrap();
    for (stream, state) in [
        ("kept", StreamState::At(1)),
        ("cut", StreamState::At(2)),
        ("tomb", StreamState::Deleted),
        ("new", StreamState::NoStream),
    ] {
        assert_eq!(store.stream_state(stream).await.unwrap(), state, "{stream}");
    }
    let kept = store
        .append("kept", ExpectedVersion::Exact(1), vec![event(1)])
        .await
        .unwrap();
    assert_eq!((kept.revision, kept.position), (2, 5));
    let cut = store
        .append("cut", ExpectedVersion::Exact(2), vec![event(2), event(3)])
        .await
        .unwrap();
    assert_eq!((cut.revision, cut.position), (4, 7));
    assert!(matches!(
        store.append("tomb", ExpectedVersion::Any, vec![event(4)]).await,
        Err(Error::StreamDeleted(_))
    ));
    // The stale row of `kept` (revision 1) is passed by its events.
    store.truncate_before("kept", 10).await.unwrap();
    assert_eq!(store.stream_state("kept").await.unwrap(), StreamState::At(2));
    store.tombstone("dead", ExpectedVersion::Exact(0)).await.unwrap();
    assert_eq!(store.stream_state("dead").await.unwrap(), StreamState::Deleted);
    assert_eq!(store.head().await.unwrap(), 7);
}

/// A store remembers the revisions its appends left, so as not to read them again; another
/// store appending to, truncating or deleting the stream meanwhile makes that stale, and each
/// append is still judged on what is stored.
#[tokio::test]
async fn a_revision_remembered_by_one_store_and_moved_by_another() {
    let Some((a, b)) = two_stores().await else { return };
    a.append("s", ExpectedVersion::NoStream, vec![event(0)]).await.unwrap();
    b.append("s", ExpectedVersion::Exact(0), vec![event(1)]).await.unwrap();
    let stale = a.append("s", ExpectedVersion::Exact(0), vec![event(2)]).await;
    assert!(
        matches!(
            stale,
            Err(Error::WrongExpectedVersion {
                actual: StreamState::At(1),
                ..
            })
        ),
        "{stale:?}"
    );
    b.append("s", ExpectedVersion::Any, vec![event(3)]).await.unwrap();
    assert_eq!(
        a.append("s", ExpectedVersion::Any, vec![event(4)])
            .await
            .unwrap()
            .revision,
        3
    );
    b.append("s", ExpectedVersion::Exact(3), vec![event(5)]).await.unwrap();
    assert_eq!(
        a.append("s", ExpectedVersion::StreamExists, vec![event(6)])
            .await
            .unwrap()
            .revision,
        5
    );
    let revisions: Vec<u64> = a
        .read_stream("s", ReadStream::forwards(0, 100))
        .await
        .unwrap()
        .iter()
        .map(|r| r.revision)
        .collect();
    assert_eq!(revisions, [0, 1, 2, 3, 4, 5]);

    // Deletions by the other store: what `a` remembers of those streams is void.
    a.append("cut", ExpectedVersion::NoStream, vec![event(7)])
        .await
        .unwrap();
    b.append("cut", ExpectedVersion::Any, vec![event(8)]).await.unwrap();
    b.truncate_before("cut", u64::MAX).await.unwrap();
    assert_eq!(
        a.append("cut", ExpectedVersion::Any, vec![event(9)])
            .await
            .unwrap()
            .revision,
        2
    );
    a.append("gone", ExpectedVersion::NoStream, vec![event(10)])
        .await
        .unwrap();
    b.tombstone("gone", ExpectedVersion::Any).await.unwrap();
    let appended = a.append("gone", ExpectedVersion::Any, vec![event(11)]).await;
    assert!(matches!(appended, Err(Error::StreamDeleted(_))), "{appended:?}");
}

/// A store's connections (pool, appender, listener, notifier) all close once it is dropped: no
/// task of it lives on.
#[tokio::test]
async fn dropping_the_store_closes_its_connections() {
    let schema = pg_common::fresh_schema();
    let Some(store) = pg_common::store_in(&schema).await else {
        return;
    };
    // A commit, so that the notifier has connected too.
    store
        .append("s", ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    /// The connections the store in `schema` has open (they carry its name).
    async fn open(watcher: &mut sqlx::PgConnection, schema: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'switchboard-eventstore ' || $1",
        )
        .bind(schema)
        .fetch_one(watcher)
        .await
        .unwrap()
    }
    /// The count once `done` holds of it, or the last one after [`WAIT`].
    async fn settled(watcher: &mut sqlx::PgConnection, schema: &str, done: impl Fn(i64) -> bool) -> i64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let n = open(watcher, schema).await;
            if done(n) || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut watcher = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_common::url())
        .await
        .unwrap();
    // The notifier connects off the appender's path, so it may still be connecting.
    let before = settled(&mut watcher, &schema, |n| n >= 4).await;
    assert!(
        before >= 4,
        "pool, appender, listener and notifier: {before} connections"
    );
    drop(store);
    let after = settled(&mut watcher, &schema, |n| n == 0).await;
    assert_eq!(after, 0, "the store's connections close after it is dropped");
}
