//! The clock of the durations: the CPU's counter where it is reliable (a read costs a few
//! nanoseconds), the monotonic clock otherwise. Durations stay in its ticks until a scrape:
//! a sample is put in its bucket by comparing ticks with each bound's, and sums are ticks.

use std::sync::OnceLock;

use super::BUCKETS;

struct Ticking {
    clock: quanta::Clock,
    /// Per bucket, the most ticks whose duration is within its bound.
    bounds: [u64; BUCKETS.len()],
}

fn ticking() -> &'static Ticking {
    static TICKING: OnceLock<Ticking> = OnceLock::new();
    TICKING.get_or_init(|| {
        let clock = quanta::Clock::new();
        let bounds = std::array::from_fn(|i| most_within(&clock, BUCKETS[i]));
        Ticking { clock, bounds }
    })
}

/// The most ticks whose duration, as [`seconds`] gives it, is at most `bound`.
fn most_within(clock: &quanta::Clock, bound: f64) -> u64 {
    let within = |ticks: u64| as_seconds(clock, ticks) <= bound;
    let mut above = 1;
    while within(above) {
        above *= 2;
    }
    let mut below = 0;
    // `below` is within, `above` is not.
    while above - below > 1 {
        let mid = below + (above - below) / 2;
        if within(mid) { below = mid } else { above = mid }
    }
    below
}

fn as_seconds(clock: &quanta::Clock, ticks: u64) -> f64 {
    clock.delta_as_nanos(0, ticks) as f64 * 1e-9
}

/// Sets the clock up (it calibrates itself once, for a few milliseconds), before any message.
pub(crate) fn warm_up() {
    ticking();
}

/// The clock now, in ticks.
#[inline]
pub(crate) fn now() -> u64 {
    ticking().clock.raw()
}

/// Ticks from `start` (a [`now`]) to now.
#[inline]
pub(crate) fn since(start: u64) -> u64 {
    now().saturating_sub(start)
}

/// `ticks` in seconds.
pub(crate) fn seconds(ticks: u64) -> f64 {
    as_seconds(&ticking().clock, ticks)
}

/// The bucket of a duration of `ticks`: the first whose bound it is within, or
/// `BUCKETS.len()` (`+Inf`).
#[inline]
pub(crate) fn bucket(ticks: u64) -> usize {
    let bounds = &ticking().bounds;
    bounds.iter().position(|&b| ticks <= b).unwrap_or(bounds.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_is_in_the_bucket_its_seconds_are() {
        let ticking = ticking();
        for (i, &bound) in ticking.bounds.iter().enumerate() {
            assert!(seconds(bound) <= BUCKETS[i]);
            assert!(seconds(bound + 1) > BUCKETS[i]);
            assert_eq!(bucket(bound), i);
            assert_eq!(bucket(bound + 1), i + 1);
        }
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(u64::MAX), BUCKETS.len());
    }
}
