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
    plans_kept(conn)?;
    // The checkpointer thread keeps the WAL short; this is only the backstop (64 MiB).
    conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
    Ok(())
}

/// Statements keep the plan they were prepared with. Otherwise (the bundled SQLite is built
/// with `STAT4`) a statement that looks a stream up by a bound name in an index that is not the
/// primary key is compiled again for every new name: some 20 µs on the writer thread for each
/// append to a stream it has not seen.
pub(super) fn plans_kept(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    #[test]
    fn looking_up_new_streams_does_not_compile_the_statement_again() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        configure(&conn, Synchronous::Normal).unwrap();
        conn.execute_batch(TABLES).unwrap();
        for i in 0..20 {
            super::super::writer::stream_state(&conn, &format!("order-{i}")).unwrap();
        }
        let statement = conn.prepare_cached(super::super::writer::STREAM_STATE).unwrap();
        assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
    }
}
