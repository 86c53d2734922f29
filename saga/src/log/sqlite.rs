//! The saga log in one SQLite file: one writer thread commits every write waiting in its queue
//! together (group commit), so a thousand sagas in flight cost a handful of commits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use switchboard_eventstore::Synchronous;
use tokio::sync::oneshot;

use super::{Entry, Filter, Record, SagaLog, Status, Summary, Transition, Write, now_ms, validate};
use crate::error::{Error, Result};

/// Writes queued beyond this wait (backpressure instead of unbounded memory).
const QUEUE: usize = 8192;
/// Writes committed together at most.
const MAX_GROUP: usize = 1024;
/// Commits between requests to the checkpointer thread.
const CHECKPOINT_EVERY: u32 = 8;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS sb_sagas (
    id TEXT PRIMARY KEY,
    saga TEXT NOT NULL,
    status TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    wake_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sb_sagas_status ON sb_sagas (status, created_at);
CREATE TABLE IF NOT EXISTS sb_saga_log (
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS sb_saga_log_entry ON sb_saga_log (id, seq);
";

/// Sagas in one SQLite file (WAL). Clones share it; the writer thread stops with the last.
///
/// What survives: with [`Synchronous::Normal`] (the default) every write acknowledged before the
/// process was killed; with [`Synchronous::Full`] also a power loss. Only one process runs
/// sagas from a file at a time (the first [`claim`](SagaLog::claim) locks it; the lock goes
/// with the process, SIGKILL included); others may list, show and write operator commands.
///
/// ```
/// use switchboard_saga::log::{SagaLog, SqliteLog, Filter};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> switchboard_saga::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let log = SqliteLog::open(dir.path().join("sagas.db"))?;
/// assert!(log.list(Filter::default()).await?.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: SyncSender<Job>,
    reader: Mutex<Connection>,
    /// Held by the process that runs this file's sagas.
    lock: OnceLock<std::fs::File>,
}

impl std::fmt::Debug for SqliteLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLog").field("path", &self.inner.path).finish()
    }
}

struct Job {
    write: Write,
    reply: oneshot::Sender<Result<()>>,
}

impl SqliteLog {
    /// Opens (creating if needed) the log in `path`, `synchronous=NORMAL`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, Synchronous::Normal)
    }

    /// Opens the log with the durability asked for.
    pub fn open_with(path: impl AsRef<Path>, synchronous: Synchronous) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = configure(switchboard_eventstore::sqlite::open_writer(&path)?, synchronous)?;
        conn.execute_batch(TABLES)?;
        // The writer's commits would copy the WAL into the database now and then, stalling
        // every write behind them: a thread of its own does it (a big automatic threshold
        // stays as a safety net).
        conn.execute_batch("PRAGMA wal_autocheckpoint=16384; PRAGMA cache_size=-65536;")?;
        let reader = configure(Connection::open(&path)?, synchronous)?;
        let checkpointer = configure(Connection::open(&path)?, synchronous)?;
        let (jobs, queue) = sync_channel(QUEUE);
        let (checkpoint, requests) = sync_channel(1);
        let thread = |name: &str| std::thread::Builder::new().name(name.into());
        let cannot = |source| Error::Io {
            what: "cannot start the saga log's threads".into(),
            source,
        };
        thread("saga-log-checkpoint")
            .spawn(move || run_checkpointer(checkpointer, requests))
            .map_err(cannot)?;
        thread("saga-log-writer")
            .spawn(move || run_writer(conn, queue, checkpoint))
            .map_err(cannot)?;
        Ok(SqliteLog {
            inner: Arc::new(Inner {
                path,
                jobs,
                reader: Mutex::new(reader),
                lock: OnceLock::new(),
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.reader.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(|_| Error::Closed)?
    }

    /// Locks the file to this process: only one orchestrator runs its sagas.
    fn lock_for_running(&self) -> Result<()> {
        if self.inner.lock.get().is_some() {
            return Ok(());
        }
        let mut name = self.inner.path.clone().into_os_string();
        name.push(".lock");
        let io = |what: &str| {
            let what = format!("{what} {}", Path::new(&name).display());
            move |source| Error::Io { what, source }
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&name)
            .map_err(io("cannot open"))?;
        match file.try_lock() {
            Ok(()) => {
                let _ = self.inner.lock.set(file);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(self.inner.path.display().to_string())),
            Err(std::fs::TryLockError::Error(e)) => Err(io("cannot lock")(e)),
        }
    }
}

fn configure(conn: Connection, synchronous: Synchronous) -> Result<Connection> {
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        _ => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=10000;"
    ))?;
    Ok(conn)
}

fn run_writer(mut conn: Connection, jobs: Receiver<Job>, checkpoint: SyncSender<()>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut commits = 0u32;
    while let Ok(first) = jobs.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let (results, commit) = write_group(&mut conn, &group);
        commits = commits.wrapping_add(1);
        if commits.is_multiple_of(CHECKPOINT_EVERY) {
            let _ = checkpoint.try_send(());
        }
        for (job, result) in group.drain(..).zip(results) {
            let answer = match (&commit, result) {
                (Ok(()), result) => result,
                (Err(e), _) => Err(Error::Io {
                    what: "the saga log's commit failed".into(),
                    source: std::io::Error::other(e.to_string()),
                }),
            };
            let _ = job.reply.send(answer);
        }
    }
}

/// Copies what it can of the WAL into the database when asked, without waiting for anyone.
fn run_checkpointer(conn: Connection, requests: Receiver<()>) {
    while requests.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "saga log checkpoint failed");
        }
    }
}

/// Writes every job in one transaction. A write refused by its guard (conflict, existing id)
/// has written nothing, so the group needs no savepoints; only when SQLite itself fails in
/// the middle of a write is the group run again with one savepoint per write.
fn write_group(conn: &mut Connection, group: &[Job]) -> (Vec<Result<()>>, rusqlite::Result<()>) {
    let at = now_ms() as i64;
    let encoded: Vec<Result<Vec<String>>> = group.iter().map(|job| encode(&job.write)).collect();
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut results = Vec::with_capacity(group.len());
    for (job, data) in group.iter().zip(&encoded) {
        let result = match data {
            Ok(data) => write_one(&tx, &job.write, data, at),
            Err(e) => Err(Error::Invalid(e.to_string())),
        };
        if matches!(result, Err(Error::Sqlite(_))) {
            drop(tx);
            return write_group_carefully(conn, group, &encoded, at);
        }
        results.push(result);
    }
    (results, tx.commit())
}

fn write_group_carefully(
    conn: &mut Connection,
    group: &[Job],
    encoded: &[Result<Vec<String>>],
    at: i64,
) -> (Vec<Result<()>>, rusqlite::Result<()>) {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut results = Vec::with_capacity(group.len());
    for (job, data) in group.iter().zip(encoded) {
        let result = match (data, tx.savepoint()) {
            (Err(e), _) => Err(Error::Invalid(e.to_string())),
            (Ok(_), Err(e)) => Err(e.into()),
            (Ok(data), Ok(mut sp)) => match write_one(&sp, &job.write, data, at) {
                Ok(()) => sp.commit().map_err(Error::from),
                Err(e) => {
                    let _ = sp.rollback();
                    Err(e)
                }
            },
        };
        results.push(result);
    }
    let commit = tx.commit();
    (results, commit)
}

/// The write's transitions as JSON, before anything is written (`write` validated it).
fn encode(w: &Write) -> Result<Vec<String>> {
    w.transitions
        .iter()
        .map(|t| {
            serde_json::to_string(t).map_err(|source| Error::Json {
                id: w.id.clone(),
                what: "a transition does not encode".into(),
                source,
            })
        })
        .collect()
}

/// One write; its first statement is its guard, so a refused write has changed nothing.
fn write_one(conn: &Connection, w: &Write, data: &[String], at: i64) -> Result<()> {
    let seq = w.after + w.transitions.len() as u64;
    let wake = w.wake_at.map(|t| t as i64);
    if w.after == 0 {
        let name = w.saga_name();
        let inserted = conn
            .prepare_cached(
                "INSERT INTO sb_sagas (id, saga, status, seq, created_at, updated_at, wake_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![w.id, name, w.status.as_str(), seq as i64, at, wake])?;
        if inserted == 0 {
            return Err(Error::Exists(w.id.clone()));
        }
    } else {
        // The status is set only when it changes: setting it rewrites its index entry.
        let status: Option<String> = conn
            .prepare_cached(
                "UPDATE sb_sagas SET seq = ?2, updated_at = ?3, wake_at = ?4
                 WHERE id = ?1 AND seq = ?5 RETURNING status",
            )?
            .query_row(params![w.id, seq as i64, at, wake, w.after as i64], |row| row.get(0))
            .optional()?;
        match status {
            None => return Err(Error::Conflict(w.id.clone())),
            Some(old) if old != w.status.as_str() => {
                conn.prepare_cached("UPDATE sb_sagas SET status = ?2 WHERE id = ?1")?
                    .execute(params![w.id, w.status.as_str()])?;
            }
            Some(_) => {}
        }
    }
    let mut insert =
        conn.prepare_cached("INSERT INTO sb_saga_log (id, seq, at, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    for (i, (t, data)) in w.transitions.iter().zip(data).enumerate() {
        insert.execute(params![w.id, (w.after + 1 + i as u64) as i64, at, t.kind(), data])?;
    }
    Ok(())
}

const SUMMARY: &str = "SELECT id, saga, status, seq, created_at, updated_at, wake_at FROM sb_sagas";

fn summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<Summary> {
    let status: String = row.get(2)?;
    Ok(Summary {
        id: row.get(0)?,
        saga: row.get(1)?,
        // An unknown status (newer code) is shown as stuck: nothing runs it.
        status: Status::parse(&status).unwrap_or(Status::Stuck),
        seq: row.get::<_, i64>(3)? as u64,
        created_at: row.get::<_, i64>(4)? as u64,
        updated_at: row.get::<_, i64>(5)? as u64,
        wake_at: row.get::<_, Option<i64>>(6)?.map(|t| t as u64),
    })
}

fn load_entries(conn: &Connection, id: &str) -> Result<Vec<Entry>> {
    let mut stmt = conn.prepare_cached("SELECT seq, at, data FROM sb_saga_log WHERE id = ?1 ORDER BY seq")?;
    let rows = stmt.query_map([id], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?))
    })?;
    let mut entries = Vec::new();
    for row in rows {
        let (seq, at, data) = row?;
        let transition: Transition = serde_json::from_str(&data).map_err(|source| Error::Json {
            id: id.to_owned(),
            what: format!("entry {seq} does not decode"),
            source,
        })?;
        entries.push(Entry {
            seq: seq as u64,
            at: at as u64,
            transition,
        });
    }
    Ok(entries)
}

fn load_record(conn: &Connection, id: &str) -> Result<Option<Record>> {
    let found = conn
        .prepare_cached(&format!("{SUMMARY} WHERE id = ?1"))?
        .query_row([id], summary)
        .optional()?;
    match found {
        None => Ok(None),
        Some(summary) => {
            let entries = load_entries(conn, id)?;
            Ok(Some(Record { summary, entries }))
        }
    }
}

impl SagaLog for SqliteLog {
    async fn write(&self, _owner: &str, write: Write) -> Result<()> {
        validate(&write)?;
        let (reply, answer) = oneshot::channel();
        let jobs = self.inner.jobs.clone();
        match jobs.try_send(Job { write, reply }) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(job)) => tokio::task::spawn_blocking(move || jobs.send(job))
                .await
                .map_err(|_| Error::Closed)?
                .map_err(|_| Error::Closed)?,
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(Error::Closed),
        }
        answer.await.map_err(|_| Error::Closed)?
    }

    async fn load(&self, id: &str) -> Result<Option<Record>> {
        let id = id.to_owned();
        self.read(move |conn| load_record(conn, &id)).await
    }

    async fn list(&self, filter: Filter) -> Result<Vec<Summary>> {
        self.read(move |conn| {
            let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
            let statuses = serde_json::to_string(&statuses).unwrap_or_default();
            let mut stmt = conn.prepare_cached(&format!(
                "{SUMMARY} WHERE (?1 = '[]' OR status IN (SELECT value FROM json_each(?1)))
                 AND (?2 IS NULL OR saga = ?2) ORDER BY created_at DESC, id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![statuses, filter.saga, filter.limit() as i64], summary)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn claim(&self, _owner: &str, limit: usize, running: &HashSet<String>) -> Result<Vec<Record>> {
        self.lock_for_running()?;
        let running = running.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{SUMMARY} WHERE status IN ('running', 'compensating') ORDER BY created_at, id"
            ))?;
            let ids: Vec<String> = stmt
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut found = Vec::new();
            for id in ids.into_iter().filter(|id| !running.contains(id)).take(limit) {
                found.extend(load_record(conn, &id)?);
            }
            Ok(found)
        })
        .await
    }
}
