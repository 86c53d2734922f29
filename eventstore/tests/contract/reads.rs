//! Reading one stream either way, and every stream in global order.

use switchboard_eventstore::{Append, EventStore, ExpectedVersion, ReadStream, Recorded};

use super::support::*;

/// A stream of 10 events (revisions 0 to 9) between two other streams' events, so that its
/// positions are not its revisions + 1.
async fn ten<S: EventStore>(store: &S) -> String {
    let s = stream("ten");
    seed(store, &stream("before"), 3).await;
    for n in 0..10 {
        let expected = if n == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(n - 1)
        };
        guard_await(store.append(&s, expected, events(n, 1))).await.unwrap();
        if n % 3 == 0 {
            guard_await(store.append(stream("noise"), ExpectedVersion::Any, events(100 + n, 1)))
                .await
                .unwrap();
        }
    }
    s
}

async fn read<S: EventStore>(store: &S, s: &str, read: ReadStream) -> Vec<Recorded> {
    guard_await(store.read_stream(s, read)).await.unwrap()
}

async fn read_all<S: EventStore>(store: &S, after: u64, limit: usize) -> Vec<Recorded> {
    guard_await(store.read_all(after, limit)).await.unwrap()
}

/// The `n` in each record's data, as written by `events`.
fn numbers(records: &[Recorded]) -> Vec<u64> {
    records
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.data).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

pub async fn read_forwards_from_zero<S: EventStore>(store: S) {
    let s = ten(&store).await;
    let events = read(&store, &s, ReadStream::forwards(0, 100)).await;
    assert_eq!(revisions(&events), (0..10).collect::<Vec<_>>());
    assert_eq!(numbers(&events), (0..10).collect::<Vec<_>>());
    assert!(events.windows(2).all(|w| w[0].position < w[1].position), "{events:?}");
    assert!(events.iter().all(|e| e.stream == s));
}

pub async fn read_forwards_from_the_middle<S: EventStore>(store: S) {
    let s = ten(&store).await;
    assert_eq!(
        revisions(&read(&store, &s, ReadStream::forwards(4, 100)).await),
        [4, 5, 6, 7, 8, 9]
    );
    assert_eq!(revisions(&read(&store, &s, ReadStream::forwards(9, 100)).await), [9]);
}

pub async fn read_forwards_with_limit<S: EventStore>(store: S) {
    let s = ten(&store).await;
    assert_eq!(
        revisions(&read(&store, &s, ReadStream::forwards(0, 3)).await),
        [0, 1, 2]
    );
    assert_eq!(revisions(&read(&store, &s, ReadStream::forwards(5, 2)).await), [5, 6]);
    assert_eq!(revisions(&read(&store, &s, ReadStream::forwards(8, 5)).await), [8, 9]);
    // Paging through it with a limit gives the whole stream.
    let mut paged = Vec::new();
    let mut from = 0;
    loop {
        let page = read(&store, &s, ReadStream::forwards(from, 4)).await;
        let Some(last) = page.last() else { break };
        from = last.revision + 1;
        paged.extend(page);
    }
    assert_eq!(paged, read(&store, &s, ReadStream::forwards(0, usize::MAX)).await);
}

pub async fn read_with_limit_zero_is_empty<S: EventStore>(store: S) {
    let s = ten(&store).await;
    assert_eq!(read(&store, &s, ReadStream::forwards(0, 0)).await, []);
    assert_eq!(read(&store, &s, ReadStream::backwards(0)).await, []);
    assert_eq!(read(&store, &s, ReadStream::backwards_from(5, 0)).await, []);
    assert_eq!(read_all(&store, 0, 0).await, []);
}

pub async fn read_forwards_past_the_end_is_empty<S: EventStore>(store: S) {
    let s = ten(&store).await;
    assert_eq!(read(&store, &s, ReadStream::forwards(10, 100)).await, []);
    assert_eq!(read(&store, &s, ReadStream::forwards(1000, 100)).await, []);
    assert_eq!(read(&store, &s, ReadStream::forwards(u64::MAX, 100)).await, []);
}

pub async fn read_backwards_from_the_end<S: EventStore>(store: S) {
    let s = ten(&store).await;
    let backwards = read(&store, &s, ReadStream::backwards(100)).await;
    let mut forwards = read(&store, &s, ReadStream::forwards(0, 100)).await;
    forwards.reverse();
    assert_eq!(revisions(&backwards), (0..10).rev().collect::<Vec<_>>());
    assert_eq!(backwards, forwards);
}

pub async fn read_backwards_from_a_revision<S: EventStore>(store: S) {
    let s = ten(&store).await;
    assert_eq!(
        revisions(&read(&store, &s, ReadStream::backwards_from(5, 100)).await),
        [5, 4, 3, 2, 1, 0]
    );
    assert_eq!(
        revisions(&read(&store, &s, ReadStream::backwards_from(0, 100)).await),
        [0]
    );
    assert_eq!(
        revisions(&read(&store, &s, ReadStream::backwards_from(9, 100)).await),
        (0..10).rev().collect::<Vec<_>>()
    );
}

pub async fn read_backwards_with_limit<S: EventStore>(store: S) {
    let s = ten(&store).await;
    assert_eq!(revisions(&read(&store, &s, ReadStream::backwards(3)).await), [9, 8, 7]);
    assert_eq!(
        revisions(&read(&store, &s, ReadStream::backwards_from(6, 2)).await),
        [6, 5]
    );
    assert_eq!(
        revisions(&read(&store, &s, ReadStream::backwards_from(1, 5)).await),
        [1, 0]
    );
    // The last event, the usual way to find a stream's newest.
    let last = read(&store, &s, ReadStream::backwards(1)).await;
    assert_eq!(numbers(&last), [9]);
}

pub async fn read_backwards_from_past_the_end<S: EventStore>(store: S) {
    let s = ten(&store).await;
    assert_eq!(
        revisions(&read(&store, &s, ReadStream::backwards_from(10, 100)).await),
        (0..10).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        revisions(&read(&store, &s, ReadStream::backwards_from(500, 3)).await),
        [9, 8, 7]
    );
}

pub async fn read_of_missing_stream_is_empty<S: EventStore>(store: S) {
    ten(&store).await;
    let missing = stream("missing");
    assert_eq!(read(&store, &missing, ReadStream::forwards(0, 100)).await, []);
    assert_eq!(read(&store, &missing, ReadStream::backwards(100)).await, []);
    assert_eq!(read(&store, &missing, ReadStream::backwards_from(3, 100)).await, []);
}

pub async fn read_stream_returns_only_its_own_events<S: EventStore>(store: S) {
    let (a, ab) = (stream("a"), stream("a"));
    // Names that share a prefix, and a stream whose name is another's with a suffix.
    let a_longer = format!("{a}-1");
    for (i, s) in [&a, &ab, &a_longer].into_iter().enumerate() {
        guard_await(store.append(s, ExpectedVersion::Any, events(i as u64 * 10, 2)))
            .await
            .unwrap();
    }
    guard_await(store.append(&a, ExpectedVersion::Any, events(50, 1)))
        .await
        .unwrap();
    let events = read(&store, &a, ReadStream::forwards(0, 100)).await;
    assert!(events.iter().all(|e| e.stream == a), "{events:?}");
    assert_eq!(numbers(&events), [0, 1, 50]);
    assert_eq!(revisions(&events), [0, 1, 2]);
    assert_eq!(
        numbers(&read(&store, &a_longer, ReadStream::backwards(100)).await),
        [21, 20]
    );
}

pub async fn read_all_from_the_start<S: EventStore>(store: S) {
    let s = ten(&store).await;
    let all = read_all(&store, 0, 1000).await;
    assert_eq!(positions(&all), (1..=all.len() as u64).collect::<Vec<_>>());
    assert_eq!(all.len() as u64, head(&store).await);
    let mine: Vec<Recorded> = all.into_iter().filter(|e| e.stream == s).collect();
    assert_eq!(mine, read(&store, &s, ReadStream::forwards(0, 100)).await);
}

pub async fn read_all_after_a_position<S: EventStore>(store: S) {
    ten(&store).await;
    let head = head(&store).await;
    let all = read_all(&store, 0, 1000).await;
    for after in [1, 5, head - 1] {
        let rest = read_all(&store, after, 1000).await;
        assert_eq!(
            positions(&rest),
            (after + 1..=head).collect::<Vec<_>>(),
            "after {after}"
        );
        assert_eq!(rest[..], all[after as usize..]);
    }
}

pub async fn read_all_with_limit<S: EventStore>(store: S) {
    ten(&store).await;
    assert_eq!(positions(&read_all(&store, 0, 3).await), [1, 2, 3]);
    assert_eq!(positions(&read_all(&store, 4, 2).await), [5, 6]);
    let head = head(&store).await;
    assert_eq!(positions(&read_all(&store, head - 2, 10).await), [head - 1, head]);
}

pub async fn read_all_past_the_head_is_empty<S: EventStore>(store: S) {
    assert_eq!(read_all(&store, 0, 10).await, [], "an empty store");
    ten(&store).await;
    let head = head(&store).await;
    assert_eq!(read_all(&store, head, 10).await, []);
    assert_eq!(read_all(&store, head + 100, 10).await, []);
    assert_eq!(read_all(&store, u64::MAX, 10).await, []);
}

pub async fn read_all_interleaves_streams_in_position_order<S: EventStore>(store: S) {
    let (a, b, c) = (stream("a"), stream("b"), stream("c"));
    let mut expected = Vec::new();
    for round in 0..4u64 {
        for s in [&a, &b, &c] {
            if s == &b && round == 2 {
                continue;
            }
            guard_await(store.append(s, ExpectedVersion::Any, events(round, 1)))
                .await
                .unwrap();
            expected.push((s.clone(), round));
        }
    }
    guard_await(store.append_multi(vec![
        Append::new(&c, ExpectedVersion::Any, events(10, 1)),
        Append::new(&a, ExpectedVersion::Any, events(11, 1)),
    ]))
    .await
    .unwrap();
    expected.push((c.clone(), 10));
    expected.push((a.clone(), 11));

    let all = read_all(&store, 0, 1000).await;
    let got: Vec<(String, u64)> = all.iter().map(|r| r.stream.clone()).zip(numbers(&all)).collect();
    assert_eq!(got, expected);
    assert_eq!(positions(&all), (1..=expected.len() as u64).collect::<Vec<_>>());
    for s in [&a, &b, &c] {
        let revs: Vec<u64> = all.iter().filter(|r| &r.stream == s).map(|r| r.revision).collect();
        assert_eq!(revs, (0..revs.len() as u64).collect::<Vec<_>>(), "revisions of {s}");
    }
}

pub async fn read_all_pages_gaplessly_over_many_appends<S: EventStore>(store: S) {
    let streams: Vec<String> = (0..5).map(|i| stream(&format!("s{i}"))).collect();
    let mut total = 0;
    for i in 0..60u64 {
        let size = i % 4 + 1;
        let s = &streams[(i * 7 % 5) as usize];
        let appended = guard_await(store.append(s, ExpectedVersion::Any, events(total, size)))
            .await
            .unwrap();
        total += size;
        assert_eq!(appended.position, total, "append {i}");
    }
    assert_eq!(head(&store).await, total);
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let page = read_all(&store, after, 7).await;
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 7);
        after = last.position;
        paged.extend(page);
    }
    assert_eq!(positions(&paged), (1..=total).collect::<Vec<_>>());
    assert_eq!(numbers(&paged), (0..total).collect::<Vec<_>>());
    for s in &streams {
        let revs: Vec<u64> = paged.iter().filter(|r| &r.stream == s).map(|r| r.revision).collect();
        assert_eq!(revs, (0..revs.len() as u64).collect::<Vec<_>>(), "revisions of {s}");
    }
}
