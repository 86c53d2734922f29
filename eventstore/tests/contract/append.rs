//! Appending to a stream: revisions from 0, positions from 1, and the events read back as they
//! were written.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use switchboard_eventstore::{Appended, EventStore, ExpectedVersion, NewEvent, StreamState};

use super::support::*;

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

pub async fn append_to_new_stream_numbers_revisions_and_positions<S: EventStore>(store: S) {
    let s = stream("order");
    let new = events(0, 3);
    let before = now_millis();
    let appended = guard_await(store.append(&s, ExpectedVersion::NoStream, new.clone()))
        .await
        .unwrap();
    let after = now_millis();
    assert_eq!(
        appended,
        Appended {
            revision: 2,
            position: 3
        }
    );

    let read = stream_events(&store, &s).await;
    assert_eq!(places(&read), [(0, 1), (1, 2), (2, 3)]);
    for (recorded, new) in read.iter().zip(&new) {
        assert_same_event(recorded, new);
        assert_eq!(recorded.stream, s);
        // Plausible: around the append (a minute of slack for clocks, never a speed check).
        assert!(
            (before - 60_000..=after + 60_000).contains(&recorded.recorded_at),
            "recorded_at {} is not around the append ({before}..={after})",
            recorded.recorded_at
        );
    }
    assert!(
        read.windows(2).all(|w| w[0].recorded_at == w[1].recorded_at),
        "one append commits once: {read:?}"
    );
    assert_eq!(head(&store).await, 3);
    assert_eq!(state(&store, &s).await, StreamState::At(2));
}

pub async fn append_continues_revisions_and_positions<S: EventStore>(store: S) {
    let (a, b) = (stream("a"), stream("b"));
    let first = guard_await(store.append(&a, ExpectedVersion::NoStream, events(0, 2)))
        .await
        .unwrap();
    assert_eq!(
        first,
        Appended {
            revision: 1,
            position: 2
        }
    );
    let other = guard_await(store.append(&b, ExpectedVersion::NoStream, events(10, 1)))
        .await
        .unwrap();
    assert_eq!(
        other,
        Appended {
            revision: 0,
            position: 3
        }
    );
    let second = guard_await(store.append(&a, ExpectedVersion::Exact(1), events(2, 3)))
        .await
        .unwrap();
    assert_eq!(
        second,
        Appended {
            revision: 4,
            position: 6
        }
    );

    assert_eq!(
        places(&stream_events(&store, &a).await),
        [(0, 1), (1, 2), (2, 4), (3, 5), (4, 6)]
    );
    assert_eq!(places(&stream_events(&store, &b).await), [(0, 3)]);
    assert_eq!(head(&store).await, 6);
}

pub async fn appended_revision_is_the_next_exact_expectation<S: EventStore>(store: S) {
    let s = stream("counter");
    let mut expected = ExpectedVersion::NoStream;
    let mut n = 0;
    for size in [1, 3, 2, 1, 4] {
        let appended = guard_await(store.append(&s, expected, events(n, size))).await.unwrap();
        n += size;
        assert_eq!(
            appended,
            Appended {
                revision: n - 1,
                position: n
            }
        );
        assert_eq!(state(&store, &s).await, StreamState::At(appended.revision));
        expected = ExpectedVersion::Exact(appended.revision);
    }
    assert_eq!(revisions(&stream_events(&store, &s).await), (0..n).collect::<Vec<_>>());
}

pub async fn data_and_metadata_round_trip_byte_for_byte<S: EventStore>(store: S) {
    let s = stream("bytes");
    // JSON as a client might send it: spaces, newlines, unordered keys, escapes, unicode,
    // big and precise numbers, every JSON value kind at the top level.
    let payloads: [&[u8]; 8] = [
        b"{ \"z\" : 1,\n\t\"a\":[1, 2.50, -0.0, 1e400], \"s\": \"\\u00e9\\n\\\"q\\\"\" }",
        "{\"name\":\"Zo\u{eb} \u{1F600} \u{4E2D}\u{6587}\"}".as_bytes(),
        b"12345678901234567890123456789",
        b"\"a string\"",
        b"[]",
        b"null",
        b"true",
        b"  {}  ",
    ];
    let new: Vec<NewEvent> = payloads
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let mut event = NewEvent::raw(format!("EVENT_{i}"), i as u32 + 1, Bytes::copy_from_slice(data));
            event.metadata = Bytes::from_static(b"{ \"b\": {\"nested\": [null]}, \"a\" : \"\\u0041\" }");
            event
        })
        .collect();
    guard_await(store.append(&s, ExpectedVersion::Any, new.clone()))
        .await
        .unwrap();
    let read = stream_events(&store, &s).await;
    assert_eq!(read.len(), new.len());
    for (recorded, new) in read.iter().zip(&new) {
        assert_same_event(recorded, new);
    }
}

pub async fn read_all_and_read_stream_return_the_same_record<S: EventStore>(store: S) {
    let (a, b) = (stream("a"), stream("b"));
    seed(&store, &a, 2).await;
    seed(&store, &b, 2).await;
    let mut from_streams = stream_events(&store, &a).await;
    from_streams.extend(stream_events(&store, &b).await);
    assert_eq!(
        all_events(&store).await,
        from_streams,
        "every field, recorded_at included"
    );
}

pub async fn clones_share_one_store<S: EventStore>(store: S) {
    let clone = store.clone();
    let s = stream("shared");
    let new = seed(&clone, &s, 2).await;
    let read = stream_events(&store, &s).await;
    assert_eq!(read.len(), 2);
    assert_same_event(&read[1], &new[1]);
    assert_eq!(head(&store).await, 2);
    guard_await(store.append(&s, ExpectedVersion::Exact(1), events(2, 1)))
        .await
        .unwrap();
    assert_eq!(state(&clone, &s).await, StreamState::At(2));
}
