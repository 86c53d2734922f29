//! Catch-up-then-live subscriptions to the global sequence, with a durable checkpoint.

use std::future::Future;
use std::time::Duration;

use crate::error::Result;
use crate::event::Recorded;
use crate::store::EventStore;

/// Reads every event after a named checkpoint, in global order, then follows new ones as they
/// commit, saving the checkpoint as it goes: after a restart it resumes where it was. Delivery
/// is at least once (events after the last saved checkpoint are delivered again); pair it with
/// an [`Inbox`](crate::Inbox) or a read model that commits its own checkpoint
/// ([`SqliteReadModel`](crate::SqliteReadModel)) for exactly once.
///
/// ```
/// use switchboard_eventstore::{EventStore, ExpectedVersion, MemoryStore, NewEvent, Subscription};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> switchboard_eventstore::Result<()> {
/// let store = MemoryStore::new();
/// store.append("s", ExpectedVersion::Any, vec![NewEvent::raw("E", 1, "1")]).await?;
/// let mut seen = Vec::new();
/// Subscription::new(store.clone(), "reader")
///     .catch_up(|event| { seen.push(event.position); async { Ok(()) } })
///     .await?;
/// assert_eq!(seen, [1]);
/// assert_eq!(store.checkpoint("reader").await?, Some(1));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Subscription<S> {
    store: S,
    name: String,
    batch: usize,
    poll: Duration,
}

impl<S: EventStore> Subscription<S> {
    /// A subscription whose checkpoint is saved under `name`.
    pub fn new(store: S, name: impl Into<String>) -> Self {
        Subscription {
            store,
            name: name.into(),
            batch: 512,
            poll: Duration::from_secs(1),
        }
    }

    /// Saves its checkpoint under `name` instead.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Events read (and checkpointed) at a time.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// How often to look for commits the store does not announce (another process writing the
    /// same SQLite file). Commits in this process, and on PostgreSQL in any process, wake the
    /// subscription at once.
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// The store it reads.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The checkpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forgets the checkpoint: the next run starts from the first event (a projection rebuild).
    pub async fn reset(&self) -> Result<()> {
        self.store.save_checkpoint(&self.name, 0).await
    }

    /// Delivers every event after the checkpoint, then returns once caught up.
    pub async fn catch_up<F, Fut>(&self, mut handle: F) -> Result<u64>
    where
        F: FnMut(Recorded) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut reader = self.reader().await?;
        loop {
            let events = reader.next_batch().await?;
            let Some(last) = events.last().map(|e| e.position) else {
                return Ok(reader.position());
            };
            for event in events {
                handle(event).await?;
            }
            reader.commit(last).await?;
        }
    }

    /// Catches up, then delivers new events as they commit, until `stop` resolves or `handle`
    /// fails.
    pub async fn run<F, Fut>(&self, mut handle: F, stop: impl Future<Output = ()>) -> Result<()>
    where
        F: FnMut(Recorded) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut reader = self.reader().await?;
        tokio::pin!(stop);
        loop {
            let events = reader.next_batch().await?;
            let Some(last) = events.last().map(|e| e.position) else {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = reader.wait() => continue,
                }
            };
            for event in events {
                handle(event).await?;
            }
            reader.commit(last).await?;
        }
    }

    /// A reader from the saved checkpoint, to take batches by hand.
    pub async fn reader(&self) -> Result<Reader<'_, S>> {
        let head = self.store.watch_head();
        let position = self.store.checkpoint(&self.name).await?.unwrap_or(0);
        Ok(Reader {
            subscription: self,
            position,
            head,
        })
    }
}

/// Batches of a [`Subscription`], by hand: [`next_batch`](Self::next_batch), handle them,
/// [`commit`](Self::commit) the last position; [`wait`](Self::wait) when a batch is empty.
#[derive(Debug)]
pub struct Reader<'a, S> {
    subscription: &'a Subscription<S>,
    position: u64,
    head: tokio::sync::watch::Receiver<u64>,
}

impl<S: EventStore> Reader<'_, S> {
    /// The position of the last committed event.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next events after the reader's position (empty when caught up).
    pub async fn next_batch(&mut self) -> Result<Vec<Recorded>> {
        self.head.mark_unchanged();
        self.subscription
            .store
            .read_all(self.position, self.subscription.batch)
            .await
    }

    /// Saves the checkpoint at `position` (the last event handled).
    pub async fn commit(&mut self, position: u64) -> Result<()> {
        self.subscription
            .store
            .save_checkpoint(&self.subscription.name, position)
            .await?;
        self.position = position;
        Ok(())
    }

    /// Waits until a commit moves the head past the position (or the poll interval passes).
    pub async fn wait(&mut self) {
        if *self.head.borrow() > self.position {
            return;
        }
        tokio::select! {
            _ = self.head.changed() => {}
            _ = tokio::time::sleep(self.subscription.poll) => {}
        }
    }
}
