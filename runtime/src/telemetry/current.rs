//! The message whose handler this thread is running, if any: set around each poll of its
//! reply future with a plain thread-local store, not an OpenTelemetry context (attaching one
//! costs an allocation and a `RefCell` stack push each poll). Whatever needs it as an
//! OpenTelemetry context — a `tracing` span the handler opens, a call it makes — builds it
//! then ([`Current::otel`]).

use std::cell::Cell;

use opentelemetry::trace::TraceContextExt;

use super::record::SpanContext;

/// A handled message's span, as its handler's work sees it.
pub(crate) struct Current {
    pub(crate) span: SpanContext,
    /// The caller's context when it carried baggage or a trace state (read by the W3C
    /// propagators); otherwise none, and nothing was allocated for it.
    pub(crate) base: Option<opentelemetry::Context>,
}

impl Current {
    /// This span as the OpenTelemetry context of what runs inside it.
    pub(crate) fn otel(&self) -> opentelemetry::Context {
        let base = self.base.clone().unwrap_or_default();
        base.with_remote_span_context(super::span::otel(&self.span))
    }
}

#[derive(Clone, Copy)]
struct Entered {
    current: *const Current,
    /// The OpenTelemetry context's span when this was entered: if it differs later, a span
    /// was entered inside the handler (`tracing` spans make their context current on entry),
    /// and that one is the innermost.
    otel: opentelemetry::trace::SpanId,
}

thread_local! {
    static ENTERED: Cell<Option<Entered>> = const { Cell::new(None) };
}

/// Runs `f` with `current` as this thread's handled message (what it replaces is restored
/// after, even if `f` panics).
pub(crate) fn within<R>(current: &Current, f: impl FnOnce() -> R) -> R {
    let otel = opentelemetry::Context::map_current(|cx| cx.span().span_context().span_id());
    let _restore = Restore(ENTERED.replace(Some(Entered {
        current: current as *const Current,
        otel,
    })));
    f()
}

/// Restores what was entered before.
struct Restore(Option<Entered>);

impl Drop for Restore {
    fn drop(&mut self) {
        ENTERED.set(self.0);
    }
}

/// Calls `f` with the handled message this thread runs, if it is the innermost span (no
/// OpenTelemetry context was made current since it was entered).
pub(crate) fn innermost<R>(f: impl FnOnce(Option<&Current>) -> R) -> R {
    let entered = ENTERED
        .get()
        .filter(|e| opentelemetry::Context::map_current(|cx| cx.span().span_context().span_id()) == e.otel);
    // SAFETY: an `Entered` is set only inside `within`, which borrows the `Current` for the
    // whole time it is set and restores the previous value when it returns or unwinds.
    f(entered.and_then(|e| unsafe { e.current.as_ref() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::SAMPLED;

    fn current(n: u8) -> Current {
        Current {
            span: SpanContext {
                trace_id: [n; 16],
                span_id: [n; 8],
                flags: SAMPLED,
                trace_state: None,
                remote: false,
            },
            base: None,
        }
    }

    #[test]
    fn entered_spans_nest_and_unwind() {
        let (a, b) = (current(1), current(2));
        innermost(|c| assert!(c.is_none()));
        within(&a, || {
            innermost(|c| assert_eq!(c.unwrap().span.span_id, [1; 8]));
            within(&b, || innermost(|c| assert_eq!(c.unwrap().span.span_id, [2; 8])));
            innermost(|c| assert_eq!(c.unwrap().span.span_id, [1; 8]));
            // A panic inside unwinds what it entered.
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| within(&b, || panic!("handler"))));
            assert!(caught.is_err());
            innermost(|c| assert_eq!(c.unwrap().span.span_id, [1; 8]));
        });
        innermost(|c| assert!(c.is_none()));
    }

    /// An OpenTelemetry context made current inside (a `tracing` span entered in the
    /// handler) is innermost until it is left.
    #[test]
    fn a_context_attached_inside_is_innermost() {
        let a = current(1);
        within(&a, || {
            let inner = current(3).otel();
            {
                let _attached = inner.attach();
                innermost(|c| assert!(c.is_none()));
            }
            innermost(|c| assert_eq!(c.unwrap().span.span_id, [1; 8]));
        });
        let otel = a.otel();
        assert_eq!(otel.span().span_context().span_id().to_bytes(), [1; 8]);
        assert!(otel.span().span_context().is_sampled());
    }
}
