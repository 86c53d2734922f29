//! The in-memory store: for tests and for a process that keeps nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::Recorded;
use crate::snapshot::Snapshot;
use crate::store::{Append, Appended, Direction, EventStore, ExpectedVersion, ReadStream, StreamState, advance_head};

/// An event store in memory. Clones share it.
///
/// ```
/// use switchboard_eventstore::{EventStore, ExpectedVersion, MemoryStore, NewEvent, ReadStream};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> switchboard_eventstore::Result<()> {
/// let store = MemoryStore::new();
/// store.append("user-1", ExpectedVersion::NoStream, vec![NewEvent::raw("USER_CREATED", 1, r#"{"name":"Ada"}"#)]).await?;
/// let events = store.read_stream("user-1", ReadStream::forwards(0, 100)).await?;
/// assert_eq!(events[0].name, "USER_CREATED");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<State>>,
    head: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct State {
    /// By position - 1; `None` once deleted.
    log: Vec<Option<Recorded>>,
    streams: HashMap<String, Stream>,
    ids: HashMap<Uuid, (String, u64)>,
    checkpoints: HashMap<String, u64>,
    snapshots: HashMap<String, Snapshot>,
}

#[derive(Default)]
struct Stream {
    /// Positions of its events by revision; `truncated` of them are gone.
    positions: Vec<u64>,
    truncated: u64,
    deleted: bool,
}

impl Stream {
    fn state(&self) -> StreamState {
        match (self.deleted, self.positions.len()) {
            (true, _) => StreamState::Deleted,
            (false, 0) => StreamState::NoStream,
            (false, n) => StreamState::At(n as u64 - 1),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            inner: Arc::default(),
            head: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it cannot leave a half-done append: appends check first and
        // write after.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn state_of(state: &State, stream: &str) -> StreamState {
    state.streams.get(stream).map_or(StreamState::NoStream, Stream::state)
}

/// The result of an append already stored, or `None` if none of its ids are.
pub(crate) fn already_appended(
    append: &Append,
    mut stored: impl FnMut(&Uuid) -> Result<Option<(String, u64, u64)>>,
) -> Result<Option<Appended>> {
    let mut result = None;
    for (i, event) in append.events.iter().enumerate() {
        match (stored(&event.id)?, i, result) {
            (None, 0, _) => return Ok(None),
            (Some((stream, revision, position)), _, prev)
                if stream == append.stream && prev.is_none_or(|p: Appended| p.revision + 1 == revision) =>
            {
                result = Some(Appended { revision, position })
            }
            (Some((stream, revision, _)), _, _) => {
                return Err(Error::DuplicateEvent {
                    id: event.id,
                    stream,
                    revision,
                });
            }
            (None, _, _) => {
                return Err(Error::Invalid(format!(
                    "event {} was not stored with the events before it in this append: a retried append must repeat the same events",
                    event.id
                )));
            }
        }
    }
    Ok(result)
}

pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl EventStore for MemoryStore {
    async fn append_multi(&self, appends: Vec<Append>) -> Result<Vec<Appended>> {
        appends.iter().try_for_each(Append::validate)?;
        let mut state = self.lock();
        // Check everything first, then write: all or nothing.
        let mut results: Vec<Option<Appended>> = Vec::with_capacity(appends.len());
        let mut fresh_ids = std::collections::HashSet::new();
        for append in &appends {
            let done = already_appended(append, |id| {
                Ok(state.ids.get(id).map(|(stream, revision)| {
                    let position = state.streams[stream].positions[*revision as usize];
                    (stream.clone(), *revision, position)
                }))
            })?;
            if done.is_none() {
                let actual = state_of(&state, &append.stream);
                actual.check(&append.stream, append.expected)?;
                if appends.iter().filter(|a| a.stream == append.stream).count() > 1 {
                    return Err(Error::Invalid(format!(
                        "stream `{}` appears twice in one append",
                        append.stream
                    )));
                }
                for event in &append.events {
                    if let Some((stream, revision)) = state.ids.get(&event.id) {
                        return Err(Error::DuplicateEvent {
                            id: event.id,
                            stream: stream.clone(),
                            revision: *revision,
                        });
                    }
                    if !fresh_ids.insert(event.id) {
                        return Err(Error::Invalid(format!(
                            "event {} appears twice in one append",
                            event.id
                        )));
                    }
                }
            }
            results.push(done);
        }
        let now = now_millis();
        let mut out = Vec::with_capacity(appends.len());
        for (append, done) in appends.into_iter().zip(results) {
            if let Some(done) = done {
                out.push(done);
                continue;
            }
            let state = &mut *state;
            let stream = state.streams.entry(append.stream.clone()).or_default();
            let mut appended = Appended {
                revision: 0,
                position: 0,
            };
            for event in append.events {
                let position = state.log.len() as u64 + 1;
                let revision = stream.positions.len() as u64;
                stream.positions.push(position);
                state.ids.insert(event.id, (append.stream.clone(), revision));
                state.log.push(Some(Recorded {
                    stream: append.stream.clone(),
                    revision,
                    position,
                    id: event.id,
                    name: event.name,
                    version: event.version,
                    data: event.data,
                    metadata: event.metadata,
                    recorded_at: now,
                }));
                appended = Appended { revision, position };
            }
            out.push(appended);
        }
        let head = state.log.len() as u64;
        drop(state);
        advance_head(&self.head, head);
        Ok(out)
    }

    async fn read_stream(&self, stream: &str, read: ReadStream) -> Result<Vec<Recorded>> {
        let state = self.lock();
        let Some(s) = state.streams.get(stream) else {
            return Ok(Vec::new());
        };
        if s.deleted {
            return Err(Error::StreamDeleted(stream.into()));
        }
        let live = s.truncated as usize..s.positions.len();
        let pick = |rev: usize| state.log[s.positions[rev] as usize - 1].clone();
        Ok(match read.direction {
            Direction::Forwards => live
                .filter(|r| *r as u64 >= read.from)
                .take(read.limit)
                .filter_map(pick)
                .collect(),
            Direction::Backwards => live
                .rev()
                .filter(|r| *r as u64 <= read.from)
                .take(read.limit)
                .filter_map(pick)
                .collect(),
        })
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Recorded>> {
        let state = self.lock();
        let start = (after as usize).min(state.log.len());
        Ok(state.log[start..].iter().flatten().take(limit).cloned().collect())
    }

    async fn stream_state(&self, stream: &str) -> Result<StreamState> {
        Ok(state_of(&self.lock(), stream))
    }

    async fn truncate_before(&self, stream: &str, revision: u64) -> Result<()> {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(s) = state.streams.get_mut(stream) else {
            return Ok(());
        };
        if s.deleted {
            return Err(Error::StreamDeleted(stream.into()));
        }
        let end = revision.min(s.positions.len() as u64);
        for rev in s.truncated..end {
            // Deleted events are forgotten, ids included, as the SQL stores delete their rows.
            if let Some(gone) = state.log[s.positions[rev as usize] as usize - 1].take() {
                state.ids.remove(&gone.id);
            }
        }
        s.truncated = s.truncated.max(end);
        Ok(())
    }

    async fn tombstone(&self, stream: &str, expected: ExpectedVersion) -> Result<()> {
        let mut state = self.lock();
        let actual = state_of(&state, stream);
        actual.check(stream, expected)?;
        let state = &mut *state;
        let s = state.streams.entry(stream.into()).or_default();
        for &position in &s.positions[s.truncated as usize..] {
            state.log[position as usize - 1] = None;
        }
        s.truncated = s.positions.len() as u64;
        s.deleted = true;
        state.ids.retain(|_, (owner, _)| owner != stream);
        state.snapshots.remove(stream);
        Ok(())
    }

    async fn head(&self) -> Result<u64> {
        Ok(self.lock().log.len() as u64)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.lock().checkpoints.get(name).copied())
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        crate::event::check_name("checkpoint name", name)?;
        self.lock().checkpoints.insert(name.into(), position);
        Ok(())
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        Ok(self.lock().snapshots.get(stream).cloned())
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let mut state = self.lock();
        let keep = state
            .snapshots
            .get(&snapshot.stream)
            .is_some_and(|old| old.revision > snapshot.revision);
        if !keep {
            state.snapshots.insert(snapshot.stream.clone(), snapshot);
        }
        Ok(())
    }
}
