//! The spans Switchboard makes itself (`send <route>`, `process <route>`): fixed-size records,
//! not `tracing` spans, so that a sampled message costs a few stores on its path and its
//! export is written straight from the record ([`encode`](super::encode)).

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// W3C `sampled` trace flag.
pub(crate) const SAMPLED: u8 = 0x01;

/// OpenTelemetry's span kinds that Switchboard's spans take (OTLP's numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

impl SpanKind {
    /// `send` on the caller's side, `process` on the service's: the first word of the span's
    /// name and its `messaging.operation.type`.
    pub(crate) fn operation(self) -> &'static str {
        match self {
            SpanKind::Client | SpanKind::Producer => "send",
            SpanKind::Server | SpanKind::Consumer => "process",
        }
    }

    /// `messaging.operation.name`: `send` a request, `emit` an event, `process` either.
    pub(crate) fn operation_name(self) -> &'static str {
        match self {
            SpanKind::Client => "send",
            SpanKind::Producer => "emit",
            SpanKind::Server | SpanKind::Consumer => "process",
        }
    }

    /// `switchboard.kind`, on the service's spans: `request` or `event`.
    pub(crate) fn switchboard_kind(self) -> Option<&'static str> {
        match self {
            SpanKind::Server => Some("request"),
            SpanKind::Consumer => Some("event"),
            SpanKind::Client | SpanKind::Producer => None,
        }
    }
}

/// A span context: what a link or a parent names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpanContext {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    /// W3C trace flags ([`SAMPLED`]).
    pub(crate) flags: u8,
    /// The W3C `tracestate` as it travels (empty: none).
    pub(crate) trace_state: Option<Arc<str>>,
    /// Received from another process.
    pub(crate) remote: bool,
}

/// One ended span.
#[derive(Debug, Clone)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    /// All zero for a root.
    pub(crate) parent_span_id: [u8; 8],
    /// The parent was received from another process.
    pub(crate) parent_is_remote: bool,
    /// W3C trace flags.
    pub(crate) flags: u8,
    pub(crate) trace_state: Option<Arc<str>>,
    pub(crate) kind: SpanKind,
    /// The name is `"{operation} {name}"`: a served route, `(unmatched)` or a called route.
    pub(crate) name: Cow<'static, str>,
    /// `messaging.destination.name`.
    pub(crate) destination: Cow<'static, str>,
    /// `messaging.system`.
    pub(crate) system: &'static str,
    /// `messaging.message.body.size`, on a call's span when its payload was encoded.
    pub(crate) body_size: Option<u64>,
    /// `error.type`; a span with one has the status ERROR.
    pub(crate) error_type: Option<&'static str>,
    /// The producer an event's CONSUMER span is linked to.
    pub(crate) link: Option<SpanContext>,
    /// Nanoseconds since the Unix epoch.
    pub(crate) start: u64,
    pub(crate) end: u64,
}

impl SpanRecord {
    /// This span's context, as its children see it.
    pub(crate) fn context(&self) -> SpanContext {
        SpanContext {
            trace_id: self.trace_id,
            span_id: self.span_id,
            flags: self.flags,
            trace_state: self.trace_state.clone(),
            remote: false,
        }
    }

    pub(crate) fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// The CPU's counter (`quanta`: a read costs a few nanoseconds where a `clock_gettime` costs
/// tens on some VMs), turned into wall-clock time by an offset that [`anchor`] refreshes from
/// the wall clock (the exporter's thread does, every batch or schedule delay), so the counter's
/// drift and the wall clock's steps reach the spans within seconds.
static CLOCK: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);

/// Wall-clock nanoseconds less the counter's, wrapping.
static OFFSET: AtomicU64 = AtomicU64::new(0);

/// Sets the clock up (it calibrates itself once, for a few milliseconds) and anchors it.
pub(crate) fn warm_up() {
    anchor();
}

/// Re-reads the wall clock.
pub(crate) fn anchor() {
    let clock = &*CLOCK;
    let counted = clock.delta_as_nanos(0, clock.raw());
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    OFFSET.store(wall.wrapping_sub(counted), Ordering::Relaxed);
}

/// Now, in nanoseconds since the Unix epoch.
#[inline]
pub(crate) fn now() -> u64 {
    let clock = &*CLOCK;
    clock
        .delta_as_nanos(0, clock.raw())
        .wrapping_add(OFFSET.load(Ordering::Relaxed))
}

thread_local! {
    /// Per-thread xorshift state (0 until first used), seeded from the process's random hasher
    /// keys and the clock: ids need to be unique, not secret.
    static RNG: Cell<u64> = const { Cell::new(0) };
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now());
    h.finish() | 1
}

fn next() -> u64 {
    RNG.with(|state| {
        let mut x = match state.get() {
            0 => seed(),
            x => x,
        };
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A new span id, never all zero.
pub(crate) fn span_id() -> [u8; 8] {
    loop {
        let id = next();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A new trace id, never all zero.
pub(crate) fn trace_id() -> [u8; 16] {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&next().to_be_bytes());
    id[8..].copy_from_slice(&next().to_be_bytes());
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(span_id()));
            assert_ne!(trace_id(), [0; 16]);
        }
        assert!(!seen.contains(&[0; 8]));
    }

    #[test]
    fn the_clock_is_the_wall_clock_and_goes_forward() {
        warm_up();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let (a, b) = (now(), now());
        assert!(b >= a);
        assert!(a.abs_diff(wall) < 5_000_000_000, "{a} vs {wall}");
    }
}
