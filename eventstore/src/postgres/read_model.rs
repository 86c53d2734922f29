//! Read models in PostgreSQL, exactly once: each batch of events and the model's checkpoint
//! are committed in one transaction of the model's database.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::{Acquire, PgConnection, PgPool};
use tokio::sync::Mutex;

use crate::error::Result;
use crate::event::Recorded;
use crate::store::EventStore;

type Apply = dyn for<'a> FnMut(&'a mut PgConnection, &'a Recorded) -> BoxFuture<'a, Result<()>> + Send;

/// A projection into tables of a PostgreSQL database (the store's or another): `apply` runs
/// for each event inside a transaction that also moves the model's checkpoint (a row of
/// `sb_read_models` in the pool's schema), so after a crash every event is in the model
/// exactly once. Runners of one model in several processes take turns on its checkpoint row.
///
/// ```no_run
/// use futures_util::FutureExt;
/// use switchboard_eventstore::postgres::{PgReadModel, sqlx};
/// use switchboard_eventstore::PgStore;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> switchboard_eventstore::Result<()> {
/// let store = PgStore::builder("postgres://postgres@127.0.0.1:5432/postgres").connect().await?;
/// sqlx::query("CREATE TABLE IF NOT EXISTS users_seen (id TEXT PRIMARY KEY, at BIGINT)")
///     .execute(store.pool())
///     .await?;
/// let model = PgReadModel::connect(store.pool().clone(), "users_seen", |tx, event| {
///     async move {
///         if event.name == "USER_CREATED" {
///             sqlx::query("INSERT INTO users_seen (id, at) VALUES ($1, $2)")
///                 .bind(&event.stream)
///                 .bind(event.position as i64)
///                 .execute(&mut *tx)
///                 .await?;
///         }
///         Ok(())
///     }
///     .boxed()
/// })
/// .await?;
/// model.catch_up(&store).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgReadModel {
    name: String,
    pool: PgPool,
    apply: Arc<Mutex<Box<Apply>>>,
    batch: usize,
}

impl std::fmt::Debug for PgReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReadModel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PgReadModel {
    /// A model named `name` whose tables are reached through `pool`; creates the checkpoint
    /// table when missing.
    pub async fn connect(
        pool: PgPool,
        name: impl Into<String>,
        apply: impl for<'a> FnMut(&'a mut PgConnection, &'a Recorded) -> BoxFuture<'a, Result<()>> + Send + 'static,
    ) -> Result<Self> {
        sqlx::query("CREATE TABLE IF NOT EXISTS sb_read_models (name TEXT PRIMARY KEY, position BIGINT NOT NULL)")
            .execute(&pool)
            .await?;
        Ok(PgReadModel {
            name: name.into(),
            pool,
            apply: Arc::new(Mutex::new(Box::new(apply))),
            batch: 1024,
        })
    }

    /// The pool the model's tables are reached through (to query them).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The model's checkpoint: the position of the last event in it.
    pub async fn position(&self) -> Result<u64> {
        let at: Option<i64> = sqlx::query_scalar("SELECT position FROM sb_read_models WHERE name = $1")
            .bind(&self.name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(at.unwrap_or(0) as u64)
    }

    /// Applies every event after the model's checkpoint, then returns it.
    pub async fn catch_up<S: EventStore>(&self, store: &S) -> Result<u64> {
        let mut apply = self.apply.lock().await;
        loop {
            let mut conn = self.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            // The checkpoint row, locked: another runner of this model waits for this batch.
            sqlx::query("INSERT INTO sb_read_models (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING")
                .bind(&self.name)
                .execute(&mut *tx)
                .await?;
            let start: i64 = sqlx::query_scalar("SELECT position FROM sb_read_models WHERE name = $1 FOR UPDATE")
                .bind(&self.name)
                .fetch_one(&mut *tx)
                .await?;
            let events = store.read_all(start as u64, self.batch).await?;
            let mut at = start as u64;
            for event in &events {
                (*apply)(&mut tx, event).await?;
                at = event.position;
            }
            sqlx::query("UPDATE sb_read_models SET position = $2 WHERE name = $1")
                .bind(&self.name)
                .bind(at as i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            if events.len() < self.batch {
                return Ok(at);
            }
        }
    }

    /// Catches up, then follows commits until `stop` resolves.
    pub async fn run<S: EventStore>(&self, store: &S, stop: impl Future<Output = ()>) -> Result<()> {
        crate::read_model::follow(store, stop, || self.catch_up(store)).await
    }

    /// Empties the checkpoint, so the next run replays every event; clear the model's tables
    /// in `reset` (same transaction).
    pub async fn rebuild<S: EventStore>(
        &self,
        store: &S,
        reset: impl for<'a> FnOnce(&'a mut PgConnection) -> BoxFuture<'a, Result<()>>,
    ) -> Result<u64> {
        {
            let _turn = self.apply.lock().await;
            let mut tx = self.pool.begin().await?;
            reset(&mut tx).await?;
            sqlx::query("DELETE FROM sb_read_models WHERE name = $1")
                .bind(&self.name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        self.catch_up(store).await
    }
}
