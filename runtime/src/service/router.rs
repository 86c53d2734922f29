//! [`Router`]: the service every transport serves. It resolves a message's address as a
//! NestJS server does and hands the message to that route's [`Route`], the handlers of one
//! pattern wrapped in the service's layers.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures_util::future::{BoxFuture, FutureExt, join_all};
use thread_local::ThreadLocal;
use tower::{BoxError, Service, ServiceExt};

use tokio::time::Instant;

use super::order::{EventOrder, Sequencer};
use super::{Address, Context, Kind, Payload, Reply, Request};
use crate::error::RpcError;

/// A service answering the messages of one route (or, as the router's fallback, of none),
/// type-erased so that routes of any handler and any layer stack sit in one table. This is
/// what a [`Layer`](tower::Layer) given to `Microservice::layer` wraps.
#[derive(Clone)]
pub struct Route(Arc<dyn Erased>);

trait Erased: Send + Sync {
    fn call(&self, req: Request) -> BoxFuture<'static, Reply>;

    /// [`call`](Self::call) with a request its caller drops afterwards: a handler takes what
    /// it needs from it where it lies. (A `Request` is 176 bytes: each move of it is a
    /// `memcpy` call, and the first stalls on the stores that just built it; taking the four
    /// such moves on the way to a handler out raised the TCP server's throughput by about 8 %.)
    fn call_in_place(&self, req: &mut Request) -> BoxFuture<'static, Reply> {
        self.call(req.take())
    }

    /// [`call_in_place`](Self::call_in_place) with the request in a slot: a route that needs
    /// it whole moves it out, leaving `None` rather than an empty request to build and drop.
    fn call_slot(&self, slot: &mut Option<Request>) -> BoxFuture<'static, Reply> {
        self.call_in_place(slot.get_or_insert_with(unreachable_request))
    }

    /// The route inside and its watch, if this is [`Route::watched`].
    #[cfg(feature = "metrics")]
    fn watched(&self) -> Option<(&Route, &dyn Watch)> {
        None
    }
}

/// Told when a message of a [`Route::watched`] starts and how it ends, with no future of its
/// own around the route's: the router keeps the [`Watching`] in its reply future, so the
/// metrics cost no allocation per message.
#[cfg(feature = "metrics")]
pub(crate) trait Watch: Send + Sync + 'static {
    /// `req`, which arrived at `arrival` if its transport said, is about to be handled.
    fn start(&self, req: &Request, arrival: Option<Arrival>) -> Watching;
}

/// When a transport read a message, by the metrics' clock: where the message's handling time
/// starts. Messages that came in one read share it, so they cost one clock read, not one each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival(#[cfg_attr(not(feature = "metrics"), allow(dead_code))] pub(crate) u64);

impl Arrival {
    /// Now, if metrics are recorded (`None` otherwise: nobody would read it).
    #[inline]
    #[cfg_attr(not(feature = "tcp"), allow(dead_code))]
    pub(crate) fn now() -> Option<Arrival> {
        #[cfg(feature = "metrics")]
        let now = crate::metrics::arrival_now().map(Arrival);
        #[cfg(not(feature = "metrics"))]
        let now = None;
        now
    }
}

/// Told how a watched message ended: its reply, or `None` if it was dropped first
/// (cancelled, past its deadline, or panicked).
#[cfg(feature = "metrics")]
pub(crate) trait Watcher: Sync {
    fn end(&'static self, started: u64, reply: Option<&Reply>);
}

/// A watched message being handled; dropped before [`end`](Self::end), it tells its
/// watcher it ended without a reply.
#[cfg(feature = "metrics")]
pub(crate) struct Watching {
    watcher: &'static dyn Watcher,
    started: u64,
}

#[cfg(feature = "metrics")]
impl Watching {
    pub(crate) fn new(watcher: &'static dyn Watcher, started: u64) -> Self {
        Watching { watcher, started }
    }

    #[cfg(test)]
    pub(crate) fn started(&self) -> u64 {
        self.started
    }

    fn end(self, reply: &Reply) {
        self.watcher.end(self.started, Some(reply));
        std::mem::forget(self);
    }
}

#[cfg(feature = "metrics")]
impl Drop for Watching {
    fn drop(&mut self) {
        self.watcher.end(self.started, None);
    }
}

/// Set once a route is watched: until then the router does not ask routes (a process
/// without metrics pays one load per message).
#[cfg(feature = "metrics")]
static WATCHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(feature = "metrics")]
struct Watched<W> {
    inner: Route,
    watch: W,
}

#[cfg(feature = "metrics")]
impl<W: Watch> Erased for Watched<W> {
    /// Called other than by the router (inside another layer): the watch goes in a future
    /// around the route's.
    fn call(&self, req: Request) -> BoxFuture<'static, Reply> {
        let watching = self.watch.start(&req, None);
        let reply = self.inner.call(req);
        async move {
            let reply = reply.await;
            watching.end(&reply);
            reply
        }
        .boxed()
    }

    fn watched(&self) -> Option<(&Route, &dyn Watch)> {
        Some((&self.inner, &self.watch))
    }
}

/// A `tower::Service` behind a [`Route`]. Each thread keeps an instance (cloned from the
/// layer's service) and calls it while it is ready, so a call clones nothing; `poll_ready`
/// (a concurrency limit, a rate limit) still comes before each call. An instance that is not
/// ready goes with the call that waits for it, and one that fails or panics is not reused.
struct Tower<S: Send> {
    service: S,
    ready: ThreadLocal<Cell<Option<S>>>,
}

impl<S> Erased for Tower<S>
where
    S: Service<Request, Response = Reply> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    fn call(&self, req: Request) -> BoxFuture<'static, Reply> {
        self.serve(|| req)
    }

    fn call_in_place(&self, req: &mut Request) -> BoxFuture<'static, Reply> {
        // Taken straight into the service's call: one move, not one out and one in.
        self.serve(|| req.take())
    }

    fn call_slot(&self, slot: &mut Option<Request>) -> BoxFuture<'static, Reply> {
        // Taken straight into the service's call, as above.
        self.serve(|| slot.take().unwrap_or_else(unreachable_request))
    }
}

impl<S> Tower<S>
where
    S: Service<Request, Response = Reply> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    #[inline(always)]
    fn serve(&self, req: impl FnOnce() -> Request) -> BoxFuture<'static, Reply> {
        let slot = self.ready.get_or_default();
        let mut svc = slot.take().unwrap_or_else(|| self.service.clone());
        // Most services are ready at once: call them now and box only their future. Asking
        // with a no-op waker is safe: one that is not ready is asked again, with the task's
        // waker, before it is called (tower allows `poll_ready` to be called repeatedly).
        match svc.poll_ready(&mut TaskContext::from_waker(std::task::Waker::noop())) {
            Poll::Ready(Ok(())) => {
                let future = svc.call(req());
                slot.set(Some(svc));
                boxed(future)
            }
            Poll::Ready(Err(e)) => Box::pin(std::future::ready(error_reply(e.into()))),
            Poll::Pending => {
                let req = req();
                Box::pin(async move {
                    match svc.oneshot(req).await {
                        Ok(reply) => reply,
                        Err(e) => error_reply(e.into()),
                    }
                })
            }
        }
    }
}

/// A service's future as a route's. A layer that hands back the future of the route inside
/// it (one that only looks at requests) adds no allocation.
fn boxed<F, E>(future: F) -> BoxFuture<'static, Reply>
where
    F: Future<Output = Result<Reply, E>> + Send + 'static,
    E: Into<BoxError>,
{
    let mut slot = Some(future);
    let any: &mut dyn std::any::Any = &mut slot;
    if let Some(RouteFuture(inner)) = any.downcast_mut::<Option<RouteFuture>>().and_then(Option::take) {
        return inner;
    }
    let future = slot.expect("taken only when it is a route's");
    Box::pin(future.map(|result| result.unwrap_or_else(|e| error_reply(e.into()))))
}

/// A layer's error as a reply: an [`RpcError`] as it is, anything else as NestJS's
/// `Internal server error` (the error itself is logged, not sent).
fn error_reply(e: BoxError) -> Reply {
    match e.downcast::<RpcError>() {
        Ok(rpc) => Reply::error(*rpc),
        Err(other) => {
            tracing::error!(error = %other, "a layer failed the message");
            Reply::error(RpcError::internal())
        }
    }
}

struct Fn<F>(F);

impl<F> Erased for Fn<F>
where
    F: std::ops::Fn(&mut Request) -> BoxFuture<'static, Reply> + Send + Sync + 'static,
{
    fn call(&self, mut req: Request) -> BoxFuture<'static, Reply> {
        (self.0)(&mut req)
    }

    fn call_in_place(&self, req: &mut Request) -> BoxFuture<'static, Reply> {
        (self.0)(req)
    }
}

impl Route {
    /// A route served by any `tower::Service` (a layer's error becomes an error reply).
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Request, Response = Reply> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
    {
        Route(Arc::new(Tower {
            service,
            ready: ThreadLocal::new(),
        }))
    }

    /// A route served by a function that takes the request whole and returns a boxed future.
    pub fn from_fn(f: impl std::ops::Fn(Request) -> BoxFuture<'static, Reply> + Send + Sync + 'static) -> Self {
        Route::serving(move |req| f(req.take()))
    }

    /// A route served by a function that takes what it needs from the request (a handler's
    /// arguments) and leaves the rest to its caller.
    pub(crate) fn serving(
        f: impl std::ops::Fn(&mut Request) -> BoxFuture<'static, Reply> + Send + Sync + 'static,
    ) -> Self {
        Route(Arc::new(Fn(f)))
    }

    /// This route inside `layer`.
    pub fn layer<L>(self, layer: &L) -> Route
    where
        L: tower::Layer<Route>,
        L::Service: Service<Request, Response = Reply> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Error: Into<BoxError>,
        <L::Service as Service<Request>>::Future: Send,
    {
        Route::new(layer.layer(self))
    }

    /// Calls the route (no readiness to wait for).
    pub fn call(&self, req: Request) -> BoxFuture<'static, Reply> {
        self.0.call(req)
    }

    /// [`call`](Self::call) with a request the caller drops afterwards.
    pub(crate) fn call_in_place(&self, req: &mut Request) -> BoxFuture<'static, Reply> {
        self.0.call_in_place(req)
    }

    /// [`call`](Self::call) with a request in a slot the caller drops afterwards.
    fn call_slot(&self, slot: &mut Option<Request>) -> BoxFuture<'static, Reply> {
        self.0.call_slot(slot)
    }

    /// `inner`, its messages told to `watch`.
    #[cfg(feature = "metrics")]
    pub(crate) fn watched(inner: Route, watch: impl Watch) -> Route {
        WATCHED.store(true, std::sync::atomic::Ordering::Relaxed);
        Route(Arc::new(Watched { inner, watch }))
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Route")
    }
}

impl Service<Request> for Route {
    type Response = Reply;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> RouteFuture {
        RouteFuture(Route::call(self, req))
    }
}

/// A [`Route`]'s reply, as a `tower::Service`'s future. A layer whose service returns it
/// unchanged costs no allocation per message.
#[must_use = "a reply does nothing unless polled"]
pub struct RouteFuture(BoxFuture<'static, Reply>);

impl From<BoxFuture<'static, Reply>> for RouteFuture {
    fn from(future: BoxFuture<'static, Reply>) -> Self {
        RouteFuture(future)
    }
}

impl fmt::Debug for RouteFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RouteFuture")
    }
}

impl Future for RouteFuture {
    type Output = Result<Reply, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx).map(Ok)
    }
}

/// One handler of a route, as the router holds it.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// `module::name (file:line)`, for logs.
    pub location: Arc<str>,
    pub route: Route,
    /// How the handler wants its events ordered.
    pub order: EventOrder,
}

/// The handlers of one pattern: at most one request handler and any number of event listeners.
#[derive(Clone, Default)]
pub(crate) struct Handlers {
    pub message: Option<Endpoint>,
    pub events: Vec<Endpoint>,
}

impl Handlers {
    /// The route NestJS's rules make of them: a request goes to the request handler (or, if
    /// there is none, to the listeners, answered with completion); an event goes to every
    /// listener at once (or, if there is none, to the request handler, its answer dropped).
    /// An event's reply is empty when every listener succeeded and the first failure
    /// otherwise; a listener that panics fails without stopping the others.
    pub fn into_route(self) -> Route {
        let Handlers { message, events } = self;
        match (message, events.is_empty()) {
            // The common shape: one request handler, answering requests directly.
            (Some(handler), true) => Route::serving(move |req| match req.kind() {
                Kind::Request => handler.route.call_in_place(req),
                Kind::Event => listen(&handler, req.take()).boxed(),
            }),
            (message, _) => {
                let events: Arc<[Endpoint]> = events.into();
                Route::serving(move |req| match (req.kind(), &message) {
                    (Kind::Request, Some(handler)) => handler.route.call_in_place(req),
                    (Kind::Request, None) => {
                        let run = listen_all(&events, req.take());
                        async move {
                            let _ = run.await;
                            Reply::empty()
                        }
                        .boxed()
                    }
                    (Kind::Event, _) => listen_all(&events, req.take()).boxed(),
                })
            }
        }
    }
}

/// Runs every listener, each with the message (a JSON payload is shared, not copied).
fn listen_all(events: &[Endpoint], req: Request) -> impl Future<Output = Reply> + Send + 'static {
    let mut runs = Vec::with_capacity(events.len());
    let mut req = Some(req);
    for (i, listener) in events.iter().enumerate() {
        let last = i + 1 == events.len();
        let copy = match &req {
            Some(r) if !last => r.try_clone(),
            _ => None,
        };
        if let Some(one) = copy.or_else(|| req.take()) {
            runs.push(listen(listener, one));
        }
    }
    join_all(runs).map(|replies| replies.into_iter().find(Reply::is_error).unwrap_or_else(Reply::empty))
}

/// Runs one listener to its end; a failure is logged and returned, a panic is one.
fn listen(listener: &Endpoint, req: Request) -> impl Future<Output = Reply> + Send + 'static {
    let location = listener.location.clone();
    let run = listener.route.call(req);
    async move {
        let reply = match AssertUnwindSafe(run).catch_unwind().await {
            Ok(reply) => reply.drain().await,
            Err(panic) => {
                tracing::error!(handler = %location, panic = %crate::error::panic_message(&*panic), "event handler panicked");
                Err(RpcError::internal())
            }
        };
        match reply {
            Ok(()) => Reply::empty(),
            Err(e) => {
                tracing::error!(handler = %location, error = %e, "event handler failed");
                Reply::error(e)
            }
        }
    }
}

/// Warnings about events nobody handles, at most this many a second.
static UNKNOWN_EVENTS: crate::text::Throttle = crate::text::Throttle::new(10);

/// A served pattern.
#[derive(Debug)]
pub struct RouteInfo {
    route: &'static str,
    request_handler: bool,
    listeners: usize,
    /// Names the route's handlers in panic logs.
    label: &'static str,
}

impl RouteInfo {
    /// The normalised route key (a broker's channel, subject or topic).
    pub fn route(&self) -> &'static str {
        self.route
    }

    /// True when a request handler serves it.
    pub fn has_request_handler(&self) -> bool {
        self.request_handler
    }

    /// How many event listeners it has.
    pub fn listeners(&self) -> usize {
        self.listeners
    }
}

struct Entry {
    info: RouteInfo,
    route: Route,
    /// The request handler (in the service's layers, when the route has no listeners):
    /// requests skip the dispatch between requests and events.
    requests: Option<Route>,
    /// The turns of the route's events.
    events: Sequencer,
}

/// The service a transport serves: every route of a `Microservice`, with its layers, and a
/// fallback for patterns nobody handles. Cheap to clone.
///
/// Transports call it with [`Router::call`]; it is also a `tower::Service<Request>`.
#[derive(Clone)]
pub struct Router(Arc<Table>);

struct Table {
    /// Route keys, and patterns in their written JSON (a NestJS client sends an object
    /// pattern in its written key order, so that form skips normalisation).
    lookup: HashMap<&'static str, Arc<Entry>, rustc_hash::FxBuildHasher>,
    /// Each served route once, sorted.
    routes: Vec<Arc<Entry>>,
    fallback: Route,
    /// Longer addresses cannot name a served route, however written: they miss without
    /// being parsed (an attacker's megabyte pattern costs a length check).
    longest: usize,
    /// Service-wide layers look at replies as JSON, so in-process callers get JSON too.
    layered: bool,
    /// Set once the service stops serving in-process callers that hold this router.
    closed: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.routes().map(|r| r.route)).finish()
    }
}

/// Builds a [`Router`].
#[derive(Default)]
pub(crate) struct RouterBuilder {
    routes: Vec<Building>,
}

/// A route being built: its key, the patterns that name it as written, its handlers, and
/// their locations (for logs).
struct Building {
    route: &'static str,
    patterns: Vec<&'static str>,
    handlers: Handlers,
    locations: Vec<Arc<str>>,
}

impl RouterBuilder {
    /// Adds a handler of `route` (whose pattern JSON as written is `pattern`).
    pub fn add(&mut self, route: &'static str, pattern: &'static str, kind: Kind, endpoint: Endpoint) {
        let at = match self.routes.iter().position(|r| r.route == route) {
            Some(at) => at,
            None => {
                self.routes.push(Building {
                    route,
                    patterns: Vec::new(),
                    handlers: Handlers::default(),
                    locations: Vec::new(),
                });
                self.routes.len() - 1
            }
        };
        let slot = &mut self.routes[at];
        if !slot.patterns.contains(&pattern) {
            slot.patterns.push(pattern);
        }
        slot.locations.push(endpoint.location.clone());
        match kind {
            Kind::Request => slot.handlers.message = Some(endpoint),
            Kind::Event => slot.handlers.events.push(endpoint),
        }
    }

    /// The router: each route's handlers wrapped by `wrap` (the service's layers, if
    /// `layered`), the fallback too, and all of it by `observe` (telemetry, which does not
    /// look at payloads, so in-process callers keep their values and requests their
    /// short path).
    pub fn build(
        self,
        layered: bool,
        wrap: impl std::ops::Fn(Route) -> Route,
        observe: impl std::ops::Fn(&'static str, Route) -> Route,
    ) -> Router {
        let mut lookup = HashMap::default();
        let mut routes = Vec::with_capacity(self.routes.len());
        for Building {
            route,
            patterns,
            handlers,
            locations,
        } in self.routes
        {
            let info = RouteInfo {
                route,
                request_handler: handlers.message.is_some(),
                listeners: handlers.events.len(),
                label: Box::leak(locations.join(", ").into_boxed_str()),
            };
            let order = EventOrder::of_listeners(handlers.events.iter().map(|e| e.order));
            let (all, requests) = match (layered, handlers.message.clone(), handlers.events.is_empty()) {
                (false, message, _) => {
                    let requests = message.map(|h| observe(route, h.route));
                    (wrap(handlers.into_route()), requests)
                }
                // The usual shape, one request handler: the layers wrap it, and requests
                // call them straight; its events reach them through the same instance.
                (true, Some(handler), true) => {
                    let layered = wrap(handler.route.clone());
                    let events = Handlers {
                        message: Some(Endpoint {
                            route: layered.clone(),
                            ..handler
                        }),
                        events: Vec::new(),
                    };
                    (events.into_route(), Some(observe(route, layered)))
                }
                (true, _, _) => (wrap(handlers.into_route()), None),
            };
            let entry = Arc::new(Entry {
                info,
                route: observe(route, all),
                requests,
                events: Sequencer::new(order),
            });
            for p in patterns {
                lookup.entry(p).or_insert_with(|| entry.clone());
            }
            lookup.insert(route, entry.clone());
            routes.push(entry);
        }
        routes.sort_by_key(|e| e.info.route);
        // Room for whitespace and escapes around the longest key, as a client may write it.
        let longest = lookup.keys().map(|k| k.len()).max().unwrap_or(0) * 2 + 64;
        Router(Arc::new(Table {
            longest,
            lookup,
            routes,
            layered,
            closed: std::sync::atomic::AtomicBool::new(false),
            fallback: observe(
                "",
                wrap(Route::from_fn(|req| {
                    // The pattern is the sender's text: escaped, cut, and a flood held back.
                    let pattern = crate::text::for_log(req.context().route());
                    if req.kind() == Kind::Event {
                        if let Some(held_back) = UNKNOWN_EVENTS.allow() {
                            tracing::warn!(
                                held_back,
                                "There is no matching event handler defined in the remote service. Event pattern: {pattern}"
                            );
                        }
                    } else {
                        tracing::debug!(%pattern, "no matching message handler");
                    }
                    std::future::ready(Reply::no_handler()).boxed()
                })),
            ),
        }))
    }
}

impl Router {
    /// Serves one message: its route's reply, or the fallback's (a no-handler reply).
    pub fn call(&self, req: Request) -> RouterFuture {
        self.call_arrived(req, None)
    }

    /// [`call`](Self::call) for a message that arrived at `arrival`.
    pub(crate) fn call_arrived(&self, mut req: Request, arrival: Option<Arrival>) -> RouterFuture {
        let found = Found(self.resolve(req.address()));
        self.call_found(found, &mut req, arrival)
    }

    /// A pattern read off the wire, looked up once: the address its request carries (the
    /// served pattern's own text when it names one, so the frame it came in is not held)
    /// and where [`call_found`](Self::call_found) sends it.
    #[cfg(feature = "tcp")]
    pub(crate) fn find_pattern(&self, json: &str) -> (Address, Found<'_>) {
        if let Some((&key, entry)) = self.0.lookup.get_key_value(json) {
            return (Address::static_pattern(key), Found(Ok(entry)));
        }
        let address = Address::pattern(json);
        let found = Found(self.resolve(&address));
        (address, found)
    }

    /// [`call_arrived`](Self::call_arrived) for a request whose address was looked up. The
    /// handler takes what it needs from the request `held`, a layer takes it whole; the
    /// caller drops what is left.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn call_found(&self, found: Found<'_>, held: &mut impl Held, arrival: Option<Arrival>) -> RouterFuture {
        let req = held.request();
        if self.0.layered {
            req.context_mut().set_local(false);
        }
        let (route, label, turn) = match found.0 {
            Ok(entry) => {
                req.context_mut().set_route(Cow::Borrowed(entry.info.route));
                let (route, turn) = match (&entry.requests, req.kind()) {
                    (Some(handler), Kind::Request) => (handler, None),
                    (None, Kind::Request) => (&entry.route, None),
                    // Taken now, while messages reach the router in the order they arrived.
                    (_, Kind::Event) => (&entry.route, entry.events.turn(req)),
                };
                (route, entry.info.label, turn)
            }
            Err(route) => {
                req.context_mut().set_route(Cow::Owned(route));
                (&self.0.fallback, "", None)
            }
        };
        let deadline = match req.context().deadline() {
            Some(d) => Some(d),
            // The clock is read only for a request that says how long it has.
            None => match super::deadline::from_headers(req.headers()) {
                None => None,
                Some(left) => {
                    let now = held.now();
                    let req = held.request();
                    let from_caller = now.checked_add(left);
                    if let Some(d) = from_caller {
                        if d <= now {
                            // The caller's budget is spent: the handler never starts.
                            return RouterFuture::ready(arrived_late(req), label);
                        }
                        req.context_mut().set_deadline(d);
                    }
                    from_caller
                }
            },
        };
        #[cfg(feature = "metrics")]
        let mut watching = None;
        let inner = match turn {
            // Called once its turn comes (a panic then is caught where the future is polled).
            Some(turn) => {
                let (route, req) = (route.clone(), held.take());
                turn.then(move || route.call(req))
            }
            None => {
                // A watched route's watch is kept in the reply future, not in one around it.
                #[cfg(feature = "metrics")]
                let route = match WATCHED.load(std::sync::atomic::Ordering::Relaxed) {
                    true => match route.0.watched() {
                        Some((inner, watch)) => {
                            watching = Some(watch.start(held.request(), arrival));
                            inner
                        }
                        None => route,
                    },
                    false => route,
                };
                match std::panic::catch_unwind(AssertUnwindSafe(|| held.call(route))) {
                    Ok(fut) => fut,
                    Err(panic) => {
                        // Counted as a message dropped before its reply, as a panic while
                        // polled is.
                        #[cfg(feature = "metrics")]
                        drop(watching.take());
                        handler_panicked(label, panic)
                    }
                }
            }
        };
        RouterFuture {
            inner,
            label,
            deadline,
            timer: None,
            #[cfg(feature = "metrics")]
            watching,
        }
    }

    /// Marks the router as no longer served (its in-process listener stopped).
    pub(crate) fn close(&self) {
        self.0.closed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// True once [`close`](Self::close)d.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every served route once, in route order.
    pub fn routes(&self) -> impl Iterator<Item = &RouteInfo> {
        self.0.routes.iter().map(|e| &e.info)
    }

    /// The served route whose key is `channel` (a broker routes by channel), as an address
    /// that costs no copy; any other channel as it is (the router answers it as a miss).
    pub fn channel_address(&self, channel: &str) -> Address {
        match self.0.lookup.get(channel) {
            Some(e) => Address::static_route(e.info.route),
            None => Address::route(channel),
        }
    }

    /// The served route an address names, as a NestJS server resolves it; the route that
    /// missed otherwise (for the no-handler message).
    pub fn resolve_route(&self, address: &Address) -> Result<&RouteInfo, String> {
        self.resolve(address).map(|e| &e.info)
    }

    fn resolve(&self, address: &Address) -> Result<&Arc<Entry>, String> {
        let text = address.as_str();
        if let Some(e) = self.0.lookup.get(text) {
            return Ok(e);
        }
        if text.len() > self.0.longest {
            return Err(too_long(text));
        }
        let route = match address {
            Address::Route(_) => text.to_owned(),
            Address::Pattern(_) => match simple_json_string(text) {
                Some(s) => switchboard_pattern::route_of_str(s.to_owned()),
                None => switchboard_pattern::route_of_wire_pattern(text).unwrap_or_else(|| text.to_owned()),
            },
        };
        self.0.lookup.get(route.as_str()).ok_or(route)
    }
}

/// Where an address leads: a served route, or the route that missed.
pub(crate) struct Found<'a>(Result<&'a Arc<Entry>, String>);

/// Where a request waits while the router routes it: where it was built, so that a layer that
/// takes it whole leaves an empty request behind; or in a slot (the TCP server's), where it
/// leaves `None`, with nothing to build and drop.
pub(crate) trait Held {
    /// The request.
    fn request(&mut self) -> &mut Request;
    /// The request whole.
    fn take(&mut self) -> Request;
    /// Calls `route` with the request.
    fn call(&mut self, route: &Route) -> BoxFuture<'static, Reply>;
    /// Now, read for a deadline the request's headers give.
    fn now(&mut self) -> Instant {
        Instant::now()
    }
}

/// A request in a slot, one of several read at once that share one reading of the clock
/// for their deadlines (a reading is some 30 ns on a VM, a few percent of a request).
#[cfg(feature = "tcp")]
pub(crate) struct ReadTogether<'a> {
    pub(crate) slot: Option<Request>,
    /// The batch's reading, once a request needed it.
    pub(crate) now: &'a mut Option<Instant>,
}

#[cfg(feature = "tcp")]
impl Held for ReadTogether<'_> {
    #[inline(always)]
    fn request(&mut self) -> &mut Request {
        self.slot.request()
    }

    fn take(&mut self) -> Request {
        Held::take(&mut self.slot)
    }

    #[inline(always)]
    fn call(&mut self, route: &Route) -> BoxFuture<'static, Reply> {
        self.slot.call(route)
    }

    fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }
}

impl Held for Request {
    #[inline(always)]
    fn request(&mut self) -> &mut Request {
        self
    }

    fn take(&mut self) -> Request {
        Request::take(self)
    }

    #[inline(always)]
    fn call(&mut self, route: &Route) -> BoxFuture<'static, Reply> {
        route.call_in_place(self)
    }
}

impl Held for Option<Request> {
    #[inline(always)]
    fn request(&mut self) -> &mut Request {
        self.get_or_insert_with(unreachable_request)
    }

    fn take(&mut self) -> Request {
        Option::take(self).unwrap_or_else(unreachable_request)
    }

    #[inline(always)]
    fn call(&mut self, route: &Route) -> BoxFuture<'static, Reply> {
        route.call_slot(self)
    }
}

/// What an empty slot holds, which the router never lets happen: an event nobody handles.
#[cold]
fn unreachable_request() -> Request {
    tracing::error!("a route was called without its request");
    Request::new(Address::route(""), Payload::null(), Context::new("", Kind::Event))
}

/// The reply to a request whose caller's deadline passed before it arrived.
#[cold]
fn arrived_late(req: &Request) -> Reply {
    Reply::error(RpcError::deadline_exceeded(format!(
        "{} arrived after its deadline",
        req.context().route()
    )))
}

/// A handler that panicked when called: logged, answered NestJS's `Internal server error`.
fn handler_panicked(label: &'static str, panic: Box<dyn std::any::Any + Send>) -> BoxFuture<'static, Reply> {
    tracing::error!(handler = label, panic = %crate::error::panic_message(&*panic), "handler panicked");
    std::future::ready(Reply::error(RpcError::internal())).boxed()
}

/// A miss too long to have parsed, as logs and errors name it: its start and its length.
fn too_long(text: &str) -> String {
    format!("{}… ({} bytes)", &text[..text.floor_char_boundary(64)], text.len())
}

/// The content of a JSON string literal without escapes, without allocating.
fn simple_json_string(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains(['\\', '"'])).then_some(inner)
}

impl Service<Request> for Router {
    type Response = Reply;
    type Error = Infallible;
    type Future = futures_util::future::Map<RouterFuture, fn(Reply) -> Result<Reply, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Router::call(self, req).map(Ok)
    }
}

/// A message being served: resolves to its reply. A panic in a handler or a layer resolves
/// to NestJS's `Internal server error` (and is logged with the handler's name). A request
/// still running at its caller's deadline is dropped (cancelling its handler) and answered
/// `DEADLINE_EXCEEDED`; calls its handler makes inherit that deadline.
#[must_use = "a reply does nothing unless polled"]
pub struct RouterFuture {
    inner: BoxFuture<'static, Reply>,
    label: &'static str,
    deadline: Option<Instant>,
    /// Armed only once the handler has to wait (most answer on their first poll).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The route's watch (metrics), told the reply; dropped with the future if it has none.
    #[cfg(feature = "metrics")]
    watching: Option<Watching>,
}

impl RouterFuture {
    fn ready(reply: Reply, label: &'static str) -> Self {
        RouterFuture {
            inner: std::future::ready(reply).boxed(),
            label,
            deadline: None,
            timer: None,
            #[cfg(feature = "metrics")]
            watching: None,
        }
    }
}

impl Future for RouterFuture {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Reply> {
        let this = &mut *self;
        let inner = &mut this.inner;
        let mut poll = || std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx)));
        let polled = match this.deadline {
            None => poll(),
            Some(d) => super::deadline::within(d, poll),
        };
        match polled {
            Ok(Poll::Ready(reply)) => {
                #[cfg(feature = "metrics")]
                if let Some(watching) = this.watching.take() {
                    watching.end(&reply);
                }
                Poll::Ready(reply)
            }
            Ok(Poll::Pending) => {
                let Some(deadline) = this.deadline else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                tracing::debug!(
                    handler = this.label,
                    "the caller's deadline passed; dropping the handler"
                );
                this.inner = std::future::pending().boxed();
                this.deadline = None;
                #[cfg(feature = "metrics")]
                drop(this.watching.take());
                Poll::Ready(Reply::error(RpcError::deadline_exceeded(
                    "the caller's deadline passed",
                )))
            }
            Err(panic) => {
                tracing::error!(handler = this.label, panic = %crate::error::panic_message(&*panic), "handler panicked");
                // A panicked future is not polled again.
                this.inner = std::future::pending().boxed();
                #[cfg(feature = "metrics")]
                drop(this.watching.take());
                Poll::Ready(Reply::error(RpcError::internal()))
            }
        }
    }
}

impl fmt::Debug for RouterFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RouterFuture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A layer's service that hands back its route's future as it is.
    #[derive(Clone)]
    struct Pass(Route);

    impl Service<Request> for Pass {
        type Response = Reply;
        type Error = Infallible;
        type Future = RouteFuture;
        fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
            self.0.poll_ready(cx)
        }
        fn call(&mut self, req: Request) -> RouteFuture {
            Service::call(&mut self.0, req)
        }
    }

    /// A layer's service with a future of its own, which fails requests whose route it refuses.
    #[derive(Clone)]
    struct Refuse(Route);

    impl Service<Request> for Refuse {
        type Response = Reply;
        type Error = BoxError;
        type Future = BoxFuture<'static, Result<Reply, BoxError>>;
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request) -> Self::Future {
            let refused = req.address().as_str() == "no";
            let reply = Service::call(&mut self.0, req);
            async move {
                match refused {
                    true => Err(RpcError::new("refused").into()),
                    false => Ok(reply.await.unwrap_or_else(|never| match never {})),
                }
            }
            .boxed()
        }
    }

    fn request(route: &str) -> Request {
        let ctx = crate::service::Context::new("test", Kind::Request);
        Request::new(Address::route(route), crate::service::Payload::null(), ctx)
    }

    #[tokio::test]
    async fn a_layer_that_hands_back_its_routes_future_answers_as_the_route_does() {
        let inner = Route::from_fn(|_| std::future::ready(Reply::value(&7)).boxed());
        let passed = Route::new(Pass(inner.clone()));
        assert_eq!(passed.call(request("yes")).await.as_json(), Some(&b"7"[..]));
        let refusing = Route::new(Refuse(inner));
        assert_eq!(refusing.call(request("yes")).await.as_json(), Some(&b"7"[..]));
        let refused = refusing.call(request("no")).await;
        assert!(refused.is_error(), "{refused:?}");
    }

    #[tokio::test]
    async fn a_service_layer_wraps_each_route_once_and_sees_its_requests_and_events() {
        // A handler answering 7, or failing on `"fail"`.
        let handler = |location: &str| Endpoint {
            location: location.into(),
            route: Route::from_fn(|req| {
                let reply = match req.payload().and_then(super::Payload::json) {
                    Some(b"\"fail\"") => Reply::error(RpcError::new("no")),
                    _ => Reply::value(&7),
                };
                std::future::ready(reply).boxed()
            }),
            order: Default::default(),
        };
        let mut routes = RouterBuilder::default();
        routes.add("one", "\"one\"", Kind::Request, handler("one"));
        routes.add("both", "\"both\"", Kind::Request, handler("both"));
        routes.add("both", "\"both\"", Kind::Event, handler("both's listener"));
        // A layer that notes the kind of each message it sees; and how many times it is applied.
        let (made, seen) = (
            std::sync::atomic::AtomicUsize::new(0),
            Arc::new(std::sync::Mutex::new(Vec::new())),
        );
        let router = routes.build(
            true,
            |route| {
                made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let seen = seen.clone();
                route.layer(&tower::util::MapRequestLayer::new(move |req: Request| {
                    seen.lock().unwrap().push(req.kind());
                    req
                }))
            },
            |_, route| route,
        );
        let made = || made.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(made(), 3, "one service a route, and the fallback's");
        let call = |route: &'static str, kind: Kind, data: &'static str| {
            let ctx = super::Context::new("mem", kind);
            router.call(Request::new(
                Address::static_route(route),
                super::Payload::Json(data.into()),
                ctx,
            ))
        };
        // A request has its handler's answer; an event, completion or the failure.
        assert_eq!(call("one", Kind::Request, "1").await.as_json(), Some(&b"7"[..]));
        assert!(call("one", Kind::Event, "1").await.is_done());
        assert!(call("one", Kind::Event, "\"fail\"").await.is_error());
        assert!(call("one", Kind::Request, "\"fail\"").await.is_error());
        assert_eq!(call("both", Kind::Request, "1").await.as_json(), Some(&b"7"[..]));
        assert!(call("both", Kind::Event, "1").await.is_done());
        assert!(call("none", Kind::Request, "1").await.is_no_handler());
        use Kind::{Event, Request as Req};
        assert_eq!(*seen.lock().unwrap(), [Req, Event, Event, Req, Req, Event, Req]);
        assert_eq!(made(), 3, "and no service made since");
    }

    #[test]
    fn a_pattern_longer_than_any_route_misses_unparsed() {
        let mut routes = RouterBuilder::default();
        let endpoint = Endpoint {
            location: "sum".into(),
            route: Route::from_fn(|_| std::future::ready(Reply::empty()).boxed()),
            order: Default::default(),
        };
        routes.add("sum", "\"sum\"", Kind::Request, endpoint);
        let router = routes.build(false, |route| route, |_, route| route);
        let keys: Vec<String> = (0..100_000).map(|i| format!("\"k{i}\":1")).collect();
        let big = format!("{{{}}}", keys.join(","));
        let miss = router
            .resolve_route(&Address::Pattern(Bytes::from(big.clone())))
            .unwrap_err();
        assert!(miss.ends_with(&format!("… ({} bytes)", big.len())), "{miss}");
        assert!(miss.len() < 100);
        // A short one is still normalised as NestJS does.
        let short = Address::Pattern(Bytes::from_static(br#"{"b":1,"a":2}"#));
        assert_eq!(router.resolve_route(&short).unwrap_err(), r#"{"a":2,"b":1}"#);
    }

    /// The TCP server's frames from one read: their deadlines count from one reading of the
    /// clock, taken when the first needs it; a later batch reads it again.
    #[cfg(feature = "tcp")]
    #[tokio::test(start_paused = true)]
    async fn requests_read_together_share_one_reading_of_the_clock() {
        let deadlines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = deadlines.clone();
        let endpoint = Endpoint {
            location: "t".into(),
            route: Route::from_fn(move |req| {
                seen.lock().unwrap().push(req.context().deadline());
                std::future::ready(Reply::value(&1)).boxed()
            }),
            order: Default::default(),
        };
        let mut routes = RouterBuilder::default();
        routes.add("t", "\"t\"", Kind::Request, endpoint);
        let router = routes.build(false, |route| route, |_, route| route);
        let call = |left: &'static str, now: &mut Option<Instant>| {
            let (address, found) = router.find_pattern("\"t\"");
            let headers = [(crate::service::TIMEOUT_HEADER, left)].into_iter().collect();
            let ctx = super::Context::new("tcp", Kind::Request).with_headers(headers);
            let mut held = ReadTogether {
                slot: Some(Request::new(address, super::Payload::Json("1".into()), ctx)),
                now,
            };
            router.call_found(found, &mut held, None)
        };
        let ms = std::time::Duration::from_millis;
        let read = Instant::now();
        let mut batch = None;
        assert!(call("100", &mut batch).await.as_json().is_some());
        assert_eq!(batch, Some(read), "the first request with a deadline reads the clock");
        tokio::time::advance(ms(50)).await;
        assert!(call("100", &mut batch).await.as_json().is_some());
        // A request whose caller has no time left is still refused before its handler.
        assert!(call("0", &mut batch).await.is_error());
        let mut next = None;
        assert!(call("100", &mut next).await.as_json().is_some());
        assert_eq!(
            *deadlines.lock().unwrap(),
            [Some(read + ms(100)), Some(read + ms(100)), Some(read + ms(150))],
            "one batch, one reading; the next batch reads the clock again"
        );
    }

    #[cfg(feature = "metrics")]
    use crate::service::{Context, Payload};

    /// What a test watch saw: starts (`arrived` when given an arrival, which it checks),
    /// then each end (`ok`, `error`, or `dropped`).
    #[cfg(feature = "metrics")]
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<&'static str>>);

    #[cfg(feature = "metrics")]
    impl Watcher for Seen {
        fn end(&'static self, started: u64, reply: Option<&Reply>) {
            assert_eq!(started, 7, "the start's token comes back");
            let end = match reply {
                Some(r) if r.is_error() => "error",
                Some(_) => "ok",
                None => "dropped",
            };
            self.0.lock().unwrap().push(end);
        }
    }

    #[cfg(feature = "metrics")]
    impl Watch for &'static Seen {
        fn start(&self, _: &Request, arrival: Option<Arrival>) -> Watching {
            let start = match arrival {
                Some(Arrival(at)) => {
                    assert_eq!(at, 7, "the transport's arrival");
                    "arrived"
                }
                None => "start",
            };
            self.0.lock().unwrap().push(start);
            Watching::new(*self, 7)
        }
    }

    #[cfg(feature = "metrics")]
    #[tokio::test]
    async fn a_watched_route_is_told_each_end_without_a_future_around_it() {
        let seen: &'static Seen = Box::leak(Box::default());
        let mut routes = RouterBuilder::default();
        let handler = Route::from_fn(|req| {
            let what = req.payload().and_then(Payload::json).unwrap_or_default().to_vec();
            match what.as_slice() {
                b"\"panic\"" => panic!("the handler panics when called"),
                b"\"fail\"" => std::future::ready(Reply::error(RpcError::new("no"))).boxed(),
                b"\"wait\"" => std::future::pending().boxed(),
                _ => std::future::ready(Reply::empty()).boxed(),
            }
        });
        let endpoint = Endpoint {
            location: "watched".into(),
            route: handler,
            order: Default::default(),
        };
        routes.add("watched", "\"watched\"", Kind::Request, endpoint);
        let router = routes.build(false, |route| route, |_, route| Route::watched(route, seen));
        let call = |data: &'static str| {
            router.call(Request::new(
                Address::static_route("watched"),
                Payload::Json(data.into()),
                Context::new("mem", Kind::Request),
            ))
        };
        assert!(!call("\"ok\"").await.is_error());
        assert!(call("\"fail\"").await.is_error());
        assert!(call("\"panic\"").await.is_error(), "a panic is an internal error");
        let mut waiting = call("\"wait\"");
        assert!((&mut waiting).now_or_never().is_none(), "the handler waits");
        drop(waiting);
        let arrived = Request::new(
            Address::static_route("watched"),
            Payload::Json("\"ok\"".into()),
            Context::new("tcp", Kind::Request),
        );
        assert!(!router.call_arrived(arrived, Some(Arrival(7))).await.is_error());
        // Called by something other than the router (a layer around it): the same ends.
        let inner = Route::watched(Route::from_fn(|_| std::future::ready(Reply::empty()).boxed()), seen);
        let req = Request::new(
            Address::static_route("watched"),
            Payload::null(),
            Context::new("mem", Kind::Request),
        );
        assert!(!inner.call(req).await.is_error());
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "start", "ok", "start", "error", "start", "dropped", "start", "dropped", "arrived", "ok", "start", "ok"
            ]
        );
    }
}
