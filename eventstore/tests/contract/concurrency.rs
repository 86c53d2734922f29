//! Global order under concurrent writers: gapless positions in commit order, readers that never
//! miss an event behind them, optimistic concurrency on one stream.

use std::collections::HashSet;
use std::sync::Arc;

use switchboard_eventstore::{Appended, Error, EventStore, ExpectedVersion, NewEvent, Recorded, StreamState};
use tokio::sync::Barrier;
use uuid::Uuid;

use super::support::*;

const TASKS: u64 = 16;
const APPENDS: u64 = 20;

/// The events task `task` appends in its `i`th append: 1 to 3 of them.
fn batch(task: u64, i: u64) -> Vec<NewEvent> {
    events(task * 1000 + i * 10, (task + i) % 3 + 1)
}

/// How many events `TASKS` writers append in all.
fn total() -> u64 {
    (0..TASKS)
        .flat_map(|t| (0..APPENDS).map(move |i| (t + i) % 3 + 1))
        .sum()
}

/// What one writer did: its stream, the ids it wrote in order and its results.
type Written = (String, Vec<Uuid>, Vec<Appended>);

/// Starts `TASKS` writers, each appending `APPENDS` batches to its own stream with exact
/// expectations, all released at once.
fn start_writers<S: EventStore>(store: &S) -> Vec<tokio::task::JoinHandle<Written>> {
    let barrier = Arc::new(Barrier::new(TASKS as usize));
    (0..TASKS)
        .map(|task| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let s = stream(&format!("writer{task}"));
                let mut ids = Vec::new();
                let mut results = Vec::new();
                let mut expected = ExpectedVersion::NoStream;
                barrier.wait().await;
                for i in 0..APPENDS {
                    let new = batch(task, i);
                    ids.extend(new.iter().map(|e| e.id));
                    let appended = guard_await(store.append(&s, expected, new)).await.unwrap();
                    expected = ExpectedVersion::Exact(appended.revision);
                    results.push(appended);
                }
                (s, ids, results)
            })
        })
        .collect()
}

/// Checks what the writers wrote against the whole store.
async fn check_writers<S: EventStore>(store: &S, writers: Vec<Written>) -> Vec<Recorded> {
    let all = all_events(store).await;
    let n = total();
    assert_eq!(
        positions(&all),
        (1..=n).collect::<Vec<_>>(),
        "positions are gapless from 1"
    );
    assert_eq!(head(store).await, n);
    assert_eq!(*store.watch_head().borrow(), n);
    let unique: HashSet<Uuid> = all.iter().map(|r| r.id).collect();
    assert_eq!(unique.len() as u64, n, "every event once");
    for (s, ids, results) in writers {
        let mine: Vec<&Recorded> = all.iter().filter(|r| r.stream == s).collect();
        assert_eq!(
            mine.iter().map(|r| r.id).collect::<Vec<_>>(),
            ids,
            "the events of {s}, in order"
        );
        assert_eq!(
            mine.iter().map(|r| r.revision).collect::<Vec<_>>(),
            (0..ids.len() as u64).collect::<Vec<_>>()
        );
        assert_eq!(state(store, &s).await, StreamState::At(ids.len() as u64 - 1));
        // Each result is where its batch's last event is.
        for result in results {
            let last = mine.iter().find(|r| r.revision == result.revision).unwrap();
            assert_eq!(last.position, result.position, "{s}: {result:?}");
        }
    }
    all
}

pub async fn concurrent_appends_to_many_streams_are_gapless<S: EventStore>(store: S) {
    let mut writers = Vec::new();
    for handle in start_writers(&store) {
        writers.push(guard_await(handle).await.unwrap());
    }
    check_writers(&store, writers).await;
}

pub async fn concurrent_reader_sees_every_event_once_in_order<S: EventStore>(store: S) {
    let n = total();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen: Vec<Recorded> = Vec::new();
            let mut after = 0;
            while after < n {
                let page = guard_await(store.read_all(after, 37)).await.unwrap();
                if let Some(last) = page.last() {
                    after = last.position;
                    seen.extend(page);
                } else {
                    tokio::task::yield_now().await;
                }
            }
            seen
        })
    };
    let mut writers = Vec::new();
    for handle in start_writers(&store) {
        writers.push(guard_await(handle).await.unwrap());
    }
    let seen = guard_await(reader).await.unwrap();
    // A position skipped (not yet visible while a later one was) would be missing here: the
    // reader never goes back.
    assert_eq!(
        positions(&seen),
        (1..=n).collect::<Vec<_>>(),
        "the reader saw every position once, in order"
    );
    let all = check_writers(&store, writers).await;
    assert_eq!(seen, all, "the reader saw the events as they are stored");
}

pub async fn head_never_runs_ahead_of_readable_events<S: EventStore>(store: S) {
    let n = total();
    let watcher = {
        let store = store.clone();
        let mut head_rx = store.watch_head();
        tokio::spawn(async move {
            let mut checked = 0;
            let mut rounds = 0;
            loop {
                let watched = *head_rx.borrow_and_update();
                // Both the watched head and `head()`: every position up to them is readable.
                let polled = guard_await(store.head()).await.unwrap();
                let h = watched.max(polled);
                assert!(
                    watched <= polled,
                    "the watched head {watched} is ahead of head() {polled}"
                );
                if h > checked {
                    let page = guard_await(store.read_all(checked, usize::MAX)).await.unwrap();
                    let got = positions(&page);
                    let want: Vec<u64> = (checked + 1..=h).collect();
                    assert!(
                        got.len() >= want.len() && got[..want.len()] == want[..],
                        "head was {h} but after {checked} only {got:?} were readable"
                    );
                    checked = h;
                    rounds += 1;
                }
                if checked == n {
                    return rounds;
                }
                guard_await(head_rx.changed()).await.unwrap();
            }
        })
    };
    let mut writers = Vec::new();
    for handle in start_writers(&store) {
        writers.push(guard_await(handle).await.unwrap());
    }
    let rounds = guard_await(watcher).await.unwrap();
    assert!(rounds >= 1);
    check_writers(&store, writers).await;
}

pub async fn racing_appends_to_one_stream_keep_revisions_gapless<S: EventStore>(store: S) {
    const RACERS: u64 = 8;
    const EACH: u64 = 10;
    let s = stream("contended");
    let barrier = Arc::new(Barrier::new(RACERS as usize));
    let handles: Vec<_> = (0..RACERS)
        .map(|task| {
            let (store, s, barrier) = (store.clone(), s.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut mine = Vec::new();
                let mut conflicts = 0;
                for i in 0..EACH {
                    let event = event("RACED", task * 100 + i);
                    loop {
                        let expected = match guard_await(store.stream_state(&s)).await.unwrap() {
                            StreamState::At(r) => ExpectedVersion::Exact(r),
                            StreamState::NoStream => ExpectedVersion::NoStream,
                            StreamState::Deleted => panic!("nobody deletes {s}"),
                        };
                        match guard_await(store.append(&s, expected, vec![event.clone()])).await {
                            Ok(appended) => {
                                mine.push((event.id, appended.revision));
                                break;
                            }
                            Err(Error::WrongExpectedVersion { actual, .. }) => {
                                assert!(
                                    !actual.satisfies(expected),
                                    "refused {expected:?} although it is {actual:?}"
                                );
                                conflicts += 1;
                                tokio::task::yield_now().await;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                (mine, conflicts)
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for handle in handles {
        let (mine, _conflicts) = guard_await(handle).await.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0].1 < w[1].1),
            "one racer's revisions go up: {mine:?}"
        );
        claimed.extend(mine);
    }
    let read = stream_events(&store, &s).await;
    assert_eq!(revisions(&read), (0..RACERS * EACH).collect::<Vec<_>>());
    claimed.sort_by_key(|(_, revision)| *revision);
    assert_eq!(
        read.iter().map(|r| (r.id, r.revision)).collect::<Vec<_>>(),
        claimed,
        "each success is where it said"
    );
    assert_eq!(state(&store, &s).await, StreamState::At(RACERS * EACH - 1));
    assert_eq!(head(&store).await, RACERS * EACH);
}

pub async fn racing_creations_of_one_stream_have_one_winner<S: EventStore>(store: S) {
    let s = stream("created-once");
    let barrier = Arc::new(Barrier::new(TASKS as usize));
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, s, barrier) = (store.clone(), s.clone(), barrier.clone());
            tokio::spawn(async move {
                let new = events(task * 10, 2);
                barrier.wait().await;
                let result = guard_await(store.append(&s, ExpectedVersion::NoStream, new.clone())).await;
                (new, result)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for handle in handles {
        let (new, result) = guard_await(handle).await.unwrap();
        match result {
            Ok(appended) => {
                assert_eq!(appended.revision, 1);
                winners.push(new);
            }
            Err(e) => assert_wrong_version(Err::<(), _>(e), &s, ExpectedVersion::NoStream, StreamState::At(1)),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creation wins");
    let read = stream_events(&store, &s).await;
    assert_eq!(read.len(), 2);
    for (recorded, new) in read.iter().zip(&winners[0]) {
        assert_same_event(recorded, new);
    }
    assert_eq!(head(&store).await, 2);
}

pub async fn concurrent_retries_of_one_append_store_it_once<S: EventStore>(store: S) {
    let s = stream("retried");
    let new = events(0, 3);
    let barrier = Arc::new(Barrier::new(TASKS as usize));
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let (store, s, barrier, new) = (store.clone(), s.clone(), barrier.clone(), new.clone());
            tokio::spawn(async move {
                let expected = if task % 2 == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Any
                };
                barrier.wait().await;
                guard_await(store.append(&s, expected, new)).await
            })
        })
        .collect();
    for handle in handles {
        let appended = guard_await(handle).await.unwrap();
        assert_eq!(
            appended.unwrap(),
            Appended {
                revision: 2,
                position: 3
            },
            "every retry gets the one result"
        );
    }
    let read = stream_events(&store, &s).await;
    assert_eq!(read.len(), 3);
    for (recorded, new) in read.iter().zip(&new) {
        assert_same_event(recorded, new);
    }
    assert_eq!(head(&store).await, 3);
}
