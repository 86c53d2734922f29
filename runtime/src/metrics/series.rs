//! Histograms kept per thread: each recording thread owns a shard of buckets that only it
//! writes (plain loads and stores, no lock-prefixed instruction, no cache line shared with
//! another core); a scrape adds the shards up.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use super::{BUCKETS, clock};

/// Threads with a shard of their own; any more share one, with atomic additions.
const SHARDS: usize = 64;
/// One count per bucket, then the samples above the last (`+Inf`).
const LEN: usize = BUCKETS.len() + 1;

/// Shard indices of threads that ended, for threads that start later.
static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A thread's shard index, given back when the thread ends.
struct Slot(usize);

impl Slot {
    fn take() -> Slot {
        let free = FREE.lock().unwrap_or_else(PoisonError::into_inner).pop();
        Slot(free.unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed).min(SHARDS)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0 < SHARDS {
            FREE.lock().unwrap_or_else(PoisonError::into_inner).push(self.0);
        }
    }
}

thread_local! {
    static SLOT: Slot = Slot::take();
}

/// The calling thread's shard, or `SHARDS` (the shared one) if it has none or is ending.
#[inline]
fn slot() -> usize {
    SLOT.try_with(|s| s.0).unwrap_or(SHARDS)
}

/// Counts of one thread (or of the threads sharing the last shard). Aligned so that two
/// threads' shards never share a cache line.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    buckets: [AtomicU64; LEN],
    /// The samples' sum, as `f64` bits.
    sum: AtomicU64,
    /// The durations' sum, in the clock's ticks.
    ticks: AtomicU64,
    /// Messages started (the in-flight gauge is started minus finished).
    started: AtomicU64,
}

/// One histogram series (fixed [`BUCKETS`]), and a count of starts for a gauge of what is
/// in flight.
pub(crate) struct Series {
    own: Box<[OnceLock<Box<Shard>>]>,
    shared: Shard,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            own: (0..SHARDS).map(|_| OnceLock::new()).collect(),
            shared: Shard::default(),
        }
    }
}

impl Series {
    /// Records a sample (seconds): after this, scrapes count it.
    #[inline]
    pub(crate) fn record(&self, value: f64) {
        let at = BUCKETS.iter().position(|b| value <= *b).unwrap_or(BUCKETS.len());
        match self.own.get(slot()) {
            Some(own) => {
                let shard = own.get_or_init(Box::default);
                // Only this thread writes its shard. The sum first: a scrape that sees the
                // count (released) sees the sum.
                let sum = f64::from_bits(shard.sum.load(Ordering::Relaxed)) + value;
                shard.sum.store(sum.to_bits(), Ordering::Relaxed);
                bump(&shard.buckets[at]);
            }
            None => {
                let _ = self
                    .shared
                    .sum
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                        Some((f64::from_bits(bits) + value).to_bits())
                    });
                self.shared.buckets[at].fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Records a duration in the clock's ticks (see [`clock`]): the same as recording its
    /// seconds, with no conversion until a scrape.
    #[inline]
    pub(crate) fn record_ticks(&self, ticks: u64) {
        let at = clock::bucket(ticks);
        match self.own.get(slot()) {
            Some(own) => {
                let shard = own.get_or_init(Box::default);
                // As in `record`: the sum before the count.
                shard.ticks.store(
                    shard.ticks.load(Ordering::Relaxed).wrapping_add(ticks),
                    Ordering::Relaxed,
                );
                bump(&shard.buckets[at]);
            }
            None => {
                self.shared.ticks.fetch_add(ticks, Ordering::Relaxed);
                self.shared.buckets[at].fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Counts a start (for the in-flight gauge).
    #[inline]
    pub(crate) fn start(&self) {
        match self.own.get(slot()) {
            Some(own) => bump(&own.get_or_init(Box::default).started),
            None => {
                self.shared.started.fetch_add(1, Ordering::Release);
            }
        }
    }

    fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.own
            .iter()
            .filter_map(|s| s.get().map(|b| &**b))
            .chain([&self.shared])
    }

    /// The samples in each bucket (not cumulative; the last: above every bound) and their sum.
    pub(crate) fn buckets(&self) -> ([u64; LEN], f64) {
        let mut counts = [0; LEN];
        let (mut sum, mut ticks) = (0.0, 0u64);
        for shard in self.shards() {
            for (n, b) in counts.iter_mut().zip(&shard.buckets) {
                *n += b.load(Ordering::Acquire);
            }
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
            ticks = ticks.wrapping_add(shard.ticks.load(Ordering::Relaxed));
        }
        // Only durations have ticks (and only then is the clock asked).
        match ticks {
            0 => (counts, sum),
            _ => (counts, sum + clock::seconds(ticks)),
        }
    }

    /// Samples recorded. Every start counted before one of them is seen by a
    /// [`started`](Self::started) read after this.
    pub(crate) fn count(&self) -> u64 {
        self.shards()
            .flat_map(|s| &s.buckets)
            .map(|b| b.load(Ordering::Acquire))
            .sum()
    }

    /// Starts counted.
    pub(crate) fn started(&self) -> u64 {
        self.shards().map(|s| s.started.load(Ordering::Acquire)).sum()
    }
}

/// Adds one to a counter only the calling thread writes: a load and a store, released for the
/// scrape that reads it.
#[inline]
fn bump(n: &AtomicU64) {
    n.store(n.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
}

impl metrics::HistogramFn for Series {
    fn record(&self, value: f64) {
        Series::record(self, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn samples_land_in_their_bucket_on_every_thread() {
        let series = Arc::new(Series::default());
        // More threads at once than shards: some share one.
        let all = Arc::new(std::sync::Barrier::new(SHARDS + 8));
        let threads: Vec<_> = (0..SHARDS + 8)
            .map(|_| {
                let (series, all) = (series.clone(), all.clone());
                std::thread::spawn(move || {
                    all.wait();
                    series.start();
                    series.record(0.00005);
                    series.record(0.001);
                    series.record(100.0);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = (SHARDS + 8) as u64;
        let (buckets, sum) = series.buckets();
        assert_eq!(buckets[0], n, "at or below 0.0001");
        assert_eq!(buckets[3], n, "0.001 is in the bucket bounded by 0.001");
        assert_eq!(buckets[LEN - 1], n, "above every bound");
        assert_eq!(buckets.iter().sum::<u64>(), 3 * n);
        assert_eq!(series.count(), 3 * n);
        assert_eq!(series.started(), n);
        assert!((sum - n as f64 * 100.00105).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn durations_in_ticks_count_as_their_seconds() {
        let series = Series::default();
        // A tick past the last one within 1 ms, and one within it.
        let ms = (1..).map(|n| n * 1000).find(|&t| clock::seconds(t) > 0.001).unwrap();
        series.record_ticks(ms);
        series.record_ticks(ms / 4);
        series.record(0.5);
        let (buckets, sum) = series.buckets();
        let of = |seconds: f64| BUCKETS.iter().position(|b| seconds <= *b).unwrap();
        assert_eq!(buckets[of(clock::seconds(ms))], 1);
        assert!(of(clock::seconds(ms)) > 3, "above 1 ms");
        assert_eq!(buckets[of(clock::seconds(ms / 4))], 1);
        assert_eq!(buckets[of(0.5)], 1);
        assert_eq!(series.count(), 3);
        let expected = 0.5 + clock::seconds(ms + ms / 4);
        assert!((sum - expected).abs() < 1e-12, "{sum} {expected}");
    }

    #[test]
    fn a_nan_counts_above_every_bound() {
        let series = Series::default();
        series.record(f64::NAN);
        assert_eq!(series.buckets().0[LEN - 1], 1);
    }
}
