//! The consumer's side of at-least-once delivery: an inbox that remembers which idempotency
//! keys it has handled, so a message delivered twice has its effect once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
#[cfg(feature = "sqlite")]
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use switchboard::{Reply, Request, Route};
use tower::{Layer, Service};

use crate::error::Result;
use crate::projection::IDEMPOTENCY_KEY;

/// Keys a memory inbox remembers before forgetting the oldest.
const MEMORY_KEYS: usize = 100_000;
/// The longest key an inbox records: a key comes from the sender, and each is kept.
const MAX_KEY_LEN: usize = 256;
/// An SQLite inbox forgets keys older than this, when opened and every
/// [`PRUNE_EVERY`] records: it holds at most this long's keys and that many more.
#[cfg(feature = "sqlite")]
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
#[cfg(feature = "sqlite")]
const PRUNE_EVERY: u32 = 4096;

/// Remembers handled [`IDEMPOTENCY_KEY`]s (and a request's reply, answered again to a retry).
/// As a service layer ([`Inbox::layer`]) it skips messages whose key it has seen; a message
/// without the header goes through, and one whose key is over 256 bytes is refused.
///
/// A key is recorded after its handler succeeded: a consumer killed in between handles the
/// message again. Copies of one key arriving at once in one process run one at a time (the
/// later ones find the first's record); replicas of a consumer sharing an SQLite inbox do
/// not coordinate that way. For an effect that must happen exactly once, write it and the key in one
/// transaction ([`SqliteReadModel`](crate::SqliteReadModel) does so for read models).
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard_eventstore::Inbox;
///
/// #[event_pattern("USER_CREATED")]
/// async fn welcome(_user: serde_json::Value) {}
///
/// let inbox = Inbox::memory();
/// let service = Microservice::new().handler(WELCOME).layer(inbox.layer()).listen("mem://welcome");
/// # drop(service);
/// ```
#[derive(Clone)]
pub struct Inbox {
    backend: Backend,
    running: Arc<Running>,
}

/// Keys being handled in this process: a copy arriving meanwhile waits for the first.
#[derive(Default)]
struct Running {
    keys: Mutex<std::collections::HashSet<String>>,
    done: tokio::sync::Notify,
}

/// Held while a key's message is handled.
struct Claim {
    running: Arc<Running>,
    key: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.running
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        self.running.done.notify_waiters();
    }
}

impl Inbox {
    /// Waits until no other message with `key` is being handled here, then holds it.
    async fn claim(&self, key: &str) -> Claim {
        loop {
            let done = self.running.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self
                .running
                .keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.to_owned())
            {
                return Claim {
                    running: self.running.clone(),
                    key: key.to_owned(),
                };
            }
            done.await;
        }
    }
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Mutex<Remembered>>),
    #[cfg(feature = "sqlite")]
    Sqlite(Arc<Mutex<SqliteInbox>>),
}

#[cfg(feature = "sqlite")]
struct SqliteInbox {
    conn: rusqlite::Connection,
    /// Keys recorded since old ones were last forgotten.
    recorded: u32,
}

#[cfg(feature = "sqlite")]
impl SqliteInbox {
    fn prune(&mut self) -> Result<()> {
        self.recorded = 0;
        let before = crate::memory::now_millis() - KEEP.as_millis() as i64;
        self.conn
            .prepare_cached("DELETE FROM sb_inbox WHERE at < ?1")?
            .execute([before])?;
        Ok(())
    }
}

#[derive(Default)]
struct Remembered {
    replies: HashMap<String, Option<Bytes>>,
    order: VecDeque<String>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            Backend::Memory(_) => "Inbox(memory)",
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(_) => "Inbox(sqlite)",
        })
    }
}

impl Inbox {
    /// An inbox in memory (the last 100,000 keys): survives nothing.
    pub fn memory() -> Self {
        Inbox {
            backend: Backend::Memory(Arc::default()),
            running: Arc::default(),
        }
    }

    /// An inbox in an SQLite file (`synchronous=NORMAL`: a recorded key survives a process
    /// kill). Keys older than 7 days are forgotten (when it is opened, and every 4,096 keys
    /// recorded).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS sb_inbox (key TEXT PRIMARY KEY, reply BLOB, at INTEGER NOT NULL) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS sb_inbox_at ON sb_inbox (at);",
        )?;
        let mut inbox = SqliteInbox { conn, recorded: 0 };
        inbox.prune()?;
        Ok(Inbox {
            backend: Backend::Sqlite(Arc::new(Mutex::new(inbox))),
            running: Arc::default(),
        })
    }

    /// `Some(reply)` if `key` was handled (`reply` is `None` for an event).
    pub async fn seen(&self, key: &str) -> Result<Option<Option<Bytes>>> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.lock().unwrap_or_else(|e| e.into_inner()).replies.get(key).cloned()),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(conn) => {
                let (conn, key) = (conn.clone(), key.to_owned());
                blocking(move || {
                    use rusqlite::OptionalExtension;
                    let inbox = conn.lock().unwrap_or_else(|e| e.into_inner());
                    let reply = inbox
                        .conn
                        .prepare_cached("SELECT reply FROM sb_inbox WHERE key = ?1")?
                        .query_row([key], |r| r.get::<_, Option<Vec<u8>>>(0))
                        .optional()?;
                    Ok(reply.map(|r| r.map(Bytes::from)))
                })
                .await
            }
        }
    }

    /// Records `key` as handled, with the reply to answer again.
    pub async fn record(&self, key: &str, reply: Option<Bytes>) -> Result<()> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                if m.replies.insert(key.to_owned(), reply).is_none() {
                    m.order.push_back(key.to_owned());
                }
                while m.order.len() > MEMORY_KEYS {
                    if let Some(old) = m.order.pop_front() {
                        m.replies.remove(&old);
                    }
                }
                Ok(())
            }
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(conn) => {
                let (conn, key) = (conn.clone(), key.to_owned());
                blocking(move || {
                    let mut inbox = conn.lock().unwrap_or_else(|e| e.into_inner());
                    inbox
                        .conn
                        .prepare_cached("INSERT OR REPLACE INTO sb_inbox (key, reply, at) VALUES (?1, ?2, ?3)")?
                        .execute(rusqlite::params![key, reply.as_deref(), crate::memory::now_millis()])?;
                    inbox.recorded += 1;
                    if inbox.recorded >= PRUNE_EVERY {
                        inbox.prune()?;
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    /// The service layer: skips messages already handled, answers a repeated request with
    /// the reply it got the first time.
    pub fn layer(&self) -> InboxLayer {
        InboxLayer(self.clone())
    }
}

#[cfg(feature = "sqlite")]
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|_| crate::Error::Closed)?
}

/// The layer [`Inbox::layer`] makes.
#[derive(Clone, Debug)]
pub struct InboxLayer(Inbox);

impl Layer<Route> for InboxLayer {
    type Service = InboxService;

    fn layer(&self, inner: Route) -> InboxService {
        InboxService {
            inbox: self.0.clone(),
            inner,
        }
    }
}

/// The service [`InboxLayer`] makes.
#[derive(Clone, Debug)]
pub struct InboxService {
    inbox: Inbox,
    inner: Route,
}

impl Service<Request> for InboxService {
    type Response = Reply;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Reply, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(key) = req.headers().get(IDEMPOTENCY_KEY).map(str::to_owned) else {
            let reply = self.inner.call(req);
            return Box::pin(async move { Ok(reply.await) });
        };
        if key.len() > MAX_KEY_LEN {
            let refused = format!("an {IDEMPOTENCY_KEY} header is at most {MAX_KEY_LEN} bytes");
            return Box::pin(async move { Ok(Reply::error(switchboard::RpcError::new(refused))) });
        }
        let (inbox, inner) = (self.inbox.clone(), self.inner.clone());
        Box::pin(async move {
            let event = req.context().is_event();
            // Copies arriving together: one runs, the others then find its record.
            let _claim = inbox.claim(&key).await;
            match inbox.seen(&key).await {
                Ok(Some(Some(reply))) => return Ok(Reply::json(reply)),
                Ok(Some(None)) => return Ok(Reply::empty()),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "inbox unavailable; message refused");
                    return Ok(Reply::error(switchboard::RpcError::internal()));
                }
            }
            let reply = inner.call(req).await;
            if !reply.is_error() && !reply.is_stream() {
                let json = if event {
                    None
                } else {
                    reply.as_json().map(Bytes::copy_from_slice)
                };
                if let Err(e) = inbox.record(&key, json).await {
                    tracing::error!(error = %e, "inbox did not record a handled message");
                }
            }
            Ok(reply)
        })
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_sqlite_inbox_forgets_old_keys_as_it_goes_not_only_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.db");
        let inbox = Inbox::sqlite(&path).unwrap();
        // Keys recorded more than a week ago, as a long-running consumer would have them.
        let old = crate::memory::now_millis() - KEEP.as_millis() as i64 - 1000;
        let other = rusqlite::Connection::open(&path).unwrap();
        for i in 0..10 {
            other
                .execute(
                    "INSERT INTO sb_inbox (key, reply, at) VALUES (?1, NULL, ?2)",
                    rusqlite::params![format!("old{i}"), old],
                )
                .unwrap();
        }
        for i in 0..PRUNE_EVERY - 1 {
            inbox.record(&format!("new{i}"), None).await.unwrap();
        }
        assert!(inbox.seen("old0").await.unwrap().is_some(), "kept until the next prune");
        inbox.record("last", None).await.unwrap();
        assert!(inbox.seen("old0").await.unwrap().is_none(), "forgotten");
        assert!(inbox.seen("old9").await.unwrap().is_none());
        assert_eq!(inbox.seen("new0").await.unwrap(), Some(None), "this week's keys stay");
        assert_eq!(inbox.seen("last").await.unwrap(), Some(None));
    }
}
