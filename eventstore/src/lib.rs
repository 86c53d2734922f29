//! Event sourcing for Switchboard.
//!
//! An [`EventStore`] keeps events per stream (one stream per aggregate) and in one global,
//! commit-ordered sequence. Three backends pass one contract test suite:
//! [`MemoryStore`] (tests, a process that keeps nothing), [`SqliteStore`] (the embedded
//! default: one file, one writer thread, group commit) and `PgStore` (feature `postgres`: for
//! several processes).
//!
//! Events are serde types named and versioned by [`StoredEvent`]; older versions are decoded
//! by typed [`upcast`] functions.
#![warn(missing_docs)]

pub mod aggregate;
pub mod error;
pub mod event;
pub mod inbox;
pub mod memory;
pub mod outbox;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod projection;
#[cfg(feature = "sqlite")]
pub mod read_model;
pub mod snapshot;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod store;
pub mod subscription;

pub use aggregate::{Aggregate, EventSet, ExecuteError, Loaded, Repository, schema_of};
pub use error::{Error, Result};
pub use event::{MAX_NAME_LEN, NewEvent, Recorded, StoredEvent, upcast};
pub use inbox::{Inbox, InboxLayer};
pub use memory::MemoryStore;
pub use outbox::Relay;
#[cfg(feature = "postgres")]
pub use postgres::{PgReadModel, PgStore};
pub use projection::{IDEMPOTENCY_KEY, Projection};
#[cfg(feature = "sqlite")]
pub use read_model::SqliteReadModel;
pub use snapshot::Snapshot;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, Synchronous};
pub use store::{Append, Appended, Direction, EventStore, ExpectedVersion, ReadStream, StreamState};
pub use subscription::{Reader, Subscription};
pub use switchboard_eventstore_macros::aggregate;
