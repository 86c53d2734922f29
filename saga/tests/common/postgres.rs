//! PostgreSQL for tests: a saga log in a fresh schema of the test server, or a skip when there is
//! no server (a failure when `CI` is set).
//!
//! The server is `postgres://postgres@127.0.0.1:5432/postgres` unless `SB_POSTGRES_URL` says
//! otherwise; `scripts/brokers.sh` starts it. Each log gets its own schema, `saga_t_<uuid>`, so
//! tests run in parallel; schemas older than a quarter of an hour (left by earlier runs, as no
//! test takes that long) are dropped once per test process.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_saga::log::PgLog;
use switchboard_saga::log::postgres::sqlx;
use uuid::Uuid;

/// The test server's URL.
pub fn url() -> String {
    std::env::var("SB_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh schema name: a v7 UUID, whose time says when it was made (for the cleanup).
pub fn fresh_schema() -> String {
    format!("saga_t_{}", Uuid::now_v7().simple())
}

/// A log in a fresh schema, or `None` (having said why) when PostgreSQL is unreachable and `CI`
/// is not set.
pub async fn log() -> Option<PgLog> {
    log_in(&fresh_schema(), Duration::from_secs(30)).await
}

/// A log in `schema` (created if missing) whose leases last `lease`, or `None` as for [`log`].
pub async fn log_in(schema: &str, lease: Duration) -> Option<PgLog> {
    if !reachable() {
        return skip("PostgreSQL does not answer");
    }
    let log = match PgLog::builder(url())
        .schema(schema)
        .max_connections(4)
        .lease(lease)
        .connect()
        .await
    {
        Ok(log) => log,
        Err(e) => return skip(&format!("PostgreSQL refused the connection: {e}")),
    };
    cleanup_once(&log).await;
    Some(log)
}

/// Whether the server's port answers, asked once per process (a refused connection is retried
/// by the pool for its whole timeout otherwise, in every test).
fn reachable() -> bool {
    static REACHABLE: OnceLock<bool> = OnceLock::new();
    *REACHABLE.get_or_init(|| {
        let Ok(options) = sqlx::postgres::PgConnectOptions::from_str(&url()) else {
            return false;
        };
        let host = options.get_host();
        if host.starts_with('/') {
            return true; // A Unix socket: let the connection tell.
        }
        let Ok(addrs) = (host, options.get_port()).to_socket_addrs() else {
            return false;
        };
        addrs
            .into_iter()
            .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
    })
}

fn skip(why: &str) -> Option<PgLog> {
    if std::env::var_os("CI").is_some() {
        panic!(
            "PostgreSQL is missing (CI is set, so this fails instead of skipping): start it with scripts/brokers.sh ({why})"
        );
    }
    let line = format!("SKIPPED: PostgreSQL is missing: start it with scripts/brokers.sh ({why})");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("SB_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(file, "{line}");
    }
    None
}

/// At most this many old schemas are dropped per process, so that the first test is not slowed
/// down much; every test process drops some, more than a run makes.
const MAX_DROPS: usize = 100;

/// Drops the test schemas more than a quarter of an hour old, once per process; a failure only
/// leaves them.
async fn cleanup_once(log: &PgLog) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(schemas) =
        sqlx::query_scalar::<_, String>("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'saga\\_t\\_%'")
            .fetch_all(log.pool())
            .await
    else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let old = schemas.into_iter().filter(|schema| {
        let made = schema
            .strip_prefix("saga_t_")
            .and_then(|id| Uuid::try_parse(id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|t| t.to_unix());
        made.is_some_and(|(secs, nanos)| {
            now.saturating_sub(secs * 1000 + u64::from(nanos) / 1_000_000) > 15 * 60 * 1000
        })
    });
    for schema in old.take(MAX_DROPS) {
        // The name is `saga_t_` and 32 hex digits: safe to quote.
        let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(log.pool()).await;
    }
}
