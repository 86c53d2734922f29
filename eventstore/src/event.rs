//! Events as they are appended ([`NewEvent`]) and as they are read back ([`Recorded`]), and the
//! typed side: [`StoredEvent`] names and versions a serde type, [`upcast`] decodes older versions.

use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{Error, Result};

/// The longest event name and stream name a store accepts, in bytes.
pub const MAX_NAME_LEN: usize = 512;

/// A serde type stored as an event, with the name and version it is stored under.
///
/// The name is what the outbox publishes it as (the NestJS event pattern), so it is usually the
/// pattern of the `#[event_pattern]` handlers that consume it. Bump `VERSION` when the shape
/// changes and decode the older shapes in [`upcast`](Self::upcast):
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchboard_eventstore::{StoredEvent, upcast};
///
/// #[derive(Serialize, Deserialize)]
/// struct UserCreatedV1 { name: String }
/// impl StoredEvent for UserCreatedV1 {
///     const NAME: &'static str = "USER_CREATED";
/// }
///
/// #[derive(Serialize, Deserialize)]
/// struct UserCreated { name: String, email: Option<String> }
/// impl From<UserCreatedV1> for UserCreated {
///     fn from(v1: UserCreatedV1) -> Self { UserCreated { name: v1.name, email: None } }
/// }
/// impl StoredEvent for UserCreated {
///     const NAME: &'static str = "USER_CREATED";
///     const VERSION: u32 = 2;
///     fn upcast(version: u32, data: &[u8]) -> switchboard_eventstore::Result<Self> {
///         upcast::from::<UserCreatedV1, Self>(version, data)
///     }
/// }
///
/// let old = br#"{"name":"Ada"}"#;
/// let user = upcast::decode::<UserCreated>("USER_CREATED", 1, old).unwrap();
/// assert_eq!(user.email, None);
/// ```
pub trait StoredEvent: Serialize + DeserializeOwned + Send + 'static {
    /// The stored name.
    const NAME: &'static str;
    /// The current version, written with every new event.
    const VERSION: u32 = 1;
    /// Decodes data stored under an older `version`. The default knows none.
    fn upcast(version: u32, data: &[u8]) -> Result<Self> {
        let _ = data;
        Err(Error::UnknownVersion {
            name: Self::NAME.into(),
            version,
            current: Self::VERSION,
        })
    }
}

/// Typed decoding of stored events, older versions included.
pub mod upcast {
    use super::*;

    /// Decodes `data` stored as `name` version `version` into `E`, upcasting older versions.
    pub fn decode<E: StoredEvent>(name: &str, version: u32, data: &[u8]) -> Result<E> {
        if name != E::NAME {
            return Err(Error::UnexpectedEvent {
                expected: E::NAME,
                found: name.into(),
            });
        }
        if version == E::VERSION {
            serde_json::from_slice(data).map_err(|source| Error::Decode {
                name: name.into(),
                version,
                source,
            })
        } else if version < E::VERSION {
            E::upcast(version, data)
        } else {
            Err(Error::UnknownVersion {
                name: name.into(),
                version,
                current: E::VERSION,
            })
        }
    }

    /// One link of an upcasting chain: decodes `Old` (itself upcast when older still) and
    /// converts it with `From`. Use it in [`StoredEvent::upcast`].
    pub fn from<Old, New>(version: u32, data: &[u8]) -> Result<New>
    where
        Old: StoredEvent,
        New: StoredEvent + From<Old>,
    {
        decode::<Old>(New::NAME, version, data).map(New::from)
    }
}

/// An event to append: its id (the idempotency key), name, version and JSON data.
#[derive(Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique across the store; appending the same id again is a no-op (see
    /// [`EventStore::append`](crate::EventStore::append)).
    pub id: Uuid,
    /// What it is stored and published as.
    pub name: String,
    /// Its schema version.
    pub version: u32,
    /// The JSON payload.
    pub data: Bytes,
    /// JSON object of metadata (correlation, causation, headers), `{}` when none.
    pub metadata: Bytes,
}

impl NewEvent {
    /// A typed event with a fresh time-ordered id (UUID v7).
    pub fn new<E: StoredEvent>(event: &E) -> Result<Self> {
        let data = serde_json::to_vec(event).map_err(Error::Encode)?;
        Ok(Self::raw(E::NAME, E::VERSION, data))
    }

    /// An event from its parts; `data` must be JSON (the store checks).
    pub fn raw(name: impl Into<String>, version: u32, data: impl Into<Bytes>) -> Self {
        NewEvent {
            id: Uuid::now_v7(),
            name: name.into(),
            version,
            data: data.into(),
            metadata: Bytes::from_static(b"{}"),
        }
    }

    /// Sets the id, for a caller that derives it (from a command id, say) so that a retried
    /// append is stored once.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the metadata, a JSON object.
    pub fn with_metadata(mut self, metadata: &impl Serialize) -> Result<Self> {
        self.metadata = serde_json::to_vec(metadata).map_err(Error::Encode)?.into();
        Ok(self)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        check_name("event name", &self.name)?;
        check_json("data", &self.data)?;
        check_json("metadata", &self.metadata)
    }
}

impl fmt::Debug for NewEvent {
    // The payload may hold personal data: its size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewEvent")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// An event read back from a store.
#[derive(Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The stream it belongs to.
    pub stream: String,
    /// Its place in the stream, from 0.
    pub revision: u64,
    /// Its place in the store, from 1: gapless and in commit order.
    pub position: u64,
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its schema version.
    pub version: u32,
    /// The JSON payload.
    pub data: Bytes,
    /// The JSON metadata object.
    pub metadata: Bytes,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub recorded_at: i64,
}

impl Recorded {
    /// Decodes it as `E`, upcasting an older version.
    pub fn decode<E: StoredEvent>(&self) -> Result<E> {
        upcast::decode(&self.name, self.version, &self.data)
    }
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorded")
            .field("stream", &self.stream)
            .field("revision", &self.revision)
            .field("position", &self.position)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("data_len", &self.data.len())
            .finish()
    }
}

pub(crate) fn check_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
        return Err(Error::Invalid(format!(
            "{what} must be 1 to {MAX_NAME_LEN} bytes without NUL, not {} bytes",
            name.len()
        )));
    }
    Ok(())
}

fn check_json(what: &'static str, bytes: &[u8]) -> Result<()> {
    std::str::from_utf8(bytes).map_err(|_| Error::Invalid(format!("event {what} is not UTF-8")))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(drop)
        .map_err(|e| Error::Invalid(format!("event {what} is not JSON: {e}")))
}
