//! The spans of calls and handled messages, named and attributed after OpenTelemetry's
//! messaging conventions: `send <route>` (CLIENT for a request, PRODUCER for an event) on the
//! caller, `process <route>` (SERVER for a request, CONSUMER for an event, linked to its
//! producer) on the service.
//!
//! They are records of Switchboard's own ([`record`](super::record)), not `tracing` spans:
//! a sampled message costs a few stores and a clock read at each end. While a message is
//! handled its span is this thread's current one ([`current`](super::current)), so the
//! handler's own `tracing` spans (parented by [`bridge`](super::bridge)) and the calls it
//! makes continue its trace.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::trace::{TraceContextExt, TraceFlags, TraceState};

use super::current::{self, Current};
use super::export::{self, Recorder};
use super::propagation;
use super::record::{self, SAMPLED, SpanContext, SpanKind, SpanRecord};
use crate::error::Error;
use crate::service::{Kind, Outbound, Replies, Reply, Request};

/// The target of the `tracing` spans that put Switchboard's span (and its `trace_id`) before
/// the log lines of a handler, when a log filter asks for them (`switchboard::telemetry=info`).
pub const TARGET: &str = "switchboard::telemetry";

/// True when Switchboard's spans are recorded: [`init`](super::init) or
/// [`Builder::layer`](super::Builder::layer) set an exporter up, with a sampler that samples.
pub(crate) fn recording() -> bool {
    export::recorder().is_some()
}

/// `messaging.system` of a transport: OpenTelemetry's well-known name where there is one.
pub(crate) fn system(transport: &str) -> &'static str {
    match transport {
        "amqp" => "rabbitmq",
        other => crate::transport::name_of(other),
    }
}

/// A message being handled: its span, and that span's context as the OpenTelemetry context
/// its handler runs in.
pub(crate) struct Processing {
    record: SpanRecord,
    pub(crate) current: Current,
    /// For the logs, when a filter asks for Switchboard's spans.
    pub(crate) log: Option<tracing::Span>,
    recorder: &'static Recorder,
}

/// The span of a message to the route `name` (empty: a pattern nobody serves), its parent read
/// from the message's headers. A pattern nobody serves is the sender's text: the span's name
/// says `(unmatched)`, so senders cannot grow the set of span names, and the text is kept
/// escaped and cut.
pub(crate) fn server(recorder: &'static Recorder, req: &Request, name: &'static str) -> Processing {
    let start = record::now();
    let ctx = req.context();
    let (destination, name) = match name {
        "" => (
            Cow::Owned(crate::text::for_log(ctx.route()).to_string()),
            Cow::Borrowed("(unmatched)"),
        ),
        served => (Cow::Borrowed(served), Cow::Borrowed(served)),
    };
    let kind = match ctx.kind() {
        Kind::Request => SpanKind::Server,
        Kind::Event => SpanKind::Consumer,
    };
    let (parent, base) = remote_parent(ctx.headers());
    let (trace_id, parent_span_id, flags) = lineage(recorder, parent.as_ref());
    let record = SpanRecord {
        trace_id,
        span_id: record::span_id(),
        parent_span_id,
        parent_is_remote: parent.is_some(),
        flags,
        trace_state: parent.as_ref().and_then(|p| p.trace_state.clone()),
        kind,
        name,
        destination,
        system: system(ctx.transport()),
        body_size: None,
        error_type: None,
        link: match ctx.kind() {
            Kind::Event => parent,
            Kind::Request => None,
        },
        start,
        end: 0,
    };
    let current = Current {
        span: record.context(),
        base,
    };
    let log = tracing::info_span!(
        target: TARGET,
        "process",
        otel.name = %format_args!("process {}", record.name),
        messaging.destination.name = %record.destination,
        trace_id = %Hex(&record.trace_id),
    );
    Processing {
        log: (!log.is_disabled()).then_some(log),
        record,
        current,
        recorder,
    }
}

impl Processing {
    /// Ends the span: with `reply`, or cancelled (`None`: dropped before it replied).
    pub(crate) fn end(mut self, reply: Option<&Reply>) {
        // Never before its start, whatever the clock's anchor did meanwhile.
        self.record.end = record::now().max(self.record.start);
        if let Some(reply) = reply {
            if reply.is_no_handler() {
                self.record.error_type = Some("no_handler");
            } else if let Some(e) = reply.as_error() {
                self.record.error_type = Some(e.kind());
            }
        }
        self.recorder.record(self.record);
    }
}

/// A new span's trace id, parent span id (zero for a root) and flags under `parent` (a new
/// trace without one), sampled as the recorder's sampler decides.
fn lineage(recorder: &Recorder, parent: Option<&SpanContext>) -> ([u8; 16], [u8; 8], u8) {
    let trace_id = parent.map_or_else(record::trace_id, |p| p.trace_id);
    let sampled = recorder
        .sampler
        .sample(&trace_id, parent.map(|p| p.flags & SAMPLED != 0));
    (
        trace_id,
        parent.map_or([0; 8], |p| p.span_id),
        if sampled { SAMPLED } else { 0 },
    )
}

/// The caller's span context from a message's headers, and the OpenTelemetry context to build
/// the message's on (its baggage). A `traceparent` alone is read here; with `tracestate` or
/// `baggage`, by the W3C propagators.
fn remote_parent(headers: &crate::service::Headers) -> (Option<SpanContext>, Option<opentelemetry::Context>) {
    if headers.is_empty() {
        return (None, None);
    }
    if headers.get("tracestate").is_none() && headers.get("baggage").is_none() {
        return (headers.get("traceparent").and_then(parse_traceparent), None);
    }
    // The span context is read as the fast path reads it (the SDK's parser accepts more), its
    // trace state if valid; the propagators bring the baggage.
    let cx = propagation::extract(headers);
    let parent = headers.get("traceparent").and_then(parse_traceparent).map(|p| {
        let state = cx.span().span_context().trace_state().header();
        SpanContext {
            trace_state: (!state.is_empty()).then(|| Arc::from(state)),
            ..p
        }
    });
    (parent, Some(cx))
}

/// A W3C `traceparent` (version 00, or a later one read as 00 says); `None` when invalid.
pub(crate) fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let b = value.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = hex_byte(&b[0..2])?;
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let mut trace_id = [0; 16];
    for (i, out) in trace_id.iter_mut().enumerate() {
        *out = hex_byte(&b[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span_id = [0; 8];
    for (i, out) in span_id.iter_mut().enumerate() {
        *out = hex_byte(&b[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&b[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        flags: flags & SAMPLED,
        trace_state: None,
        remote: true,
    })
}

/// Two lowercase hex digits, as W3C trace context requires.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// Lowercase hex of an id.
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// An OpenTelemetry span context as ours; `None` when invalid.
fn ours(sc: &opentelemetry::trace::SpanContext) -> Option<SpanContext> {
    if !sc.is_valid() {
        return None;
    }
    let state = sc.trace_state().header();
    Some(SpanContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8() & SAMPLED,
        trace_state: (!state.is_empty()).then(|| Arc::from(state)),
        remote: sc.is_remote(),
    })
}

/// Ours as OpenTelemetry's, for the handler's context.
pub(crate) fn otel(sc: &SpanContext) -> opentelemetry::trace::SpanContext {
    let state = sc
        .trace_state
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    opentelemetry::trace::SpanContext::new(
        opentelemetry::trace::TraceId::from_bytes(sc.trace_id),
        opentelemetry::trace::SpanId::from_bytes(sc.span_id),
        TraceFlags::new(sc.flags),
        sc.remote,
        state,
    )
}

/// A call being sent; dropped before it is [`sent`](Self::sent) (cancelled), its span ends
/// then.
pub(crate) struct Sending {
    record: Option<SpanRecord>,
    recorder: &'static Recorder,
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.end = record::now().max(record.start);
            self.recorder.record(record);
        }
    }
}

/// The span of a call about to be sent, child of the current context (a handled message, or
/// an application span), its context written into the call's headers; `None` when
/// Switchboard's spans are not recorded.
pub(crate) fn client(out: &mut Outbound, system: &'static str) -> Option<Sending> {
    let recorder = export::recorder()?;
    let start = record::now();
    let mut baggage = |cx: &opentelemetry::Context| {
        use opentelemetry::baggage::BaggageExt;
        if !cx.baggage().is_empty() {
            propagation::inject_baggage(cx, &mut out.headers);
        }
    };
    let parent = current::innermost(|message| match message {
        Some(message) => {
            // Baggage the handler made current (an attached context keeps the span) wins over
            // what the message brought.
            let own = opentelemetry::Context::map_current(|cx| {
                use opentelemetry::baggage::BaggageExt;
                let own = !cx.baggage().is_empty();
                if own {
                    baggage(cx);
                }
                own
            });
            if let (false, Some(base)) = (own, &message.base) {
                baggage(base);
            }
            Some(message.span.clone())
        }
        None => opentelemetry::Context::map_current(|cx| {
            baggage(cx);
            ours(cx.span().span_context())
        }),
    });
    let (trace_id, parent_span_id, flags) = lineage(recorder, parent.as_ref());
    let record = SpanRecord {
        trace_id,
        span_id: record::span_id(),
        parent_span_id,
        parent_is_remote: parent.as_ref().is_some_and(|p| p.remote),
        flags,
        trace_state: parent.and_then(|p| p.trace_state),
        kind: match out.kind {
            Kind::Request => SpanKind::Client,
            Kind::Event => SpanKind::Producer,
        },
        name: out.route.clone(),
        destination: out.route.clone(),
        system,
        // Not encoded when handed over in-process as a value.
        body_size: out.local.is_none().then_some(out.payload.len() as u64),
        error_type: None,
        link: None,
        start,
        end: 0,
    };
    out.headers.insert(
        "traceparent",
        format!(
            "00-{}-{}-{:02x}",
            Hex(&record.trace_id),
            Hex(&record.span_id),
            record.flags
        ),
    );
    match &record.trace_state {
        Some(state) => out.headers.insert("tracestate", &**state),
        None => drop(out.headers.remove("tracestate")),
    }
    Some(Sending {
        record: Some(record),
        recorder,
    })
}

impl Sending {
    /// Ends the span of a call (a request: at its first reply packet; an event: at its
    /// hand-over).
    pub(crate) fn sent(mut self, outcome: &Result<Replies, Error>) {
        if let Some(record) = &mut self.record {
            record.error_type = match outcome {
                Err(e) => Some(e.kind()),
                Ok(replies) => replies.first_error().map(|e| e.kind()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_after_the_w3c_rules() {
        let ok = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(Hex(&ok.trace_id).to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(Hex(&ok.span_id).to_string(), "00f067aa0ba902b7");
        assert_eq!((ok.flags, ok.remote), (SAMPLED, true));
        // A later version may append fields; only flags' sampled bit is kept.
        let later = parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-extra").unwrap();
        assert_eq!(later.flags, SAMPLED);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-zz-\u{202e}-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    /// A `tracestate` or `baggage` beside a `traceparent` does not change how it is read.
    #[test]
    fn the_slow_path_reads_traceparent_as_the_fast_one() {
        for value in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-1-2-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            let mut headers = crate::service::Headers::new();
            headers.insert("traceparent", value);
            headers.insert("baggage", "tenant=acme");
            headers.insert("tracestate", "vendor=x");
            let (parent, base) = remote_parent(&headers);
            let expected = parse_traceparent(value).map(|p| SpanContext {
                trace_state: Some(Arc::from("vendor=x")),
                ..p
            });
            assert_eq!(parent, expected, "{value}");
            use opentelemetry::baggage::BaggageExt;
            assert_eq!(base.unwrap().baggage().len(), 1);
        }
    }

    /// The propagator and the fast path read the same contexts.
    #[test]
    fn the_fast_path_agrees_with_the_propagator() {
        for value in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let mut headers = crate::service::Headers::new();
            headers.insert("traceparent", value);
            let theirs = propagation::extract(&headers);
            assert_eq!(parse_traceparent(value), ours(theirs.span().span_context()), "{value}");
        }
    }
}
