//! The store's error type.

use uuid::Uuid;

use crate::store::{ExpectedVersion, StreamState};

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not where the append expected it: someone else wrote first. Reload and
    /// decide again.
    #[error("stream `{stream}` was expected to be {expected} but is {actual}")]
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// What the stream is.
        actual: StreamState,
    },
    /// The stream was deleted with a tombstone and cannot be written again.
    #[error("stream `{0}` is deleted")]
    StreamDeleted(String),
    /// An event id is already stored elsewhere (another stream, or another place in this one):
    /// ids are idempotency keys and cannot be reused for a different event.
    #[error("event {id} is already stored in stream `{stream}` at revision {revision}")]
    DuplicateEvent {
        /// The id.
        id: Uuid,
        /// Where it is stored.
        stream: String,
        /// At which revision.
        revision: u64,
    },
    /// Input the store refuses (an empty name, data that is not JSON, an empty append ...).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An event did not decode as the type asked for.
    #[error("event `{name}` version {version} does not decode")]
    Decode {
        /// Its name.
        name: String,
        /// Its version.
        version: u32,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An event's version has no decoder (newer than the code, or an older one with no upcaster).
    #[error("event `{name}` version {version} is unknown to this code (current version {current})")]
    UnknownVersion {
        /// Its name.
        name: String,
        /// Its stored version.
        version: u32,
        /// The version the code writes.
        current: u32,
    },
    /// An event of another type was found where one type was expected.
    #[error("expected event `{expected}`, found `{found}`")]
    UnexpectedEvent {
        /// The expected name.
        expected: &'static str,
        /// The stored name.
        found: String,
    },
    /// A value did not encode as JSON.
    #[error("event does not encode as JSON")]
    Encode(#[source] serde_json::Error),
    /// SQLite failed.
    #[cfg(feature = "sqlite")]
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    /// A projection's handler kept failing on an event; the projection stopped before it.
    #[error("the handler of `{name}` (position {position}) kept failing: {message}")]
    Handler {
        /// The event's name.
        name: String,
        /// Its position.
        position: u64,
        /// The handler's last error.
        message: String,
    },
    /// The transaction holding this write (and the others committed with it) did not commit:
    /// nothing of it was written.
    #[error("the write did not commit: {0}")]
    NotCommitted(String),
    /// Publishing through the outbox failed.
    #[error("publishing failed")]
    Publish(#[source] switchboard::Error),
    /// The store was closed (its writer stopped).
    #[error("the event store is closed")]
    Closed,
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
