//! [`observe`]: the span of every message a service handles.

use futures_util::future::FutureExt;
use tracing::Instrument;

use super::span;
use crate::service::Route;

/// `route` (named `name`, empty for the answer to patterns nobody serves) with each message it
/// handles in a `process <name>` span, whose parent is taken
/// from the message's headers. A service with the `telemetry` feature wraps every route in
/// it, outside its own layers, so what they do (a refusal by a rate limit) is in the span.
/// A plain function over [`Route`], not a `tower` layer: when nothing records spans it adds
/// no allocation to the call.
pub(crate) fn observe(name: &'static str, route: Route) -> Route {
    Route::from_fn(move |req| {
        let Some(span) = span::server(&req, name) else {
            return route.call(req);
        };
        let reply = span.in_scope(|| route.call(req));
        async move {
            let reply = reply.instrument(span.clone()).await;
            span::served(&span, &reply);
            reply
        }
        .boxed()
    })
}
