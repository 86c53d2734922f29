//! `tombstone`: a stream deleted for good.

use switchboard_eventstore::{Append, EventStore, ExpectedVersion, ReadStream, StreamState};

use super::support::*;

pub async fn tombstone_removes_events_from_read_all<S: EventStore>(store: S) {
    let (s, other) = (stream("s"), stream("other"));
    seed(&store, &other, 1).await;
    seed(&store, &s, 3).await;
    guard_await(store.append(&other, ExpectedVersion::Exact(0), events(1, 1)))
        .await
        .unwrap();
    guard_await(store.tombstone(&s, ExpectedVersion::Exact(2)))
        .await
        .unwrap();
    let all = all_events(&store).await;
    assert_eq!(positions(&all), [1, 5]);
    assert!(all.iter().all(|r| r.stream == other), "{all:?}");
    assert_eq!(head(&store).await, 5, "positions are never reused");
}

pub async fn read_of_tombstoned_stream_is_stream_deleted<S: EventStore>(store: S) {
    let s = stream("s");
    seed(&store, &s, 3).await;
    guard_await(store.tombstone(&s, ExpectedVersion::Any)).await.unwrap();
    for read in [
        ReadStream::forwards(0, 100),
        ReadStream::backwards(100),
        ReadStream::backwards_from(1, 1),
    ] {
        assert_deleted(guard_await(store.read_stream(&s, read)).await, &s);
    }
}

pub async fn append_to_tombstoned_stream_is_stream_deleted<S: EventStore>(store: S) {
    let s = stream("s");
    seed(&store, &s, 2).await;
    guard_await(store.tombstone(&s, ExpectedVersion::StreamExists))
        .await
        .unwrap();
    let before = dump(&store, &[&s]).await;
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::StreamExists,
        ExpectedVersion::Exact(1),
    ] {
        assert_deleted(guard_await(store.append(&s, expected, events(2, 1))).await, &s);
        let multi = store.append_multi(vec![Append::new(&s, expected, events(2, 1))]);
        assert_deleted(guard_await(multi).await, &s);
    }
    assert_eq!(dump(&store, &[&s]).await, before);
}

pub async fn tombstone_twice_is_stream_deleted<S: EventStore>(store: S) {
    let s = stream("s");
    seed(&store, &s, 2).await;
    guard_await(store.tombstone(&s, ExpectedVersion::Exact(1)))
        .await
        .unwrap();
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::Exact(1),
        ExpectedVersion::NoStream,
    ] {
        assert_deleted(guard_await(store.tombstone(&s, expected)).await, &s);
    }
    assert_eq!(state(&store, &s).await, StreamState::Deleted);
}

pub async fn tombstone_with_wrong_expectation_fails_and_keeps_the_stream<S: EventStore>(store: S) {
    let (s, missing) = (stream("s"), stream("missing"));
    let new = seed(&store, &s, 3).await;
    let before = dump(&store, &[&s, &missing]).await;
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(3),
    ] {
        assert_wrong_version(
            guard_await(store.tombstone(&s, expected)).await,
            &s,
            expected,
            StreamState::At(2),
        );
    }
    for expected in [ExpectedVersion::StreamExists, ExpectedVersion::Exact(0)] {
        let result = guard_await(store.tombstone(&missing, expected)).await;
        assert_wrong_version(result, &missing, expected, StreamState::NoStream);
    }
    assert_eq!(dump(&store, &[&s, &missing]).await, before);
    let read = stream_events(&store, &s).await;
    assert_same_event(&read[2], &new[2]);
    guard_await(store.append(&s, ExpectedVersion::Exact(2), events(3, 1)))
        .await
        .unwrap();
    guard_await(store.append(&missing, ExpectedVersion::NoStream, events(3, 1)))
        .await
        .unwrap();
}

pub async fn tombstone_of_never_written_stream<S: EventStore>(store: S) {
    let s = stream("reserved");
    guard_await(store.tombstone(&s, ExpectedVersion::NoStream))
        .await
        .unwrap();
    assert_eq!(state(&store, &s).await, StreamState::Deleted);
    assert_deleted(
        guard_await(store.read_stream(&s, ReadStream::forwards(0, 10))).await,
        &s,
    );
    assert_deleted(
        guard_await(store.append(&s, ExpectedVersion::NoStream, events(0, 1))).await,
        &s,
    );
    assert_deleted(
        guard_await(store.append(&s, ExpectedVersion::Any, events(0, 1))).await,
        &s,
    );
    assert_deleted(guard_await(store.tombstone(&s, ExpectedVersion::NoStream)).await, &s);
    assert_eq!(head(&store).await, 0);
    // `Any` reserves a name too.
    let other = stream("reserved");
    guard_await(store.tombstone(&other, ExpectedVersion::Any))
        .await
        .unwrap();
    assert_eq!(state(&store, &other).await, StreamState::Deleted);
}

pub async fn tombstone_leaves_other_streams_alone<S: EventStore>(store: S) {
    let (s, other) = (stream("s"), stream("other"));
    let new = seed(&store, &other, 2).await;
    seed(&store, &s, 2).await;
    guard_await(store.tombstone(&s, ExpectedVersion::Any)).await.unwrap();
    let read = stream_events(&store, &other).await;
    assert_eq!(places(&read), [(0, 1), (1, 2)]);
    assert_same_event(&read[0], &new[0]);
    assert_eq!(state(&store, &other).await, StreamState::At(1));
    let appended = guard_await(store.append(&other, ExpectedVersion::Exact(1), events(2, 1)))
        .await
        .unwrap();
    assert_eq!((appended.revision, appended.position), (2, 5));
}
