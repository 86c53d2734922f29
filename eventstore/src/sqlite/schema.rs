//! The tables, and the settings every connection gets.

use rusqlite::Connection;

use super::Synchronous;

pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS es_events (
    position INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    revision INTEGER NOT NULL,
    id BLOB NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS es_events_stream ON es_events (stream, revision);
CREATE UNIQUE INDEX IF NOT EXISTS es_events_id ON es_events (id);
CREATE TABLE IF NOT EXISTS es_streams (
    stream TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS es_head (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    position INTEGER NOT NULL
);
INSERT OR IGNORE INTO es_head (id, position) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS es_checkpoints (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS es_snapshots (
    stream TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    schema TEXT NOT NULL,
    data TEXT NOT NULL
) WITHOUT ROWID;
";

/// WAL (readers never block the writer), the durability asked for, and a wait instead of an
/// immediate `SQLITE_BUSY` when another process holds the write lock.
pub(super) fn configure(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous.pragma())?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(64);
    // The checkpointer thread keeps the WAL short; this is only the backstop (64 MiB).
    conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
    Ok(())
}
