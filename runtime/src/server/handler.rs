//! [`Handler`] and [`Serve`]: what `#[message_pattern]` and `#[event_pattern]` make of an
//! `async fn`, and how a service serves it.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tower::{BoxError, Layer, Service};

use crate::contract::{Contract, Signature};
use crate::service::{Kind, PatternOptions, Reply, Request, Route, RouteFuture};

/// What a handler is: its pattern, kind and source location. Made by the attribute macros.
#[derive(Debug)]
pub struct HandlerInfo {
    kind: Kind,
    route: &'static str,
    pattern: &'static str,
    name: &'static str,
    module: &'static str,
    file: &'static str,
    line: u32,
    options: PatternOptions,
    signature: Option<fn() -> Option<&'static Signature>>,
}

impl HandlerInfo {
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        kind: Kind,
        route: &'static str,
        pattern: &'static str,
        name: &'static str,
        module: &'static str,
        file: &'static str,
        line: u32,
    ) -> Self {
        HandlerInfo {
            kind,
            route,
            pattern,
            name,
            module,
            file,
            line,
            options: PatternOptions::new(),
            signature: None,
        }
    }

    #[doc(hidden)]
    pub const fn with_options(mut self, options: PatternOptions) -> Self {
        self.options = options;
        self
    }

    #[doc(hidden)]
    pub const fn with_signature(mut self, signature: fn() -> Option<&'static Signature>) -> Self {
        self.signature = Some(signature);
        self
    }

    /// What its payload and reply types look like, as its descriptor's
    /// [`Message::signature`](crate::Message::signature) (or [`Event`](crate::Event)'s) gives it.
    pub fn signature(&self) -> Option<&'static Signature> {
        self.signature.and_then(|signature| signature())
    }

    /// The fingerprint of its payload and reply types ([`Signature::contract`]).
    pub fn contract(&self) -> Option<Contract> {
        self.signature().map(Signature::contract)
    }

    /// What its attribute declares beyond the pattern.
    pub fn options(&self) -> PatternOptions {
        self.options
    }

    /// Request handler (`#[message_pattern]`) or listener (`#[event_pattern]`).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The normalised route key.
    pub fn route(&self) -> &'static str {
        self.route
    }

    /// The pattern as JSON, as written.
    pub fn pattern(&self) -> &'static str {
        self.pattern
    }

    /// The module it is declared in.
    pub fn module(&self) -> &'static str {
        self.module
    }

    /// The function's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `module::name (file:line)`, for messages about this handler.
    pub fn location(&self) -> String {
        format!("{}::{} ({}:{})", self.module, self.name, self.file, self.line)
    }
}

/// A handler: every `#[message_pattern]` and `#[event_pattern]` function's descriptor (and
/// every method's of a `#[handlers]` group) is one.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[message_pattern("ping")]
/// async fn ping() -> &'static str { "pong" }
///
/// assert_eq!(PING.info().route(), "ping");
/// assert_eq!(PING.info().name(), "ping");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler's descriptor",
    label = "expected a descriptor made by `#[message_pattern]` or `#[event_pattern]`",
    note = "`#[message_pattern] async fn get_user(..)` makes the descriptor `GET_USER` next to the function: pass `GET_USER`, not the function"
)]
pub trait Handler: Clone + Send + Sync + 'static {
    /// The handler's pattern, kind and location.
    fn info(&self) -> &'static HandlerInfo;

    /// This handler wrapped in `layer` (a per-handler `tower` layer), for
    /// `Microservice::handler`.
    fn layer<L>(self, layer: L) -> Layered<Self, L> {
        Layered { handler: self, layer }
    }
}

/// A handler that can be served with state `S`: its arguments all come from a message and
/// `S` (a `State<T>` argument needs `T: FromRef<S>`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler's descriptor",
    label = "expected a descriptor made by `#[message_pattern]` or `#[event_pattern]`",
    note = "`#[message_pattern] async fn get_user(..)` makes the descriptor `GET_USER` next to the function: serve it with `.handler(GET_USER)`; the function itself is not a handler",
    note = "a group of handlers (an `impl` block marked `#[handlers]`) is served with `.group(value)`"
)]
pub trait Serve<S>: Handler {
    /// Serves one message, taking from `req` what the handler needs (its caller drops the
    /// rest). The state is cloned only for an argument that cannot be taken at once (see
    /// [`FromRequest::from_request_now`](crate::FromRequest::from_request_now)).
    fn call(self, req: &mut Request, state: &S) -> BoxFuture<'static, Reply>;

    /// The handler as a route, its state bound.
    fn into_route(self, state: S) -> Route
    where
        S: Clone + Send + Sync + 'static,
    {
        Route::serving(move |req| self.clone().call(req, &state))
    }
}

/// A handler inside a `tower` layer of its own, made by [`Handler::layer`].
#[derive(Clone)]
pub struct Layered<H, L> {
    handler: H,
    layer: L,
}

impl<H: fmt::Debug, L> fmt::Debug for Layered<H, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layered")
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

impl<H, L> Handler for Layered<H, L>
where
    H: Handler,
    L: Clone + Send + Sync + 'static,
{
    fn info(&self) -> &'static HandlerInfo {
        self.handler.info()
    }
}

impl<H, L, S> Serve<S> for Layered<H, L>
where
    H: Serve<S>,
    S: Clone + Send + Sync + 'static,
    L: Layer<HandlerService<H, S>> + Clone + Send + Sync + 'static,
    L::Service: Service<Request, Response = Reply> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request>>::Error: Into<BoxError>,
    <L::Service as Service<Request>>::Future: Send,
{
    fn call(self, req: &mut Request, state: &S) -> BoxFuture<'static, Reply> {
        self.into_route(state.clone()).call_in_place(req)
    }

    fn into_route(self, state: S) -> Route {
        Route::new(self.layer.layer(HandlerService::new(self.handler, state)))
    }
}

/// A handler and its state as a `tower::Service`: what a per-handler layer wraps.
pub struct HandlerService<H, S> {
    handler: H,
    state: S,
    _s: PhantomData<fn() -> S>,
}

impl<H: Clone, S: Clone> Clone for HandlerService<H, S> {
    fn clone(&self) -> Self {
        HandlerService {
            handler: self.handler.clone(),
            state: self.state.clone(),
            _s: PhantomData,
        }
    }
}

impl<H, S> HandlerService<H, S> {
    /// `handler` served with `state`.
    pub fn new(handler: H, state: S) -> Self {
        HandlerService {
            handler,
            state,
            _s: PhantomData,
        }
    }
}

impl<H: Serve<S>, S: Clone + Send + Sync + 'static> Service<Request> for HandlerService<H, S> {
    type Response = Reply;
    type Error = std::convert::Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> RouteFuture {
        self.handler.clone().call(&mut req, &self.state).into()
    }
}

/// A handler ready to serve: its description and its route.
#[derive(Clone)]
pub(crate) struct Bound {
    pub info: &'static HandlerInfo,
    pub route: Route,
}

impl Bound {
    pub fn new(info: &'static HandlerInfo, route: Route) -> Self {
        Bound { info, route }
    }

    /// The handler's route inside the limits of `options` (what it declares, overridden):
    /// rate, then concurrency, then time.
    pub fn limited(&self, options: crate::service::PatternOptions) -> Route {
        use crate::resilience::{Bulkhead, RateLimit, Timeout};
        let mut route = self.route.clone();
        if let Some(d) = options.get_timeout() {
            route = route.layer(&Timeout::new(d));
        }
        if let Some(n) = options.get_concurrency() {
            route = route.layer(&Bulkhead::new(n as usize).queue(n as usize));
        }
        if let Some((n, per)) = options.get_rate() {
            route = route.layer(&RateLimit::new(n, per));
        }
        route
    }

    pub fn location(&self) -> Arc<str> {
        self.info.location().into()
    }
}
