//! The client side's services: [`Transport`], a client transport as a `tower::Service`, and
//! [`ClientService`], the type-erased stack of layers over it that a [`Client`](super::Client)
//! calls.

use std::fmt;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures_util::future::{BoxFuture, FutureExt, TryFutureExt};
use tower::{BoxError, Service, ServiceExt};

use crate::error::{Error, Result};
use tokio::time::Instant;

use crate::resilience::PolicyService;
use crate::resilience::policy::{Held, Started};
use crate::service::{Kind, Outbound, Replies, TIMEOUT_HEADER, deadline};
use crate::transport::ClientTransport;

/// A client transport as a `tower::Service`: what the first client layer wraps. A request
/// resolves once its first reply packet has arrived; an event once the transport took it.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<dyn ClientTransport>,
    /// Its name in spans and metrics (`tcp`, `redis`, …).
    #[cfg_attr(not(any(feature = "telemetry", feature = "metrics")), allow(dead_code))]
    name: &'static str,
}

impl Transport {
    /// `inner`, reached by a URL of `scheme`.
    pub(crate) fn new(inner: Arc<dyn ClientTransport>, scheme: &str) -> Self {
        Transport {
            inner,
            name: crate::transport::name_of(scheme),
        }
    }

    /// Sends `out`: a request resolves to its replies once the first is in, an event once
    /// the transport took it. With the `telemetry` feature, inside its `send <route>` span.
    fn send(&self, out: Outbound) -> BoxFuture<'static, Result<Replies>> {
        #[cfg(feature = "metrics")]
        if let Some(called) = crate::metrics::Called::start() {
            let (name, route, kind) = (self.name, out.route.clone(), out.kind);
            let sent = self.traced(out);
            return async move {
                let outcome = sent.await;
                called.done(name, &route, kind, &outcome);
                outcome
            }
            .boxed();
        }
        self.traced(out)
    }

    #[cfg_attr(not(feature = "telemetry"), allow(unused_mut))]
    fn traced(&self, mut out: Outbound) -> BoxFuture<'static, Result<Replies>> {
        #[cfg(feature = "telemetry")]
        if let Some(sending) = crate::telemetry::span::client(&mut out, crate::telemetry::span::system(self.name)) {
            let sent = self.dispatch(out);
            return async move {
                let outcome = sent.await;
                sending.sent(&outcome);
                outcome
            }
            .boxed();
        }
        self.dispatch(out)
    }

    fn dispatch(&self, mut out: Outbound) -> BoxFuture<'static, Result<Replies>> {
        match out.kind {
            Kind::Request => {
                stamp(&*self.inner, &mut out);
                self.inner.clone().request(out)
            }
            Kind::Event => self.inner.clone().emit(out).map_ok(empty).boxed(),
        }
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Transport")
    }
}

impl Service<Outbound> for Transport {
    type Response = Replies;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Replies>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        self.send(out)
    }
}

/// Writes the time a request has left into its headers, for the server to keep to (an
/// in-process transport hands the deadline over as it is).
fn stamp(transport: &dyn ClientTransport, out: &mut Outbound) {
    if transport.takes_values() {
        return;
    }
    if let Some(left) = deadline::header_value(out.deadline, Instant::now()) {
        out.headers.insert(TIMEOUT_HEADER, left);
    }
}

fn empty(_: ()) -> Replies {
    Replies::empty()
}

/// The service a [`Client`](super::Client) calls: its transport inside the layers given to
/// [`ClientBuilder::layer`](super::ClientBuilder::layer), type-erased. Cheap to clone; each
/// call clones the stack, so `poll_ready` (a concurrency or rate limit) applies per call.
#[derive(Clone)]
pub struct ClientService(Arc<dyn Erased>);

trait Erased: Send + Sync {
    fn call(&self, out: Outbound) -> Sent;
}

impl Erased for Transport {
    fn call(&self, out: Outbound) -> Sent {
        Sent::plain(self.send(out))
    }
}

/// A policy over the stack is called as it is: no clone of it, and a single attempt comes
/// back as the transport's own future with what it holds, so a [`Call`](super::Call) polls
/// it with no future around it and keeps to its timeout with the one timer it has anyway.
impl Erased for PolicyService<ClientService> {
    fn call(&self, out: Outbound) -> Sent {
        match self.start(out) {
            Started::Held(call, held) => Sent {
                replies: call.into_inner(),
                held: Some(held),
            },
            Started::Whole(call) => Sent::plain(call),
        }
    }
}

/// A call on its way through the stack: the future of its replies and, for a single
/// attempt through a policy, what the attempt holds until it ends (see [`Held`]).
pub(crate) struct Sent {
    pub(crate) replies: BoxFuture<'static, Result<Replies>>,
    pub(crate) held: Option<Held>,
}

impl Sent {
    /// A call whose future keeps to everything itself.
    fn plain(replies: BoxFuture<'static, Result<Replies>>) -> Self {
        Sent { replies, held: None }
    }

    /// The call as one future that keeps to everything itself.
    fn whole(self) -> BoxFuture<'static, Result<Replies>> {
        match self.held {
            None => self.replies,
            Some(held) => Started::Held(self.replies, held).whole(),
        }
    }
}

struct Tower<S>(S);

impl<S> Erased for Tower<S>
where
    S: Service<Outbound, Response = Replies> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    fn call(&self, out: Outbound) -> Sent {
        Sent::plain(self.0.clone().oneshot(out).map_err(|e| layer_error(e.into())).boxed())
    }
}

/// `service` as a `T`, if that is what it is (as axum avoids boxing a boxed service twice).
fn downcast<T: 'static, S: 'static>(service: S) -> std::result::Result<T, S> {
    let mut slot = Some(service);
    match (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<T>>() {
        Some(found) => Ok(found.take().expect("just filled")),
        None => Err(slot.expect("not taken")),
    }
}

/// A layer's error: ours as it is, anything else kept as the source of [`Error::Layer`].
fn layer_error(e: BoxError) -> Error {
    match e.downcast::<Error>() {
        Ok(e) => *e,
        Err(other) => Error::Layer(other),
    }
}

impl ClientService {
    pub(crate) fn transport(t: Transport) -> Self {
        ClientService(Arc::new(t))
    }

    /// Any `tower::Service` of outbound calls.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Outbound, Response = Replies> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
    {
        match downcast::<PolicyService<ClientService>, S>(service) {
            Ok(policy) => ClientService(Arc::new(policy)),
            Err(service) => ClientService(Arc::new(Tower(service))),
        }
    }

    /// Calls the stack (no readiness to wait for).
    pub fn call(&self, out: Outbound) -> BoxFuture<'static, Result<Replies>> {
        self.0.call(out).whole()
    }

    /// Calls the stack; a single attempt through a policy comes back with what it holds.
    pub(crate) fn send(&self, out: Outbound) -> Sent {
        self.0.call(out)
    }
}

impl fmt::Debug for ClientService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientService")
    }
}

impl Service<Outbound> for ClientService {
    type Response = Replies;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Replies>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        ClientService::call(self, out)
    }
}
