//! The spans of calls and handled messages, named and attributed after OpenTelemetry's
//! messaging conventions: `send <route>` (CLIENT for a request, PRODUCER for an event) on the
//! caller, `process <route>` (SERVER for a request, CONSUMER for an event, linked to its
//! producer) on the service.

use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation;
use crate::error::Error;
use crate::service::{Kind, Outbound, Replies, Reply, Request};

/// The target of every span Switchboard makes, to filter them (`switchboard::telemetry=off`).
pub const TARGET: &str = "switchboard::telemetry";

/// Set when the process samples no trace (`OTEL_TRACES_SAMPLER=always_off`): then no span is
/// made at all, and no context is propagated.
pub(crate) static NEVER_SAMPLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when a subscriber may record Switchboard's spans (INFO). Asked of the subscriber's
/// most verbose level, not with `tracing::enabled!`: outside an event or a span, that leaves
/// per-layer filters' state behind and the next event on the thread can be dropped.
pub(crate) fn recording() -> bool {
    !NEVER_SAMPLED.load(std::sync::atomic::Ordering::Relaxed)
        && tracing::level_filters::LevelFilter::current() >= tracing::level_filters::LevelFilter::INFO
}

/// `messaging.system` of a transport: OpenTelemetry's well-known name where there is one.
pub(crate) fn system(transport: &str) -> &'static str {
    match transport {
        "amqp" => "rabbitmq",
        other => crate::transport::name_of(other),
    }
}

/// The span of a message to the route `name` (empty: a pattern nobody serves), its parent read
/// from the message's headers; `None` when no subscriber records it (then nothing else is
/// done). A pattern nobody serves is the sender's text: the span's name says `(unmatched)`, so
/// senders cannot grow the set of span names, and the text is kept escaped and cut.
pub(crate) fn server(req: &Request, name: &'static str) -> Option<Span> {
    let ctx = req.context();
    let destination = Destination(name, ctx.route());
    let name = match name {
        "" => "(unmatched)",
        served => served,
    };
    let (kind, otel_kind) = match ctx.kind() {
        Kind::Request => ("request", "server"),
        Kind::Event => ("event", "consumer"),
    };
    let span = tracing::info_span!(
        target: TARGET,
        "process",
        otel.name = format!("process {name}"),
        otel.kind = otel_kind,
        messaging.system = system(ctx.transport()),
        messaging.destination.name = %destination,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        switchboard.kind = kind,
        trace_id = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    if !ctx.headers().is_empty() {
        let parent = propagation::extract(ctx.headers());
        let remote = parent.span().span_context().clone();
        if remote.is_valid() {
            span.record("trace_id", tracing::field::display(remote.trace_id()));
            let _ = span.set_parent(parent);
            if ctx.kind() == Kind::Event {
                span.add_link(remote);
            }
            return Some(span);
        }
    }
    // A new trace: its id, for the logs inside the handler.
    let own = span.context().span().span_context().trace_id();
    if own != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(own));
    }
    Some(span)
}

/// `messaging.destination.name` of a handled message: a served route as it is, a sender's
/// text escaped and cut.
struct Destination<'a>(&'static str, &'a str);

impl std::fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            "" => crate::text::for_log(self.1).fmt(f),
            served => f.write_str(served),
        }
    }
}

/// Records how a handled message ended.
pub(crate) fn served(span: &Span, reply: &Reply) {
    if reply.is_no_handler() {
        fail(span, "no_handler");
    } else if let Some(e) = reply.as_error() {
        fail(span, e.kind());
    }
}

/// The span of a call about to be sent, child of the current span, its context written into
/// the call's headers; `None` when no subscriber records it.
pub(crate) fn client(out: &mut Outbound, system: &'static str) -> Option<Span> {
    if NEVER_SAMPLED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let route = &*out.route;
    let (op, otel_kind) = match out.kind {
        Kind::Request => ("send", "client"),
        Kind::Event => ("emit", "producer"),
    };
    let span = tracing::info_span!(
        target: TARGET,
        "send",
        otel.name = format!("send {route}"),
        otel.kind = otel_kind,
        messaging.system = system,
        messaging.destination.name = route,
        messaging.operation.type = "send",
        messaging.operation.name = op,
        // Not encoded when handed over in-process as a value.
        messaging.message.body.size = (out.local.is_none()).then_some(out.payload.len()),
        error.type = Empty,
        otel.status_code = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    propagation::inject(&span.context(), &mut out.headers);
    Some(span)
}

/// Records how a call ended (a request: its first reply packet; an event: its hand-over).
pub(crate) fn sent(span: &Span, outcome: &Result<Replies, Error>) {
    match outcome {
        Err(e) => fail(span, e.kind()),
        Ok(replies) => {
            if let Some(e) = replies.first_error() {
                fail(span, e.kind());
            }
        }
    }
}

fn fail(span: &Span, kind: &'static str) {
    span.record("error.type", kind);
    span.record("otel.status_code", "ERROR");
}
