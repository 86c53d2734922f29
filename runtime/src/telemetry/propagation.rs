//! W3C trace context and baggage in a message's [`Headers`]: the `traceparent`, `tracestate`
//! and `baggage` entries every transport carries in its own slot (NestJS 12's `metadata`,
//! NATS, Kafka and AMQP headers, gRPC metadata).

use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use crate::service::Headers;

/// One fixed propagator, whatever the process's global one is: peers (NestJS with the
/// OpenTelemetry JS SDK, any OTel collector) expect W3C, and a forgotten
/// `global::set_text_map_propagator` must not silently cut traces.
static W3C: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
});

struct Reader<'a>(&'a Headers);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

struct Writer<'a>(&'a mut Headers);

impl Injector for Writer<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// The caller's context (its span and baggage) from a message's headers; an empty context
/// when they carry none or an invalid one.
pub(crate) fn extract(headers: &Headers) -> Context {
    W3C.extract(&Reader(headers))
}

/// Writes `cx` (a span and its baggage) into outgoing headers.
#[cfg(test)]
pub(crate) fn inject(cx: &Context, headers: &mut Headers) {
    W3C.inject_context(cx, &mut Writer(headers));
}

/// Writes the baggage of `cx` into outgoing headers (a call's span context is written by its
/// span).
pub(crate) fn inject_baggage(cx: &Context, headers: &mut Headers) {
    static BAGGAGE: LazyLock<BaggagePropagator> = LazyLock::new(BaggagePropagator::new);
    BAGGAGE.inject_context(cx, &mut Writer(headers));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn headers_round_trip() {
        let mut headers = Headers::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        headers.insert("tracestate", "vendor=x");
        headers.insert("baggage", "tenant=acme");
        let cx = extract(&headers);
        let span = cx.span().span_context().clone();
        assert_eq!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span.is_sampled() && span.is_remote());
        let mut out = Headers::new();
        inject(&cx, &mut out);
        assert_eq!(out.get("traceparent"), headers.get("traceparent"));
        assert_eq!(out.get("tracestate"), Some("vendor=x"));
        assert_eq!(out.get("baggage"), Some("tenant=acme"));
    }

    #[test]
    fn garbage_is_no_context() {
        let mut headers = Headers::new();
        headers.insert("traceparent", "00-zz-\u{202e}-01");
        assert!(!extract(&headers).span().span_context().is_valid());
        let mut out = Headers::new();
        inject(&extract(&headers), &mut out);
        assert!(out.get("traceparent").is_none());
    }
}
