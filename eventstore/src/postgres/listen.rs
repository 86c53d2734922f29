//! Other processes' commits: every append transaction notifies `<schema>_es_head` with the new
//! head; one task per store listens and raises the watched head. Notifications sent while the
//! listening connection was down are lost, so after a reconnect the head is read again.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::store::advance_head;

/// The longest wait between two attempts to listen again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A listener on `channel`, over its own pool of one connection (which it keeps).
pub(super) async fn listen(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}

/// The committed head.
pub(super) async fn read_head(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let head: i64 = sqlx::query_scalar("SELECT position FROM es_head WHERE id = 0")
        .fetch_one(pool)
        .await?;
    Ok(head as u64)
}

/// Listens until aborted (when the store is dropped). `listener` already listens; `listen_pool`
/// makes a new one, `pool` reads the head after a reconnect.
pub(super) async fn run(
    listener: PgListener,
    listen_pool: PgPool,
    pool: PgPool,
    channel: String,
    head: Arc<watch::Sender<u64>>,
) {
    let mut listener = Some(listener);
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(current) = listener.as_mut() else {
            match listen(&listen_pool, &channel).await {
                Ok(new) => {
                    listener = Some(new);
                    backoff = Duration::from_millis(50);
                    resync(&pool, &head).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the event store cannot listen for other processes' commits; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        };
        match current.try_recv().await {
            Ok(Some(notification)) => match notification.payload().parse::<u64>() {
                Ok(position) => advance_head(&head, position),
                Err(_) => tracing::debug!(payload = notification.payload(), "a notification that is not a head"),
            },
            // The connection was lost and is back, listening again: what was missed is in the head.
            Ok(None) => resync(&pool, &head).await,
            Err(e) => {
                tracing::warn!(error = %e, "the event store's listener failed; listening again");
                listener = None;
            }
        }
    }
}

/// Reads the head into the watch, retrying until it can.
async fn resync(pool: &PgPool, head: &watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match read_head(pool).await {
            Ok(position) => return advance_head(head, position),
            Err(e) => {
                tracing::warn!(error = %e, "the event store cannot read its head; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
