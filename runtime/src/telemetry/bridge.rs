//! The OpenTelemetry layer as Switchboard installs it: a `tracing` span opened inside a
//! handler, with no span of its own around it, gets the handled message's span as its parent
//! (the message's span is a record of Switchboard's, current through a thread-local, not an
//! OpenTelemetry context; see [`current`](super::current)).

use std::any::TypeId;

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::current::{self, Current};

/// `inner` (the `tracing-opentelemetry` layer), parenting root spans opened inside a handler.
pub(crate) struct Bridge<L>(pub(crate) L);

impl<S, L> Layer<S> for Bridge<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // The inner layer takes a contextual span's parent from the current OpenTelemetry
        // context: the handled message's, made current just for this.
        let message = match attrs.is_contextual() {
            true => current::innermost(|c| c.map(Current::otel)),
            false => None,
        };
        let _current = message.map(opentelemetry::Context::attach);
        self.0.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(span, values, ctx);
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.0.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.0.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.0.on_event(event, ctx);
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.0.on_id_change(old, new, ctx);
    }

    // `tracing-opentelemetry` finds itself through this (`OpenTelemetrySpanExt`,
    // `continue_trace`).
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        match id == TypeId::of::<Self>() {
            true => Some(self as *const Self as *const ()),
            // SAFETY: forwarded as it was asked.
            false => unsafe { self.0.downcast_raw(id) },
        }
    }
}
