//! What only the SQLite store has: several connections (or processes) on one file, the file
//! reopened, positions never given out twice.

use switchboard_eventstore::{Error, EventStore, ExpectedVersion, NewEvent, SqliteStore, StreamState};

fn event() -> NewEvent {
    NewEvent::raw("E", 1, "{}")
}

/// The writer remembers stream states between appends; a commit by another connection (here
/// a second store on the same file, as another process would be) makes it forget them.
#[tokio::test]
async fn a_write_by_another_connection_is_seen_by_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    a.append("s", ExpectedVersion::NoStream, vec![event()]).await.unwrap();
    a.append("s", ExpectedVersion::Exact(0), vec![event()]).await.unwrap();
    b.tombstone("s", ExpectedVersion::Exact(1)).await.unwrap();
    let err = a.append("s", ExpectedVersion::Any, vec![event()]).await.unwrap_err();
    assert!(matches!(err, Error::StreamDeleted(_)), "{err:?}");

    a.append("t", ExpectedVersion::NoStream, vec![event()]).await.unwrap();
    b.append("t", ExpectedVersion::Exact(0), vec![event()]).await.unwrap();
    let stale = a
        .append("t", ExpectedVersion::Exact(0), vec![event()])
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            Error::WrongExpectedVersion {
                actual: StreamState::At(1),
                ..
            }
        ),
        "{stale:?}"
    );
    let appended = a.append("t", ExpectedVersion::Exact(1), vec![event()]).await.unwrap();
    assert_eq!((appended.revision, appended.position), (2, 5));
}

/// The writer remembers the head between commits; one by another connection moves it, and the
/// next append takes the position after it.
#[tokio::test]
async fn positions_follow_another_connections_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let mut positions = Vec::new();
    for i in 0..6 {
        let (store, stream) = if i % 3 == 0 { (&b, "b") } else { (&a, "a") };
        let appended = store
            .append(stream, ExpectedVersion::Any, vec![event(), event()])
            .await
            .unwrap();
        positions.push(appended.position);
    }
    assert_eq!(positions, [2, 4, 6, 8, 10, 12]);
}

/// Deleting the newest events (truncation, tombstone) does not hand their positions out again,
/// even after reopening the file: a reader past them would miss what came next.
#[tokio::test]
async fn positions_of_deleted_events_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .append("a", ExpectedVersion::Any, vec![event(), event()])
            .await
            .unwrap();
        store
            .append("b", ExpectedVersion::Any, vec![event(), event()])
            .await
            .unwrap();
        store.tombstone("b", ExpectedVersion::Any).await.unwrap();
        assert_eq!(store.head().await.unwrap(), 4);
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.head().await.unwrap(), 4);
    assert_eq!(*store.watch_head().borrow(), 4);
    let next = store.append("c", ExpectedVersion::Any, vec![event()]).await.unwrap();
    assert_eq!(next.position, 5);
    store.truncate_before("c", 1).await.unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    let next = store
        .append("c", ExpectedVersion::Exact(0), vec![event()])
        .await
        .unwrap();
    assert_eq!((next.revision, next.position), (1, 6));
}

/// Bad files are errors, not panics.
#[tokio::test]
async fn a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not.db");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(&path).err().expect("refused");
    assert!(matches!(err, Error::Sqlite(_)), "{err:?}");
    let missing = SqliteStore::open(dir.path().join("no/such/dir/events.db"))
        .err()
        .expect("refused");
    assert!(matches!(missing, Error::Sqlite(_)), "{missing:?}");
}
