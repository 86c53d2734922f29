//! What the runtime reports as metrics besides messages and calls: reconnects and the
//! resilience layers' decisions. Each is a no-op without the `metrics` feature.

#[cfg(feature = "metrics")]
use crate::metrics::names;

/// A transport connected again after losing its broker or peer.
#[inline]
#[cfg_attr(not(feature = "tcp"), allow(dead_code))] // only transports that reconnect call it
pub(crate) fn reconnected(transport: &'static str) {
    #[cfg(feature = "metrics")]
    if crate::metrics::enabled() {
        ::metrics::counter!(names::RECONNECTS, "transport" => transport).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = transport;
}

/// A message dropped on arrival, never handled (`reason`: `backlog`, `slow_consumer`).
#[inline]
#[cfg_attr(not(any(feature = "mqtt", feature = "nats")), allow(dead_code))]
pub(crate) fn dropped(transport: &'static str, reason: &'static str) {
    #[cfg(feature = "metrics")]
    if crate::metrics::enabled() {
        ::metrics::counter!(names::DROPPED, "transport" => transport, "reason" => reason).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (transport, reason);
}

/// A call is sent again.
#[inline]
pub(crate) fn retried(route: &str) {
    #[cfg(feature = "metrics")]
    if crate::metrics::enabled() {
        ::metrics::counter!(names::RETRIES, "route" => route.to_owned()).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = route;
}

/// A call answered by its fallback.
#[inline]
pub(crate) fn fell_back(route: &str) {
    #[cfg(feature = "metrics")]
    if crate::metrics::enabled() {
        ::metrics::counter!(names::FALLBACKS, "route" => route.to_owned()).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = route;
}

/// A call refused by a resilience layer (`side`: `client` or `server`; `reason`: `circuit_open`,
/// `overloaded`, `rate_limited`, `deadline_exceeded`).
#[inline]
pub(crate) fn shed(side: &'static str, route: &str, reason: &'static str) {
    #[cfg(feature = "metrics")]
    if crate::metrics::enabled() {
        ::metrics::counter!(names::SHED, "side" => side, "route" => route.to_owned(), "reason" => reason).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (side, route, reason);
}

/// A circuit changed state (`state`: 0 closed, 1 half-open, 2 open, 3 isolated).
#[inline]
pub(crate) fn circuit(route: &str, state: u8) {
    #[cfg(feature = "metrics")]
    if crate::metrics::enabled() {
        let to = match state {
            0 => "closed",
            1 => "half_open",
            2 => "open",
            _ => "isolated",
        };
        ::metrics::gauge!(names::CIRCUIT_STATE, "route" => route.to_owned()).set(f64::from(state));
        ::metrics::counter!(names::CIRCUIT_TRANSITIONS, "route" => route.to_owned(), "to" => to).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (route, state);
}
