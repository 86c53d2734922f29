//! `truncate_before`: a stream's early events deleted, the stream going on from where it was.

use switchboard_eventstore::{Appended, EventStore, ExpectedVersion, ReadStream, StreamState};

use super::support::*;

pub async fn truncate_removes_earlier_events_and_keeps_later_ones<S: EventStore>(store: S) {
    let (s, other) = (stream("s"), stream("other"));
    seed(&store, &other, 1).await;
    let new = seed(&store, &s, 5).await;
    guard_await(store.truncate_before(&s, 3)).await.unwrap();

    let read = stream_events(&store, &s).await;
    assert_eq!(places(&read), [(3, 5), (4, 6)]);
    assert_same_event(&read[0], &new[3]);
    assert_same_event(&read[1], &new[4]);
    let backwards = guard_await(store.read_stream(&s, ReadStream::backwards(100)))
        .await
        .unwrap();
    assert_eq!(revisions(&backwards), [4, 3]);
    assert_eq!(
        guard_await(store.read_stream(&s, ReadStream::backwards_from(2, 100)))
            .await
            .unwrap(),
        []
    );
    assert_eq!(
        revisions(
            &guard_await(store.read_stream(&s, ReadStream::forwards(1, 1)))
                .await
                .unwrap()
        ),
        [3]
    );

    let all = all_events(&store).await;
    assert_eq!(positions(&all), [1, 5, 6], "read_all skips the deleted positions");
    assert_eq!(positions(&guard_await(store.read_all(1, 1)).await.unwrap()), [5]);
}

pub async fn truncate_keeps_revisions_and_stream_state<S: EventStore>(store: S) {
    let s = stream("s");
    seed(&store, &s, 4).await;
    guard_await(store.truncate_before(&s, 2)).await.unwrap();
    assert_eq!(state(&store, &s).await, StreamState::At(3));
    assert_eq!(head(&store).await, 4);

    let result = guard_await(store.append(&s, ExpectedVersion::NoStream, events(4, 1))).await;
    assert_wrong_version(result, &s, ExpectedVersion::NoStream, StreamState::At(3));
    let result = guard_await(store.append(&s, ExpectedVersion::Exact(1), events(4, 1))).await;
    assert_wrong_version(result, &s, ExpectedVersion::Exact(1), StreamState::At(3));
    let appended = guard_await(store.append(&s, ExpectedVersion::Exact(3), events(4, 2)))
        .await
        .unwrap();
    assert_eq!(
        appended,
        Appended {
            revision: 5,
            position: 6
        }
    );
    assert_eq!(revisions(&stream_events(&store, &s).await), [2, 3, 4, 5]);
    assert_eq!(state(&store, &s).await, StreamState::At(5));
}

pub async fn truncate_past_the_end_empties_the_stream_but_keeps_it<S: EventStore>(store: S) {
    let s = stream("s");
    seed(&store, &s, 3).await;
    guard_await(store.truncate_before(&s, 100)).await.unwrap();
    assert_eq!(
        stream_events(&store, &s).await,
        [],
        "the stream reads empty, not deleted"
    );
    assert_eq!(all_events(&store).await, []);
    assert_eq!(state(&store, &s).await, StreamState::At(2));
    assert_eq!(head(&store).await, 3, "positions are never reused");
    guard_await(store.truncate_before(&s, u64::MAX)).await.unwrap();

    let result = guard_await(store.append(&s, ExpectedVersion::NoStream, events(3, 1))).await;
    assert_wrong_version(result, &s, ExpectedVersion::NoStream, StreamState::At(2));
    let appended = guard_await(store.append(&s, ExpectedVersion::StreamExists, events(3, 1)))
        .await
        .unwrap();
    assert_eq!(
        appended,
        Appended {
            revision: 3,
            position: 4
        }
    );
    assert_eq!(places(&stream_events(&store, &s).await), [(3, 4)]);
}

pub async fn truncate_of_missing_stream_is_ok<S: EventStore>(store: S) {
    let s = stream("missing");
    guard_await(store.truncate_before(&s, 0)).await.unwrap();
    guard_await(store.truncate_before(&s, 5)).await.unwrap();
    assert_eq!(state(&store, &s).await, StreamState::NoStream);
    assert_eq!(head(&store).await, 0);
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

pub async fn truncate_leaves_other_streams_and_head_alone<S: EventStore>(store: S) {
    let (s, other) = (stream("s"), stream("other"));
    let new_other = seed(&store, &other, 3).await;
    seed(&store, &s, 3).await;
    let before = stream_events(&store, &other).await;
    guard_await(store.truncate_before(&s, 2)).await.unwrap();
    // Truncating at 0, or below what is already gone, deletes nothing more and restores nothing.
    guard_await(store.truncate_before(&s, 0)).await.unwrap();
    guard_await(store.truncate_before(&s, 1)).await.unwrap();
    assert_eq!(revisions(&stream_events(&store, &s).await), [2]);
    assert_eq!(stream_events(&store, &other).await, before);
    for (recorded, new) in before.iter().zip(&new_other) {
        assert_same_event(recorded, new);
    }
    assert_eq!(head(&store).await, 6);
    assert_eq!(*store.watch_head().borrow(), 6);
    assert_eq!(state(&store, &other).await, StreamState::At(2));
}
