//! The store for several processes: PostgreSQL through sqlx (feature `postgres`).
//!
//! - Global positions come from a one-row head table moved inside each append transaction, so
//!   they are gapless and in commit order across processes (never from a sequence, which hands
//!   numbers out before commit and leaves gaps).
//! - One appender task per store, on its own connection, writes every append waiting in its
//!   bounded queue together: one statement for the whole group when nothing needs sorting out,
//!   else one transaction with each append in its own savepoint (see `appender.rs`).
//! - Reads, and the writes that are not appends, use a pool.
//! - [`watch_head`](EventStore::watch_head) moves on this store's commits directly and on other
//!   processes' through `LISTEN`/`NOTIFY` on the channel `<schema>_es_head`, a few milliseconds
//!   after the commit at most while its process lives (a task of its own notifies, off the commit
//!   path, and commits close together share one notification; if the process dies first, others
//!   see the commit at the next notification or their own poll).
//!
//! - A stream's revision is its last event's, read from the `(stream, revision)` index: appends
//!   write only the head and the events. `es_streams` keeps what deleting events would lose (the
//!   revision a truncation reached, the tombstone's flag); those deletions take the head's lock and
//!   count themselves in it, so an append whose snapshot is older than one starts over.
//!
//! Tables (`es_events`, `es_streams`, `es_head`, `es_checkpoints`, `es_snapshots`) are created
//! when missing, in the schema given to [`PgStoreBuilder::schema`] or else the connection's
//! current schema. Event data and metadata are `json` columns, which keep the bytes as given.

mod appender;
mod listen;
mod notify;
mod read_model;
mod schema;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::event::Recorded;
use crate::snapshot::Snapshot;
use crate::store::{Append, Appended, Direction, EventStore, ExpectedVersion, ReadStream, StreamState};
use appender::{Appender, Job};

/// The sqlx this store is built on, for queries of one's own on [`PgStore::pool`].
pub use sqlx;

pub use read_model::PgReadModel;

/// Appends queued beyond this wait (backpressure instead of unbounded memory).
const QUEUE: usize = 1024;

/// The event store in a PostgreSQL database, for one process or several sharing it. Clones
/// share one store; its tasks stop when the last clone is dropped.
///
/// ```no_run
/// use switchboard_eventstore::{EventStore, ExpectedVersion, NewEvent, PgStore};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> switchboard_eventstore::Result<()> {
/// let store = PgStore::builder("postgres://postgres@127.0.0.1:5432/postgres")
///     .schema("orders")
///     .max_connections(8)
///     .connect()
///     .await?;
/// let appended = store
///     .append("order-1", ExpectedVersion::NoStream, vec![NewEvent::raw("ORDER_PLACED", 1, "{}")])
///     .await?;
/// assert_eq!(appended.revision, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    jobs: mpsc::Sender<Job>,
    head: Arc<watch::Sender<u64>>,
    listener: tokio::task::AbortHandle,
    target: Target,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The appender stops by itself once `jobs` is gone.
        self.listener.abort();
    }
}

/// Where a store is, as it may be shown: never the password.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    database: Option<String>,
    schema: Option<String>,
}

impl Target {
    fn of(options: &PgConnectOptions, schema: Option<String>) -> Self {
        Target {
            host: options.get_host().to_owned(),
            port: options.get_port(),
            database: options.get_database().map(str::to_owned),
            schema,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host,
            self.port,
            self.database.as_deref().unwrap_or("(default database)")
        )?;
        if let Some(schema) = &self.schema {
            write!(f, " schema {schema}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.inner.target;
        f.debug_struct("PgStore")
            .field("host", &t.host)
            .field("port", &t.port)
            .field("database", &t.database)
            .field("schema", &t.schema)
            .field("head", &*self.inner.head.borrow())
            .finish()
    }
}

/// Settings of a [`PgStore`], from [`PgStore::builder`].
pub struct PgStoreBuilder {
    url: String,
    schema: Option<String>,
    max_connections: u32,
    acquire_timeout: Duration,
}

impl fmt::Debug for PgStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PgStoreBuilder");
        match PgConnectOptions::from_str(&self.url) {
            Ok(options) => d
                .field("host", &options.get_host())
                .field("port", &options.get_port())
                .field("database", &options.get_database()),
            Err(_) => d.field("url", &"(does not parse)"),
        };
        d.field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

impl PgStoreBuilder {
    /// Puts the tables in this PostgreSQL schema, created if missing (ASCII letters, digits
    /// and `_`, at most 63 bytes). Without it they go in the connection's current schema
    /// (usually `public`).
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = Some(name.into());
        self
    }

    /// The most pooled connections for reads and other writes (default 10). The appender, the
    /// listener and the notifier have one connection each besides (the notifier's from the first
    /// commit on).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long to keep trying to get a connection before failing (default 30 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Connects, creates what is missing and starts the appender and the listener.
    ///
    /// Errors never show the URL's password: one that would is replaced by
    /// [`Error::Invalid`] naming only the host, port and database.
    pub async fn connect(self) -> Result<PgStore> {
        let secrets = Secrets::of(&self.url);
        let target = PgConnectOptions::from_str(&self.url)
            .map(|options| Target::of(&options, self.schema.clone()))
            .ok();
        self.connect_unscrubbed()
            .await
            .map_err(|e| secrets.scrub(e, target.as_ref()))
    }

    async fn connect_unscrubbed(self) -> Result<PgStore> {
        let mut options = PgConnectOptions::from_str(&self.url)?.application_name("switchboard-eventstore");
        if let Some(schema) = &self.schema {
            schema::check_schema(schema)?;
            // Named after the schema, to tell stores apart in `pg_stat_activity` (63 bytes at
            // most are kept).
            let name = format!("switchboard-eventstore {schema}");
            options = options
                .application_name(&name[..name.len().min(63)])
                .options([("search_path", schema::search_path(schema))]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            // A ping per acquire would double the cost of a read; a dead connection fails one
            // query and is dropped.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let schema = {
            let mut conn = pool.acquire().await?;
            schema::create(&mut conn, self.schema.as_deref()).await?
        };
        let channel = schema::channel(&schema);
        let target = Target::of(&options, Some(schema));

        // Listen before reading the head, so that no commit falls between the two.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.acquire_timeout)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options.clone());
        let listener = listen::listen(&listen_pool, &channel).await?;
        let head = Arc::new(watch::channel(listen::read_head(&pool).await?).0);

        let conn = PgConnection::connect_with(&options).await?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        let (own, commits) = watch::channel(0);
        tokio::spawn(notify::run(options.clone(), channel.clone(), commits));
        let appender = Appender {
            options,
            conn: Some(conn),
            jobs: queue,
            head: head.clone(),
            own,
            carry: None,
            last_group: 0,
            revisions: Default::default(),
        };
        tokio::spawn(appender.run());
        let listener =
            tokio::spawn(listen::run(listener, listen_pool, pool.clone(), channel, head.clone())).abort_handle();
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                jobs,
                head,
                listener,
                target,
            }),
        })
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`) with
    /// the default settings, creating the tables in the current schema if missing.
    pub async fn connect(url: &str) -> Result<PgStore> {
        Self::builder(url).connect().await
    }

    /// Settings for connecting to the database at `url`.
    ///
    /// ```no_run
    /// # async fn f() -> switchboard_eventstore::Result<()> {
    /// let store = switchboard_eventstore::PgStore::builder("postgres://postgres@127.0.0.1/postgres")
    ///     .schema("billing")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: impl Into<String>) -> PgStoreBuilder {
        PgStoreBuilder {
            url: url.into(),
            schema: None,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
        }
    }

    /// The pool the store reads with, for queries of one's own in the same database (its
    /// connections use the store's schema).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }
}

/// An event from its columns (`position, stream, revision, id, name, version, data::text,
/// metadata::text, recorded_at`), from column `at` on.
fn recorded(row: &PgRow, at: usize) -> Result<Recorded> {
    let version: i64 = row.try_get(at + 5)?;
    Ok(Recorded {
        position: row.try_get::<i64, _>(at)? as u64,
        stream: row.try_get(at + 1)?,
        revision: row.try_get::<i64, _>(at + 2)? as u64,
        id: row.try_get(at + 3)?,
        name: row.try_get(at + 4)?,
        version: u32::try_from(version).map_err(|_| Error::Invalid(format!("a stored event has version {version}")))?,
        data: Bytes::from(row.try_get::<String, _>(at + 6)?),
        metadata: Bytes::from(row.try_get::<String, _>(at + 7)?),
        recorded_at: row.try_get(at + 8)?,
    })
}

async fn execute(conn: &mut PgConnection, sql: &'static str) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(sql).execute(conn).await.map(drop)
}

fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// A stream's state from its `deleted` flag and revision (`-1`: none).
fn state_of(deleted: bool, revision: i64) -> StreamState {
    match (deleted, revision) {
        (true, _) => StreamState::Deleted,
        (false, r) if r < 0 => StreamState::NoStream,
        (false, r) => StreamState::At(r as u64),
    }
}

/// Stream `$1`'s deleted flag and revision: the greater of its last event's and what a
/// truncation kept in `es_streams`, `-1` when it has neither.
const STATE: &str = "
SELECT coalesce(t.deleted, false),
       greatest(t.revision, (SELECT max(revision) FROM es_events WHERE stream = $1), -1)
FROM (SELECT) one LEFT JOIN es_streams t ON t.stream = $1";

/// Moves the head's deletion count, taking its lock: appends wait until the commit, and those
/// that read before it start over (see the appender).
const COUNT_DELETION: &str = "UPDATE es_head SET deletions = deletions + 1 WHERE id = 0";

async fn state(conn: &mut PgConnection, stream: &str) -> Result<StreamState> {
    let (deleted, revision) = sqlx::query_as::<_, (bool, i64)>(STATE)
        .bind(stream)
        .fetch_one(conn)
        .await?;
    Ok(state_of(deleted, revision))
}

/// Whether the stream is deleted, then its events, from one snapshot.
const READ_FORWARDS: &str = "
SELECT st.deleted, e.position, e.stream, e.revision, e.id, e.name, e.version, e.data::text, e.metadata::text, e.recorded_at
FROM (SELECT coalesce((SELECT deleted FROM es_streams WHERE stream = $1), false) AS deleted) st
LEFT JOIN LATERAL (
    SELECT * FROM es_events WHERE stream = $1 AND revision >= $2 AND NOT st.deleted ORDER BY revision LIMIT $3
) e ON true
ORDER BY e.revision";

const READ_BACKWARDS: &str = "
SELECT st.deleted, e.position, e.stream, e.revision, e.id, e.name, e.version, e.data::text, e.metadata::text, e.recorded_at
FROM (SELECT coalesce((SELECT deleted FROM es_streams WHERE stream = $1), false) AS deleted) st
LEFT JOIN LATERAL (
    SELECT * FROM es_events WHERE stream = $1 AND revision <= $2 AND NOT st.deleted ORDER BY revision DESC LIMIT $3
) e ON true
ORDER BY e.revision DESC";

impl EventStore for PgStore {
    async fn append_multi(&self, appends: Vec<Append>) -> Result<Vec<Appended>> {
        appends.iter().try_for_each(Append::validate)?;
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        // Refused whatever is stored; caught here, they need no round trip.
        let mut streams = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for append in &appends {
            if !streams.insert(append.stream.as_str()) {
                return Err(Error::Invalid(format!(
                    "stream `{}` appears twice in one append",
                    append.stream
                )));
            }
            if let Some(event) = append.events.iter().find(|e| !ids.insert(e.id)) {
                return Err(Error::Invalid(format!(
                    "event {} appears twice in one append",
                    event.id
                )));
            }
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .jobs
            .send(Job { appends, reply })
            .await
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    async fn read_stream(&self, stream: &str, read: ReadStream) -> Result<Vec<Recorded>> {
        let sql = match read.direction {
            Direction::Forwards => READ_FORWARDS,
            Direction::Backwards => READ_BACKWARDS,
        };
        let rows = sqlx::query(sql)
            .bind(stream)
            .bind(clamp(read.from))
            .bind(clamp(read.limit as u64))
            .fetch_all(&self.inner.pool)
            .await?;
        if rows.first().map(|row| row.try_get::<bool, _>(0)).transpose()? == Some(true) {
            return Err(Error::StreamDeleted(stream.into()));
        }
        rows.iter()
            .filter(|row| !matches!(row.try_get::<Option<i64>, _>(1), Ok(None)))
            .map(|row| recorded(row, 1))
            .collect()
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Recorded>> {
        let rows = sqlx::query(
            "SELECT position, stream, revision, id, name, version, data::text, metadata::text, recorded_at
             FROM es_events WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(clamp(after))
        .bind(clamp(limit as u64))
        .fetch_all(&self.inner.pool)
        .await?;
        rows.iter().map(|row| recorded(row, 0)).collect()
    }

    async fn stream_state(&self, stream: &str) -> Result<StreamState> {
        state(&mut *self.inner.pool.acquire().await?, stream).await
    }

    async fn truncate_before(&self, stream: &str, revision: u64) -> Result<()> {
        let mut tx = self.inner.pool.begin().await?;
        execute(&mut tx, COUNT_DELETION).await?;
        let last = match state(&mut tx, stream).await? {
            StreamState::At(last) => last,
            StreamState::NoStream => return Ok(()),
            StreamState::Deleted => return Err(Error::StreamDeleted(stream.into())),
        };
        // The stream's revision outlives its deleted events.
        sqlx::query(
            "WITH kept AS (
                 INSERT INTO es_streams AS t (stream, revision) VALUES ($1, $3)
                 ON CONFLICT (stream) DO UPDATE SET revision = greatest(t.revision, excluded.revision)
             )
             DELETE FROM es_events WHERE stream = $1 AND revision < $2",
        )
        .bind(stream)
        .bind(clamp(revision))
        .bind(clamp(last))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tombstone(&self, stream: &str, expected: ExpectedVersion) -> Result<()> {
        let mut tx = self.inner.pool.begin().await?;
        // Under the head's lock no append commits, so the state read next is the last word.
        execute(&mut tx, COUNT_DELETION).await?;
        state(&mut tx, stream).await?.check(stream, expected)?;
        sqlx::query(
            "WITH events AS (DELETE FROM es_events WHERE stream = $1),
             snapshots AS (DELETE FROM es_snapshots WHERE stream = $1)
             INSERT INTO es_streams (stream, revision, deleted) VALUES ($1, -1, true)
             ON CONFLICT (stream) DO UPDATE SET deleted = true",
        )
        .bind(stream)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn head(&self) -> Result<u64> {
        Ok(listen::read_head(&self.inner.pool).await?)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        let position: Option<i64> = sqlx::query_scalar("SELECT position FROM es_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.inner.pool)
            .await?;
        position.map(crate::store::stored_position).transpose()
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        crate::event::check_name("checkpoint name", name)?;
        sqlx::query(
            "INSERT INTO es_checkpoints (name, position) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        )
        .bind(name)
        .bind(clamp(position))
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let row = sqlx::query_as::<_, (i64, String, String)>(
            "SELECT revision, schema, data::text FROM es_snapshots WHERE stream = $1",
        )
        .bind(stream)
        .fetch_optional(&self.inner.pool)
        .await?;
        row.map(|(revision, schema, data)| {
            Ok(Snapshot {
                stream: stream.into(),
                revision: crate::store::stored_position(revision)?,
                schema,
                data: Bytes::from(data),
            })
        })
        .transpose()
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let data = std::str::from_utf8(&snapshot.data)
            .map_err(|_| Error::Invalid(format!("the snapshot of `{}` is not UTF-8", snapshot.stream)))?;
        serde_json::from_str::<serde::de::IgnoredAny>(data)
            .map_err(|e| Error::Invalid(format!("the snapshot of `{}` is not JSON: {e}", snapshot.stream)))?;
        sqlx::query(
            "INSERT INTO es_snapshots AS t (stream, revision, schema, data) VALUES ($1, $2, $3, $4::json)
             ON CONFLICT (stream) DO UPDATE SET revision = excluded.revision, schema = excluded.schema,
             data = excluded.data WHERE excluded.revision >= t.revision",
        )
        .bind(&snapshot.stream)
        .bind(clamp(snapshot.revision))
        .bind(&snapshot.schema)
        .bind(data)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }
}

/// What must not be shown of a URL: its password, as written and decoded, and the URL itself.
struct Secrets(Vec<String>);

impl Secrets {
    fn of(url: &str) -> Self {
        let mut secrets = vec![url.to_owned()];
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            secrets.push(password.to_owned());
        }
        if let Some((_, query)) = url.split_once('?') {
            for pair in query.split('&') {
                if let Some(("password", password)) = pair.split_once('=') {
                    secrets.push(password.to_owned());
                }
            }
        }
        let decoded: Vec<String> = secrets.iter().map(|s| percent_decode(s)).collect();
        secrets.extend(decoded);
        secrets.retain(|s| !s.is_empty());
        secrets.sort();
        secrets.dedup();
        Secrets(secrets)
    }

    fn scrub(&self, e: Error, target: Option<&Target>) -> Error {
        let shown = format!("{e} {e:?}");
        if self.0.iter().any(|secret| shown.contains(secret.as_str())) {
            let target = target.map_or_else(|| "(a URL that does not parse)".to_owned(), Target::to_string);
            Error::Invalid(format!(
                "cannot connect to PostgreSQL at {target}: the error showed the password, so it is left out"
            ))
        } else {
            e
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_of_a_url() {
        let s = Secrets::of("postgres://me:p%40ss@db:5432/x?sslmode=disable&password=other");
        for secret in ["p%40ss", "p@ss", "other"] {
            assert!(s.0.iter().any(|x| x == secret), "{secret} in {:?}", s.0.len());
        }
        assert_eq!(Secrets::of("postgres://me@db/x").0, ["postgres://me@db/x"]);
        let scrubbed = s.scrub(Error::Invalid("it was p@ss".into()), None);
        assert!(!scrubbed.to_string().contains("p@ss"), "{scrubbed}");
        assert!(matches!(s.scrub(Error::Closed, None), Error::Closed));
    }

    #[test]
    fn builder_debug_shows_no_password() {
        let shown = format!(
            "{:?}",
            PgStore::builder("postgres://postgres:s3cret@127.0.0.1:1/x").schema("s")
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("127.0.0.1"), "{shown}");
    }
}
