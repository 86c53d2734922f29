//! Aggregates: state folded from a stream's events, commands that decide new events, and a
//! [`Repository`] that loads (snapshot + tail) and saves with optimistic concurrency.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::event::{NewEvent, Recorded, StoredEvent};
use crate::snapshot::Snapshot;
use crate::store::{Appended, EventStore, ExpectedVersion, ReadStream, StreamState};

/// The events of one aggregate: a [`StoredEvent`] type, or an enum of them declared with
/// [`events!`](crate::events).
pub trait EventSet: Sized + Send + 'static {
    /// Encodes one for appending.
    fn encode(&self) -> Result<NewEvent>;
    /// Decodes one read back, upcasting older versions.
    fn decode(recorded: &Recorded) -> Result<Self>;
}

impl<E: StoredEvent> EventSet for E {
    fn encode(&self) -> Result<NewEvent> {
        NewEvent::new(self)
    }

    fn decode(recorded: &Recorded) -> Result<Self> {
        recorded.decode()
    }
}

/// Declares an enum of [`StoredEvent`] types, one variant each, as an [`EventSet`]:
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchboard_eventstore::{StoredEvent, events};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// pub struct UserCreated { pub name: String }
/// impl StoredEvent for UserCreated { const NAME: &'static str = "USER_CREATED"; }
///
/// #[derive(Clone, Serialize, Deserialize)]
/// pub struct UserDeleted {}
/// impl StoredEvent for UserDeleted { const NAME: &'static str = "USER_DELETED"; }
///
/// events! {
///     #[derive(Clone)]
///     pub enum UserEvent { Created(UserCreated), Deleted(UserDeleted) }
/// }
/// ```
#[macro_export]
macro_rules! events {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$meta])*
        $vis enum $name { $($variant($ty)),+ }

        impl $crate::EventSet for $name {
            fn encode(&self) -> $crate::Result<$crate::NewEvent> {
                match self { $($name::$variant(e) => $crate::NewEvent::new(e)),+ }
            }

            fn decode(recorded: &$crate::Recorded) -> $crate::Result<Self> {
                $(if recorded.name == <$ty as $crate::StoredEvent>::NAME {
                    return recorded.decode::<$ty>().map($name::$variant);
                })+
                Err($crate::Error::UnexpectedEvent { expected: stringify!($name), found: recorded.name.clone() })
            }
        }

        $(impl From<$ty> for $name {
            fn from(e: $ty) -> Self { $name::$variant(e) }
        })+
    };
}

/// State rebuilt from a stream: `apply` folds each event in, `handle` decides what a command
/// makes happen.
///
/// Snapshots are stamped with `SCHEMA` and a hash of the default state's JSON shape; a
/// snapshot whose stamp differs (written by other code) is ignored, or handed to
/// [`upcast_snapshot`](Self::upcast_snapshot). Write the impl under
/// [`#[aggregate]`](crate::aggregate) and `SCHEMA` is a hash of the block's code: change
/// `apply` and older snapshots stop being trusted, with nothing to remember. (Or set it by
/// hand with [`schema_of`] and bump it.)
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchboard_eventstore::{Aggregate, StoredEvent, aggregate};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// pub struct Deposited { pub amount: u64 }
/// impl StoredEvent for Deposited { const NAME: &'static str = "DEPOSITED"; }
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// pub struct Account { balance: u64 }
///
/// #[aggregate]
/// impl Aggregate for Account {
///     const TYPE: &'static str = "account";
///     type Event = Deposited;
///     type Command = u64;
///     type Error = std::convert::Infallible;
///     fn apply(&mut self, event: Deposited) { self.balance += event.amount }
///     fn handle(&self, amount: u64) -> Result<Vec<Deposited>, Self::Error> { Ok(vec![Deposited { amount }]) }
/// }
/// ```
pub trait Aggregate: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stream category: an aggregate `id` lives in stream `{TYPE}-{id}`.
    const TYPE: &'static str;
    /// The stamp of this code's snapshots.
    const SCHEMA: u64;
    /// Its events.
    type Event: EventSet;
    /// What it is asked to do.
    type Command: Send;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Folds one event into the state.
    fn apply(&mut self, event: Self::Event);
    /// The events a command produces given the current state, or why it is refused.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
    /// The state a snapshot written by code whose `SCHEMA` was `schema` means now, if it can be
    /// converted (typically: decode the old state type, then `From`); `None`, the default,
    /// rebuilds the state from the events instead.
    fn upcast_snapshot(schema: u64, data: &[u8]) -> Option<Self> {
        let _ = (schema, data);
        None
    }
}

/// A stamp for [`Aggregate::SCHEMA`]: FNV-1a of the type's name and a version.
pub const fn schema_of(name: &str, version: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        hash = (hash ^ bytes[i] as u64).wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    let v = version.to_le_bytes();
    let mut j = 0;
    while j < 4 {
        hash = (hash ^ v[j] as u64).wrapping_mul(0x0100_0000_01b3);
        j += 1;
    }
    hash
}

/// An aggregate as loaded: its state and where its stream was.
#[derive(Clone, Debug)]
pub struct Loaded<A> {
    /// The aggregate's id.
    pub id: String,
    /// The state.
    pub state: A,
    /// Where the stream was when loaded: saving expects it still is.
    pub stream: StreamState,
}

impl<A> Loaded<A> {
    fn expected(&self) -> ExpectedVersion {
        match self.stream {
            StreamState::At(r) => ExpectedVersion::Exact(r),
            _ => ExpectedVersion::NoStream,
        }
    }
}

/// Why [`Repository::execute`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    /// The aggregate refused the command.
    #[error("command refused")]
    Refused(#[source] E),
    /// The store failed (after the retries on concurrent writes).
    #[error("event store")]
    Store(#[from] Error),
}

/// Loads and saves aggregates of type `A` in a store.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # use switchboard_eventstore::{Aggregate, StoredEvent, schema_of};
/// # #[derive(Clone, Serialize, Deserialize)] pub struct Deposited { pub amount: u64 }
/// # impl StoredEvent for Deposited { const NAME: &'static str = "DEPOSITED"; }
/// # #[derive(Clone, Default, Serialize, Deserialize)] pub struct Account { balance: u64 }
/// # impl Aggregate for Account {
/// #     const TYPE: &'static str = "account"; const SCHEMA: u64 = schema_of("Account", 1);
/// #     type Event = Deposited; type Command = u64; type Error = std::convert::Infallible;
/// #     fn apply(&mut self, e: Deposited) { self.balance += e.amount }
/// #     fn handle(&self, amount: u64) -> Result<Vec<Deposited>, Self::Error> { Ok(vec![Deposited { amount }]) }
/// # }
/// use switchboard_eventstore::{MemoryStore, Repository};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let accounts = Repository::<Account, _>::new(MemoryStore::new()).snapshot_every(100);
/// accounts.execute("acc-1", 30).await.unwrap();
/// accounts.execute("acc-1", 12).await.unwrap();
/// assert_eq!(accounts.load("acc-1").await.unwrap().state.balance, 42);
/// # }
/// ```
pub struct Repository<A, S> {
    store: S,
    schema: std::sync::Arc<str>,
    snapshot_every: Option<u64>,
    retries: u32,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            schema: self.schema.clone(),
            snapshot_every: self.snapshot_every,
            retries: self.retries,
            _aggregate: PhantomData,
        }
    }
}

impl<A, S> fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("snapshot_every", &self.snapshot_every)
            .finish_non_exhaustive()
    }
}

/// Events read per round trip while loading.
const PAGE: usize = 4096;

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository over `store`, without snapshots, retrying a command 3 times when another
    /// writer got there first.
    pub fn new(store: S) -> Self {
        Repository {
            store,
            schema: schema_stamp::<A>().into(),
            snapshot_every: None,
            retries: 3,
            _aggregate: PhantomData,
        }
    }

    /// Takes a snapshot, in the background, each time a stream passes a multiple of `n` events.
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = Some(n.max(1));
        self
    }

    /// How often [`execute`](Self::execute) reloads and tries again after a concurrent write.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The stream of aggregate `id`.
    pub fn stream_of(id: &str) -> String {
        format!("{}-{id}", A::TYPE)
    }

    /// Loads aggregate `id`: its snapshot, if one of this code's, then the events after it.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        let stream = Self::stream_of(id);
        // Where the last attempt's reading ended.
        let mut last = None;
        loop {
            let (state, next) = self.read(&stream).await?;
            let at = self.store.stream_state(&stream).await?;
            match at {
                // Written between the reads: read again, as long as that gets further. A stream
                // whose events were truncated past its last snapshot of this code's (or a
                // snapshot past the stream's end) never matches, however often it is read.
                StreamState::At(r) if r + 1 != next && last != Some(next) => last = Some(next),
                StreamState::At(r) if r + 1 != next => {
                    return Err(Error::Invalid(format!(
                        "`{stream}` is at revision {r}, yet its snapshot and events read up to revision \
                         {next} (exclusive): its events were truncated past its last usable snapshot, \
                         or a snapshot is ahead of the stream"
                    )));
                }
                _ => {
                    return Ok(Loaded {
                        id: id.to_owned(),
                        state,
                        stream: at,
                    });
                }
            }
        }
    }

    /// The state from `stream`'s snapshot and the events after it, and the next revision.
    async fn read(&self, stream: &str) -> Result<(A, u64)> {
        let mut state = A::default();
        let mut next = 0;
        if self.snapshot_every.is_some()
            && let Some(snapshot) = self.store.load_snapshot(stream).await?
            && let Some(from_snapshot) = self.state_in(&snapshot)
        {
            state = from_snapshot;
            next = snapshot.revision + 1;
        }
        loop {
            let events = self.store.read_stream(stream, ReadStream::forwards(next, PAGE)).await?;
            let done = events.len() < PAGE;
            for recorded in &events {
                state.apply(A::Event::decode(recorded)?);
                next = recorded.revision + 1;
            }
            if done {
                return Ok((state, next));
            }
        }
    }

    /// The state in a snapshot: as it is if this code wrote it, upcast if older code with
    /// another `SCHEMA` did and the aggregate knows how, else none.
    fn state_in(&self, snapshot: &Snapshot) -> Option<A> {
        if *snapshot.schema == *self.schema {
            return serde_json::from_slice(&snapshot.data).ok();
        }
        let schema = u64::from_str_radix(snapshot.schema.split('-').next()?, 16).ok()?;
        if schema == A::SCHEMA {
            // Same declared schema, different shape: changed without a bump; not trusted.
            return None;
        }
        A::upcast_snapshot(schema, &snapshot.data)
    }

    /// Appends `events` to a loaded aggregate if its stream has not moved, and folds them in.
    pub async fn save(&self, loaded: &mut Loaded<A>, events: Vec<A::Event>) -> Result<Option<Appended>> {
        if events.is_empty() {
            return Ok(None);
        }
        let encoded = events.iter().map(EventSet::encode).collect::<Result<Vec<_>>>()?;
        let appended = self
            .store
            .append(Self::stream_of(&loaded.id), loaded.expected(), encoded)
            .await?;
        let before = loaded.stream.next_revision();
        for event in events {
            loaded.state.apply(event);
        }
        loaded.stream = StreamState::At(appended.revision);
        if let Some(n) = self.snapshot_every
            && before / n != (appended.revision + 1) / n
        {
            self.snapshot_in_background(loaded);
        }
        Ok(Some(appended))
    }

    /// Loads, handles `command`, saves; reloads and tries again when another writer appended
    /// in between.
    pub async fn execute(&self, id: &str, command: A::Command) -> Result<Loaded<A>, ExecuteError<A::Error>>
    where
        A::Command: Clone,
    {
        let mut tries = 0;
        loop {
            let mut loaded = self.load(id).await?;
            let events = loaded.state.handle(command.clone()).map_err(ExecuteError::Refused)?;
            match self.save(&mut loaded, events).await {
                Ok(_) => return Ok(loaded),
                Err(Error::WrongExpectedVersion { .. }) if tries < self.retries => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Saves a snapshot of `loaded` now.
    pub async fn snapshot(&self, loaded: &Loaded<A>) -> Result<()> {
        let StreamState::At(revision) = loaded.stream else {
            return Ok(());
        };
        let data = serde_json::to_vec(&loaded.state).map_err(Error::Encode)?;
        self.store
            .save_snapshot(Snapshot {
                stream: Self::stream_of(&loaded.id),
                revision,
                schema: self.schema.to_string(),
                data: data.into(),
            })
            .await
    }

    fn snapshot_in_background(&self, loaded: &Loaded<A>) {
        let (repo, loaded) = (self.clone(), loaded.clone());
        tokio::spawn(async move {
            if let Err(e) = repo.snapshot(&loaded).await {
                tracing::warn!(stream = %Self::stream_of(&loaded.id), error = %e, "snapshot not saved");
            }
        });
    }
}

/// `SCHEMA`, and a hash of the default state's JSON: a field added, removed or renamed
/// changes the stamp even if `SCHEMA` was not bumped.
fn schema_stamp<A: Aggregate>() -> String {
    let shape = serde_json::to_string(&A::default()).unwrap_or_default();
    format!("{:016x}-{:016x}", A::SCHEMA, schema_of(&shape, 0))
}
