//! The one writer thread: takes every write waiting in its queue, runs each in a savepoint of
//! one `BEGIN IMMEDIATE` transaction, commits once (group commit), then answers each.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};
use crate::memory::{already_appended, now_millis};
use crate::snapshot::Snapshot;
use crate::store::{Append, Appended, ExpectedVersion, StreamState, advance_head};

/// How many queued writes one transaction takes at most.
const MAX_GROUP: usize = 1024;

pub(super) enum Job {
    Append(Vec<Append>, oneshot::Sender<Result<Vec<Appended>>>),
    Truncate(String, u64, oneshot::Sender<Result<()>>),
    Tombstone(String, ExpectedVersion, oneshot::Sender<Result<()>>),
    Checkpoint(String, u64, oneshot::Sender<Result<()>>),
    Snapshot(Snapshot, oneshot::Sender<Result<()>>),
}

/// A finished job's answer, held until the commit is known.
enum Answer {
    Append(oneshot::Sender<Result<Vec<Appended>>>, Result<Vec<Appended>>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
}

impl Answer {
    fn send(self, commit: &Result<(), String>) {
        match (self, commit) {
            (Answer::Append(tx, result), Ok(())) => drop(tx.send(result)),
            (Answer::Unit(tx, result), Ok(())) => drop(tx.send(result)),
            (Answer::Append(tx, _), Err(e)) => drop(tx.send(Err(commit_failed(e)))),
            (Answer::Unit(tx, _), Err(e)) => drop(tx.send(Err(commit_failed(e)))),
        }
    }
}

fn commit_failed(e: &str) -> Error {
    Error::NotCommitted(e.to_owned())
}

/// Commits between two checkpoint requests.
const CHECKPOINT_EVERY: u32 = 128;

/// The writer: `checkpoint` asks the checkpointer thread to copy the WAL into the database,
/// which the writer's own commits would otherwise do now and then, stalling every append
/// behind them for milliseconds.
pub(super) fn run(
    mut conn: Connection,
    jobs: Receiver<Job>,
    head: Arc<watch::Sender<u64>>,
    checkpoint: SyncSender<()>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut commits = 0u32;
    let mut known = Known::default();
    while let Some(first) = next(&jobs) {
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let (answers, commit, new_head) = run_group(&mut conn, &mut known, group.drain(..));
        if let Some(h) = new_head.filter(|_| commit.is_ok()) {
            advance_head(&head, h);
            commits += 1;
            if commits.is_multiple_of(CHECKPOINT_EVERY) {
                let _ = checkpoint.try_send(());
            }
        }
        for answer in answers {
            answer.send(&commit);
        }
    }
}

/// How long the writer keeps looking for the next write before it sleeps. The callers answered
/// by the last commit are usually back within this; waking a sleeping thread costs tens of µs,
/// and all that time the writer would be idle.
const LINGER: Duration = Duration::from_micros(50);

/// The next write, `None` once every sender is gone.
fn next(jobs: &Receiver<Job>) -> Option<Job> {
    let until = Instant::now() + LINGER;
    loop {
        match jobs.try_recv() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if Instant::now() >= until => return jobs.recv().ok(),
            // Yields rather than spins: the callers' threads may need this core to come back.
            Err(TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
}

/// The checkpointer: on request, copies what it can of the WAL into the database without
/// waiting for readers or the writer (`PASSIVE`).
pub(super) fn checkpoint(conn: Connection, requests: Receiver<()>) {
    while requests.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint failed");
        }
    }
}

/// Stream states and the head the writer knows, valid while no other connection has written
/// the file (`PRAGMA data_version` tells): an append needs no query to check its expected
/// version, a group none to find its first position.
#[derive(Default)]
struct Known {
    data_version: i64,
    streams: std::collections::HashMap<String, StreamState>,
    /// The head after this connection's last commit.
    head: Option<u64>,
}

/// Streams remembered at most.
const KNOWN_STREAMS: usize = 65_536;

impl Known {
    fn state(&mut self, tx: &Transaction<'_>, stream: &str) -> rusqlite::Result<StreamState> {
        if let Some(state) = self.streams.get(stream) {
            return Ok(*state);
        }
        stream_state(tx, stream)
    }

    fn set(&mut self, stream: &str, state: StreamState) {
        if self.streams.len() >= KNOWN_STREAMS {
            self.streams.clear();
        }
        self.streams.insert(stream.to_owned(), state);
    }

    /// At the start of a transaction: forgets everything if another connection committed.
    fn check(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        let version: i64 = tx.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))?;
        if version != self.data_version {
            self.streams.clear();
            self.head = None;
            self.data_version = version;
        }
        Ok(())
    }

    fn head(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<u64> {
        self.check(tx)?;
        match self.head {
            Some(head) => Ok(head),
            None => read_head(tx),
        }
    }
}

fn run_group(
    conn: &mut Connection,
    known: &mut Known,
    group: impl Iterator<Item = Job>,
) -> (Vec<Answer>, Result<(), String>, Option<u64>) {
    let mut answers = Vec::new();
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = e.to_string();
            answers.extend(group.map(|job| refuse(job, &e)));
            return (answers, Err(e), None);
        }
    };
    let mut head = match known.head(&tx) {
        Ok(h) => h,
        Err(e) => {
            let e = e.to_string();
            answers.extend(group.map(|job| refuse(job, &e)));
            return (answers, Err(e), None);
        }
    };
    for job in group {
        answers.push(in_savepoint(&tx, &mut head, known, job));
    }
    let commit = tx.commit().map_err(|e| e.to_string());
    if commit.is_ok() {
        known.head = Some(head);
    } else {
        // What this group wrote is gone: so is what it taught.
        known.streams.clear();
        known.head = None;
    }
    (answers, commit, Some(head))
}

fn refuse(job: Job, e: &str) -> Answer {
    match job {
        Job::Append(_, tx) => Answer::Append(tx, Err(commit_failed(e))),
        Job::Truncate(_, _, tx) | Job::Tombstone(_, _, tx) | Job::Checkpoint(_, _, tx) | Job::Snapshot(_, tx) => {
            Answer::Unit(tx, Err(commit_failed(e)))
        }
    }
}

/// Runs `f` in a savepoint, so that its failure undoes only its own writes.
fn savepoint<T, E: From<rusqlite::Error>>(
    tx: &Transaction<'_>,
    head: &mut u64,
    f: impl FnOnce(&mut u64) -> Result<T, E>,
) -> Result<T, E> {
    let before = *head;
    tx.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f(head) {
        Ok(value) => {
            tx.prepare_cached("RELEASE job")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            tx.prepare_cached("ROLLBACK TO job")?.execute([])?;
            tx.prepare_cached("RELEASE job")?.execute([])?;
            *head = before;
            Err(e)
        }
    }
}

fn in_savepoint(tx: &Transaction<'_>, head: &mut u64, known: &mut Known, job: Job) -> Answer {
    if !matches!(&job, Job::Append(appends, _) if appends.len() == 1 && appends[0].events.len() <= MAX_ROWS) {
        // Only the fast path keeps `known` up to date.
        known.streams.clear();
    }
    match job {
        Job::Append(appends, reply) => {
            // Most appends are new: try without looking their ids up first, and take the
            // careful path (idempotent retries, duplicate ids) only when that fails.
            let fast = match &appends[..] {
                // One stream, a few events: one INSERT statement, atomic by itself, so no
                // savepoint is needed.
                [one] if one.events.len() <= MAX_ROWS => append_in_one_statement(tx, head, known, one).map(|a| vec![a]),
                _ => savepoint(tx, head, |head| append(tx, head, &appends, false)),
            };
            let result = match fast {
                Ok(done) => Ok(done),
                Err(Fail::Store(e)) => Err(e),
                Err(Fail::Slow) => {
                    known.streams.clear();
                    savepoint(tx, head, |head| append(tx, head, &appends, true)).map_err(Fail::into_error)
                }
            };
            Answer::Append(reply, result)
        }
        Job::Truncate(stream, revision, reply) => Answer::Unit(
            reply,
            savepoint(tx, head, |head| truncate(tx, *head, &stream, revision)),
        ),
        Job::Tombstone(stream, expected, reply) => Answer::Unit(
            reply,
            savepoint(tx, head, |head| tombstone(tx, *head, &stream, expected)),
        ),
        Job::Checkpoint(name, position, reply) => Answer::Unit(
            reply,
            savepoint(tx, head, |_| {
                tx.prepare_cached(
                    "INSERT INTO es_checkpoints (name, position) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                )?
                .execute(params![name, position as i64])?;
                Ok(())
            }),
        ),
        Job::Snapshot(snapshot, reply) => Answer::Unit(
            reply,
            savepoint(tx, head, |_| {
                tx.prepare_cached(
                    "INSERT INTO es_snapshots (stream, revision, schema, data) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (stream) DO UPDATE SET revision = excluded.revision, schema = excluded.schema,
                     data = excluded.data WHERE excluded.revision >= es_snapshots.revision",
                )?
                .execute(params![
                    snapshot.stream,
                    snapshot.revision as i64,
                    snapshot.schema,
                    text(&snapshot.data)?
                ])?;
                Ok(())
            }),
        ),
    }
}

/// The last position given out: the last event's, or, when the newest events were deleted,
/// what `es_head` kept of it (positions are never given out twice).
pub(super) fn read_head(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT max(position, coalesce((SELECT max(position) FROM es_events), 0)) FROM es_head WHERE id = 0",
    )?
    .query_row([], |row| row.get::<_, i64>(0))
    .map(|h| h as u64)
}

/// Before deleting events: keeps the head, in case the newest event is among them.
fn keep_head(tx: &Transaction<'_>, head: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE es_head SET position = max(position, ?1) WHERE id = 0")?
        .execute([head as i64])?;
    Ok(())
}

pub(super) const STREAM_STATE: &str = "SELECT coalesce((SELECT deleted FROM es_streams WHERE stream = ?1), 0),
        max(coalesce((SELECT revision FROM es_streams WHERE stream = ?1), -1),
            coalesce((SELECT max(revision) FROM es_events WHERE stream = ?1), -1))";

/// A stream's state: its last event's revision, unless a deletion recorded it (with the
/// deleted flag, or the revision its events reached before a truncation) in `es_streams`.
/// Appends write no `es_streams` row: one page less per commit.
pub(super) fn stream_state(conn: &Connection, stream: &str) -> rusqlite::Result<StreamState> {
    let (deleted, revision) = conn
        .prepare_cached(STREAM_STATE)?
        .query_row([stream], |row| Ok((row.get::<_, bool>(0)?, row.get::<_, i64>(1)?)))?;
    Ok(match (deleted, revision) {
        (true, _) => StreamState::Deleted,
        (false, r) if r < 0 => StreamState::NoStream,
        (false, r) => StreamState::At(r as u64),
    })
}

fn stored(tx: &Transaction<'_>, id: &uuid::Uuid) -> rusqlite::Result<Option<(String, u64, u64)>> {
    tx.prepare_cached("SELECT stream, revision, position FROM es_events WHERE id = ?1")?
        .query_row([id.as_bytes()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)? as u64,
                row.get::<_, i64>(2)? as u64,
            ))
        })
        .optional()
}

fn text(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|_| Error::Invalid("JSON that is not UTF-8".into()))
}

/// Why an append failed: an error, or the fast path asking for the careful one.
enum Fail {
    Slow,
    Store(Error),
}

impl Fail {
    fn into_error(self) -> Error {
        match self {
            Fail::Store(e) => e,
            Fail::Slow => Error::Invalid("the append could not be sorted out".into()),
        }
    }
}

impl<E: Into<Error>> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail::Store(e.into())
    }
}

/// Appends; with `check_ids` false, any sign that an id may be stored already (a unique
/// violation, an unexpected stream state) fails with [`Fail::Slow`] instead of being sorted out.
fn append(tx: &Transaction<'_>, head: &mut u64, appends: &[Append], check_ids: bool) -> Result<Vec<Appended>, Fail> {
    let now = now_millis();
    let mut out = Vec::with_capacity(appends.len());
    for (i, append) in appends.iter().enumerate() {
        if appends[..i].iter().any(|a| a.stream == append.stream) {
            return Err(Error::Invalid(format!("stream `{}` appears twice in one append", append.stream)).into());
        }
        if check_ids && let Some(done) = already_appended(append, |id| Ok(stored(tx, id)?))? {
            out.push(done);
            continue;
        }
        let actual = stream_state(tx, &append.stream)?;
        if !check_ids && !actual.satisfies(append.expected) {
            return Err(Fail::Slow);
        }
        actual.check(&append.stream, append.expected)?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO es_events (position, stream, revision, id, name, version, data, metadata, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut revision = actual.next_revision();
        for event in &append.events {
            *head += 1;
            let inserted = insert.execute(params![
                *head as i64,
                append.stream,
                revision as i64,
                event.id.as_bytes(),
                event.name,
                event.version,
                text(&event.data)?,
                text(&event.metadata)?,
                now,
            ]);
            if let Err(e) = inserted {
                if !check_ids {
                    return Err(Fail::Slow);
                }
                return Err(match stored(tx, &event.id)? {
                    Some((stream, revision, _)) => Error::DuplicateEvent {
                        id: event.id,
                        stream,
                        revision,
                    }
                    .into(),
                    None => e.into(),
                });
            }
            revision += 1;
        }
        let last = revision - 1;
        out.push(Appended {
            revision: last,
            position: *head,
        });
    }
    Ok(out)
}

/// Rows one INSERT statement takes in the fast path.
const MAX_ROWS: usize = 16;

/// The fast path's INSERT of 1 to [`MAX_ROWS`] rows, made once rather than per append.
static INSERT_ROWS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    (1..=MAX_ROWS)
        .map(|n| {
            let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; n].join(", ");
            format!(
                "INSERT INTO es_events (position, stream, revision, id, name, version, data, metadata, recorded_at) VALUES {rows}"
            )
        })
        .collect()
});

/// The fast path for an append to one stream: its expected state checked, its events written
/// by one statement (which SQLite undoes whole if it fails); anything unusual is
/// [`Fail::Slow`], with nothing written and `head` unchanged.
fn append_in_one_statement(
    tx: &Transaction<'_>,
    head: &mut u64,
    known: &mut Known,
    append: &Append,
) -> Result<Appended, Fail> {
    let actual = known.state(tx, &append.stream)?;
    if !actual.satisfies(append.expected) {
        return Err(Fail::Slow);
    }
    let n = append.events.len();
    let Some(sql) = n.checked_sub(1).and_then(|i| INSERT_ROWS.get(i)) else {
        return Err(Fail::Slow);
    };
    let mut insert = tx.prepare_cached(sql)?;
    let (now, first) = (now_millis(), actual.next_revision());
    for (i, event) in append.events.iter().enumerate() {
        let at = i * 9;
        insert.raw_bind_parameter(at + 1, (*head + 1 + i as u64) as i64)?;
        insert.raw_bind_parameter(at + 2, append.stream.as_str())?;
        insert.raw_bind_parameter(at + 3, (first + i as u64) as i64)?;
        insert.raw_bind_parameter(at + 4, event.id.as_bytes())?;
        insert.raw_bind_parameter(at + 5, event.name.as_str())?;
        insert.raw_bind_parameter(at + 6, event.version)?;
        insert.raw_bind_parameter(at + 7, text(&event.data)?)?;
        insert.raw_bind_parameter(at + 8, text(&event.metadata)?)?;
        insert.raw_bind_parameter(at + 9, now)?;
    }
    if insert.raw_execute().is_err() {
        // A stored id (a retry, or a duplicate): sorted out by the careful path.
        return Err(Fail::Slow);
    }
    *head += n as u64;
    let revision = first + n as u64 - 1;
    known.set(&append.stream, StreamState::At(revision));
    Ok(Appended {
        revision,
        position: *head,
    })
}

fn truncate(tx: &Transaction<'_>, head: u64, stream: &str, revision: u64) -> Result<()> {
    let StreamState::At(last) = stream_state(tx, stream)? else {
        return match stream_state(tx, stream)? {
            StreamState::Deleted => Err(Error::StreamDeleted(stream.into())),
            _ => Ok(()),
        };
    };
    keep_head(tx, head)?;
    // The stream's revision outlives its deleted events.
    tx.prepare_cached(
        "INSERT INTO es_streams (stream, revision) VALUES (?1, ?2)
         ON CONFLICT (stream) DO UPDATE SET revision = max(revision, excluded.revision)",
    )?
    .execute(params![stream, last as i64])?;
    tx.prepare_cached("DELETE FROM es_events WHERE stream = ?1 AND revision < ?2")?
        .execute(params![stream, revision.min(i64::MAX as u64) as i64])?;
    Ok(())
}

fn tombstone(tx: &Transaction<'_>, head: u64, stream: &str, expected: ExpectedVersion) -> Result<()> {
    let actual = stream_state(tx, stream)?;
    actual.check(stream, expected)?;
    keep_head(tx, head)?;
    tx.prepare_cached("DELETE FROM es_events WHERE stream = ?1")?
        .execute([stream])?;
    tx.prepare_cached("DELETE FROM es_snapshots WHERE stream = ?1")?
        .execute([stream])?;
    tx.prepare_cached(
        "INSERT INTO es_streams (stream, revision, deleted) VALUES (?1, -1, 1)
         ON CONFLICT (stream) DO UPDATE SET deleted = 1",
    )?
    .execute([stream])?;
    Ok(())
}
