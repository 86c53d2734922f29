//! What saga operations fail with.

use crate::log::Status;

/// A saga log or orchestrator error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another writer wrote the saga first, or this executor lost its lease: stop running it.
    #[error("saga `{0}` was written by someone else (or its lease was lost)")]
    Conflict(String),
    /// A saga with this id already exists.
    #[error("saga `{0}` already exists")]
    Exists(String),
    /// No saga with this id.
    #[error("no saga `{0}`")]
    NotFound(String),
    /// No definition registered under the name the log gives.
    #[error("no saga definition named `{0}` is registered with this orchestrator")]
    UnknownSaga(String),
    /// The operation does not apply to a saga in this status.
    #[error("saga `{id}` is {status}: {what}")]
    WrongStatus {
        /// The saga.
        id: String,
        /// Its status.
        status: Status,
        /// What cannot be done.
        what: &'static str,
    },
    /// Another process runs sagas from this SQLite file.
    #[error("another orchestrator runs the sagas of {0}")]
    Locked(String),
    /// Input refused (an empty id, a malformed write ...).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A state or reply did not convert to or from JSON.
    #[error("saga `{id}`: {what}")]
    Json {
        /// The saga.
        id: String,
        /// What was being converted.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The log's entries do not make sense for the saga's definition (written by other code).
    #[error("saga `{id}`: {what}")]
    Corrupt {
        /// The saga.
        id: String,
        /// What does not fit.
        what: String,
    },
    /// The orchestrator or the log's writer has stopped.
    #[error("the saga log is closed")]
    Closed,
    /// SQLite failed.
    #[cfg(feature = "sqlite")]
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed (the message never holds the connection's password).
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// The file could not be opened or locked.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// A saga result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
