//! The appender: one task with one connection takes every append waiting in its queue and writes
//! them together (group commit).
//!
//! Positions come from the one row of `es_head`: an append moves it by its number of events in
//! its own transaction, so the row lock orders commits across processes and positions are
//! handed out in commit order, without gaps (a sequence would leave gaps and hand numbers out
//! before commit, so a reader could pass a position that commits later).
//!
//! A stream's revision is its last event's (or what a truncation kept in `es_streams`), so an
//! append writes only the head and its events. The fast path writes a whole group in one
//! statement outside an explicit transaction: it moves the head (taking its lock), checks each
//! append's expected version against the streams' state, and inserts all events, from arrays
//! (`UNNEST`). It reads with the snapshot of its start, which misses what committed while it
//! waited for the head's lock; that is safe because what others commit meanwhile is either
//! - an append: the revisions it took are still stored, so taking one of them again is a unique
//!   violation of `(stream, revision)` (which also undoes a check passed on the old state), or
//! - a truncation or tombstone: it moved the head's `deletions` (under the same lock), and the
//!   head is moved only if `deletions` is still what the snapshot read.
//!
//! It is atomic and commits on its own, so a group costs one round trip. Any failed
//! expectation, stale snapshot or stored id makes it fail as a whole (a revision or position
//! left NULL, or a unique violation); then the careful path runs the group again in one
//! transaction, each append in its own SAVEPOINT: it looks up stored ids and stream states, tells
//! retries, duplicates and wrong versions apart exactly, writes the rest with the same statement,
//! and commits once. Every caller is answered after the commit.
//!
//! The appender remembers the revisions its writes left (`Revisions`): an append to one of
//! those streams reads nothing of it and, for one event, runs a statement hardly bigger than a
//! bare INSERT (`WRITE_EVENT`).
//!
//! The store's own watch moves on every commit; other processes learn of them from the
//! notifier (`notify.rs`), which the appender tells its head.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::memory::{already_appended, now_millis};
use crate::store::{Append, Appended, ExpectedVersion, StreamState, advance_head};

/// How many queued appends one group takes at most.
const MAX_GROUP: usize = 256;
/// Event bytes past which a group takes no more appends (one append may be bigger).
const MAX_GROUP_BYTES: usize = 16 << 20;
/// Scheduler turns an appender waits at most for the callers of its last group to come back.
const COALESCE_YIELDS: usize = 4;
/// Optimistic attempts of a careful append before it takes the head's lock first.
const OPTIMISTIC_ATTEMPTS: u32 = 2;
/// Streams whose revisions an appender remembers at most (beyond, it forgets them all and starts
/// again).
const MAX_REVISIONS: usize = 1 << 16;

/// One `append_multi` call waiting for its answer.
pub(super) struct Job {
    pub(super) appends: Vec<Append>,
    pub(super) reply: oneshot::Sender<Result<Vec<Appended>>>,
}

/// The appender task's state.
pub(super) struct Appender {
    pub(super) options: PgConnectOptions,
    pub(super) conn: Option<PgConnection>,
    pub(super) jobs: mpsc::Receiver<Job>,
    pub(super) head: Arc<watch::Sender<u64>>,
    /// This appender's last commit, for the notifier.
    pub(super) own: watch::Sender<u64>,
    /// A job taken from the queue that touches a stream of the group before it: it goes first
    /// in the next group.
    pub(super) carry: Option<Job>,
    /// How many jobs the last group had: their callers are likely to be back soon.
    pub(super) last_group: usize,
    pub(super) revisions: Revisions,
}

/// The revisions this appender's writes left, good while no truncation or tombstone has
/// committed since: an append to one of these streams reads nothing of it. (Another process
/// appending to one meanwhile cannot go unnoticed: it took the next revision, so writing that
/// again is a unique violation, and the careful path sorts it out.)
#[derive(Default)]
pub(super) struct Revisions {
    /// The head's `deletions` when they were written; `None`: nothing is remembered.
    deletions: Option<i64>,
    streams: HashMap<String, u64>,
}

impl Revisions {
    /// The remembered revision of `append`'s stream, if its expectation holds for it (else the
    /// write reads the stream and the careful path tells why it failed).
    fn of(&self, append: &Append) -> Option<u64> {
        self.deletions?;
        let revision = *self.streams.get(&append.stream)?;
        StreamState::At(revision).satisfies(append.expected).then_some(revision)
    }

    /// After a write that found `deletions` in the head and left `written`.
    fn learn<'a>(&mut self, deletions: i64, written: impl Iterator<Item = (&'a str, u64)>) {
        if self.deletions != Some(deletions) || self.streams.len() >= MAX_REVISIONS {
            self.streams.clear();
        }
        self.deletions = Some(deletions);
        for (stream, revision) in written {
            match self.streams.get_mut(stream) {
                Some(known) => *known = revision,
                None => {
                    self.streams.insert(stream.to_owned(), revision);
                }
            }
        }
    }

    fn forget(&mut self) {
        self.deletions = None;
        self.streams.clear();
    }
}

impl Appender {
    /// Runs until every sender is gone (the store was dropped).
    pub(super) async fn run(mut self) {
        loop {
            let first = match self.carry.take() {
                Some(job) => job,
                None => match self.jobs.recv().await {
                    Some(job) => job,
                    None => break,
                },
            };
            // Callers answered by the last group are usually back within microseconds: a few
            // turns of the scheduler let them join this group instead of waiting for the next.
            for _ in 0..COALESCE_YIELDS {
                if self.last_group <= 1 || self.jobs.len() + 1 >= self.last_group {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let group = self.gather(first);
            self.last_group = group.len();
            self.run_group(group).await;
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    /// After a commit that moved the head to `head`.
    fn committed(&mut self, head: u64) {
        advance_head(&self.head, head);
        self.own.send_replace(head);
    }

    /// `first` and whatever else is queued, up to the limits; streams are unique in a group.
    fn gather(&mut self, first: Job) -> Vec<Job> {
        let mut streams: HashSet<String> = first.appends.iter().map(|a| a.stream.clone()).collect();
        let mut bytes = size(&first);
        let mut group = vec![first];
        while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            let Ok(job) = self.jobs.try_recv() else { break };
            if job.appends.iter().any(|a| streams.contains(&a.stream)) {
                self.carry = Some(job);
                break;
            }
            streams.extend(job.appends.iter().map(|a| a.stream.clone()));
            bytes += size(&job);
            group.push(job);
        }
        group
    }

    async fn connection(&mut self) -> std::result::Result<&mut PgConnection, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some(PgConnection::connect_with(&self.options).await?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    async fn run_group(&mut self, group: Vec<Job>) {
        let mut batch = Batch {
            deletions: self.revisions.deletions,
            ..Batch::default()
        };
        for job in &group {
            for append in &job.appends {
                let (kind, exact) = kind_of(append.expected);
                batch.push(append, kind, exact, self.revisions.of(append));
            }
        }
        let fast = match self.connection().await {
            Ok(conn) => batch.write(conn).await,
            Err(e) => Err(e),
        };
        let uncertain = match fast {
            Ok(written) => {
                self.committed(written.head);
                let streams = group.iter().flat_map(|job| &job.appends).map(|a| a.stream.as_str());
                let revisions = written.results.iter().map(|r| r.revision);
                self.revisions.learn(written.deletions, streams.zip(revisions));
                let mut results = written.results.into_iter();
                for job in group {
                    let answer = results.by_ref().take(job.appends.len()).collect();
                    let _ = job.reply.send(Ok(answer));
                }
                return;
            }
            // Something to sort out: a wrong expectation, a retry, a duplicate id.
            Err(e) if !broken(&e) => false,
            // The connection broke, perhaps after the commit: on a new connection the careful
            // path answers from what is stored (stored ids are told apart from new ones).
            Err(e) => {
                tracing::debug!(error = %e, "the event store's appender lost its connection");
                self.conn = None;
                true
            }
        };
        self.careful(group, uncertain).await;
    }

    /// The group again, each append in its own savepoint of one transaction. `uncertain`: the
    /// fast path may have stored it (its connection broke), so a failure here leaves that open.
    async fn careful(&mut self, group: Vec<Job>, uncertain: bool) {
        // What failed may be a remembered revision gone stale.
        self.revisions.forget();
        let conn = match self.connection().await {
            Ok(conn) => conn,
            Err(e) => return fail_all(group.into_iter().map(|j| j.reply), &e, uncertain),
        };
        if let Err(e) = execute(conn, "BEGIN").await {
            self.conn = None;
            return fail_all(group.into_iter().map(|j| j.reply), &e, uncertain);
        }
        let mut locked = false;
        let mut head = None;
        let mut answers = Vec::with_capacity(group.len());
        let mut jobs = group.into_iter();
        for job in jobs.by_ref() {
            match careful_job(conn, &job.appends, &mut locked).await {
                Ok((results, moved)) => {
                    head = head.max(moved);
                    answers.push((job.reply, Ok(results)));
                }
                Err(Failure::Store(e)) => answers.push((job.reply, Err(e))),
                Err(Failure::Conn(e)) => {
                    // The transaction is lost with the connection: nothing of it committed.
                    self.conn = None;
                    let replies = answers.into_iter().map(|(reply, _)| reply).chain([job.reply]);
                    return fail_all(replies.chain(jobs.map(|j| j.reply)), &e, uncertain);
                }
            }
        }
        if let Err(e) = execute(conn, "COMMIT").await {
            self.conn = None;
            return fail_all(answers.into_iter().map(|(reply, _)| reply), &e, broken(&e));
        }
        if let Some(head) = head {
            self.committed(head);
        }
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
    }
}

/// The bytes a job's events carry.
fn size(job: &Job) -> usize {
    job.appends
        .iter()
        .flat_map(|a| &a.events)
        .map(|e| e.data.len() + e.metadata.len())
        .sum()
}

/// Answers every reply with (a description of) `e`, which cannot be cloned: nothing was
/// written ([`Error::NotCommitted`]) unless `uncertain`, when the connection broke while a commit
/// may have been under way, so the appends may be stored all the same (retrying them is safe:
/// their ids are stored with them).
fn fail_all(replies: impl Iterator<Item = oneshot::Sender<Result<Vec<Appended>>>>, e: &sqlx::Error, uncertain: bool) {
    tracing::warn!(error = %e, uncertain, "an event store transaction failed");
    let kind = match e {
        sqlx::Error::Io(io) => io.kind(),
        _ => std::io::ErrorKind::Other,
    };
    for reply in replies {
        let error = if uncertain {
            let message = format!("the connection broke during a commit: the appends may or may not be stored: {e}");
            Error::Postgres(sqlx::Error::Io(std::io::Error::new(kind, message)))
        } else {
            Error::NotCommitted(e.to_string())
        };
        let _ = reply.send(Err(error));
    }
}

async fn execute(conn: &mut PgConnection, sql: &'static str) -> std::result::Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(conn).await.map(drop)
}

/// How a careful append failed: on its own (the others go on), or with the connection.
enum Failure {
    Store(Error),
    Conn(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        if broken(&e) {
            Failure::Conn(e)
        } else {
            Failure::Store(e.into())
        }
    }
}

/// Whether `e` leaves the connection unusable: anything but an error the server answered a
/// statement with, and the errors it sends before closing (connection exceptions, `08`, and
/// terminations by an administrator or a shutdown, `57P`).
fn broken(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => true,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

/// One append call in its own savepoint. `locked`: whether this transaction holds the head's
/// row lock (then nothing can change under it).
async fn careful_job(
    conn: &mut PgConnection,
    appends: &[Append],
    locked: &mut bool,
) -> std::result::Result<(Vec<Appended>, Option<u64>), Failure> {
    let locked_before = *locked;
    execute(conn, "SAVEPOINT job").await.map_err(Failure::Conn)?;
    let mut attempt = 0;
    let result = loop {
        match attempt_job(conn, appends, locked, attempt).await {
            Err(Attempt::Raced) => {
                execute(conn, "ROLLBACK TO SAVEPOINT job")
                    .await
                    .map_err(Failure::Conn)?;
                *locked = locked_before;
                attempt += 1;
            }
            Err(Attempt::Failed(Failure::Conn(e))) => return Err(Failure::Conn(e)),
            Err(Attempt::Failed(Failure::Store(e))) => break Err(e),
            Ok(done) => break Ok(done),
        }
    };
    match result {
        Ok(done) => {
            execute(conn, "RELEASE SAVEPOINT job").await.map_err(Failure::Conn)?;
            if done.1.is_some() {
                *locked = true;
            }
            Ok(done)
        }
        Err(e) => {
            execute(conn, "ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                .await
                .map_err(Failure::Conn)?;
            *locked = locked_before;
            Err(Failure::Store(e))
        }
    }
}

enum Attempt {
    /// Someone committed between the checks and the write: check again.
    Raced,
    Failed(Failure),
}

impl<E: Into<Failure>> From<E> for Attempt {
    fn from(e: E) -> Self {
        Attempt::Failed(e.into())
    }
}

/// Whether a failed write may be a race lost since the checks: a unique violation (an id or a
/// revision stored meanwhile) or a NULL revision or position (an expectation that no longer
/// holds, a deletion committed meanwhile).
fn raced(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("23505" | "23502")))
}

/// What is stored of the ids and streams of some appends.
#[derive(Default)]
struct Known {
    ids: HashMap<Uuid, (String, u64, u64)>,
    states: HashMap<String, StreamState>,
}

impl Known {
    fn state(&self, stream: &str) -> StreamState {
        self.states.get(stream).copied().unwrap_or(StreamState::NoStream)
    }
}

async fn known(conn: &mut PgConnection, appends: &[Append]) -> std::result::Result<Known, sqlx::Error> {
    let ids: Vec<Uuid> = appends.iter().flat_map(|a| a.events.iter().map(|e| e.id)).collect();
    let streams: Vec<&str> = appends.iter().map(|a| a.stream.as_str()).collect();
    let rows = sqlx::query(
        "SELECT e.id, e.stream, e.revision, e.position, false AS deleted FROM es_events e WHERE e.id = ANY($1)
         UNION ALL
         SELECT NULL, s.stream, greatest(t.revision, (SELECT max(revision) FROM es_events e WHERE e.stream = s.stream), -1),
                0, coalesce(t.deleted, false)
         FROM UNNEST($2::text[]) AS s (stream) LEFT JOIN es_streams t ON t.stream = s.stream",
    )
    .bind(ids)
    .bind(streams)
    .fetch_all(conn)
    .await?;
    let mut known = Known::default();
    for row in rows {
        let stream: String = row.try_get(1)?;
        let revision: i64 = row.try_get(2)?;
        match row.try_get::<Option<Uuid>, _>(0)? {
            Some(id) => {
                known
                    .ids
                    .insert(id, (stream, revision as u64, row.try_get::<i64, _>(3)? as u64));
            }
            None => {
                known
                    .states
                    .insert(stream, super::state_of(row.try_get::<bool, _>(4)?, revision));
            }
        }
    }
    Ok(known)
}

/// One attempt: checks, then the write, which re-checks each stream atomically.
async fn attempt_job(
    conn: &mut PgConnection,
    appends: &[Append],
    locked: &mut bool,
    attempt: u32,
) -> std::result::Result<(Vec<Appended>, Option<u64>), Attempt> {
    if attempt >= OPTIMISTIC_ATTEMPTS && !*locked {
        // Lost the race twice: take the lock first, so that the checks hold until the commit.
        sqlx::query("SELECT 1 FROM es_head WHERE id = 0 FOR NO KEY UPDATE")
            .execute(&mut *conn)
            .await?;
        *locked = true;
    }
    let checked_under_lock = *locked;
    let known = known(conn, appends).await?;
    let mut results: Vec<Option<Appended>> = Vec::with_capacity(appends.len());
    let mut batch = Batch::default();
    let mut fresh = HashSet::new();
    for (i, append) in appends.iter().enumerate() {
        if appends[..i].iter().any(|a| a.stream == append.stream) {
            return Err(Error::Invalid(format!("stream `{}` appears twice in one append", append.stream)).into());
        }
        if let Some(done) = already_appended(append, |id| Ok(known.ids.get(id).cloned()))? {
            results.push(Some(done));
            continue;
        }
        let actual = known.state(&append.stream);
        actual.check(&append.stream, append.expected)?;
        for event in &append.events {
            if let Some((stream, revision, _)) = known.ids.get(&event.id) {
                return Err(Error::DuplicateEvent {
                    id: event.id,
                    stream: stream.clone(),
                    revision: *revision,
                }
                .into());
            }
            if !fresh.insert(event.id) {
                return Err(Error::Invalid(format!("event {} appears twice in one append", event.id)).into());
            }
        }
        // The write holds the stream to exactly what was checked.
        let (kind, exact) = match actual {
            StreamState::At(r) => kind_of(ExpectedVersion::Exact(r)),
            _ => kind_of(ExpectedVersion::NoStream),
        };
        batch.push(append, kind, exact, None);
        results.push(None);
    }
    if batch.appends.is_empty() {
        return Ok((results.into_iter().flatten().collect(), None));
    }
    let written = match batch.write(conn).await {
        Ok(written) => written,
        Err(e) if raced(&e) && !checked_under_lock => return Err(Attempt::Raced),
        Err(e) => return Err(e.into()),
    };
    let mut fresh = written.results.into_iter();
    let results = results
        .into_iter()
        .map(|r| r.or_else(|| fresh.next()).expect("one result per append"))
        .collect();
    Ok((results, Some(written.head)))
}

/// An expectation as the write statement takes it: a kind and, for `Exact`, the revision.
fn kind_of(expected: ExpectedVersion) -> (i32, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        // Beyond i64 nothing matches, as it should.
        ExpectedVersion::Exact(r) => (3, i64::try_from(r).unwrap_or(-2)),
    }
}

/// Appends as the write statement takes them: one array per column.
#[derive(Default)]
struct Batch<'a> {
    total: i64,
    /// Per append: its stream, its number of events, and the offset of its last event.
    appends: Vec<(&'a str, i64, i64)>,
    stream_kind: Vec<i32>,
    stream_exact: Vec<i64>,
    /// Per append: its stream's revision if known (then it is not read).
    stream_known: Vec<Option<i64>>,
    /// The head's `deletions` the known revisions need (else the statement's snapshot's).
    deletions: Option<i64>,
    event_stream: Vec<&'a str>,
    event_index: Vec<i64>,
    event_id: Vec<Uuid>,
    event_name: Vec<&'a str>,
    event_version: Vec<i64>,
    event_data: Vec<&'a str>,
    event_metadata: Vec<&'a str>,
}

/// What a write did.
struct Written {
    /// The head after it.
    head: u64,
    /// The head's `deletions`.
    deletions: i64,
    /// One per append, in order.
    results: Vec<Appended>,
}

/// The write, for streams that are all different: moves the head (its row lock orders the
/// commits) unless a deletion committed since the statement's snapshot (or, given `$14`, since
/// the known revisions `$13` were written), checks each stream's expectation against its state
/// (kinds: 0 any, 1 no stream, 2 stream exists, 3 exact), inserts the events at the positions
/// after the old head and the revisions after each stream's last one. A stream whose expectation
/// fails has no row in `moved`, so its events get a NULL revision; a head left alone gives NULL
/// positions: either way the statement fails as a whole. The last parameter (here `$15`) is the
/// commit time, in all three statements.
const WRITE: &str = "
WITH h AS (
    UPDATE es_head SET position = position + $1
    WHERE id = 0 AND deletions = coalesce($14, (SELECT deletions FROM es_head WHERE id = 0))
    RETURNING position - $1 AS base, deletions
),
s AS (
    SELECT * FROM UNNEST($2::text[], $3::bigint[], $4::int[], $5::bigint[], $13::bigint[])
        AS s (stream, n, kind, exact, known)
),
moved AS (
    SELECT st.stream, st.revision AS prev
    FROM (
        SELECT s.stream, s.kind, s.exact, coalesce(t.deleted, false) AS deleted,
            coalesce(s.known, greatest(t.revision,
                (SELECT max(e.revision) FROM es_events e WHERE e.stream = s.stream), -1)) AS revision
        FROM s LEFT JOIN es_streams t ON t.stream = s.stream
    ) st
    WHERE NOT st.deleted AND CASE st.kind WHEN 0 THEN true WHEN 1 THEN st.revision < 0
        WHEN 2 THEN st.revision >= 0 ELSE st.revision = st.exact END
),
inserted AS (
    INSERT INTO es_events (position, stream, revision, id, name, version, data, metadata, recorded_at)
    SELECT (SELECT base FROM h) + e.ord, e.stream, moved.prev + e.idx, e.id, e.name, e.version, e.data::json,
           e.metadata::json, $15
    FROM UNNEST($6::text[], $7::bigint[], $8::uuid[], $9::text[], $10::bigint[], $11::text[], $12::text[])
        WITH ORDINALITY AS e (stream, idx, id, name, version, data, metadata, ord)
    LEFT JOIN moved ON moved.stream = e.stream
)
SELECT (SELECT base FROM h), (SELECT deletions FROM h), moved.stream, moved.prev FROM moved";

/// [`WRITE`] for the most common group, one append: the same steps on one stream, with
/// scalars instead of arrays and joins; a known revision (`$11`) leaves the stream unread.
const WRITE_ONE: &str = "
WITH h AS (
    UPDATE es_head SET position = position + $1
    WHERE id = 0 AND deletions = coalesce($10, (SELECT deletions FROM es_head WHERE id = 0))
    RETURNING position - $1 AS base, deletions
),
moved AS (
    SELECT st.revision AS prev
    FROM (
        SELECT coalesce(t.deleted, false) AS deleted,
            coalesce($11, greatest(t.revision, (SELECT max(revision) FROM es_events WHERE stream = $2), -1))
                AS revision
        FROM (SELECT) one LEFT JOIN (SELECT * FROM es_streams WHERE stream = $2 AND $11 IS NULL) t ON true
    ) st
    WHERE NOT st.deleted AND CASE $3 WHEN 0 THEN true WHEN 1 THEN st.revision < 0
        WHEN 2 THEN st.revision >= 0 ELSE st.revision = $4 END
),
inserted AS (
    INSERT INTO es_events (position, stream, revision, id, name, version, data, metadata, recorded_at)
    SELECT (SELECT base FROM h) + e.ord, $2, (SELECT prev FROM moved) + e.ord, e.id, e.name, e.version,
           e.data::json, e.metadata::json, $12
    FROM UNNEST($5::uuid[], $6::text[], $7::bigint[], $8::text[], $9::text[])
        WITH ORDINALITY AS e (id, name, version, data, metadata, ord)
)
SELECT (SELECT base FROM h), (SELECT deletions FROM h), $2::text, (SELECT prev FROM moved)";

/// [`WRITE_ONE`] for one event to a stream whose revision `$3 - 1` is known, while the head's
/// `deletions` is still `$1`: nothing to read or check, so the plan is about as small as the bare
/// INSERT's. A head left alone (a deletion committed since) gives a NULL position.
const WRITE_EVENT: &str = "
WITH h AS (
    UPDATE es_head SET position = position + 1 WHERE id = 0 AND deletions = $1
    RETURNING position
)
INSERT INTO es_events (position, stream, revision, id, name, version, data, metadata, recorded_at)
VALUES ((SELECT position FROM h), $2, $3, $4, $5, $6, $7::json, $8::json, $9)
RETURNING position";

impl<'a> Batch<'a> {
    fn push(&mut self, append: &'a Append, kind: i32, exact: i64, known: Option<u64>) {
        let n = append.events.len() as i64;
        self.total += n;
        self.appends.push((&append.stream, n, self.total));
        self.stream_kind.push(kind);
        self.stream_exact.push(exact);
        self.stream_known.push(known.map(|r| r as i64));
        for (i, event) in append.events.iter().enumerate() {
            self.event_stream.push(&append.stream);
            self.event_index.push(i as i64 + 1);
            self.event_id.push(event.id);
            self.event_name.push(&event.name);
            self.event_version.push(i64::from(event.version));
            // Checked by `Append::validate`.
            self.event_data
                .push(std::str::from_utf8(&event.data).unwrap_or_default());
            self.event_metadata
                .push(std::str::from_utf8(&event.metadata).unwrap_or_default());
        }
    }

    async fn write(self, conn: &mut PgConnection) -> std::result::Result<Written, sqlx::Error> {
        // The writer's clock, as on the other backends: PostgreSQL's `now()` through `extract`
        // is numeric arithmetic, a tenth of the one-event statement's time.
        let recorded_at = now_millis();
        if let ([(stream, 1, _)], Some(deletions), [Some(known)]) =
            (&self.appends[..], self.deletions, &self.stream_known[..])
        {
            let revision = known + 1;
            let position: i64 = sqlx::query_scalar(WRITE_EVENT)
                .bind(deletions)
                .bind(*stream)
                .bind(revision)
                .bind(self.event_id[0])
                .bind(self.event_name[0])
                .bind(self.event_version[0])
                .bind(self.event_data[0])
                .bind(self.event_metadata[0])
                .bind(recorded_at)
                .fetch_one(conn)
                .await?;
            return Ok(Written {
                head: position as u64,
                deletions,
                results: vec![Appended {
                    revision: revision as u64,
                    position: position as u64,
                }],
            });
        }
        let rows = if let [(stream, _, _)] = self.appends[..] {
            sqlx::query(WRITE_ONE)
                .bind(self.total)
                .bind(stream)
                .bind(self.stream_kind[0])
                .bind(self.stream_exact[0])
                .bind(self.event_id)
                .bind(self.event_name)
                .bind(self.event_version)
                .bind(self.event_data)
                .bind(self.event_metadata)
                .bind(self.deletions)
                .bind(self.stream_known[0])
                .bind(recorded_at)
                .fetch_all(conn)
                .await?
        } else {
            let streams: Vec<&str> = self.appends.iter().map(|a| a.0).collect();
            let counts: Vec<i64> = self.appends.iter().map(|a| a.1).collect();
            sqlx::query(WRITE)
                .bind(self.total)
                .bind(streams)
                .bind(counts)
                .bind(self.stream_kind)
                .bind(self.stream_exact)
                .bind(self.event_stream)
                .bind(self.event_index)
                .bind(self.event_id)
                .bind(self.event_name)
                .bind(self.event_version)
                .bind(self.event_data)
                .bind(self.event_metadata)
                .bind(self.stream_known)
                .bind(self.deletions)
                .bind(recorded_at)
                .fetch_all(conn)
                .await?
        };
        let mut head = None;
        let mut prev = HashMap::with_capacity(rows.len());
        for row in &rows {
            head = Some((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?));
            prev.insert(row.try_get::<&str, _>(2)?, row.try_get::<i64, _>(3)?);
        }
        let (base, deletions) =
            head.ok_or_else(|| sqlx::Error::Protocol("the append statement returned no rows".into()))?;
        let results = self
            .appends
            .iter()
            .map(|(stream, n, end)| {
                let prev = prev.get(stream).copied().ok_or_else(|| {
                    sqlx::Error::Protocol(format!("the append statement did not return stream `{stream}`"))
                })?;
                Ok(Appended {
                    revision: (prev + n) as u64,
                    position: (base + end) as u64,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()?;
        Ok(Written {
            head: (base + self.total) as u64,
            deletions,
            results,
        })
    }
}
