//! `append_multi`: several streams, all or nothing.

use switchboard_eventstore::{Append, Appended, EventStore, ExpectedVersion, NewEvent, StreamState};

use super::support::*;

pub async fn multi_append_returns_results_in_order_with_contiguous_positions<S: EventStore>(store: S) {
    let (a, b, c) = (stream("a"), stream("b"), stream("c"));
    seed(&store, &b, 2).await;
    let (ea, eb, ec) = (events(0, 2), events(10, 3), events(20, 1));
    let results = guard_await(store.append_multi(vec![
        Append::new(&a, ExpectedVersion::NoStream, ea.clone()),
        Append::new(&b, ExpectedVersion::Exact(1), eb.clone()),
        Append::new(&c, ExpectedVersion::Any, ec.clone()),
    ]))
    .await
    .unwrap();
    assert_eq!(
        results,
        [
            Appended {
                revision: 1,
                position: 4
            },
            Appended {
                revision: 4,
                position: 7
            },
            Appended {
                revision: 0,
                position: 8
            }
        ]
    );
    let all = all_events(&store).await;
    assert_eq!(positions(&all), (1..=8).collect::<Vec<_>>());
    let written: Vec<&NewEvent> = ea.iter().chain(&eb).chain(&ec).collect();
    for (recorded, new) in all[2..].iter().zip(written) {
        assert_same_event(recorded, new);
    }
    let streams: Vec<&str> = all[2..].iter().map(|r| r.stream.as_str()).collect();
    assert_eq!(streams, [&a, &a, &b, &b, &b, &c].map(String::as_str));
    assert_eq!(revisions(&stream_events(&store, &b).await), [0, 1, 2, 3, 4]);
    assert_eq!(head(&store).await, 8);
}

pub async fn multi_append_with_one_wrong_version_writes_nothing<S: EventStore>(store: S) {
    let (a, b, c) = (stream("a"), stream("b"), stream("c"));
    seed(&store, &b, 2).await;
    let before = dump(&store, &[&a, &b, &c]).await;
    let result = guard_await(store.append_multi(vec![
        Append::new(&a, ExpectedVersion::NoStream, events(0, 2)),
        Append::new(&b, ExpectedVersion::Exact(0), events(10, 1)),
        Append::new(&c, ExpectedVersion::Any, events(20, 1)),
    ]))
    .await;
    assert_wrong_version(result, &b, ExpectedVersion::Exact(0), StreamState::At(1));
    assert_eq!(dump(&store, &[&a, &b, &c]).await, before);

    // The last one wrong.
    let result = guard_await(store.append_multi(vec![
        Append::new(&a, ExpectedVersion::NoStream, events(0, 2)),
        Append::new(&c, ExpectedVersion::StreamExists, events(20, 1)),
    ]))
    .await;
    assert_wrong_version(result, &c, ExpectedVersion::StreamExists, StreamState::NoStream);
    assert_eq!(dump(&store, &[&a, &b, &c]).await, before);
}

pub async fn multi_append_with_a_deleted_stream_writes_nothing<S: EventStore>(store: S) {
    let (a, gone) = (stream("a"), stream("gone"));
    seed(&store, &gone, 1).await;
    guard_await(store.tombstone(&gone, ExpectedVersion::Any)).await.unwrap();
    let before = dump(&store, &[&a, &gone]).await;
    let result = guard_await(store.append_multi(vec![
        Append::new(&a, ExpectedVersion::Any, events(0, 2)),
        Append::new(&gone, ExpectedVersion::Any, events(10, 1)),
    ]))
    .await;
    assert_deleted(result, &gone);
    assert_eq!(dump(&store, &[&a, &gone]).await, before);
}

pub async fn multi_append_with_an_invalid_append_writes_nothing<S: EventStore>(store: S) {
    let a = stream("a");
    let result = guard_await(store.append_multi(vec![
        Append::new(&a, ExpectedVersion::Any, events(0, 2)),
        Append::new("", ExpectedVersion::Any, events(10, 1)),
    ]))
    .await;
    assert_invalid(result);
    let result = guard_await(store.append_multi(vec![
        Append::new(&a, ExpectedVersion::Any, events(0, 2)),
        Append::new(
            stream("b"),
            ExpectedVersion::Any,
            vec![NewEvent::raw("BROKEN", 1, "{not json")],
        ),
    ]))
    .await;
    assert_invalid(result);
    assert_eq!(state(&store, &a).await, StreamState::NoStream);
    assert_eq!(head(&store).await, 0);
}

pub async fn multi_append_of_the_same_stream_twice_is_refused<S: EventStore>(store: S) {
    let (a, b) = (stream("a"), stream("b"));
    seed(&store, &a, 1).await;
    let before = dump(&store, &[&a, &b]).await;
    for (first, second) in [
        (ExpectedVersion::Any, ExpectedVersion::Any),
        (ExpectedVersion::Exact(0), ExpectedVersion::Exact(1)),
        (ExpectedVersion::Exact(0), ExpectedVersion::Exact(2)),
    ] {
        let result = guard_await(store.append_multi(vec![
            Append::new(&a, first, events(1, 1)),
            Append::new(&b, ExpectedVersion::Any, events(10, 1)),
            Append::new(&a, second, events(2, 1)),
        ]))
        .await;
        assert!(result.is_err(), "{first:?} then {second:?}: {result:?}");
    }
    assert_eq!(dump(&store, &[&a, &b]).await, before);
}

pub async fn multi_append_retried_returns_original_results<S: EventStore>(store: S) {
    let (a, b, c) = (stream("a"), stream("b"), stream("c"));
    let appends = vec![
        Append::new(&a, ExpectedVersion::NoStream, events(0, 2)),
        Append::new(&b, ExpectedVersion::NoStream, events(10, 1)),
    ];
    let first = guard_await(store.append_multi(appends.clone())).await.unwrap();
    let before = dump(&store, &[&a, &b]).await;
    let retried = guard_await(store.append_multi(appends.clone())).await.unwrap();
    assert_eq!(retried, first);
    assert_eq!(dump(&store, &[&a, &b]).await, before);

    // A retry next to a new append: the retry is answered, the new one written.
    let mut mixed = appends;
    mixed.push(Append::new(&c, ExpectedVersion::NoStream, events(20, 2)));
    let results = guard_await(store.append_multi(mixed)).await.unwrap();
    assert_eq!(
        results,
        [
            first[0],
            first[1],
            Appended {
                revision: 1,
                position: 5
            }
        ]
    );
    assert_eq!(head(&store).await, 5);
    assert_eq!(all_events(&store).await.len(), 5);
}
