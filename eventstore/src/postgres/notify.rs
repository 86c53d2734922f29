//! Telling other processes of this store's commits: `NOTIFY <schema>_es_head, '<head>'`, sent
//! from a connection of its own, off the appender's path.
//!
//! A notification in the commit's own statement made the commit that carried one take the
//! notification queue's lock and wake every listener before it could return, and the appender
//! kept a timer for commits left unnotified. Here the appender only publishes its head; this task
//! notifies the latest one at most every [`NOTIFY_EVERY`], so commits close together share a
//! notification. Its transactions write nothing worth an fsync, so they commit with
//! `synchronous_commit = off` (the notified commits themselves are durable already).
//!
//! Each notification still costs the machine a round trip, a wake-up of every listener and of
//! this task: every 2 ms, a one-writer store appended 7 % less than every 5 ms (the benchmark's
//! row, three interleaved passes), so 5 ms it is. (At 5 ms the two designs measure the same.)

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

/// The longest other processes wait to hear of a commit while this process lives (if it dies
/// first, they see the commit at another process's notification or their own poll).
const NOTIFY_EVERY: Duration = Duration::from_millis(5);

/// Notifies `channel` of each head `own` moves to, until the appender is gone (after the last).
pub(super) async fn run(options: PgConnectOptions, channel: String, mut own: watch::Receiver<u64>) {
    let options = options.options([("synchronous_commit", "off")]);
    let mut conn: Option<PgConnection> = None;
    while own.changed().await.is_ok() {
        let head = *own.borrow_and_update();
        if let Err(e) = notify(&mut conn, &options, &channel, head).await {
            // Others see this commit at the next notification or their own poll.
            tracing::debug!(error = %e, "the event store could not notify a commit");
            conn = None;
        }
        tokio::time::sleep(NOTIFY_EVERY).await;
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

async fn notify(
    conn: &mut Option<PgConnection>,
    options: &PgConnectOptions,
    channel: &str,
    head: u64,
) -> Result<(), sqlx::Error> {
    if conn.is_none() {
        *conn = Some(PgConnection::connect_with(options).await?);
    }
    let conn = conn.as_mut().expect("connected above");
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(head.to_string())
        .execute(conn)
        .await
        .map(drop)
}
