//! The one interface every backend implements, and the contract its tests hold them to.

use std::fmt;
use std::future::Future;

use tokio::sync::watch;

use crate::error::Result;
use crate::event::{NewEvent, Recorded};
use crate::snapshot::Snapshot;

/// What an append expects of its stream, checked atomically with the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Whatever the stream is (but not deleted).
    Any,
    /// The stream has no events yet.
    NoStream,
    /// The stream has at least one event.
    StreamExists,
    /// The stream's last event is at this revision.
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("anything"),
            ExpectedVersion::NoStream => f.write_str("empty"),
            ExpectedVersion::StreamExists => f.write_str("non-empty"),
            ExpectedVersion::Exact(r) => write!(f, "at revision {r}"),
        }
    }
}

/// Where a stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// No event was ever appended.
    NoStream,
    /// Its last event is at this revision (events before a truncation point are gone but still
    /// count).
    At(u64),
    /// Deleted with a tombstone.
    Deleted,
}

impl StreamState {
    /// The revision the next event gets.
    pub fn next_revision(self) -> u64 {
        match self {
            StreamState::At(r) => r + 1,
            _ => 0,
        }
    }

    /// `Ok` if a write expecting `expected` may go on in this state: the stream's error otherwise.
    pub fn check(self, stream: &str, expected: ExpectedVersion) -> crate::Result<()> {
        match self {
            StreamState::Deleted => Err(crate::Error::StreamDeleted(stream.into())),
            actual if actual.satisfies(expected) => Ok(()),
            actual => Err(crate::Error::WrongExpectedVersion {
                stream: stream.into(),
                expected,
                actual,
            }),
        }
    }

    /// Whether `expected` holds for this state.
    pub fn satisfies(self, expected: ExpectedVersion) -> bool {
        match (expected, self) {
            (_, StreamState::Deleted) => false,
            (ExpectedVersion::Any, _) => true,
            (ExpectedVersion::NoStream, StreamState::NoStream) => true,
            (ExpectedVersion::StreamExists, StreamState::At(_)) => true,
            (ExpectedVersion::Exact(e), StreamState::At(r)) => e == r,
            _ => false,
        }
    }
}

impl fmt::Display for StreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamState::NoStream => f.write_str("empty"),
            StreamState::At(r) => write!(f, "at revision {r}"),
            StreamState::Deleted => f.write_str("deleted"),
        }
    }
}

/// Events to append to one stream.
#[derive(Clone, Debug)]
pub struct Append {
    /// The stream.
    pub stream: String,
    /// What the stream must be for the append to happen.
    pub expected: ExpectedVersion,
    /// The events, at least one.
    pub events: Vec<NewEvent>,
}

impl Append {
    /// An append of `events` to `stream` if it is `expected`.
    pub fn new(stream: impl Into<String>, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Append {
            stream: stream.into(),
            expected,
            events,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        crate::event::check_name("stream name", &self.stream)?;
        if self.events.is_empty() {
            return Err(crate::Error::Invalid(format!(
                "an append to `{}` has no events",
                self.stream
            )));
        }
        self.events.iter().try_for_each(NewEvent::validate)
    }
}

/// Where an append put its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream's revision after it: expect `Exact(revision)` next time.
    pub revision: u64,
    /// The global position of its last event.
    pub position: u64,
}

/// Which way to read a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first, from a revision upwards.
    Forwards,
    /// Newest first, from a revision downwards.
    Backwards,
}

/// A read of one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadStream {
    /// The first revision to return (inclusive); `u64::MAX` is the end.
    pub from: u64,
    /// Which way.
    pub direction: Direction,
    /// At most this many events.
    pub limit: usize,
}

impl ReadStream {
    /// Oldest first from revision `from`, at most `limit`.
    pub fn forwards(from: u64, limit: usize) -> Self {
        ReadStream {
            from,
            direction: Direction::Forwards,
            limit,
        }
    }

    /// Newest first, at most `limit`.
    pub fn backwards(limit: usize) -> Self {
        ReadStream {
            from: u64::MAX,
            direction: Direction::Backwards,
            limit,
        }
    }

    /// Newest first from revision `from` downwards.
    pub fn backwards_from(from: u64, limit: usize) -> Self {
        ReadStream {
            from,
            direction: Direction::Backwards,
            limit,
        }
    }
}

/// An event store. Cheap to clone: clones share one store.
///
/// Guarantees, on every backend (the contract tests in `tests/contract.rs` check them):
/// - an append is atomic, across the streams of [`append_multi`](Self::append_multi) too, and
///   checks each stream's [`ExpectedVersion`] in the same transaction;
/// - appending events whose ids are already stored, in the same stream at the same place,
///   succeeds without writing again (a retried append is stored once); an id stored anywhere
///   else is [`Error::DuplicateEvent`](crate::Error::DuplicateEvent); the ids of deleted events
///   (truncated or tombstoned) are forgotten with them;
/// - global positions start at 1, have no gaps except where events were deleted, and are in
///   commit order: once [`head`](Self::head) is `n`, no event at a position `≤ n` can still
///   appear, so a reader that has passed a position never misses an event behind it.
pub trait EventStore: Clone + Send + Sync + 'static {
    /// Appends to several streams at once, all or nothing.
    fn append_multi(&self, appends: Vec<Append>) -> impl Future<Output = Result<Vec<Appended>>> + Send;

    /// Appends `events` to `stream` if it is `expected`.
    fn append(
        &self,
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Appended>> + Send {
        let append = Append::new(stream, expected, events);
        async move { Ok(self.append_multi(vec![append]).await?.remove(0)) }
    }

    /// Reads one stream. A stream with no events reads empty; a deleted one is
    /// [`Error::StreamDeleted`](crate::Error::StreamDeleted).
    fn read_stream(&self, stream: &str, read: ReadStream) -> impl Future<Output = Result<Vec<Recorded>>> + Send;

    /// Reads every stream in global order: events after position `after`, at most `limit`.
    fn read_all(&self, after: u64, limit: usize) -> impl Future<Output = Result<Vec<Recorded>>> + Send;

    /// Where a stream is.
    fn stream_state(&self, stream: &str) -> impl Future<Output = Result<StreamState>> + Send;

    /// Deletes a stream's events before `revision`; the stream goes on from where it was.
    fn truncate_before(&self, stream: &str, revision: u64) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a stream for good if it is `expected`: its events are removed and it can never
    /// be appended to again.
    fn tombstone(&self, stream: &str, expected: ExpectedVersion) -> impl Future<Output = Result<()>> + Send;

    /// The position of the last committed event (0 when none).
    fn head(&self) -> impl Future<Output = Result<u64>> + Send;

    /// The committed head as it moves: live subscriptions and the outbox relay wait on it
    /// instead of polling.
    fn watch_head(&self) -> watch::Receiver<u64>;

    /// A named reader's saved position.
    fn checkpoint(&self, name: &str) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Saves a named reader's position.
    fn save_checkpoint(&self, name: &str, position: u64) -> impl Future<Output = Result<()>> + Send;

    /// The snapshot saved for a stream, if any.
    fn load_snapshot(&self, stream: &str) -> impl Future<Output = Result<Option<Snapshot>>> + Send;

    /// Saves a stream's snapshot, replacing an older one (never a newer one).
    fn save_snapshot(&self, snapshot: Snapshot) -> impl Future<Output = Result<()>> + Send;
}

/// Raises the watched head to `to` if it is behind: commits can be reported out of order (two
/// appenders unlocking in one order and reporting in the other; our commits directly, other
/// processes' through a notification), and a reader must never see the head go back.
///
/// Looks first under the shared lock: the exclusive one is taken only to move the head, so a
/// report that arrives after the head moved never waits for a receiver holding a `borrow()`.
/// A position or revision read back from a database, which stores them signed: a negative one
/// (a row written by other hands) is an error, not a number near `u64::MAX` that would stall a
/// reader or overflow the next revision.
pub(crate) fn stored_position(n: i64) -> Result<u64> {
    u64::try_from(n)
        .map_err(|_| crate::error::Error::Invalid(format!("a stored position or revision is negative ({n})")))
}

pub(crate) fn advance_head(head: &watch::Sender<u64>, to: u64) {
    if *head.borrow() >= to {
        return;
    }
    head.send_if_modified(|h| {
        let moved = to > *h;
        if moved {
            *h = to;
        }
        moved
    });
}
