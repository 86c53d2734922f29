//! Event ids are idempotency keys: a retried append is stored once, an id stored elsewhere is
//! refused.

use switchboard_eventstore::{Append, Appended, Error, EventStore, ExpectedVersion, StreamState};

use super::support::*;

pub async fn retry_returns_original_result_and_writes_nothing<S: EventStore>(store: S) {
    let s = stream("retry");
    let new = events(0, 3);
    let first = guard_await(store.append(&s, ExpectedVersion::NoStream, new.clone()))
        .await
        .unwrap();
    assert_eq!(
        first,
        Appended {
            revision: 2,
            position: 3
        }
    );
    let before = dump(&store, &[&s]).await;
    let retried = guard_await(store.append(&s, ExpectedVersion::NoStream, new.clone()))
        .await
        .unwrap();
    assert_eq!(retried, first);
    assert_eq!(dump(&store, &[&s]).await, before, "a retry writes nothing");
}

pub async fn retry_with_stale_or_other_expectations_succeeds<S: EventStore>(store: S) {
    let s = stream("retry");
    let new = events(0, 2);
    let first = guard_await(store.append(&s, ExpectedVersion::NoStream, new.clone()))
        .await
        .unwrap();
    // Someone else wrote after it: the retry's expectation is stale now.
    guard_await(store.append(&s, ExpectedVersion::Exact(1), events(2, 2)))
        .await
        .unwrap();
    let before = dump(&store, &[&s]).await;
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(3),
        ExpectedVersion::Exact(99),
    ] {
        let retried = guard_await(store.append(&s, expected, new.clone())).await;
        assert_eq!(retried.unwrap(), first, "a retry expecting {expected:?}");
    }
    assert_eq!(dump(&store, &[&s]).await, before, "retries write nothing");
}

pub async fn retry_of_a_single_event<S: EventStore>(store: S) {
    let s = stream("single");
    seed(&store, &s, 2).await;
    let one = events(2, 1);
    let first = guard_await(store.append(&s, ExpectedVersion::Exact(1), one.clone()))
        .await
        .unwrap();
    assert_eq!(
        first,
        Appended {
            revision: 2,
            position: 3
        }
    );
    let before = dump(&store, &[&s]).await;
    for _ in 0..3 {
        let retried = guard_await(store.append(&s, ExpectedVersion::Exact(1), one.clone()))
            .await
            .unwrap();
        assert_eq!(retried, first);
    }
    assert_eq!(dump(&store, &[&s]).await, before);
}

pub async fn retry_of_a_prefix_writes_nothing<S: EventStore>(store: S) {
    let s = stream("prefix");
    let new = events(0, 4);
    guard_await(store.append(&s, ExpectedVersion::NoStream, new.clone()))
        .await
        .unwrap();
    let before = dump(&store, &[&s]).await;
    let retried = guard_await(store.append(&s, ExpectedVersion::NoStream, new[..2].to_vec()))
        .await
        .unwrap();
    // Where those events are: the prefix's last one.
    assert_eq!(
        retried,
        Appended {
            revision: 1,
            position: 2
        }
    );
    assert_eq!(dump(&store, &[&s]).await, before);
}

pub async fn id_stored_in_another_stream_is_duplicate_event<S: EventStore>(store: S) {
    let (a, b) = (stream("a"), stream("b"));
    let new = seed(&store, &a, 2).await;
    let before = dump(&store, &[&a, &b]).await;
    let id = new[1].id;
    let result = guard_await(store.append(&b, ExpectedVersion::Any, vec![new[1].clone()])).await;
    crate::assert_err!(result, Error::DuplicateEvent { id: i, stream: ref st, revision: 1 } if i == id && *st == a);
    // The same id under another name and data is still the same id.
    let mut renamed = events(9, 1).remove(0).with_id(id);
    renamed.name = "SOMETHING_ELSE".into();
    let result = guard_await(store.append(&b, ExpectedVersion::NoStream, vec![renamed])).await;
    crate::assert_err!(result, Error::DuplicateEvent { id: i, stream: ref st, revision: 1 } if i == id && *st == a);
    assert_eq!(dump(&store, &[&a, &b]).await, before);
}

pub async fn id_stored_elsewhere_in_same_stream_is_duplicate_event<S: EventStore>(store: S) {
    let s = stream("s");
    let new = seed(&store, &s, 3).await;
    let before = dump(&store, &[&s]).await;
    // The ids of revisions 2 then 0: not the place they were stored at.
    let result = guard_await(store.append(&s, ExpectedVersion::Any, vec![new[2].clone(), new[0].clone()])).await;
    assert!(result.is_err(), "ids out of their stored order: {result:?}");
    // An old id appended as a new event after the stream moved on.
    let reused = events(7, 1).remove(0).with_id(new[0].id);
    let result = guard_await(store.append(&s, ExpectedVersion::Exact(2), vec![events(8, 1).remove(0), reused])).await;
    crate::assert_err!(result, Error::DuplicateEvent { id, revision: 0, .. } if id == new[0].id);
    assert_eq!(dump(&store, &[&s]).await, before);
}

pub async fn stored_id_then_new_id_is_refused<S: EventStore>(store: S) {
    let s = stream("mixed");
    let new = seed(&store, &s, 2).await;
    let before = dump(&store, &[&s]).await;
    let mixed = vec![new[1].clone(), events(5, 1).remove(0)];
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(1),
    ] {
        let result = guard_await(store.append(&s, expected, mixed.clone())).await;
        assert!(
            result.is_err(),
            "a stored id followed by a new one, expecting {expected:?}: {result:?}"
        );
    }
    assert_eq!(dump(&store, &[&s]).await, before);
}

pub async fn new_id_then_stored_id_is_duplicate_event<S: EventStore>(store: S) {
    let (s, other) = (stream("mixed"), stream("other"));
    let new = seed(&store, &s, 2).await;
    let before = dump(&store, &[&s, &other]).await;
    let fresh = events(5, 1).remove(0);

    let result = guard_await(store.append(&s, ExpectedVersion::Any, vec![fresh.clone(), new[0].clone()])).await;
    crate::assert_err!(result, Error::DuplicateEvent { id, stream: ref st, revision: 0 } if id == new[0].id && *st == s);
    let result = guard_await(store.append(&other, ExpectedVersion::Any, vec![fresh, new[1].clone()])).await;
    crate::assert_err!(result, Error::DuplicateEvent { id, stream: ref st, revision: 1 } if id == new[1].id && *st == s);

    assert_eq!(dump(&store, &[&s, &other]).await, before);
    let all = all_events(&store).await;
    for event in &new {
        assert_eq!(
            all.iter().filter(|r| r.id == event.id).count(),
            1,
            "id {} is stored once",
            event.id
        );
    }
}

pub async fn same_id_twice_in_one_append_is_refused<S: EventStore>(store: S) {
    let s = stream("twice");
    let one = events(0, 1).remove(0);
    let other = events(1, 1).remove(0);
    for batch in [
        vec![one.clone(), one.clone()],
        vec![one.clone(), other.clone(), one.clone().with_id(other.id)],
    ] {
        let result = guard_await(store.append(&s, ExpectedVersion::NoStream, batch)).await;
        assert!(result.is_err(), "{result:?}");
    }
    assert_eq!(state(&store, &s).await, StreamState::NoStream);
    assert_eq!(head(&store).await, 0);
    // Nothing of it was kept: the ids are still free.
    let appended = guard_await(store.append(&s, ExpectedVersion::NoStream, vec![one, other]))
        .await
        .unwrap();
    assert_eq!(
        appended,
        Appended {
            revision: 1,
            position: 2
        }
    );
}

pub async fn same_id_in_two_streams_of_one_multi_append_is_refused<S: EventStore>(store: S) {
    let (a, b) = (stream("a"), stream("b"));
    let one = events(0, 1).remove(0);
    let result = guard_await(store.append_multi(vec![
        Append::new(&a, ExpectedVersion::NoStream, vec![one.clone()]),
        Append::new(&b, ExpectedVersion::NoStream, vec![events(1, 1).remove(0), one.clone()]),
    ]))
    .await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(state(&store, &a).await, StreamState::NoStream);
    assert_eq!(state(&store, &b).await, StreamState::NoStream);
    assert_eq!(head(&store).await, 0);
    guard_await(store.append(&a, ExpectedVersion::NoStream, vec![one]))
        .await
        .unwrap();
}

pub async fn retry_after_tombstone_is_stream_deleted<S: EventStore>(store: S) {
    let s = stream("gone");
    let new = seed(&store, &s, 2).await;
    guard_await(store.tombstone(&s, ExpectedVersion::Exact(1)))
        .await
        .unwrap();
    let before = dump(&store, &[&s]).await;
    // The events were removed with the stream: a late retry must not be told they are stored.
    let result = guard_await(store.append(&s, ExpectedVersion::NoStream, new)).await;
    assert_deleted(result, &s);
    assert_eq!(dump(&store, &[&s]).await, before);
}
