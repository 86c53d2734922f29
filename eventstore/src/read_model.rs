//! Read models in SQLite, exactly once: each batch of events and the model's checkpoint are
//! committed in one transaction of the model's own database.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction};

use crate::error::{Error, Result};
use crate::event::Recorded;
use crate::store::EventStore;

type Apply = dyn FnMut(&Transaction<'_>, &Recorded) -> Result<()> + Send;

/// A projection into tables of an SQLite database (the store's file or another): `apply` runs
/// for each event inside a transaction that also moves the model's checkpoint, so after a
/// crash every event is in the model exactly once.
///
/// ```
/// use switchboard_eventstore::{EventStore, ExpectedVersion, MemoryStore, NewEvent, SqliteReadModel};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store = MemoryStore::new();
/// store.append("user-1", ExpectedVersion::Any, vec![NewEvent::raw("USER_CREATED", 1, r#"{"name":"Ada"}"#)]).await?;
/// let model = SqliteReadModel::open(dir.path().join("users.db"), "users", |tx, event| {
///     tx.execute_batch("CREATE TABLE IF NOT EXISTS users (name TEXT)")?;
///     if event.name == "USER_CREATED" {
///         let user: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
///         tx.execute("INSERT INTO users (name) VALUES (?1)", [user["name"].as_str()])?;
///     }
///     Ok(())
/// })?;
/// model.catch_up(&store).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteReadModel {
    name: String,
    inner: Arc<Mutex<(Connection, Box<Apply>)>>,
    batch: usize,
}

impl std::fmt::Debug for SqliteReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReadModel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SqliteReadModel {
    /// A model named `name` in the database at `path`.
    pub fn open(
        path: impl AsRef<Path>,
        name: impl Into<String>,
        apply: impl FnMut(&Transaction<'_>, &Recorded) -> Result<()> + Send + 'static,
    ) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS sb_read_models (name TEXT PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID",
        )?;
        Ok(SqliteReadModel {
            name: name.into(),
            inner: Arc::new(Mutex::new((conn, Box::new(apply)))),
            batch: 1024,
        })
    }

    /// The model's checkpoint: the position of the last event in it.
    pub async fn position(&self) -> Result<u64> {
        let (inner, name) = (self.inner.clone(), self.name.clone());
        blocking(move || {
            let guard = inner.lock().unwrap_or_else(|e| e.into_inner());
            position(&guard.0, &name)
        })
        .await
    }

    /// Runs `f` on the model's connection (to query it).
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || f(&inner.lock().unwrap_or_else(|e| e.into_inner()).0)).await
    }

    /// Applies every event after the model's checkpoint, then returns it.
    pub async fn catch_up<S: EventStore>(&self, store: &S) -> Result<u64> {
        loop {
            let from = self.position().await?;
            let events = store.read_all(from, self.batch).await?;
            let n = events.len();
            let (inner, name) = (self.inner.clone(), self.name.clone());
            let at = blocking(move || {
                let mut guard = inner.lock().unwrap_or_else(|e| e.into_inner());
                let (conn, apply) = &mut *guard;
                let tx = conn.transaction()?;
                // Re-read under the transaction: a second runner may have moved it.
                let start = position(&tx, &name)?;
                let mut at = start;
                for event in events.iter().filter(|e| e.position > start) {
                    apply(&tx, event)?;
                    at = event.position;
                }
                tx.execute(
                    "INSERT INTO sb_read_models (name, position) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                    rusqlite::params![name, at as i64],
                )?;
                tx.commit()?;
                Ok(at)
            })
            .await?;
            if n < self.batch {
                return Ok(at);
            }
        }
    }

    /// Catches up, then follows commits until `stop` resolves.
    pub async fn run<S: EventStore>(&self, store: &S, stop: impl Future<Output = ()>) -> Result<()> {
        follow(store, stop, || self.catch_up(store)).await
    }

    /// Empties the checkpoint, so the next run replays every event; clear the model's tables
    /// in `reset` (same transaction).
    pub async fn rebuild<S: EventStore>(
        &self,
        store: &S,
        reset: impl FnOnce(&Transaction<'_>) -> Result<()> + Send + 'static,
    ) -> Result<u64> {
        let (inner, name) = (self.inner.clone(), self.name.clone());
        blocking(move || {
            let mut guard = inner.lock().unwrap_or_else(|e| e.into_inner());
            let tx = guard.0.transaction()?;
            reset(&tx)?;
            tx.execute("DELETE FROM sb_read_models WHERE name = ?1", [name])?;
            Ok(tx.commit()?)
        })
        .await?;
        self.catch_up(store).await
    }
}

/// Runs `catch_up` until `stop` resolves: again at once when the store's head moved past it
/// meanwhile, else on the next commit (or after a second, for a head another process moved
/// without this one hearing).
pub(crate) async fn follow<S, F, Fut>(store: &S, stop: impl Future<Output = ()>, mut catch_up: F) -> Result<()>
where
    S: EventStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64>>,
{
    let mut head = store.watch_head();
    tokio::pin!(stop);
    loop {
        head.mark_unchanged();
        let at = catch_up().await?;
        if *head.borrow() > at {
            continue;
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = head.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn position(conn: &Connection, name: &str) -> Result<u64> {
    let at = conn
        .prepare_cached("SELECT position FROM sb_read_models WHERE name = ?1")?
        .query_row([name], |r| r.get::<_, i64>(0))
        .optional()?;
    Ok(at.unwrap_or(0) as u64)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|_| Error::Closed)?
}
