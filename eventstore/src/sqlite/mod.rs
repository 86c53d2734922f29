//! The embedded store: one SQLite file, one writer thread with group commit, readers in
//! parallel (WAL).
//!
//! Durability is SQLite's `synchronous` setting, chosen with [`Synchronous`]: with `Normal`
//! (the default) an append that returned survives the process being killed; with `Full` it
//! also survives losing power. Either way, many concurrent appends share one commit.

mod schema;
mod vfs;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::Recorded;
use crate::snapshot::Snapshot;
use crate::store::{Append, Appended, Direction, EventStore, ExpectedVersion, ReadStream, StreamState};
use writer::Job;

/// How much a commit survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// `synchronous=NORMAL`: survives the process being killed, not a power loss (the last
    /// commits before it may be lost, never half of one).
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on disk before the append returns.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Idle read connections kept for reuse.
const IDLE_READERS: usize = 8;
/// Writes queued beyond this wait (backpressure instead of unbounded memory).
const QUEUE: usize = 4096;

/// The event store in one SQLite file. Clones share it; the writer thread stops when the
/// last clone is dropped.
///
/// ```
/// use switchboard_eventstore::{EventStore, ExpectedVersion, NewEvent, SqliteStore};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> switchboard_eventstore::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("events.db"))?;
/// let appended = store
///     .append("user-1", ExpectedVersion::NoStream, vec![NewEvent::raw("USER_CREATED", 1, "{}")])
///     .await?;
/// assert_eq!((appended.revision, appended.position), (0, 1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: SyncSender<Job>,
    readers: Mutex<Vec<Connection>>,
    head: Arc<watch::Sender<u64>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `path`, `synchronous=NORMAL`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, Synchronous::Normal)
    }

    /// Opens the store with the durability asked for.
    pub fn open_with(path: impl AsRef<Path>, synchronous: Synchronous) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = open_writer(&path)?;
        schema::configure(&conn, synchronous)?;
        conn.execute_batch(schema::TABLES)?;
        let head = Arc::new(watch::channel(writer::read_head(&conn)?).0);
        let checkpointer = Connection::open(&path)?;
        schema::configure(&checkpointer, synchronous)?;
        let (jobs, queue) = sync_channel(QUEUE);
        let (checkpoint, requests) = sync_channel(1);
        let writer_head = head.clone();
        let thread = |name: &str| std::thread::Builder::new().name(name.into());
        let cannot = |e: std::io::Error| Error::Invalid(format!("cannot start the store's threads: {e}"));
        thread("sqlite-checkpoint")
            .spawn(move || writer::checkpoint(checkpointer, requests))
            .map_err(cannot)?;
        thread("sqlite-writer")
            .spawn(move || writer::run(conn, queue, writer_head, checkpoint))
            .map_err(cannot)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                jobs,
                readers: Mutex::new(Vec::new()),
                head,
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let jobs = self.inner.jobs.clone();
        let job = job(tx);
        // A full queue blocks the sender: off the async threads.
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(job)) => tokio::task::spawn_blocking(move || jobs.send(job))
                .await
                .map_err(|_| Error::Closed)?
                .map_err(|_| Error::Closed)?,
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(Error::Closed),
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Runs `f` on a read connection, off the async threads.
    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match conn {
                Some(conn) => conn,
                None => {
                    let conn = Connection::open_with_flags(
                        &inner.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
                    )?;
                    conn.busy_timeout(std::time::Duration::from_secs(10))?;
                    conn.set_prepared_statement_cache_capacity(32);
                    schema::plans_kept(&conn)?;
                    conn
                }
            };
            let result = f(&conn);
            let mut idle = inner.readers.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|_| Error::Closed)?
    }
}

/// Opens `path` for the one connection of a process that writes it: its commits reach the WAL
/// in one write each, not two calls a page. The store's writer and the saga log's open with it.
#[doc(hidden)]
pub fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    vfs::register()?;
    Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs::NAME)
}

fn recorded(row: &rusqlite::Row<'_>) -> rusqlite::Result<Recorded> {
    let id: [u8; 16] = row.get(3)?;
    Ok(Recorded {
        position: row.get::<_, i64>(0)? as u64,
        stream: row.get(1)?,
        revision: row.get::<_, i64>(2)? as u64,
        id: Uuid::from_bytes(id),
        name: row.get(4)?,
        version: row.get(5)?,
        data: Bytes::copy_from_slice(row.get_ref(6)?.as_bytes()?),
        metadata: Bytes::copy_from_slice(row.get_ref(7)?.as_bytes()?),
        recorded_at: row.get(8)?,
    })
}

const COLUMNS: &str = "position, stream, revision, id, name, version, data, metadata, recorded_at";

fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

impl EventStore for SqliteStore {
    async fn append_multi(&self, appends: Vec<Append>) -> Result<Vec<Appended>> {
        appends.iter().try_for_each(Append::validate)?;
        self.write(|tx| Job::Append(appends, tx)).await
    }

    async fn read_stream(&self, stream: &str, read: ReadStream) -> Result<Vec<Recorded>> {
        let stream = stream.to_owned();
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            if writer::stream_state(&tx, &stream)? == StreamState::Deleted {
                return Err(Error::StreamDeleted(stream));
            }
            let sql = match read.direction {
                Direction::Forwards => {
                    format!("SELECT {COLUMNS} FROM es_events WHERE stream = ?1 AND revision >= ?2 ORDER BY revision LIMIT ?3")
                }
                Direction::Backwards => format!(
                    "SELECT {COLUMNS} FROM es_events WHERE stream = ?1 AND revision <= ?2 ORDER BY revision DESC LIMIT ?3"
                ),
            };
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![stream, clamp(read.from), clamp(read.limit as u64)], recorded)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Recorded>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM es_events WHERE position > ?1 ORDER BY position LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![clamp(after), clamp(limit as u64)], recorded)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn stream_state(&self, stream: &str) -> Result<StreamState> {
        let stream = stream.to_owned();
        self.read(move |conn| Ok(writer::stream_state(conn, &stream)?)).await
    }

    async fn truncate_before(&self, stream: &str, revision: u64) -> Result<()> {
        let stream = stream.to_owned();
        self.write(|tx| Job::Truncate(stream, revision, tx)).await
    }

    async fn tombstone(&self, stream: &str, expected: ExpectedVersion) -> Result<()> {
        let stream = stream.to_owned();
        self.write(|tx| Job::Tombstone(stream, expected, tx)).await
    }

    async fn head(&self) -> Result<u64> {
        self.read(|conn| Ok(writer::read_head(conn)?)).await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        let name = name.to_owned();
        self.read(move |conn| {
            let position = conn
                .prepare_cached("SELECT position FROM es_checkpoints WHERE name = ?1")?
                .query_row([name], |r| r.get::<_, i64>(0))
                .optional()?;
            position.map(crate::store::stored_position).transpose()
        })
        .await
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        crate::event::check_name("checkpoint name", name)?;
        let name = name.to_owned();
        self.write(|tx| Job::Checkpoint(name, position, tx)).await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let stream = stream.to_owned();
        self.read(move |conn| {
            let row = conn
                .prepare_cached("SELECT revision, schema, data FROM es_snapshots WHERE stream = ?1")?
                .query_row([&stream], |r| {
                    let data = Bytes::copy_from_slice(r.get_ref(2)?.as_bytes()?);
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, data))
                })
                .optional()?;
            row.map(|(revision, schema, data)| {
                Ok(Snapshot {
                    revision: crate::store::stored_position(revision)?,
                    stream,
                    schema,
                    data,
                })
            })
            .transpose()
        })
        .await
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.write(|tx| Job::Snapshot(snapshot, tx)).await
    }
}
