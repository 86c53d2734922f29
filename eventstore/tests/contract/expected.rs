//! Every `ExpectedVersion` against every `StreamState`, and `stream_state` itself.

use switchboard_eventstore::{Appended, EventStore, ExpectedVersion, StreamState};

use super::support::*;

/// A stream at revision 2 (positions 1 to 3).
async fn at_two<S: EventStore>(store: &S) -> String {
    let s = stream("existing");
    seed(store, &s, 3).await;
    s
}

pub async fn any_on_missing_stream_succeeds<S: EventStore>(store: S) {
    let s = stream("new");
    let appended = guard_await(store.append(&s, ExpectedVersion::Any, events(0, 2)))
        .await
        .unwrap();
    assert_eq!(
        appended,
        Appended {
            revision: 1,
            position: 2
        }
    );
    assert_eq!(state(&store, &s).await, StreamState::At(1));
}

pub async fn any_on_existing_stream_succeeds<S: EventStore>(store: S) {
    let s = at_two(&store).await;
    let appended = guard_await(store.append(&s, ExpectedVersion::Any, events(3, 1)))
        .await
        .unwrap();
    assert_eq!(
        appended,
        Appended {
            revision: 3,
            position: 4
        }
    );
}

pub async fn no_stream_on_missing_stream_succeeds<S: EventStore>(store: S) {
    let s = stream("new");
    let appended = guard_await(store.append(&s, ExpectedVersion::NoStream, events(0, 1)))
        .await
        .unwrap();
    assert_eq!(
        appended,
        Appended {
            revision: 0,
            position: 1
        }
    );
}

pub async fn no_stream_on_existing_stream_fails<S: EventStore>(store: S) {
    let s = at_two(&store).await;
    let result = guard_await(store.append(&s, ExpectedVersion::NoStream, events(3, 1))).await;
    assert_wrong_version(result, &s, ExpectedVersion::NoStream, StreamState::At(2));
}

pub async fn stream_exists_on_missing_stream_fails<S: EventStore>(store: S) {
    let s = stream("new");
    let result = guard_await(store.append(&s, ExpectedVersion::StreamExists, events(0, 1))).await;
    assert_wrong_version(result, &s, ExpectedVersion::StreamExists, StreamState::NoStream);
    assert_eq!(state(&store, &s).await, StreamState::NoStream);
}

pub async fn stream_exists_on_existing_stream_succeeds<S: EventStore>(store: S) {
    let s = at_two(&store).await;
    let appended = guard_await(store.append(&s, ExpectedVersion::StreamExists, events(3, 2)))
        .await
        .unwrap();
    assert_eq!(
        appended,
        Appended {
            revision: 4,
            position: 5
        }
    );
}

pub async fn exact_on_missing_stream_fails<S: EventStore>(store: S) {
    let s = stream("new");
    for n in [0, 1, 7] {
        let result = guard_await(store.append(&s, ExpectedVersion::Exact(n), events(0, 1))).await;
        assert_wrong_version(result, &s, ExpectedVersion::Exact(n), StreamState::NoStream);
    }
    assert_eq!(head(&store).await, 0);
}

pub async fn exact_matching_revision_succeeds<S: EventStore>(store: S) {
    let s = at_two(&store).await;
    let appended = guard_await(store.append(&s, ExpectedVersion::Exact(2), events(3, 2)))
        .await
        .unwrap();
    assert_eq!(
        appended,
        Appended {
            revision: 4,
            position: 5
        }
    );
    let again = guard_await(store.append(&s, ExpectedVersion::Exact(appended.revision), events(5, 1)))
        .await
        .unwrap();
    assert_eq!(
        again,
        Appended {
            revision: 5,
            position: 6
        }
    );
}

pub async fn exact_older_revision_fails<S: EventStore>(store: S) {
    let s = at_two(&store).await;
    for n in [0, 1] {
        let result = guard_await(store.append(&s, ExpectedVersion::Exact(n), events(3, 1))).await;
        assert_wrong_version(result, &s, ExpectedVersion::Exact(n), StreamState::At(2));
    }
}

pub async fn exact_newer_revision_fails<S: EventStore>(store: S) {
    let s = at_two(&store).await;
    for n in [3, 4, u64::MAX] {
        let result = guard_await(store.append(&s, ExpectedVersion::Exact(n), events(3, 1))).await;
        assert_wrong_version(result, &s, ExpectedVersion::Exact(n), StreamState::At(2));
    }
}

pub async fn every_expectation_on_deleted_stream_is_stream_deleted<S: EventStore>(store: S) {
    let s = at_two(&store).await;
    guard_await(store.tombstone(&s, ExpectedVersion::Exact(2)))
        .await
        .unwrap();
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::StreamExists,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(2),
        ExpectedVersion::Exact(3),
    ] {
        let result = guard_await(store.append(&s, expected, events(3, 1))).await;
        assert_deleted(result, &s);
    }
    assert_eq!(head(&store).await, 3);
    assert_eq!(state(&store, &s).await, StreamState::Deleted);
}

pub async fn failed_append_writes_nothing<S: EventStore>(store: S) {
    let s = at_two(&store).await;
    let fresh = stream("fresh");
    let before = dump(&store, &[&s, &fresh]).await;
    let failures = [
        store.append(&s, ExpectedVersion::NoStream, events(3, 2)).await,
        store.append(&s, ExpectedVersion::Exact(1), events(3, 2)).await,
        store.append(&fresh, ExpectedVersion::StreamExists, events(3, 2)).await,
        store.append(&fresh, ExpectedVersion::Exact(0), events(3, 2)).await,
    ];
    for failure in failures {
        assert!(failure.is_err(), "{failure:?}");
    }
    assert_eq!(dump(&store, &[&s, &fresh]).await, before);
    // And the store goes on from where it was.
    let appended = guard_await(store.append(&s, ExpectedVersion::Exact(2), events(3, 1)))
        .await
        .unwrap();
    assert_eq!(
        appended,
        Appended {
            revision: 3,
            position: 4
        }
    );
}

pub async fn stream_state_of_missing_stream_is_no_stream<S: EventStore>(store: S) {
    assert_eq!(state(&store, &stream("missing")).await, StreamState::NoStream);
    seed(&store, &stream("other"), 1).await;
    assert_eq!(state(&store, &stream("missing")).await, StreamState::NoStream);
}

pub async fn stream_state_after_appends_is_at_last_revision<S: EventStore>(store: S) {
    let s = stream("s");
    seed(&store, &s, 1).await;
    assert_eq!(state(&store, &s).await, StreamState::At(0));
    guard_await(store.append(&s, ExpectedVersion::Any, events(1, 4)))
        .await
        .unwrap();
    assert_eq!(state(&store, &s).await, StreamState::At(4));
}

pub async fn stream_state_after_tombstone_is_deleted<S: EventStore>(store: S) {
    let s = stream("s");
    seed(&store, &s, 2).await;
    guard_await(store.tombstone(&s, ExpectedVersion::Any)).await.unwrap();
    assert_eq!(state(&store, &s).await, StreamState::Deleted);
}
