//! Layers from `async fn`s: [`from_fn`] for a service, [`client_fn`] for a client.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::task::{Context as TaskContext, Poll};

use futures_util::future::{FutureExt, Map};
use tower::{BoxError, Layer, Service};

use crate::client::ClientService;
use crate::error::Result;
use crate::service::{Outbound, Replies, Reply, Request, Route};

/// A service layer from `f(request, next) -> reply`: `f` may answer itself (an auth guard
/// refusing) or call `next.run(request)` and look at, or change, what it answers.
pub fn from_fn<F>(f: F) -> FromFnLayer<F> {
    FromFnLayer(f)
}

/// The rest of the service, for a [`from_fn`] layer.
#[derive(Clone, Debug)]
pub struct Next(Route);

impl Next {
    /// Runs the rest of the service.
    pub async fn run(self, req: Request) -> Reply {
        self.0.call(req).await
    }
}

/// The layer [`from_fn`] makes.
#[derive(Clone, Copy)]
pub struct FromFnLayer<F>(F);

impl<F> fmt::Debug for FromFnLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFnLayer")
    }
}

impl<F: Clone, S> Layer<S> for FromFnLayer<F>
where
    S: Service<Request, Response = Reply> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Service = FromFn<F>;

    fn layer(&self, inner: S) -> FromFn<F> {
        FromFn {
            f: self.0.clone(),
            next: Route::new(inner),
        }
    }
}

/// The service a [`from_fn`] layer makes.
#[derive(Clone)]
pub struct FromFn<F> {
    f: F,
    next: Route,
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn")
    }
}

impl<F, Fut> Service<Request> for FromFn<F>
where
    F: Fn(Request, Next) -> Fut,
    Fut: Future<Output = Reply>,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = Map<Fut, fn(Reply) -> std::result::Result<Reply, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<std::result::Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        (self.f)(req, Next(self.next.clone())).map(Ok)
    }
}

/// A client layer from `f(call, next) -> replies`: `f` may fail the call itself or run
/// `next.run(call)` and look at, or change, the outcome.
pub fn client_fn<F>(f: F) -> ClientFnLayer<F> {
    ClientFnLayer(f)
}

/// The rest of the client's stack, for a [`client_fn`] layer.
#[derive(Clone, Debug)]
pub struct ClientNext(ClientService);

impl ClientNext {
    /// Runs the rest of the stack.
    pub async fn run(self, out: Outbound) -> Result<Replies> {
        self.0.call(out).await
    }
}

/// The layer [`client_fn`] makes.
#[derive(Clone, Copy)]
pub struct ClientFnLayer<F>(F);

impl<F> fmt::Debug for ClientFnLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientFnLayer")
    }
}

impl<F: Clone> Layer<ClientService> for ClientFnLayer<F> {
    type Service = ClientFn<F>;

    fn layer(&self, inner: ClientService) -> ClientFn<F> {
        ClientFn {
            f: self.0.clone(),
            next: inner,
        }
    }
}

/// The service a [`client_fn`] layer makes.
#[derive(Clone)]
pub struct ClientFn<F> {
    f: F,
    next: ClientService,
}

impl<F> fmt::Debug for ClientFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientFn")
    }
}

impl<F, Fut> Service<Outbound> for ClientFn<F>
where
    F: Fn(Outbound, ClientNext) -> Fut,
    Fut: Future<Output = Result<Replies>>,
{
    type Response = Replies;
    type Error = crate::error::Error;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Fut {
        (self.f)(out, ClientNext(self.next.clone()))
    }
}
