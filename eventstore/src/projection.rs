//! Projections as ordinary `#[event_pattern]` handlers: a service's router fed from the store.

use std::future::Future;
use std::time::Duration;

use switchboard::{Address, Context, Headers, Kind, Payload, Request, Router};

use crate::error::{Error, Result};
use crate::event::Recorded;
use crate::store::EventStore;
use crate::subscription::Subscription;

/// The header carrying an event's id: consumers deduplicate by it ([`Inbox`](crate::Inbox)).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Feeds the store's events, in global order, to a service's `#[event_pattern]` handlers (the
/// event's name is the pattern; events nobody handles are passed over), with a durable
/// checkpoint. Each event carries its id in the [`IDEMPOTENCY_KEY`] header, its stream in
/// `event-stream` and its position in `event-position`.
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard_eventstore::{EventStore, ExpectedVersion, MemoryStore, NewEvent, Projection};
///
/// #[event_pattern("USER_CREATED")]
/// async fn count_user(_user: serde_json::Value) {}
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new();
/// store.append("user-1", ExpectedVersion::NoStream, vec![NewEvent::raw("USER_CREATED", 1, "{}")]).await?;
/// let router = Microservice::new().handler(COUNT_USER).into_router()?;
/// Projection::new(store.clone(), "user-count", router).catch_up().await?;
/// assert_eq!(store.checkpoint("user-count").await?, Some(1));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Projection<S> {
    subscription: Subscription<S>,
    router: Router,
    retries: u32,
}

impl<S: EventStore> Projection<S> {
    /// A projection named `name` (its checkpoint) into `router`'s handlers.
    pub fn new(store: S, name: impl Into<String>, router: Router) -> Self {
        Projection {
            subscription: Subscription::new(store, name),
            router,
            retries: 5,
        }
    }

    /// The subscription it reads with, to tune.
    pub fn subscription(mut self, f: impl FnOnce(Subscription<S>) -> Subscription<S>) -> Self {
        self.subscription = f(self.subscription);
        self
    }

    /// How often a failing handler is tried again (with backoff) before the projection stops
    /// with its error, its checkpoint before that event.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Delivers what is there, then returns.
    pub async fn catch_up(&self) -> Result<u64> {
        self.subscription.catch_up(|event| self.deliver(event)).await
    }

    /// Delivers, then follows new events until `stop` resolves.
    pub async fn run(&self, stop: impl Future<Output = ()> + Send) -> Result<()> {
        self.subscription.run(|event| self.deliver(event), stop).await
    }

    /// Starts from the first event again: reset the read model first.
    pub async fn rebuild(&self) -> Result<u64> {
        self.subscription.reset().await?;
        self.catch_up().await
    }

    async fn deliver(&self, event: Recorded) -> Result<()> {
        let mut tries = 0;
        loop {
            let reply = self.router.call(request(&event)).await;
            let Some(err) = reply.as_error().filter(|_| !reply.is_no_handler()) else {
                return Ok(());
            };
            if tries >= self.retries {
                return Err(Error::Handler {
                    name: event.name.clone(),
                    position: event.position,
                    message: err.to_string(),
                });
            }
            tries += 1;
            tracing::warn!(event = %event.name, position = event.position, tries, error = %err, "projection handler failed; retrying");
            tokio::time::sleep(Duration::from_millis(50) * 2u32.pow(tries.min(6))).await;
        }
    }
}

/// The headers a projection's handler gets: the event's id, stream and position.
fn headers(event: &Recorded) -> Headers {
    let mut headers = Headers::default();
    headers.insert(IDEMPOTENCY_KEY, event.id.to_string());
    headers.insert("event-stream", event.stream.clone());
    headers.insert("event-position", event.position.to_string());
    headers
}

fn request(event: &Recorded) -> Request {
    let ctx = Context::new("eventstore", Kind::Event).with_headers(headers(event));
    Request::new(
        Address::route(event.name.clone()),
        Payload::Json(event.data.clone()),
        ctx,
    )
}
