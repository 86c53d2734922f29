//! Deadlines that travel: a request carries the time its caller has left, the server refuses
//! it once that is spent and drops a handler that outlives it, and calls a handler makes
//! inherit what is left.
//!
//! The time left travels as [`TIMEOUT_HEADER`] (milliseconds, relative, so clocks need not
//! agree) on every transport but in-process (which passes the deadline itself) and gRPC
//! (whose `grpc-timeout` says the same).

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

use super::Headers;

/// The header carrying a request's time left, in whole milliseconds.
pub const TIMEOUT_HEADER: &str = "sb-timeout-ms";

/// Longer than this is no deadline worth sending (a client's "no timeout").
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

thread_local! {
    /// The deadline of the handler being polled on this thread, if it has one.
    static CURRENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The deadline of the handler this code runs in (polled by the router), for calls it makes.
pub(crate) fn inherited() -> Option<Instant> {
    CURRENT.with(Cell::get)
}

/// A call's deadline and the time it gives: `after` from now, or the calling handler's
/// deadline when that is sooner; `None` when the handler's has passed already (the call
/// must not be sent).
pub(crate) fn of_call(after: Duration) -> Option<(Instant, Duration)> {
    let now = Instant::now();
    let own = now.checked_add(after).unwrap_or_else(|| now + FOREVER * 100);
    match inherited() {
        Some(d) if d <= now => None,
        Some(d) if d < own => Some((d, d - now)),
        _ => Some((own, after)),
    }
}

/// Runs `f` (a poll of a handler) with `deadline` as the one calls inherit.
pub(crate) fn within<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(Some(deadline))));
    f()
}

/// The time a request's headers give it, from when it arrived.
pub(crate) fn from_headers(headers: &Headers) -> Option<Duration> {
    let ms: u64 = headers.get(TIMEOUT_HEADER)?.trim().parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// The header value for a request due at `deadline`: the whole milliseconds left (rounded
/// down, so a receiver never thinks it has more time), or `None` for no real deadline.
pub(crate) fn header_value(deadline: Instant, now: Instant) -> Option<String> {
    let left = deadline.saturating_duration_since(now);
    // As a u64: u128's formatting is several times slower, and a year fits.
    (left < FOREVER).then(|| (left.as_millis() as u64).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_round_trips_rounded_down() {
        let now = Instant::now();
        let value = header_value(now + Duration::from_micros(1_500_900), now).unwrap();
        assert_eq!(value, "1500");
        let mut h = Headers::new();
        h.insert(TIMEOUT_HEADER, value);
        assert_eq!(from_headers(&h), Some(Duration::from_millis(1500)));
        assert_eq!(header_value(now + FOREVER * 2, now), None);
        h.insert(TIMEOUT_HEADER, "soon");
        assert_eq!(from_headers(&h), None, "a bad value is no deadline");
    }

    #[test]
    fn a_handler_s_deadline_is_inherited_while_it_is_polled() {
        let d = Instant::now() + Duration::from_secs(1);
        assert_eq!(inherited(), None);
        within(d, || {
            assert_eq!(inherited(), Some(d));
            let inner = d - Duration::from_millis(10);
            within(inner, || assert_eq!(inherited(), Some(inner)));
            assert_eq!(inherited(), Some(d), "the outer one is back");
        });
        assert_eq!(inherited(), None);
    }
}
