//! The tables, created once per schema under an advisory lock, and the names derived from the
//! schema's name.

use sqlx::{Connection, PgConnection};

use crate::error::{Error, Result};

/// The tables, in the schema the connection's `search_path` names. `data` and `metadata` are
/// `json`, not `jsonb`: `json` keeps the text as it was given, so the bytes round-trip.
/// `es_head` holds the last position handed out; appends move it in their own transaction, so its
/// row lock orders their commits (see the appender). It also counts the truncations and
/// tombstones (`deletions`), so that an append can tell one committed after its snapshot.
/// `es_streams` has a row only for a stream that was truncated or tombstoned: a stream's
/// revision is otherwise its last event's.
const TABLES: &str = "
SET LOCAL client_min_messages = warning;
CREATE TABLE IF NOT EXISTS es_events (
    position bigint PRIMARY KEY,
    stream text NOT NULL,
    revision bigint NOT NULL,
    id uuid NOT NULL,
    name text NOT NULL,
    version bigint NOT NULL,
    data json NOT NULL,
    metadata json NOT NULL,
    recorded_at bigint NOT NULL,
    CONSTRAINT es_events_stream UNIQUE (stream, revision),
    CONSTRAINT es_events_id UNIQUE (id)
);
CREATE TABLE IF NOT EXISTS es_streams (
    stream text PRIMARY KEY,
    revision bigint NOT NULL,
    deleted boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS es_head (
    id integer PRIMARY KEY CHECK (id = 0),
    position bigint NOT NULL,
    deletions bigint NOT NULL DEFAULT 0
);
INSERT INTO es_head (id, position) VALUES (0, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS es_checkpoints (
    name text PRIMARY KEY,
    position bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS es_snapshots (
    stream text PRIMARY KEY,
    revision bigint NOT NULL,
    schema text NOT NULL,
    data json NOT NULL
);
";

/// What tables made before `es_head.deletions` lack (their `es_streams` rows, which appends
/// kept up to date then, hold revisions no greater than the events': they stay right).
const DELETIONS: &str = "ALTER TABLE es_head ADD COLUMN IF NOT EXISTS deletions bigint NOT NULL DEFAULT 0";

/// The longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER: usize = 63;

/// Refuses a schema name that would need more than double quotes to be safe: ASCII letters,
/// digits and `_`, not starting with a digit, at most 63 bytes.
pub(super) fn check_schema(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IDENTIFIER
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "schema name `{name}` must be 1 to {MAX_IDENTIFIER} ASCII letters, digits or `_`, not starting with a digit"
        )))
    }
}

/// The `search_path` value that puts everything in `schema`.
pub(super) fn search_path(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// The `LISTEN`/`NOTIFY` channel of the store in `schema`: `<schema>_es_head`, or, when that is
/// longer than PostgreSQL keeps, a shorter name made from a hash of the schema's name.
pub(super) fn channel(schema: &str) -> String {
    let name = format!("{schema}_es_head");
    if name.len() <= MAX_IDENTIFIER {
        return name;
    }
    // FNV-1a: stable across processes and versions, which std's hasher does not promise.
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut prefix = String::new();
    for c in schema.chars() {
        if prefix.len() + c.len_utf8() > MAX_IDENTIFIER - 25 {
            break;
        }
        prefix.push(c);
    }
    format!("{prefix}_{hash:016x}_es_head")
}

/// Creates the schema (if `create_schema`) and the tables, if missing, and returns the name of
/// the schema they are in. Safe when several processes start at once: they take turns on an
/// advisory lock named after the schema (`CREATE ... IF NOT EXISTS` alone is not safe then).
pub(super) async fn create(conn: &mut PgConnection, schema: Option<&str>) -> Result<String> {
    let mut tx = conn.begin().await?;
    let schema = match schema {
        Some(schema) => schema.to_owned(),
        None => sqlx::query_scalar::<_, Option<String>>("SELECT current_schema()")
            .fetch_one(&mut *tx)
            .await?
            .ok_or_else(|| Error::Invalid("the connection's search_path names no schema that exists".into()))?,
    };
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("switchboard-eventstore:{schema}"))
        .execute(&mut *tx)
        .await?;
    // Only what is missing: a user without the right to create may use what exists.
    let (has_schema, tables, has_deletions): (bool, i64, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                (SELECT count(*) FROM pg_tables WHERE schemaname = $1
                 AND tablename IN ('es_events', 'es_streams', 'es_head', 'es_checkpoints', 'es_snapshots')),
                EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                        JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = $1 AND c.relname = 'es_head' AND a.attname = 'deletions'
                        AND NOT a.attisdropped)",
    )
    .bind(&schema)
    .fetch_one(&mut *tx)
    .await?;
    if !has_schema {
        // The name was checked (`check_schema`): quoting is enough.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA \"{}\"",
            schema.replace('"', "\"\"")
        )))
        .execute(&mut *tx)
        .await?;
    }
    if tables < 5 {
        sqlx::raw_sql(TABLES).execute(&mut *tx).await?;
    }
    if !has_deletions {
        sqlx::raw_sql(DELETIONS).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for good in ["public", "es_t_0123abcd", "A_b9", &"x".repeat(63)] {
            assert!(check_schema(good).is_ok(), "{good}");
        }
        for bad in ["", "9a", "a-b", "a\"b", "a b", "ä", &"x".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channels_fit_in_an_identifier() {
        assert_eq!(channel("es_t_1"), "es_t_1_es_head");
        let long = "x".repeat(63);
        let c = channel(&long);
        assert!(c.len() <= MAX_IDENTIFIER, "{c}");
        assert_ne!(c, channel(&"x".repeat(62)));
        assert_eq!(c, channel(&long), "stable");
    }
}
