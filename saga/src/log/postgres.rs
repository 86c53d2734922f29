//! The saga log in PostgreSQL (feature `postgres`), for several orchestrator replicas sharing
//! one database: each active saga is leased to one of them at a time.
//!
//! - A write is one statement, so one round trip: data-modifying CTEs update (or insert) the
//!   saga's row and insert its entries from arrays. It succeeds only if the row's `seq` is the
//!   write's `after` and the saga is leased to the writer or to no one, so an executor whose
//!   lease was taken over is fenced off with [`Error::Conflict`].
//! - After a write leaving the saga active (running or compensating) the writer holds its lease
//!   for [`lease`](PgLogBuilder::lease) more; after any other status no one does, so a stuck
//!   saga can be retried by an operator from any process, and is not claimed.
//! - [`claim`](SagaLog::claim) takes active sagas that no one holds, whose lease expired, or that
//!   the claimer holds but does not run (it restarted under the same name), with
//!   `FOR UPDATE SKIP LOCKED`: replicas claiming at once never get the same saga.
//! - Times are milliseconds since the Unix epoch from the database's clock, so the leases of
//!   every replica are compared against one clock.
//!
//! Tables `sb_sagas` (a row per saga) and `sb_saga_log` (its entries, `data` as `json`) are
//! created when missing, in the schema given to [`PgLogBuilder::schema`] or else the
//! connection's current schema.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use super::{Entry, Filter, Record, SagaLog, Status, Summary, Write, validate};
use crate::error::{Error, Result};

/// The sqlx this log is built on, for queries of one's own on [`PgLog::pool`].
pub use sqlx;

/// Status and `created_at` never change on a renewal or a lease: owner and lease stay out of
/// the indexes, so those updates are HOT.
const TABLES: &str = "
SET LOCAL client_min_messages = warning;
CREATE TABLE IF NOT EXISTS sb_sagas (
    id text PRIMARY KEY,
    saga text NOT NULL,
    status text NOT NULL,
    seq bigint NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    wake_at bigint,
    owner text,
    lease_until bigint
);
CREATE INDEX IF NOT EXISTS sb_sagas_active ON sb_sagas (created_at, id)
    WHERE status IN ('running', 'compensating');
CREATE INDEX IF NOT EXISTS sb_sagas_status ON sb_sagas (status, created_at);
CREATE TABLE IF NOT EXISTS sb_saga_log (
    id text NOT NULL,
    seq bigint NOT NULL,
    at bigint NOT NULL,
    kind text NOT NULL,
    data json NOT NULL,
    PRIMARY KEY (id, seq)
);
";

/// A new saga: its row (unless the id is taken) and its entries.
/// `$1 id, $2 saga, $3 status, $4 seq, $5 wake_at, $6 owner, $7 lease ms, $8 kinds, $9 data`.
const WRITE_NEW: &str = "
WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
saga AS (
    INSERT INTO sb_sagas (id, saga, status, seq, created_at, updated_at, wake_at, owner, lease_until)
    SELECT $1, $2, $3, $4, ms, ms, $5, $6, ms + $7 FROM now
    ON CONFLICT (id) DO NOTHING
    RETURNING id, updated_at
),
entries AS (
    INSERT INTO sb_saga_log (id, seq, at, kind, data)
    SELECT saga.id, t.n, saga.updated_at, t.kind, t.data::json
    FROM saga, unnest($8::text[], $9::text[]) WITH ORDINALITY AS t(kind, data, n)
)
SELECT count(*) FROM saga";

/// Entries after `$7`, if the row is at `$7` and leased to `$8` or no one (a concurrent write
/// that committed first moves `seq`, and the row is checked again after its lock is taken).
/// `$1 id, $2 status, $3 seq, $4 wake_at, $5 new owner, $6 lease ms, $7 after, $8 writer,
/// $9 kinds, $10 data`.
const WRITE_NEXT: &str = "
WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
saga AS (
    UPDATE sb_sagas SET status = $2, seq = $3, updated_at = now.ms, wake_at = $4,
        owner = $5, lease_until = now.ms + $6
    FROM now
    WHERE id = $1 AND seq = $7 AND (owner IS NULL OR owner = $8)
    RETURNING id, updated_at
),
entries AS (
    INSERT INTO sb_saga_log (id, seq, at, kind, data)
    SELECT saga.id, $7 + t.n, saga.updated_at, t.kind, t.data::json
    FROM saga, unnest($9::text[], $10::text[]) WITH ORDINALITY AS t(kind, data, n)
)
SELECT count(*) FROM saga";

/// Leases up to `$3` active sagas, oldest first, to `$1`, skipping `$2` and rows another claim
/// has locked. `$4` lease ms.
const CLAIM: &str = "
WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
picked AS (
    SELECT id FROM sb_sagas, now
    WHERE status IN ('running', 'compensating') AND id <> ALL($2)
        AND (owner IS NULL OR owner = $1 OR lease_until < now.ms)
    ORDER BY created_at, id
    LIMIT $3
    FOR UPDATE OF sb_sagas SKIP LOCKED
)
UPDATE sb_sagas s SET owner = $1, lease_until = now.ms + $4
FROM picked, now
WHERE s.id = picked.id
RETURNING s.id";

/// Extends `$1`'s leases of `$2` by `$3` ms; returns those of `$2` it does not hold.
const RENEW: &str = "
WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
renewed AS (
    UPDATE sb_sagas SET lease_until = now.ms + $3 FROM now
    WHERE id = ANY($2) AND owner = $1
    RETURNING id
)
SELECT id FROM unnest($2::text[]) AS t(id) EXCEPT SELECT id FROM renewed";

const RELEASE: &str = "UPDATE sb_sagas SET owner = NULL, lease_until = NULL WHERE id = $2 AND owner = $1";

/// Sagas `$1` with their entries, from one snapshot.
const LOAD: &str = "
SELECT s.id, s.saga, s.status, s.seq, s.created_at, s.updated_at, s.wake_at, l.seq, l.at, l.data::text
FROM sb_sagas s LEFT JOIN sb_saga_log l ON l.id = s.id
WHERE s.id = ANY($1)
ORDER BY s.created_at, s.id, l.seq";

const LIST: &str = "
SELECT id, saga, status, seq, created_at, updated_at, wake_at FROM sb_sagas
WHERE (cardinality($1::text[]) = 0 OR status = ANY($1)) AND ($2::text IS NULL OR saga = $2)
ORDER BY created_at DESC, id DESC
LIMIT $3";

/// The saga log in a PostgreSQL database, shared by orchestrator replicas. Clones share one
/// pool. See the [module](self) for how writes and leases work.
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard_saga::log::{Filter, PgLog, SagaLog};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> switchboard_saga::Result<()> {
/// let log = PgLog::builder("postgres://postgres@127.0.0.1:5432/postgres")
///     .schema("sagas")
///     .max_connections(8)
///     .lease(Duration::from_secs(30))
///     .connect()
///     .await?;
/// let stuck = log.list(Filter { statuses: vec![switchboard_saga::Status::Stuck], ..Filter::default() }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgLog {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Milliseconds.
    lease: i64,
    target: Target,
    secrets: Secrets,
}

/// Where a log is, as it may be shown: never the password.
struct Target {
    host: String,
    port: u16,
    database: Option<String>,
    schema: String,
}

impl fmt::Debug for PgLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.inner.target;
        f.debug_struct("PgLog")
            .field("host", &t.host)
            .field("port", &t.port)
            .field("database", &t.database)
            .field("schema", &t.schema)
            .field("lease_ms", &self.inner.lease)
            .finish()
    }
}

/// Settings of a [`PgLog`], from [`PgLog::builder`].
pub struct PgLogBuilder {
    url: String,
    schema: Option<String>,
    max_connections: u32,
    acquire_timeout: Duration,
    lease: Duration,
}

impl fmt::Debug for PgLogBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PgLogBuilder");
        match PgConnectOptions::from_str(&self.url) {
            Ok(o) => d
                .field("host", &o.get_host())
                .field("port", &o.get_port())
                .field("database", &o.get_database()),
            Err(_) => d.field("url", &"(does not parse)"),
        };
        d.field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("lease", &self.lease)
            .finish()
    }
}

impl PgLogBuilder {
    /// Puts the tables in this PostgreSQL schema, created if missing (ASCII letters, digits and
    /// `_`, not starting with a digit, at most 63 bytes). Without it they go in the
    /// connection's current schema (usually `public`).
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = Some(name.into());
        self
    }

    /// The most pooled connections (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long to keep trying to get a connection before failing (default 30 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long a saga stays leased to its executor after a write, claim or renewal without
    /// another (default 30 s). Orchestrators renew theirs every
    /// [`claim_every`](crate::OrchestratorBuilder::claim_every), which must be well under it;
    /// a replica that stops renewing loses its sagas to others after this long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// Connects and creates the schema and tables if missing. Errors never show the URL's
    /// password.
    pub async fn connect(self) -> Result<PgLog> {
        let secrets = Secrets::of(&self.url);
        let options = PgConnectOptions::from_str(&self.url).map_err(|e| secrets.error(e))?;
        let mut options = options.application_name("switchboard-saga");
        if let Some(schema) = &self.schema {
            check_schema(schema)?;
            options = options.options([("search_path", format!("\"{schema}\""))]);
        }
        // The statements are few and their plans do not depend on the values: plan once.
        options = options.options([("plan_cache_mode", "force_generic_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            // A ping per acquire would double the round trips of a write.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| secrets.error(e))?;
        let schema = create(&pool, self.schema.as_deref(), &secrets).await?;
        Ok(PgLog {
            inner: Arc::new(Inner {
                pool,
                lease: self.lease.as_millis().min(i64::MAX as u128) as i64,
                target: Target {
                    host: options.get_host().to_owned(),
                    port: options.get_port(),
                    database: options.get_database().map(str::to_owned),
                    schema,
                },
                secrets,
            }),
        })
    }
}

impl PgLog {
    /// Settings for connecting to the database at `url`
    /// (`postgres://user:password@host:port/database`).
    pub fn builder(url: impl Into<String>) -> PgLogBuilder {
        PgLogBuilder {
            url: url.into(),
            schema: None,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(30),
        }
    }

    /// The pool the log uses, for queries of one's own (its connections use the log's schema).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema the tables are in.
    pub fn schema(&self) -> &str {
        &self.inner.target.schema
    }

    fn error(&self, e: sqlx::Error) -> Error {
        self.inner.secrets.error(e)
    }

    async fn load_many(&self, ids: &[&str]) -> Result<Vec<Record>> {
        let rows = sqlx::query(LOAD)
            .bind(ids)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.error(e))?;
        let mut records: Vec<Record> = Vec::new();
        for row in &rows {
            let id: String = get(row, 0)?;
            if records.last().is_none_or(|r| r.summary.id != id) {
                records.push(Record {
                    summary: summary(row)?,
                    entries: Vec::new(),
                });
            }
            let Some(seq) = get::<Option<i64>>(row, 7)? else {
                continue; // A saga without entries (written by other code).
            };
            let data: String = get(row, 9)?;
            let transition = serde_json::from_str(&data).map_err(|source| Error::Json {
                id: id.clone(),
                what: format!("entry {seq} does not decode"),
                source,
            })?;
            let record = records.last_mut().expect("pushed above");
            record.entries.push(Entry {
                seq: seq as u64,
                at: get::<i64>(row, 8)? as u64,
                transition,
            });
        }
        Ok(records)
    }
}

/// A column; a decode error names the column and types, never the connection.
fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(row: &'r PgRow, i: usize) -> Result<T> {
    row.try_get(i).map_err(|e| Error::Postgres(e.to_string()))
}

fn summary(row: &PgRow) -> Result<Summary> {
    let status: String = get(row, 2)?;
    Ok(Summary {
        id: get(row, 0)?,
        saga: get(row, 1)?,
        // An unknown status (newer code) is shown as stuck: nothing runs it.
        status: Status::parse(&status).unwrap_or(Status::Stuck),
        seq: get::<i64>(row, 3)? as u64,
        created_at: get::<i64>(row, 4)? as u64,
        updated_at: get::<i64>(row, 5)? as u64,
        wake_at: get::<Option<i64>>(row, 6)?.map(|t| t as u64),
    })
}

fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

impl SagaLog for PgLog {
    fn lease(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.inner.lease as u64))
    }

    async fn write(&self, owner: &str, w: Write) -> Result<()> {
        let name = validate(&w)?;
        let seq = clamp(w.after + w.transitions.len() as u64);
        let kinds: Vec<&str> = w.transitions.iter().map(|t| t.kind()).collect();
        let data = w
            .transitions
            .iter()
            .map(serde_json::to_string)
            .collect::<serde_json::Result<Vec<String>>>()
            .map_err(|source| Error::Json {
                id: w.id.clone(),
                what: "a transition does not encode".into(),
                source,
            })?;
        // Active sagas stay leased to their writer; others to no one.
        let (new_owner, lease) = if w.status.is_active() {
            (Some(owner), Some(self.inner.lease))
        } else {
            (None, None)
        };
        let wake = w.wake_at.map(clamp);
        let query = if w.after == 0 {
            sqlx::query_scalar::<_, i64>(WRITE_NEW)
                .bind(&w.id)
                .bind(name)
                .bind(w.status.as_str())
                .bind(seq)
                .bind(wake)
                .bind(new_owner)
                .bind(lease)
        } else {
            sqlx::query_scalar::<_, i64>(WRITE_NEXT)
                .bind(&w.id)
                .bind(w.status.as_str())
                .bind(seq)
                .bind(wake)
                .bind(new_owner)
                .bind(lease)
                .bind(clamp(w.after))
                .bind(owner)
        };
        let written = query
            .bind(kinds)
            .bind(data)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.error(e))?;
        match (written, w.after) {
            (1, _) => Ok(()),
            (_, 0) => Err(Error::Exists(w.id)),
            _ => Err(Error::Conflict(w.id)),
        }
    }

    async fn load(&self, id: &str) -> Result<Option<Record>> {
        Ok(self.load_many(&[id]).await?.pop())
    }

    async fn list(&self, filter: Filter) -> Result<Vec<Summary>> {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        let rows = sqlx::query(LIST)
            .bind(statuses)
            .bind(filter.saga.as_deref())
            .bind(clamp(filter.limit() as u64))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.error(e))?;
        rows.iter().map(summary).collect()
    }

    async fn claim(&self, owner: &str, limit: usize, running: &HashSet<String>) -> Result<Vec<Record>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let running: Vec<&str> = running.iter().map(String::as_str).collect();
        let ids: Vec<String> = sqlx::query_scalar(CLAIM)
            .bind(owner)
            .bind(running)
            .bind(clamp(limit as u64))
            .bind(self.inner.lease)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.error(e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Loaded after the claim committed: a write that committed while the claim waited for
        // its row lock is in the entries (the claim's own snapshot would miss it).
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.load_many(&ids).await
    }

    async fn renew(&self, owner: &str, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_scalar(RENEW)
            .bind(owner)
            .bind(ids)
            .bind(self.inner.lease)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.error(e))
    }

    async fn release(&self, owner: &str, id: &str) -> Result<()> {
        sqlx::query(RELEASE)
            .bind(owner)
            .bind(id)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }
}

/// Refuses a schema name that would need more than double quotes to be safe.
fn check_schema(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "schema name `{name}` must be 1 to 63 ASCII letters, digits or `_`, not starting with a digit"
    )))
}

/// Creates the schema and tables if missing; returns the schema's name. Processes starting at
/// once take turns on an advisory lock (`IF NOT EXISTS` alone races), and only what is missing
/// is created, so a user without the right to create may use what exists.
async fn create(pool: &PgPool, schema: Option<&str>, secrets: &Secrets) -> Result<String> {
    let db = |e: sqlx::Error| secrets.error(e);
    let mut tx = pool.begin().await.map_err(db)?;
    let schema = match schema {
        Some(schema) => schema.to_owned(),
        None => sqlx::query_scalar::<_, Option<String>>("SELECT current_schema()")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?
            .ok_or_else(|| Error::Invalid("the connection's search_path names no schema that exists".into()))?,
    };
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("switchboard-saga:{schema}"))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let (has_schema, tables): (bool, i64) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                (SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename IN ('sb_sagas', 'sb_saga_log'))",
    )
    .bind(&schema)
    .fetch_one(&mut *tx)
    .await
    .map_err(db)?;
    if !has_schema {
        // Checked by `check_schema` (the current schema exists): quoting is enough.
        let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", schema.replace('"', "\"\""));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    if tables < 2 {
        sqlx::raw_sql(TABLES).execute(&mut *tx).await.map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(schema)
}

/// What must not be shown of a URL: its password, as written and percent-decoded.
struct Secrets(Vec<String>);

impl Secrets {
    fn of(url: &str) -> Self {
        let mut secrets = Vec::new();
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            secrets.push(password.to_owned());
        }
        if let Some((_, query)) = url.split_once('?') {
            let pairs = query.split(['&', '#']).filter_map(|pair| pair.split_once('='));
            secrets.extend(pairs.filter(|(k, _)| *k == "password").map(|(_, v)| v.to_owned()));
        }
        let decoded: Vec<String> = secrets.iter().map(|s| percent_decode(s)).collect();
        secrets.extend(decoded);
        secrets.retain(|s| !s.is_empty());
        // Longest first, so that a secret inside another is not left half masked.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Secrets(secrets)
    }

    /// `e` as [`Error::Postgres`], the password masked wherever it shows.
    fn error(&self, e: sqlx::Error) -> Error {
        let message = e.to_string();
        Error::Postgres(
            self.0
                .iter()
                .fold(message, |m, secret| m.replace(secret.as_str(), "***")),
        )
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
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
            assert!(s.0.iter().any(|x| x == secret), "{secret} missing");
        }
        assert!(Secrets::of("postgres://me@db/x").0.is_empty());
        let masked = s.error(sqlx::Error::Protocol("it was p@ss, p%40ss and other".into()));
        let shown = format!("{masked} {masked:?}");
        assert!(
            !["p@ss", "p%40ss", "other"].iter().any(|p| shown.contains(p)),
            "{shown}"
        );
    }

    #[test]
    fn schema_names() {
        for good in ["public", "saga_t_0123abcd", "A_b9", &"x".repeat(63)] {
            assert!(check_schema(good).is_ok(), "{good}");
        }
        for bad in ["", "9a", "a-b", "a\"b", "a b", "ä", &"x".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
