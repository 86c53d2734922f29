//! The server side: [`Microservice`] serves handlers on one or more transports.
//!
//! - [`handler`]: what the attribute macros make of a function ([`Handler`](handler::Handler), [`Serve`]);
//! - [`extract`] and [`state`]: where a handler's arguments come from;
//! - [`respond`]: how its return value becomes a reply;
//! - [`group`]: handlers declared as methods of one type;
//! - `registry`: every handler linked into the binary.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::{BoxError, Layer, Service};

use crate::error::{Error, Result};
use crate::service::{Endpoint, Kind, Overrides, Reply, Request, Route, Router, RouterBuilder};
use crate::transport::{self, Listener, Shutdown};

pub mod extract;
pub mod group;
pub mod handler;
pub(crate) mod registry;
pub mod respond;
pub mod state;

use group::Group;
use handler::{Bound, Serve};

/// How long `start` waits for a broker transport to be ready (subscribed) before it returns.
const READY_WAIT: Duration = Duration::from_secs(30);

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
}

/// What [`Microservice::on_ready`] calls, with the URLs peers use.
type ReadyHook = Box<dyn FnOnce(&[String]) + Send>;

impl<S> std::fmt::Debug for Microservice<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microservice")
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
    /// handles) in a `tower` layer. The layer added last is the outermost.
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

    /// The service's router, as its transports serve it: for tests and transports of your own.
    pub fn into_router(self) -> Result<Router> {
        build_router(self.handlers, self.from_registry, &self.layers, &self.overrides)
    }

    /// Binds every transport and starts serving in the background; returns once every transport
    /// takes messages.
    pub async fn start(self) -> Result<RunningServer> {
        if self.urls.is_empty() && self.listeners.is_empty() {
            return Err(Error::NoTransport);
        }
        let handlers = self.handlers.len();
        let router = build_router(self.handlers, self.from_registry, &self.layers, &self.overrides)?;
        let mut listeners = self.listeners;
        for url in &self.urls {
            listeners.push(transport::bind(url).await?);
        }
        let (stop, shutdown) = Shutdown::new();
        let mut tasks = JoinSet::new();
        let mut urls = Vec::with_capacity(listeners.len());
        let mut readiness = Vec::new();
        for listener in listeners {
            let url = listener.local_url();
            readiness.extend(listener.ready().map(|ready| (url.clone(), ready)));
            tasks.spawn(supervise(
                url.clone(),
                listener.serve(router.clone(), shutdown.clone()),
                shutdown.clone(),
            ));
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
        // Logged once every transport takes messages (a broker's subscriptions are in place).
        for url in &urls {
            tracing::info!(url = %transport::redact(url), routes = router.routes().count(), handlers, "listening");
        }
        Ok(RunningServer {
            urls,
            stop,
            tasks,
            shutdown_timeout: self.shutdown_timeout,
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

/// The routes of a service: its handlers (and the registry's, if asked), each route wrapped
/// in the layers.
fn build_router(
    mut handlers: Vec<Bound>,
    from_registry: bool,
    layers: &[Wrap],
    overrides: &Overrides,
) -> Result<Router> {
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
    Ok(builder.build(!layers.is_empty(), |route| {
        layers.iter().fold(route, |route, wrap| wrap(route))
    }))
}

/// A started service. Dropping it stops serving at once; [`shutdown`](Self::shutdown)
/// lets in-flight requests finish.
#[derive(Debug)]
pub struct RunningServer {
    urls: Vec<String>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<()>>,
    shutdown_timeout: Duration,
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

    /// Stops taking new messages, waits for in-flight ones (up to the shutdown timeout),
    /// then closes every transport.
    pub async fn shutdown(mut self) -> Result<()> {
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
