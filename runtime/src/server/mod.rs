//! The server side: [`Microservice`] serves handlers on one or more transports.
//!
//! - [`handler`]: what the attribute macros make of a function ([`Handler`](handler::Handler), [`Serve`]);
//! - [`extract`] and [`state`]: where a handler's arguments come from;
//! - [`respond`]: how its return value becomes a reply;
//! - [`group`]: handlers declared as methods of one type;
//! - `registry`: every handler linked into the binary;
//! - [`Health`]: whether a running service is live and ready, answered on every transport as
//!   the [`HEALTH_PATTERN`], over gRPC health checking, and (feature `http`) over HTTP by
//!   [`Microservice::health_http`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::{BoxError, Layer, Service};

use crate::error::{Error, Result};
use crate::service::{Endpoint, Kind, Overrides, Reply, Request, Route, Router, RouterBuilder};
use crate::transport::{self, Listener, Shutdown};
use announce::{Announce, Announced, Announcement, Served};

pub mod announce;
mod check;
pub mod describe;
pub mod extract;
pub mod group;
pub mod handler;
#[cfg(feature = "http")]
mod http;
pub(crate) mod registry;
pub mod respond;
pub mod state;

pub use crate::transport::health::{
    CheckHealth, HEALTH_PATTERN, Health, HealthReport, HealthStatus, TransportHealth, health_pattern_of,
};
pub use check::HealthCheck;

use group::Group;
use handler::{Bound, Serve};

/// How long `start` waits for a broker transport to be ready (subscribed) before it returns.
const READY_WAIT: Duration = Duration::from_secs(30);

/// How long a registered service keeps serving after it has deregistered, before it drains,
/// so that callers see it leave before it stops taking calls.
pub const DEFAULT_DEREGISTER_GRACE: Duration = Duration::from_secs(1);

/// How long one registry gets to register or deregister the service.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time in-flight requests get to finish on shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

type Wrap = Arc<dyn Fn(Route) -> Route + Send + Sync>;

/// A service: handlers, the state they share, the layers around them, and the transports
/// they are served on.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[message_pattern("math.add")]
/// async fn add((a, b): (i64, i64)) -> i64 {
///     a + b
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let server = Microservice::new()
///     .handler(ADD)                        // or Microservice::from_registry(): every handler linked in
///     .listen("tcp://127.0.0.1:0")         // several listens make a hybrid app
///     .listen("mem://math")
///     .start()                             // `.run().await` serves until Ctrl-C or SIGTERM
///     .await?;
/// let client = Client::connect(server.local_url()).await?;
/// assert_eq!(client.send(ADD, (5, 3)).await?, 8);
/// server.shutdown().await                  // stops taking messages, lets in-flight ones finish
/// # }
/// ```
#[must_use = "a Microservice does nothing until `run` or `start` is awaited"]
pub struct Microservice<S = ()> {
    state: S,
    handlers: Vec<Bound>,
    from_registry: bool,
    layers: Vec<Wrap>,
    urls: Vec<String>,
    listeners: Vec<Box<dyn Listener>>,
    shutdown_timeout: Duration,
    /// Called by `run`/`run_until` once every transport takes messages.
    on_ready: Option<ReadyHook>,
    /// Changes to the limits the handlers declare.
    overrides: Overrides,
    /// The service's name ([`name`](Self::name)).
    name: Option<String>,
    /// Whether to answer the health pattern ([`health_pattern`](Self::health_pattern)).
    health_pattern: bool,
    /// Whether to answer the describe pattern ([`describe_pattern`](Self::describe_pattern)).
    describe_pattern: bool,
    /// Where to serve the HTTP health endpoint ([`health_http`](Self::health_http)).
    #[cfg(feature = "http")]
    http: Option<String>,
    /// Registries to register with ([`register`](Self::register)).
    registries: Vec<Arc<dyn Announce>>,
    /// The version registered ([`version`](Self::version)).
    version: Option<String>,
    /// How long to serve after deregistering ([`deregister_grace`](Self::deregister_grace)).
    deregister_grace: Duration,
    /// Readiness checks of the service's own ([`health_check`](Self::health_check)).
    checks: Vec<HealthCheck>,
}

/// What [`Microservice::on_ready`] calls, with the URLs peers use.
type ReadyHook = Box<dyn FnOnce(&[String]) + Send>;

impl<S> std::fmt::Debug for Microservice<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microservice")
            .field("name", &self.name)
            .field(
                "handlers",
                &self.handlers.iter().map(|h| h.info.name()).collect::<Vec<_>>(),
            )
            .field("from_registry", &self.from_registry)
            .field("layers", &self.layers.len())
            .field(
                "urls",
                &self.urls.iter().map(|u| transport::redact(u)).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Microservice {
    fn default() -> Self {
        Self::new()
    }
}

impl Microservice {
    /// A service of no handlers yet and no state; add handlers with
    /// [`handler`](Self::handler) and [`group`](Self::group).
    pub fn new() -> Self {
        Microservice {
            state: (),
            handlers: Vec::new(),
            from_registry: false,
            layers: Vec::new(),
            urls: Vec::new(),
            listeners: Vec::new(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            on_ready: None,
            overrides: Overrides::new(),
            name: None,
            health_pattern: true,
            describe_pattern: true,
            #[cfg(feature = "http")]
            http: None,
            registries: Vec::new(),
            version: None,
            deregister_grace: DEFAULT_DEREGISTER_GRACE,
            checks: Vec::new(),
        }
    }

    /// A service of every `#[message_pattern]` and `#[event_pattern]` function linked into
    /// this binary. Functions of a library crate are linked only when the binary uses them,
    /// and functions that take `State<T>` need a state: add those with
    /// [`handler`](Self::handler) (starting fails, naming them, otherwise).
    pub fn from_registry() -> Self {
        Microservice {
            from_registry: true,
            ..Self::new()
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Microservice<S> {
    /// The same service with `state` as its state: the handlers added from now on take
    /// `State<T>` arguments from it (`T` being `S` or, through [`FromRef`](state::FromRef),
    /// a part of it).
    pub fn with_state<S2: Clone + Send + Sync + 'static>(self, state: S2) -> Microservice<S2> {
        Microservice {
            state,
            handlers: self.handlers,
            from_registry: self.from_registry,
            layers: self.layers,
            urls: self.urls,
            listeners: self.listeners,
            shutdown_timeout: self.shutdown_timeout,
            on_ready: self.on_ready,
            overrides: self.overrides,
            name: self.name,
            health_pattern: self.health_pattern,
            describe_pattern: self.describe_pattern,
            #[cfg(feature = "http")]
            http: self.http,
            registries: self.registries,
            version: self.version,
            deregister_grace: self.deregister_grace,
            checks: self.checks,
        }
    }

    /// Adds a handler by its descriptor: `.handler(GET_USER)` for `async fn get_user`, or
    /// `.handler(GET_USER.layer(l))` with a layer of its own.
    pub fn handler<H: Serve<S>>(mut self, handler: H) -> Self {
        let info = handler.info();
        self.handlers.retain(|h| !std::ptr::eq(h.info, info));
        self.handlers
            .push(Bound::new(info, handler.into_route(self.state.clone())));
        self
    }

    /// Adds every handler of a group (an `impl` block marked `#[handlers]`); `group` is
    /// shared by them.
    pub fn group<G: Group<S>>(mut self, group: G) -> Self {
        for bound in group::bind(group, &self.state) {
            self.handlers.retain(|h| !std::ptr::eq(h.info, bound.info));
            self.handlers.push(bound);
        }
        self
    }

    /// Wraps every route (each pattern's handlers, and the answer to patterns nobody
    /// handles) in a `tower` layer. The layer added last is the outermost. A pattern with one
    /// request handler and no listeners (the usual shape) has that handler right inside the
    /// layer, which sees its replies, to events too; where a pattern has listeners, the layer
    /// sees an event's outcome (completion, or the first listener's error).
    ///
    /// Each thread calls one instance of the layer's service, cloned from it, for as long as
    /// it is ready: `poll_ready` comes before every call; an instance that is not ready is
    /// awaited by that call alone (the next gets a fresh clone), and one whose `poll_ready`
    /// fails or that panics is not called again. A service that returns its inner
    /// [`Route`]'s future as it is ([`RouteFuture`](crate::RouteFuture)) adds no allocation.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route> + Send + Sync + 'static,
        L::Service: Service<Request, Response = Reply> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Error: Into<BoxError>,
        <L::Service as Service<Request>>::Future: Send,
    {
        self.layers.push(Arc::new(move |route: Route| route.layer(&layer)));
        self
    }

    /// Serves on the transport named by `url`: `mem://name`, `tcp://host:port`, …
    pub fn listen(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Serves on every transport in `urls`.
    pub fn listen_all<U: Into<String>>(mut self, urls: impl IntoIterator<Item = U>) -> Self {
        self.urls.extend(urls.into_iter().map(Into::into));
        self
    }

    /// Registers the service with `registry` once every transport takes messages, and
    /// deregisters it first thing on shutdown (then serves for the
    /// [`deregister_grace`](Self::deregister_grace) before it drains, so that no caller's new
    /// call lands on a draining instance). The service needs a [`name`](Self::name). The
    /// registries of `switchboard-discovery` (etcd, Consul, in-process) are the usual ones; any
    /// [`Announce`] will do:
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use futures_util::future::{BoxFuture, FutureExt};
    /// use switchboard::prelude::*;
    /// use switchboard::server::announce::{Announce, Announced, Announcement};
    ///
    /// #[message_pattern("ping")]
    /// async fn ping() -> &'static str { "pong" }
    ///
    /// /// Writes down who is up.
    /// #[derive(Clone, Default)]
    /// struct Book(Arc<Mutex<Vec<String>>>);
    /// #[derive(Debug)]
    /// struct Entry(Arc<Mutex<Vec<String>>>, String);
    ///
    /// impl Announce for Book {
    ///     fn announce(&self, service: Announcement) -> BoxFuture<'static, switchboard::Result<Box<dyn Announced>>> {
    ///         let line = format!("{} at {}", service.name, service.urls[0]);
    ///         self.0.lock().unwrap().push(line.clone());
    ///         let entry = Entry(self.0.clone(), line);
    ///         async move { Ok(Box::new(entry) as Box<dyn Announced>) }.boxed()
    ///     }
    /// }
    /// impl Announced for Entry {
    ///     fn withdraw(self: Box<Self>) -> BoxFuture<'static, switchboard::Result<()>> {
    ///         self.0.lock().unwrap().retain(|l| *l != self.1);
    ///         async { Ok(()) }.boxed()
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> switchboard::Result<()> {
    /// let book = Book::default();
    /// let server = Microservice::new().name("pinger").handler(PING).register(book.clone())
    ///     .listen("mem://pinger-registered").start().await?;
    /// assert_eq!(*book.0.lock().unwrap(), ["pinger at mem://pinger-registered"]);
    /// server.shutdown().await?;
    /// assert!(book.0.lock().unwrap().is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn register(mut self, registry: impl Announce) -> Self {
        self.registries.push(Arc::new(registry));
        self
    }

    /// The version a registry records for this service and the describe pattern reports
    /// (none by default).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// How long a registered service keeps serving after deregistering, before it drains
    /// (default [`DEFAULT_DEREGISTER_GRACE`]): the time callers need to see it leave.
    pub fn deregister_grace(mut self, grace: Duration) -> Self {
        self.deregister_grace = grace;
        self
    }

    /// Serves on a transport of your own.
    pub fn serve_on(mut self, listener: impl Listener) -> Self {
        self.listeners.push(Box::new(listener));
        self
    }

    /// Calls `ready` once every transport takes messages (a broker's subscriptions are in
    /// place), with the URLs peers use (a TCP port 0 resolved), when the service is started by
    /// [`run`](Self::run) or [`run_until`](Self::run_until): the place to print `READY` or
    /// tell a supervisor. ([`start`](Self::start) returns at that moment instead.)
    ///
    /// ```no_run
    /// use switchboard::Microservice;
    ///
    /// # async fn serve() -> switchboard::Result<()> {
    /// Microservice::from_registry()
    ///     .listen("tcp://127.0.0.1:0")
    ///     .on_ready(|urls| println!("READY {}", urls[0]))
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn on_ready(mut self, ready: impl FnOnce(&[String]) + Send + 'static) -> Self {
        self.on_ready = Some(Box::new(ready));
        self
    }

    /// Changes the limits the handlers declare (`timeout`, `concurrency`, `rate`) from
    /// configuration, without recompiling: [`Overrides::from_env`] reads them from
    /// `SWITCHBOARD_POLICY` or `SWITCHBOARD_POLICY_FILE`. Starting fails when they give retries
    /// to a pattern this service serves that is not declared `idempotent`.
    ///
    /// ```no_run
    /// use switchboard::{Microservice, Overrides};
    ///
    /// # async fn serve() -> switchboard::Result<()> {
    /// Microservice::from_registry()
    ///     .policy_overrides(Overrides::from_env()?)
    ///     .listen("tcp://127.0.0.1:3001")
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn policy_overrides(mut self, overrides: Overrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// How long in-flight requests get to finish on shutdown (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Names the service (`users`): it then also answers its health on
    /// `switchboard.health.<name>` (see [`HEALTH_PATTERN`]), and gRPC health checks for
    /// service `<name>`. A name is ASCII letters, digits, `_`, `-` and `.` (not at either end,
    /// not two in a row), at most 200 of them, so that it is a valid channel, subject, topic
    /// and queue name on every transport; starting fails otherwise.
    ///
    /// ```
    /// use switchboard::prelude::*;
    ///
    /// #[message_pattern("ping")]
    /// async fn ping() -> &'static str {
    ///     "pong"
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> switchboard::Result<()> {
    /// let service = Microservice::new().name("users").handler(PING).listen("mem://users-doc");
    /// assert_eq!(service.service_name(), Some("users"));
    /// let server = service.start().await?;
    /// assert_eq!(server.service_name(), Some("users"));
    /// server.shutdown().await
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The name given with [`name`](Self::name), if any.
    pub fn service_name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the service answers the health pattern ([`HEALTH_PATTERN`] and its named form)
    /// on its transports; on by default. Turn it off where the broker's permissions do not
    /// let the service subscribe to it (a Redis ACL limiting channels, which refuses the whole
    /// subscription; a Kafka cluster that refuses to create the topic); the HTTP endpoint,
    /// gRPC health checks and [`RunningServer::health`] do not need it.
    ///
    /// ```
    /// use switchboard::prelude::*;
    /// use switchboard::server::HEALTH_PATTERN;
    ///
    /// #[message_pattern("ping")]
    /// async fn ping() -> &'static str {
    ///     "pong"
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> switchboard::Result<()> {
    /// let server = Microservice::new().handler(PING).health_pattern(false).listen("mem://quiet").start().await?;
    /// let client = Client::connect("mem://quiet").await?;
    /// let asked = client.send_raw::<String>(HEALTH_PATTERN, ()).await;
    /// assert!(matches!(asked, Err(switchboard::Error::NoHandler { .. })));
    /// server.shutdown().await
    /// # }
    /// ```
    pub fn health_pattern(mut self, answer: bool) -> Self {
        self.health_pattern = answer;
        self
    }

    /// Whether to answer [`describe::DESCRIBE_PATTERN`] (and `switchboard.describe.<name>`)
    /// with the service's patterns, policies, contracts and payload and reply JSON Schemas
    /// (default: yes; a handler of that pattern answers instead). `switchboard describe <url>`
    /// prints it. Turn it off where callers should not see the service's types.
    pub fn describe_pattern(mut self, answer: bool) -> Self {
        self.describe_pattern = answer;
        self
    }

    /// Serves the service's health over HTTP/1.1 on `addr` (`host:port`; port 0 picks a free
    /// one, [`RunningServer::http_addr`] tells which), from start until the service is
    /// shut down: `GET /health` and `GET /health/ready` answer 200 with the
    /// [`HealthReport`] JSON while the service is ready and 503 with it otherwise (while
    /// starting, while a broker is away, while draining), `GET /health/live` 200 while it is
    /// live. Any other path is 404, another method 405. The endpoint is bounded (request head
    /// within 10 s, 32 headers in 4 KiB, one request per connection, 256 connections), but
    /// it answers anyone who reaches it: bind it where only your orchestrator does. With the
    /// `tls` feature, `https://host:port?cert=<PEM file>&key=<PEM file>` serves it over TLS
    /// (an unreadable file fails [`start`](Self::start)); `http://host:port` is `host:port`.
    ///
    /// ```
    /// use switchboard::prelude::*;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// #[message_pattern("ping")]
    /// async fn ping() -> &'static str {
    ///     "pong"
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Microservice::new()
    ///     .handler(PING)
    ///     .listen("tcp://127.0.0.1:0")
    ///     .health_http("127.0.0.1:0")
    ///     .start()
    ///     .await?;
    /// let mut http = tokio::net::TcpStream::connect(server.http_addr().unwrap()).await?;
    /// http.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n").await?;
    /// let mut answer = String::new();
    /// http.read_to_string(&mut answer).await?;
    /// assert!(answer.starts_with("HTTP/1.1 200 OK"));
    /// let body = format!(r#"{{"status":"ok","live":true,"ready":true,"transports":[{{"url":"{}","ready":true}}]}}"#, server.local_url());
    /// assert!(answer.ends_with(&body));
    /// server.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "http")]
    pub fn health_http(mut self, addr: impl Into<String>) -> Self {
        self.http = Some(addr.into());
        self
    }

    /// Adds a readiness check of the service's own (a database, a service it depends on): the
    /// service is ready only while it passed its last run. See [`HealthCheck`].
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.checks.push(check);
        self
    }

    /// The service's router, as its transports serve it: for tests and transports of your own.
    /// It answers the health pattern too, as a service that is never draining and has no
    /// transport (always ready).
    pub fn into_router(self) -> Result<Router> {
        check_name(self.name.as_deref())?;
        let health = Health::new(self.name.as_deref(), &Shutdown::new().1);
        let built = build_router(
            self.handlers,
            self.from_registry,
            &self.layers,
            &self.overrides,
            Builtins {
                name: self.name.as_deref(),
                health: self.health_pattern.then_some(&health),
                describe: self.describe_pattern.then_some(self.version.as_deref()),
            },
        )?;
        Ok(built.router)
    }

    /// Binds every transport and starts serving in the background; returns once every transport
    /// takes messages.
    pub async fn start(self) -> Result<RunningServer> {
        if self.urls.is_empty() && self.listeners.is_empty() {
            return Err(Error::NoTransport);
        }
        check_name(self.name.as_deref())?;
        if !self.registries.is_empty() && self.name.is_none() {
            return Err(Error::InvalidConfig {
                what: "service",
                reason: "a service registered with a registry needs a name: `.name(\"users\")`".into(),
            });
        }
        let handlers = self.handlers.len();
        let (stop, shutdown) = Shutdown::new();
        let health = Health::new(self.name.as_deref(), &shutdown);
        let Built {
            router,
            builtin,
            served,
        } = build_router(
            self.handlers,
            self.from_registry,
            &self.layers,
            &self.overrides,
            Builtins {
                name: self.name.as_deref(),
                health: self.health_pattern.then_some(&health),
                describe: self.describe_pattern.then_some(self.version.as_deref()),
            },
        )?;
        let mut listeners = self.listeners;
        for url in &self.urls {
            listeners.push(transport::bind(url, &health).await?);
        }
        let serving = health.watch_transports(listeners.iter().map(|l| (l.local_url(), l.ready())).collect());
        let checks = check::register(self.checks, &health);
        // Up from now, so that probes see the service starting (live, not ready yet).
        #[cfg(feature = "http")]
        let http = match &self.http {
            Some(addr) => Some(http::HttpEndpoint::start(addr, health.clone()).await?),
            None => None,
        };
        let mut tasks = JoinSet::new();
        let mut urls = Vec::with_capacity(listeners.len());
        let mut readiness = Vec::new();
        for (listener, serving) in listeners.into_iter().zip(serving) {
            let url = listener.local_url();
            readiness.extend(listener.ready().map(|ready| (url.clone(), ready)));
            let serve = supervise(
                url.clone(),
                listener.serve(router.clone(), shutdown.clone()),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                // Held while it serves: its end (or abort) marks the transport stopped.
                let _serving = serving;
                serve.await
            });
            urls.push(url);
        }
        for (url, mut ready) in readiness {
            match tokio::time::timeout(READY_WAIT, ready.wait_for(|&up| up)).await {
                Ok(Ok(_)) => {}
                // `serve` ended before it was ready: report why.
                Ok(Err(_)) => {
                    if let Some(Ok(Err(e))) = tasks.join_next().await {
                        return Err(e);
                    }
                }
                Err(_) => {
                    tracing::warn!(url = %transport::redact(&url), "not ready to take messages after {READY_WAIT:?}; serving anyway")
                }
            }
        }
        let checks = checks.start(&shutdown).await;
        // Logged once every transport takes messages (a broker's subscriptions are in place).
        // The health patterns are not the user's: counted apart.
        let routes = router.routes().count() - builtin;
        for url in &urls {
            tracing::info!(url = %transport::redact(url), routes, handlers, "listening");
        }
        let mut announced = Vec::with_capacity(self.registries.len());
        for registry in &self.registries {
            let announcement = Announcement {
                name: health.name().unwrap_or_default().to_owned(),
                version: self.version.clone(),
                urls: urls.iter().map(|u| transport::redact(u)).collect(),
                patterns: served.clone(),
                health: health.clone(),
            };
            let registered = tokio::time::timeout(ANNOUNCE_TIMEOUT, registry.announce(announcement)).await;
            match registered {
                Ok(Ok(registration)) => announced.push(registration),
                // Dropping the tasks stops the transports; those registered expire or are withdrawn.
                Ok(Err(e)) => {
                    withdraw(announced).await;
                    return Err(e);
                }
                Err(_) => {
                    withdraw(announced).await;
                    return Err(Error::InvalidConfig {
                        what: "registry",
                        reason: format!("it did not register the service within {ANNOUNCE_TIMEOUT:?}"),
                    });
                }
            }
        }
        Ok(RunningServer {
            urls,
            stop,
            tasks,
            shutdown_timeout: self.shutdown_timeout,
            health,
            announced,
            deregister_grace: self.deregister_grace,
            #[cfg(feature = "http")]
            http,
            _checks: checks,
        })
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<()> {
        let ready = self.on_ready.take();
        let mut server = self.start().await?;
        if let Some(ready) = ready {
            ready(server.local_urls());
        }
        tokio::select! {
            () = signal => tracing::info!("shutting down"),
            Some(result) = server.tasks.join_next() => {
                // A transport stopped on its own (`supervise` made that an error): report it
                // and stop the rest.
                let _ = server.shutdown().await;
                return match result {
                    Ok(outcome) => outcome,
                    Err(e) => Err(Error::TransportStopped { url: "?".into(), reason: e.to_string() }),
                };
            }
        }
        server.shutdown().await
    }
}

/// Refuses a service name that is not a valid channel, subject, topic and queue name on
/// every transport.
fn check_name(name: Option<&str>) -> Result<()> {
    let Some(name) = name else { return Ok(()) };
    let valid = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..");
    match valid {
        true => Ok(()),
        false => Err(Error::InvalidConfig {
            what: "service name",
            reason: format!(
                "`{}`: a name is 1 to 200 ASCII letters, digits, `_`, `-` and `.` (not at either end, not two in a row)",
                crate::text::for_log(name)
            ),
        }),
    }
}

/// A service's router, how many of its routes are built in (the health patterns), and the
/// patterns of its handlers as a registry records them.
struct Built {
    router: Router,
    builtin: usize,
    served: Vec<Served>,
}

/// The routes of a service: its handlers (and the registry's, if asked), each route wrapped
/// in the layers, and, given the service's `health`, the health patterns the handlers leave
/// free.
/// The built-in patterns a service answers: health (given its health) and describe (given its
/// version).
struct Builtins<'a> {
    name: Option<&'a str>,
    health: Option<&'a Health>,
    describe: Option<Option<&'a str>>,
}

fn build_router(
    mut handlers: Vec<Bound>,
    from_registry: bool,
    layers: &[Wrap],
    overrides: &Overrides,
    builtins: Builtins<'_>,
) -> Result<Built> {
    if from_registry {
        let (registered, stateful) = registry::collect();
        let missing: Vec<String> = stateful
            .into_iter()
            .filter(|info| !handlers.iter().any(|h| std::ptr::eq(h.info, *info)))
            .map(|info| info.location())
            .collect();
        if !missing.is_empty() {
            return Err(Error::NeedsState { handlers: missing });
        }
        for bound in registered {
            if !handlers.iter().any(|h| std::ptr::eq(h.info, bound.info)) {
                handlers.push(bound);
            }
        }
    }
    if handlers.is_empty() {
        return Err(Error::NoHandlers);
    }
    handlers.sort_by_key(|h| (h.info.route(), h.info.location()));
    let mut builder = RouterBuilder::default();
    let mut seen: Vec<&Bound> = Vec::new();
    for h in &handlers {
        if h.info.kind() == Kind::Request {
            if let Some(first) = seen.iter().find(|s| s.info.route() == h.info.route()) {
                return Err(Error::DuplicateHandler {
                    route: h.info.route().to_owned(),
                    first: first.info.location(),
                    second: h.info.location(),
                });
            }
            seen.push(h);
        }
        tracing::debug!(route = h.info.route(), kind = ?h.info.kind(), handler = %h.info.location(), "serving");
        let declared = h.info.options();
        if overrides.retries_refused(h.info.route(), declared) {
            return Err(Error::InvalidConfig {
                what: "policy overrides",
                reason: format!(
                    "retries for `{}` ({}), which is not declared `idempotent`: a repeated call could do its work twice",
                    h.info.route(),
                    h.info.location()
                ),
            });
        }
        builder.add(
            h.info.route(),
            h.info.pattern(),
            h.info.kind(),
            Endpoint {
                location: h.location(),
                route: h.limited(overrides.apply(h.info.route(), declared)),
                order: declared.get_order(),
            },
        );
    }
    for route in overrides.routes() {
        if !handlers.iter().any(|h| h.info.route() == route) {
            tracing::warn!(route = %crate::text::for_log(route), "policy overrides name a pattern this service does not serve");
        }
    }
    let mut builtin = 0;
    if let Some(health) = builtins.health {
        let health = health.clone();
        builtin += add_builtin(
            &mut builder,
            &handlers,
            HEALTH_PATTERN,
            builtins.name,
            "health",
            move || health.to_json(),
        );
    }
    if let Some(version) = builtins.describe {
        let name = builtins.name;
        let described = describe::describe(name, version, &handlers, overrides);
        // Computed once: the handlers do not change while the service runs.
        let json = Bytes::from(serde_json::to_vec(&described).unwrap_or_default());
        builtin += add_builtin(
            &mut builder,
            &handlers,
            describe::DESCRIBE_PATTERN,
            name,
            "describe",
            move || json.clone(),
        );
    }
    let served = handlers
        .iter()
        .map(|h| Served {
            route: h.info.route().to_owned(),
            kind: h.info.kind(),
            contract: h.info.contract(),
        })
        .collect();
    let router = builder.build(
        !layers.is_empty(),
        |route| layers.iter().fold(route, |route, wrap| wrap(route)),
        observe,
    );
    Ok(Built {
        router,
        builtin,
        served,
    })
}

/// Adds the built-in pattern `base` (and `<base>.<name>` for a named service) as request
/// routes answering `answer()`, unless a handler serves that pattern; how many it added. They
/// are routes like any other: the service's layers wrap them.
fn add_builtin(
    builder: &mut RouterBuilder,
    handlers: &[Bound],
    base: &str,
    name: Option<&str>,
    what: &'static str,
    answer: impl Fn() -> Bytes + Clone + Send + Sync + 'static,
) -> usize {
    let mut patterns = vec![base.to_owned()];
    patterns.extend(name.map(|name| format!("{base}.{name}")));
    let mut added = 0;
    for pattern in patterns {
        if handlers.iter().any(|h| h.info.route() == pattern) {
            tracing::debug!(%pattern, "a handler serves the built-in {what} pattern: it answers instead");
            continue;
        }
        // A string pattern's route is its text, and its JSON the quoted text. Leaked once
        // per router, as the router's labels are.
        let json = serde_json::Value::from(pattern.as_str()).to_string();
        let route: &'static str = Box::leak(pattern.into_boxed_str());
        let json: &'static str = Box::leak(json.into_boxed_str());
        let answer = answer.clone();
        builder.add(
            route,
            json,
            Kind::Request,
            Endpoint {
                location: Arc::from(format!("switchboard {what}")),
                route: Route::from_fn(move |_| std::future::ready(Reply::json(answer())).boxed()),
                order: Default::default(),
            },
        );
        tracing::debug!(route, "serving the built-in {what} pattern");
        added += 1;
    }
    added
}

/// What every route is wrapped in, whatever the layers: its span (feature `telemetry`)
/// around its metrics (feature `metrics`). Decided when the service starts: a process that
/// records neither (no recorder installed, no subscriber for the spans, or a sampler that
/// samples nothing) serves as if the features were off.
fn observe(name: &'static str, route: Route) -> Route {
    #[cfg(feature = "metrics")]
    let route = match crate::metrics::enabled() {
        true => crate::metrics::observe(name, route),
        false => route,
    };
    #[cfg(feature = "telemetry")]
    let route = match crate::telemetry::span::recording() {
        true => crate::telemetry::observe(name, route),
        false => route,
    };
    let _ = name;
    route
}

/// A started service. Dropping it stops serving at once; [`shutdown`](Self::shutdown)
/// lets in-flight requests finish.
#[derive(Debug)]
pub struct RunningServer {
    urls: Vec<String>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<()>>,
    shutdown_timeout: Duration,
    health: Health,
    /// Registrations, withdrawn first on shutdown.
    announced: Vec<Box<dyn Announced>>,
    deregister_grace: Duration,
    /// The HTTP health endpoint, stopped after the transports.
    #[cfg(feature = "http")]
    http: Option<http::HttpEndpoint>,
    /// The tasks running the service's own checks (they end at shutdown, or with this).
    _checks: JoinSet<()>,
}

impl RunningServer {
    /// The URLs served, with real ports where port 0 was asked for.
    pub fn local_urls(&self) -> &[String] {
        &self.urls
    }

    /// The first URL served.
    pub fn local_url(&self) -> &str {
        &self.urls[0]
    }

    /// The service's health: live, ready, each transport's state (see [`Health`]).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The service's name ([`Microservice::name`]), if it has one.
    pub fn service_name(&self) -> Option<&str> {
        self.health.name()
    }

    /// The address of the HTTP health endpoint ([`Microservice::health_http`]), with the
    /// real port where port 0 was asked for; `None` without one.
    #[cfg(feature = "http")]
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(http::HttpEndpoint::addr)
    }

    /// Stops taking new messages, waits for in-flight ones (up to the shutdown timeout),
    /// then closes every transport. From the start the service is not ready (the health
    /// pattern, the HTTP endpoint and gRPC health say so); the HTTP endpoint answers until
    /// the transports are closed, then stops too.
    pub async fn shutdown(mut self) -> Result<()> {
        let result = self.drain().await;
        #[cfg(feature = "http")]
        if let Some(http) = self.http.take() {
            http.stop().await;
        }
        result
    }

    async fn drain(&mut self) -> Result<()> {
        let announced = std::mem::take(&mut self.announced);
        if !announced.is_empty() {
            withdraw(announced).await;
            // Still serving, so that a call sent before a caller saw the service leave is
            // answered, not refused.
            tokio::time::sleep(self.deregister_grace).await;
        }
        self.stop.send_replace(true);
        let drain = async {
            let mut first_error = None;
            while let Some(done) = self.tasks.join_next().await {
                match done {
                    Ok(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    Ok(Ok(())) => {}
                    Err(e) => tracing::error!(error = %e, "a transport task failed while shutting down"),
                }
            }
            first_error.map_or(Ok(()), Err)
        };
        match tokio::time::timeout(self.shutdown_timeout, drain).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(timeout = ?self.shutdown_timeout, "in-flight requests did not finish in time; closing anyway");
                self.tasks.abort_all();
                Ok(())
            }
        }
    }
}

/// Withdraws registrations; a registry that fails or hangs is logged, the others go on.
async fn withdraw(announced: Vec<Box<dyn Announced>>) {
    let all = announced.into_iter().map(|registration| async move {
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, registration.withdraw()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not deregister the service"),
            Err(_) => tracing::warn!("the registry did not deregister the service within {ANNOUNCE_TIMEOUT:?}"),
        }
    });
    futures_util::future::join_all(all).await;
}

/// Runs a transport's `serve`; a panic, or an end before shutdown, becomes
/// [`Error::TransportStopped`], so that `run_until` fails instead of returning `Ok`.
async fn supervise(url: String, serve: impl Future<Output = Result<()>>, shutdown: Shutdown) -> Result<()> {
    let stopped = |reason: String| Error::TransportStopped {
        url: url.clone(),
        reason,
    };
    match AssertUnwindSafe(serve).catch_unwind().await {
        Ok(Ok(())) if !shutdown.is_down() => Err(stopped("it ended without being asked to".into())),
        Ok(result) => result,
        Err(panic) => {
            let reason = crate::error::panic_message(&*panic);
            tracing::error!(url = %transport::redact(&url), %reason, "the transport panicked");
            Err(stopped(format!("it panicked: {reason}")))
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_a_valid_subject_topic_and_channel_everywhere() {
        for good in [None, Some("users"), Some("users-v2.eu_1"), Some("A9")] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        let long = "x".repeat(201);
        for bad in [
            "",
            " ",
            "a b",
            ".a",
            "a.",
            "a..b",
            "a*",
            "a>",
            "a/b",
            "$share",
            "é",
            long.as_str(),
        ] {
            let err = check_name(Some(bad)).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidConfig {
                        what: "service name",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_transport_that_panics_or_ends_on_its_own_is_an_error() {
        let (stop, shutdown) = Shutdown::new();
        let url = || "tcp://127.0.0.1:1".to_owned();

        let panicked = supervise(url(), async { panic!("boom") }, shutdown.clone()).await;
        let err = panicked.unwrap_err().to_string();
        assert_eq!(err, "the transport at tcp://127.0.0.1:1 stopped: it panicked: boom");

        let ended = supervise(url(), async { Ok(()) }, shutdown.clone()).await;
        assert!(matches!(ended, Err(Error::TransportStopped { .. })), "{ended:?}");

        stop.send_replace(true);
        supervise(url(), async { Ok(()) }, shutdown.clone())
            .await
            .expect("ending after shutdown is how a transport stops");
        let failed = supervise(url(), async { Err(Error::Closed) }, shutdown).await;
        assert!(matches!(failed, Err(Error::Closed)), "{failed:?}");
    }
}
