//! Catch-up-then-live subscriptions to the global sequence, with a durable checkpoint.

use std::future::Future;
use std::pin::Pin;
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
    pub async fn catch_up<F, Fut>(&self, handle: F) -> Result<u64>
    where
        F: FnMut(Recorded) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut reader = self.reader().await?;
        deliver(&mut reader, handle).await?;
        Ok(reader.position())
    }

    /// Catches up, then delivers new events as they commit, until `stop` resolves or `handle`
    /// fails.
    pub async fn run<F, Fut>(&self, handle: F, stop: impl Future<Output = ()> + Send) -> Result<()>
    where
        F: FnMut(Recorded) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        deliver(&mut self.reader().await?.until(stop), handle).await
    }

    /// A reader from the saved checkpoint, to take batches by hand.
    pub async fn reader(&self) -> Result<Reader<'_, S>> {
        let head = self.store.watch_head();
        let position = self.store.checkpoint(&self.name).await?.unwrap_or(0);
        Ok(Reader {
            subscription: self,
            position,
            head,
            stop: None,
            stopped: false,
        })
    }
}

/// Hands each event of each batch to `handle`, moving the checkpoint after each batch.
async fn deliver<S, F, Fut>(reader: &mut Reader<'_, S>, mut handle: F) -> Result<()>
where
    S: EventStore,
    F: FnMut(Recorded) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    while let Some(events) = reader.next().await? {
        let last = last_position(&events);
        for event in events {
            handle(event).await?;
        }
        reader.commit(last).await?;
    }
    Ok(())
}

/// The position of a batch's last event (0 for none).
pub(crate) fn last_position(events: &[Recorded]) -> u64 {
    events.last().map_or(0, |e| e.position)
}

/// Batches of a [`Subscription`], by hand: [`next`](Self::next), handle them,
/// [`commit`](Self::commit) the last position.
pub struct Reader<'a, S> {
    subscription: &'a Subscription<S>,
    position: u64,
    head: tokio::sync::watch::Receiver<u64>,
    /// Set by [`until`](Self::until): follow new commits until it resolves.
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>>,
    stopped: bool,
}

impl<S> std::fmt::Debug for Reader<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<'a, S: EventStore> Reader<'a, S> {
    /// Once caught up, waits for new commits instead of ending, until `stop` resolves.
    pub fn until(mut self, stop: impl Future<Output = ()> + Send + 'a) -> Self {
        self.stop = Some(Box::pin(stop));
        self
    }

    /// The position of the last committed event.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next events after the reader's position; once caught up, `None`, or with
    /// [`until`](Self::until) the next commit's events (`None` once `stop` resolved).
    pub async fn next(&mut self) -> Result<Option<Vec<Recorded>>> {
        loop {
            if self.stopped {
                return Ok(None);
            }
            // Marked seen before reading: a commit after the read is a change to wait for;
            // deleted events past the position are not (they would make this spin).
            self.head.borrow_and_update();
            let events = self
                .subscription
                .store
                .read_all(self.position, self.subscription.batch)
                .await?;
            if !events.is_empty() {
                return Ok(Some(events));
            }
            let Some(stop) = self.stop.as_mut() else {
                return Ok(None);
            };
            tokio::select! {
                _ = stop => self.stopped = true,
                _ = self.head.changed() => {}
                _ = tokio::time::sleep(self.subscription.poll) => {}
            }
        }
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

    /// Sleeps for `period`; false if `stop` resolved meanwhile (the reader then ends).
    pub async fn pause(&mut self, period: Duration) -> bool {
        match self.stop.as_mut() {
            Some(stop) if !self.stopped => tokio::select! {
                _ = stop => self.stopped = true,
                _ = tokio::time::sleep(period) => {}
            },
            _ => tokio::time::sleep(period).await,
        }
        !self.stopped
    }
}
