//! What the cases share: running one against a fixture, making events, reading everything back,
//! and matching errors.

use std::future::Future;
use std::time::Duration;

use switchboard_eventstore::{EventStore, ExpectedVersion, NewEvent, ReadStream, Recorded, StreamState};
use uuid::Uuid;

/// How long one await that could hang may take before the test fails as hung. A hang guard,
/// never a speed assertion.
pub const HANG: Duration = Duration::from_secs(30);

/// Runs `case` on the fixture's store, keeping its guard alive until the case is done. `None`
/// skips the test (the fixture already said why).
pub async fn run<S, G, F, Fut>(made: Option<(S, G)>, case: F)
where
    S: EventStore,
    F: FnOnce(S) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some((store, guard)) = made else { return };
    assert_eq!(
        guard_await(store.head()).await.expect("head of a fresh store"),
        0,
        "the backend's fixture must give every test an empty store"
    );
    // The whole case gets a generous bound too, so a hang shows as a failure.
    tokio::time::timeout(HANG * 6, case(store))
        .await
        .expect("the case hung");
    drop(guard);
}

/// Awaits `fut`, failing the test if it hangs.
pub async fn guard_await<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, fut).await.expect("a store operation hung")
}

/// An event named `name` whose data is `{"n": n}` and metadata names it too.
pub fn event(name: &str, n: u64) -> NewEvent {
    NewEvent::raw(name, 1, format!(r#"{{"n":{n}}}"#))
        .with_metadata(&serde_json::json!({ "correlation": format!("c-{n}") }))
        .unwrap()
}

/// `count` distinct events numbered from `first`.
pub fn events(first: u64, count: u64) -> Vec<NewEvent> {
    (first..first + count).map(|n| event("THING_HAPPENED", n)).collect()
}

/// A fresh stream name: every case uses its own names anyway, this makes it plain.
pub fn stream(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// Appends `count` events to `stream` (which must not exist) and returns them.
pub async fn seed<S: EventStore>(store: &S, stream: &str, count: u64) -> Vec<NewEvent> {
    let new = events(0, count);
    let appended = guard_await(store.append(stream, ExpectedVersion::NoStream, new.clone()))
        .await
        .unwrap();
    assert_eq!(appended.revision, count - 1, "seeding `{stream}`");
    new
}

/// The whole stream, oldest first.
pub async fn stream_events<S: EventStore>(store: &S, stream: &str) -> Vec<Recorded> {
    guard_await(store.read_stream(stream, ReadStream::forwards(0, usize::MAX)))
        .await
        .unwrap()
}

/// Every event in the store, in global order.
pub async fn all_events<S: EventStore>(store: &S) -> Vec<Recorded> {
    guard_await(store.read_all(0, usize::MAX)).await.unwrap()
}

/// The state of `stream`.
pub async fn state<S: EventStore>(store: &S, stream: &str) -> StreamState {
    guard_await(store.stream_state(stream)).await.unwrap()
}

/// The committed head.
pub async fn head<S: EventStore>(store: &S) -> u64 {
    guard_await(store.head()).await.unwrap()
}

/// Everything a write could have changed: the head, every event, the watched head and the
/// states of `streams`.
#[derive(Debug, PartialEq)]
pub struct Dump {
    head: u64,
    watched: u64,
    events: Vec<Recorded>,
    states: Vec<(String, StreamState)>,
}

/// Takes a [`Dump`] to compare before and after a write that must not happen.
pub async fn dump<S: EventStore>(store: &S, streams: &[&str]) -> Dump {
    let mut states = Vec::new();
    for s in streams {
        states.push((s.to_string(), state(store, s).await));
    }
    // Read before the awaits: a watch borrow held across them blocks the store's writer.
    let watched = *store.watch_head().borrow();
    Dump {
        head: head(store).await,
        watched,
        events: all_events(store).await,
        states,
    }
}

/// Asserts that `recorded` is `new`, stored byte for byte.
pub fn assert_same_event(recorded: &Recorded, new: &NewEvent) {
    assert_eq!(recorded.id, new.id, "id of {recorded:?}");
    assert_eq!(recorded.name, new.name, "name of {recorded:?}");
    assert_eq!(recorded.version, new.version, "version of {recorded:?}");
    assert_eq!(recorded.data, new.data, "data of {recorded:?}");
    assert_eq!(recorded.metadata, new.metadata, "metadata of {recorded:?}");
}

/// The `(revision, position)` of each record.
pub fn places(records: &[Recorded]) -> Vec<(u64, u64)> {
    records.iter().map(|r| (r.revision, r.position)).collect()
}

/// The positions of the records.
pub fn positions(records: &[Recorded]) -> Vec<u64> {
    records.iter().map(|r| r.position).collect()
}

/// The revisions of the records.
pub fn revisions(records: &[Recorded]) -> Vec<u64> {
    records.iter().map(|r| r.revision).collect()
}

/// Asserts that `result` failed with an error matching the pattern (and guard).
#[macro_export]
macro_rules! assert_err {
    ($result:expr, $pattern:pat $(if $guard:expr)? $(,)?) => {
        match $result {
            Err($pattern) $(if $guard)? => {}
            Err(other) => panic!("expected {}, got the error {other:?} ({other})", stringify!($pattern $(if $guard)?)),
            Ok(value) => panic!("expected {}, got Ok({value:?})", stringify!($pattern $(if $guard)?)),
        }
    };
}

/// Asserts that `result` is `Error::WrongExpectedVersion` for exactly this stream, expectation
/// and actual state.
pub fn assert_wrong_version<T: std::fmt::Debug>(
    result: switchboard_eventstore::Result<T>,
    stream: &str,
    expected: ExpectedVersion,
    actual: StreamState,
) {
    match result {
        Err(switchboard_eventstore::Error::WrongExpectedVersion {
            stream: s,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(
                (s.as_str(), e, a),
                (stream, expected, actual),
                "the fields of WrongExpectedVersion"
            );
        }
        other => panic!(
            "expected WrongExpectedVersion {{ stream: {stream:?}, expected: {expected:?}, actual: {actual:?} }}, got {other:?}"
        ),
    }
}

/// Asserts that `result` is `Error::StreamDeleted` for this stream.
pub fn assert_deleted<T: std::fmt::Debug>(result: switchboard_eventstore::Result<T>, stream: &str) {
    match result {
        Err(switchboard_eventstore::Error::StreamDeleted(s)) => assert_eq!(s, stream, "the stream of StreamDeleted"),
        other => panic!("expected StreamDeleted({stream:?}), got {other:?}"),
    }
}

/// Asserts that `result` is `Error::Invalid`.
pub fn assert_invalid<T: std::fmt::Debug>(result: switchboard_eventstore::Result<T>) {
    match result {
        Err(switchboard_eventstore::Error::Invalid(message)) => {
            assert!(!message.is_empty(), "an Invalid error says why")
        }
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}
