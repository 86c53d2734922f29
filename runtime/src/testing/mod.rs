//! The testing kit (feature `testing`): a service in your test's process, on virtual time,
//! with seeded faults and a record of everything it handled and its clients sent, as
//! MassTransit's test harness and Temporal's time-skipping test server give theirs.
//!
//! ```toml
//! [dev-dependencies]
//! switchboard = { version = "0.1", features = ["testing"] }
//! ```
//!
//! - [`TestService`] serves a [`Microservice`] on a fresh `mem://` URL and returns a
//!   [`Harness`]: typed clients ([`Harness::client`]), what was handled, sent and emitted
//!   ([`Harness::handled`], [`Harness::sent`], [`Harness::emitted`]), and waits that never
//!   hang ([`Harness::wait_handled`]).
//! - [`Faults`] drops, delays, duplicates, reorders or fails a pattern's messages
//!   ([`Fault`]), drawn from a seed: the same seed gives the same decisions
//!   ([`Harness::decisions`]).
//! - Under `#[tokio::test(start_paused = true)]` every timer of the runtime (call deadlines,
//!   retry backoff, a circuit breaker's open time, handler timeouts, rate limits) runs on
//!   tokio's virtual clock: a test that waits 30 s of breaker time takes no time, and
//!   `tokio::time::advance` moves it by hand. The feature turns on tokio's `test-util`.
//!
//! ```
//! use std::time::Duration;
//! use switchboard::prelude::*;
//! use switchboard::testing::{Fault, Faults, TestService};
//!
//! #[message_pattern("math.add")]
//! async fn add((a, b): (i64, i64)) -> i64 {
//!     a + b
//! }
//!
//! #[event_pattern("audit")]
//! async fn audit(line: String) {
//!     tracing::info!(line, "audit");
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In a test: #[tokio::test(start_paused = true)]
//! let math = TestService::new(Microservice::new().handler(ADD).handler(AUDIT))
//!     .faults(Faults::seeded(42).on("math.add", Fault::fail(RpcError::unavailable("busy")).nth(2)))
//!     .start()
//!     .await?;
//! let client = math.client();
//! assert_eq!(client.send(ADD, (5, 3)).await?, 8);
//! let second = client.send(ADD, (1, 1)).await.unwrap_err();
//! assert_eq!(second.as_rpc(), Some(&RpcError::unavailable("busy")));
//! client.emit(AUDIT, "added".to_string()).await?;
//!
//! let audited = math.wait_handled("audit", 1).await?;
//! assert_eq!(audited[0].payload, "added");
//! assert_eq!(math.handled("math.add").len(), 1); // the failed one never reached `add`
//! assert_eq!(math.sent("math.add").len(), 2);
//! assert_eq!(math.decisions_for("math.add").len(), 2);
//! math.shutdown().await?;
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::client::{Client, ClientBuilder};
use crate::error::{Error, Result};
use crate::server::{Microservice, RunningServer};
use crate::service::{Kind, Request, Route, Router, RouterBuilder};
use crate::transport::mem::MemListener;
use crate::transport::{Endpoint, Listener, Shutdown};

mod faults;
mod record;

pub use faults::{Action, Decision, Fault, FaultLayer, FaultService, Faults};
pub use record::{Handled, Outcome, Sent};

use faults::route_of;
use record::{Record, RecordCalls, RecordLayer};

/// How long a wait for handled messages lasts by default, on tokio's clock.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// A service to test: a [`Microservice`] (its state, handlers, groups, layers), the faults
/// to inject, and how long waits may last. [`start`](Self::start) serves it on a fresh
/// `mem://` URL.
///
/// ```
/// use std::time::Duration;
/// use switchboard::prelude::*;
/// use switchboard::testing::TestService;
///
/// #[derive(Clone)]
/// struct Greeting(&'static str);
///
/// #[message_pattern("greet")]
/// async fn greet(name: String, State(g): State<Greeting>) -> String {
///     format!("{} {name}", g.0)
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let svc = TestService::new(Microservice::new().with_state(Greeting("hello")).handler(GREET))
///     .wait_limit(Duration::from_secs(1))
///     .start()
///     .await?;
/// assert_eq!(svc.client().send(GREET, "Ada".to_string()).await?, "hello Ada");
/// # Ok(())
/// # }
/// ```
#[must_use = "a TestService does nothing until `start` is awaited"]
pub struct TestService<S = ()> {
    service: Microservice<S>,
    faults: Option<Faults>,
    wait: Duration,
}

impl<S> std::fmt::Debug for TestService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestService")
            .field("service", &self.service)
            .field("faults", &self.faults)
            .field("wait", &self.wait)
            .finish()
    }
}

impl<S: Clone + Send + Sync + 'static> TestService<S> {
    /// `service`, to be served on a fresh `mem://` URL (as well as on any URL it listens on
    /// itself).
    pub fn new(service: Microservice<S>) -> Self {
        TestService {
            service,
            faults: None,
            wait: DEFAULT_WAIT,
        }
    }

    /// Injects `faults` into every message the service receives, before its handlers (and
    /// before a pattern's events take their turn, so that they can be reordered).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// How long [`Harness::wait_handled`] waits before it fails (default [`DEFAULT_WAIT`]), on
    /// tokio's clock: under a paused clock the wait takes no real time.
    pub fn wait_limit(mut self, limit: Duration) -> Self {
        self.wait = limit;
        self
    }

    /// Starts the service; returns once it takes messages.
    pub async fn start(self) -> Result<Harness> {
        let record = Record::new();
        let faults = self.faults.map(Faults::layer);
        let listener = HarnessListener::bind(faults.clone(), record.clone())?;
        let url = listener.local_url();
        let server = self.service.serve_on(listener).start().await?;
        let client = Client::builder(&url).layer(RecordCalls(record.clone())).build()?;
        Ok(Harness {
            url,
            server: Some(server),
            record,
            faults,
            client,
            wait: self.wait,
        })
    }
}

/// A started [`TestService`]: its clients, what it handled and they sent, its faults'
/// decisions. Dropping it stops the service at once; [`shutdown`](Self::shutdown) lets
/// in-flight messages finish.
///
/// Patterns are named by their route: `math.add`, or `{"cmd":"get_user"}` for an object
/// pattern (in any key order), or `DESCRIPTOR.route()` (the [`Message`](crate::Message) and
/// [`Event`](crate::Event) traits).
///
/// Two services, one calling the other: the calls a handler makes through a harness's client
/// are recorded as that harness's [`sent`](Self::sent).
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard::testing::TestService;
/// use switchboard::Message;
///
/// #[message_pattern({ cmd = "price" })]
/// async fn price(item: String) -> u32 {
///     if item == "tea" { 3 } else { 5 }
/// }
///
/// #[message_pattern({ cmd = "total" })]
/// async fn total(items: Vec<String>, State(prices): State<Client>) -> RpcResult<u32> {
///     let mut sum = 0;
///     for item in items {
///         sum += prices.send(PRICE, item).await?;
///     }
///     Ok(sum)
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let prices = TestService::new(Microservice::new().handler(PRICE)).start().await?;
/// let till = TestService::new(Microservice::new().with_state(prices.client()).handler(TOTAL)).start().await?;
/// let items = vec!["tea".to_string(), "cake".to_string()];
/// assert_eq!(till.client().send(TOTAL, items).await?, 8);
/// let asked: Vec<_> = prices.sent(PRICE.route()).iter().map(|s| s.payload.clone()).collect();
/// assert_eq!(asked, ["tea", "cake"]);
/// assert!(prices.url().starts_with("mem://"));
/// assert!(till.server().health().is_ready());
/// till.shutdown().await?;
/// prices.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct Harness {
    url: String,
    server: Option<RunningServer>,
    record: Arc<Record>,
    faults: Option<FaultLayer>,
    client: Client,
    wait: Duration,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("url", &self.url)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

/// A wait for handled messages that ran out of time (see [`Harness::wait_handled`] for an
/// example): what was waited for, and what was handled instead.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "waited {waited:?} for {expected} handled message(s) of `{pattern}`, but {got} were handled; handled so far: {so_far}"
)]
pub struct WaitError {
    /// The pattern's route.
    pub pattern: String,
    /// How many were waited for.
    pub expected: usize,
    /// How many were handled.
    pub got: usize,
    /// How long it waited, on tokio's clock.
    pub waited: Duration,
    /// Every pattern handled, with its count.
    pub so_far: String,
}

impl Harness {
    /// The `mem://` URL it serves on: for clients of your own (`Client::builder(url)`) and
    /// for handlers of another service that call this one.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client of the service whose requests and events are recorded ([`sent`](Self::sent),
    /// [`emitted`](Self::emitted)). Give one to another service's state to record the calls
    /// its handlers make to this one. Payloads travel as JSON, as over a network.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A builder of such a client, to add layers of your own (a resilience
    /// [`Policy`](crate::resilience::Policy)) or a timeout; the recording is innermost, so each
    /// attempt of a retried call is recorded.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::prelude::*;
    /// use switchboard::resilience::{CircuitBreaker, Policy};
    /// use switchboard::testing::{Fault, Faults, TestService};
    ///
    /// #[message_pattern("quote")]
    /// async fn quote() -> u32 {
    ///     42
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let svc = TestService::new(Microservice::new().handler(QUOTE))
    ///     .faults(Faults::seeded(1).on("quote", Fault::fail(RpcError::unavailable("down")).first(2)))
    ///     .start()
    ///     .await?;
    /// let breaker = CircuitBreaker::new().failure_rate(None).consecutive_failures(2).open_for(Duration::from_secs(30));
    /// let client = svc.client_builder().layer(Policy::new().circuit_breaker(breaker)).build()?;
    /// assert!(client.send(QUOTE, ()).await.is_err());
    /// assert!(client.send(QUOTE, ()).await.is_err());
    /// let refused = client.send(QUOTE, ()).await.unwrap_err(); // open: not sent at all
    /// assert!(matches!(refused, switchboard::Error::Rejected { .. }));
    /// assert_eq!(svc.sent("quote").len(), 2);
    /// tokio::time::advance(Duration::from_secs(30)).await; // 30 s of virtual time, at once
    /// assert_eq!(client.send(QUOTE, ()).await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn client_builder(&self) -> ClientBuilder {
        Client::builder(&self.url).layer(RecordCalls(self.record.clone()))
    }

    /// The messages of `pattern` the service handled (requests and events), in the order
    /// their handlers finished. A message a fault dropped or failed is not among them; a
    /// duplicated one is there twice.
    pub fn handled(&self, pattern: &str) -> Vec<Handled> {
        self.record.handled(Some(&route_of(pattern)))
    }

    /// Every message the service handled, in the order their handlers finished.
    pub fn handled_all(&self) -> Vec<Handled> {
        self.record.handled(None)
    }

    /// The requests of `pattern` its clients sent (each attempt of a retried call).
    pub fn sent(&self, pattern: &str) -> Vec<Sent> {
        self.record.sent(Some(&route_of(pattern)), Some(Kind::Request))
    }

    /// The events of `pattern` its clients emitted.
    pub fn emitted(&self, pattern: &str) -> Vec<Sent> {
        self.record.sent(Some(&route_of(pattern)), Some(Kind::Event))
    }

    /// Every request and event its clients sent, in order.
    pub fn sent_all(&self) -> Vec<Sent> {
        self.record.sent(None, None)
    }

    /// Waits until `n` messages of `pattern` have been handled and returns them, or fails
    /// once the wait limit has passed (10 s of tokio's clock by default; see
    /// [`TestService::wait_limit`]), saying what was handled instead. Under a paused clock
    /// the wait moves virtual time on while nothing else can run, so it never takes long
    /// and never hangs.
    ///
    /// ```
    /// use switchboard::prelude::*;
    /// use switchboard::testing::{Fault, Faults, TestService};
    ///
    /// #[event_pattern("tick")]
    /// async fn tick(n: u32) {}
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let svc = TestService::new(Microservice::new().handler(TICK))
    ///     .faults(Faults::seeded(3).on("tick", Fault::drop().nth(2)))
    ///     .start()
    ///     .await?;
    /// for n in 1..=3 {
    ///     svc.client().emit(TICK, n).await?;
    /// }
    /// let ticks = svc.wait_handled("tick", 2).await?;
    /// assert_eq!(ticks.iter().map(|t| t.payload.clone()).collect::<Vec<_>>(), [1, 3]);
    /// let err = svc.wait_handled("tick", 3).await.unwrap_err(); // the second was dropped
    /// assert_eq!(err.to_string(), "waited 10s for 3 handled message(s) of `tick`, but 2 were handled; handled so far: tick ×2");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_handled(&self, pattern: &str, n: usize) -> std::result::Result<Vec<Handled>, WaitError> {
        let route = route_of(pattern);
        let mut changed = self.record.subscribe();
        let enough = async {
            while self.record.count(&route) < n {
                if changed.changed().await.is_err() {
                    // The record outlives this wait (`self` holds it): not reached.
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(self.wait, enough).await {
            Ok(()) => Ok(self.record.handled(Some(&route))),
            Err(_) => Err(WaitError {
                got: self.record.count(&route),
                pattern: route,
                expected: n,
                waited: self.wait,
                so_far: self.record.summary(),
            }),
        }
    }

    /// Every decision of the service's [`Faults`] so far (none without faults). Print them
    /// to see what a seed did: `for d in svc.decisions() { println!("{d}") }`.
    pub fn decisions(&self) -> Vec<Decision> {
        self.faults.as_ref().map(FaultLayer::decisions).unwrap_or_default()
    }

    /// The decisions for the messages of `pattern`, in the order they arrived.
    pub fn decisions_for(&self, pattern: &str) -> Vec<Decision> {
        self.faults
            .as_ref()
            .map(|f| f.decisions_for(pattern))
            .unwrap_or_default()
    }

    /// The running service (its health, its other URLs).
    pub fn server(&self) -> &RunningServer {
        self.server
            .as_ref()
            .expect("a harness holds its server until shut down")
    }

    /// Stops taking messages, lets in-flight ones finish (up to the service's shutdown
    /// timeout), and stops.
    pub async fn shutdown(mut self) -> Result<()> {
        match self.server.take() {
            Some(server) => server.shutdown().await,
            None => Ok(()),
        }
    }
}

/// Names of harness services in this process.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// The harness's transport: `mem://`, with the faults and the record in front of the
/// service's router, where each message arrives (before the router's event order).
struct HarnessListener {
    mem: MemListener,
    url: String,
    faults: Option<FaultLayer>,
    record: Arc<Record>,
}

impl HarnessListener {
    fn bind(faults: Option<FaultLayer>, record: Arc<Record>) -> Result<Self> {
        let mut last = None;
        // A name someone else took is skipped.
        for _ in 0..1000 {
            let url = format!("mem://switchboard-testing-{}", NEXT.fetch_add(1, Ordering::Relaxed));
            match MemListener::bind(&Endpoint::parse(&url)?) {
                Ok(mem) => {
                    return Ok(HarnessListener {
                        mem,
                        url,
                        faults,
                        record,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::NoTransport))
    }
}

impl Listener for HarnessListener {
    fn local_url(&self) -> String {
        self.url.clone()
    }

    fn serve(self: Box<Self>, router: Router, shutdown: Shutdown) -> BoxFuture<'static, Result<()>> {
        let HarnessListener {
            mem, faults, record, ..
        } = *self;
        let recorded = Route::new(tower::Layer::layer(&RecordLayer(record), router.clone()));
        let faulted = match faults {
            Some(faults) => Route::new(tower::Layer::layer(&faults, recorded)),
            None => recorded,
        };
        // The mem transport serves a `Router`: one with no routes, whose fallback names each
        // message's route as the service's router resolves it and hands it on.
        let entry = Route::from_fn(move |mut req: Request| {
            let route = match router.resolve_route(req.address()) {
                Ok(info) => Cow::Borrowed(info.route()),
                Err(missed) => Cow::Owned(missed),
            };
            req.context_mut().set_route(route);
            faulted.call(req)
        });
        let front = RouterBuilder::default().build(false, move |_| entry.clone(), |_, route| route);
        Box::new(mem).serve(front, shutdown)
    }
}
