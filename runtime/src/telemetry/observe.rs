//! [`observe`]: the span of every message a service handles.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;

use super::span::{self, Processing};
use crate::service::{Reply, Route};

/// `route` (named `name`, empty for the answer to patterns nobody serves) with each message it
/// handles in a `process <name>` span, whose parent is taken from the message's headers. A
/// service with the `telemetry` feature wraps every route in it, outside its own layers, so
/// what they do (a refusal by a rate limit) is in the span.
pub(crate) fn observe(name: &'static str, route: Route) -> Route {
    let Some(recorder) = super::export::recorder() else {
        return route;
    };
    Route::serving(move |req| {
        let processing = span::server(recorder, req, name);
        let inner = super::current::within(&processing.current, || {
            let _log = processing.log.as_ref().map(tracing::Span::enter);
            route.call_in_place(req)
        });
        Box::pin(Traced {
            inner,
            processing: Some(processing),
        })
    })
}

/// A message's reply future, polled inside its span's context.
struct Traced {
    inner: BoxFuture<'static, Reply>,
    processing: Option<Processing>,
}

impl Future for Traced {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let this = &mut *self;
        let polled = match &this.processing {
            Some(processing) => super::current::within(&processing.current, || {
                let _log = processing.log.as_ref().map(tracing::Span::enter);
                this.inner.as_mut().poll(cx)
            }),
            None => this.inner.as_mut().poll(cx),
        };
        if let Poll::Ready(reply) = &polled
            && let Some(processing) = this.processing.take()
        {
            processing.end(Some(reply));
        }
        polled
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(processing) = self.processing.take() {
            processing.end(None);
        }
    }
}
