//! The transactional outbox: the stored events are the outbox (appending is recording for
//! publication, in the same transaction), and a relay publishes them on any transport.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard::Client;

use crate::error::{Error, Result};
use crate::event::Recorded;
use crate::projection::IDEMPOTENCY_KEY;
use crate::store::EventStore;
use crate::subscription::{Subscription, last_position};

type Filter = Arc<dyn Fn(&Recorded) -> bool + Send + Sync>;

/// Publishes stored events as Switchboard (and NestJS) events, in global order, at least once:
/// the event's name is the pattern, its data the payload, its id the [`IDEMPOTENCY_KEY`]
/// header. Woken by each commit, not by a polling interval; its position is a checkpoint in
/// the store, saved after the publish is done, so a relay killed in between publishes the
/// last events again on restart (consumers deduplicate with an [`Inbox`](crate::Inbox)).
///
/// ```no_run
/// use switchboard::Client;
/// use switchboard_eventstore::{Relay, SqliteStore};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::open("users.db")?;
/// let bus = Client::connect("nats://127.0.0.1:4222").await?;
/// Relay::new(store, bus).run(switchboard::server::shutdown_signal()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Relay<S> {
    subscription: Subscription<S>,
    client: Client,
    filter: Option<Filter>,
    retry: Duration,
}

impl<S> std::fmt::Debug for Relay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("client", &self.client.url())
            .finish_non_exhaustive()
    }
}

impl<S: EventStore> Relay<S> {
    /// A relay publishing every stored event through `client`, checkpoint `outbox`.
    pub fn new(store: S, client: Client) -> Self {
        Relay {
            subscription: Subscription::new(store, "outbox").batch(256),
            client,
            filter: None,
            retry: Duration::from_millis(200),
        }
    }

    /// The subscription it reads with, to tune (its checkpoint's name when several relays
    /// publish to several buses, its batch, its poll).
    pub fn subscription(mut self, f: impl FnOnce(Subscription<S>) -> Subscription<S>) -> Self {
        self.subscription = f(self.subscription);
        self
    }

    /// Publishes only the events `keep` says yes to.
    pub fn filter(mut self, keep: impl Fn(&Recorded) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(keep));
        self
    }

    /// Publishes what is there, then returns (a failed publish is an error).
    pub async fn flush(&self) -> Result<u64> {
        let mut reader = self.subscription.reader().await?;
        while let Some(events) = reader.next().await? {
            self.publish(&events).await?;
            reader.commit(last_position(&events)).await?;
        }
        Ok(reader.position())
    }

    /// Publishes, then follows commits until `stop` resolves. A batch that fails (the broker
    /// is away, a connection broke) is published again, in order, until it goes through; an
    /// event that can never be published (stored data that is not JSON) ends the run with
    /// [`Error::Invalid`] instead of stalling every later one.
    pub async fn run(&self, stop: impl Future<Output = ()> + Send) -> Result<()> {
        let mut reader = self.subscription.reader().await?.until(stop);
        while let Some(events) = reader.next().await? {
            while let Err(e) = self.publish(&events).await {
                if let Error::Invalid(_) = e {
                    return Err(e);
                }
                tracing::warn!(from = events[0].position, error = %e, "outbox publish failed; retrying");
                if !reader.pause(self.retry).await {
                    return Ok(());
                }
            }
            reader.commit(last_position(&events)).await?;
        }
        Ok(())
    }

    /// Emits a batch in order, then waits until it has left the process: only then may the
    /// checkpoint pass it.
    async fn publish(&self, events: &[Recorded]) -> Result<()> {
        for event in events
            .iter()
            .filter(|e| self.filter.as_ref().is_none_or(|keep| keep(e)))
        {
            let text =
                std::str::from_utf8(&event.data).map_err(|_| Error::Invalid("stored data is not UTF-8".into()))?;
            let data: &RawValue =
                serde_json::from_str(text).map_err(|e| Error::Invalid(format!("stored data is not JSON: {e}")))?;
            self.client
                .emit_raw(&event.name, data)
                .header(IDEMPOTENCY_KEY, event.id.to_string())
                .await
                .map_err(Error::Publish)?;
        }
        self.client.flush().await.map_err(Error::Publish)
    }
}
