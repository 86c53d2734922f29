//! What the drivers record: each task keeps its latencies and counts locally and hands them
//! to one of a few shared shards in batches, so no lock or atomic is touched per call.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use switchboard::Error;

/// The highest latency a histogram holds (longer ones count as this): one hour, in ns.
const MAX_NS: u64 = 3_600_000_000_000;
/// Latencies a task buffers before it takes a shard's lock.
const BATCH: usize = 256;
/// How long a task keeps what it recorded before handing it over (so the progress line is
/// current even at low rates).
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Why a call failed, as the report counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// No reply within `--timeout` (or the service said its deadline passed).
    Timeout,
    /// Nothing serves the pattern.
    NoHandler,
    /// The handler answered an error.
    Handler,
    /// The connection was refused, lost, or closed with the call in flight.
    Connection,
    /// Anything else (a reply that is not JSON, …).
    Other,
}

impl Failed {
    /// Every kind, in the report's order.
    pub const ALL: [Failed; 5] = [
        Failed::Timeout,
        Failed::NoHandler,
        Failed::Handler,
        Failed::Connection,
        Failed::Other,
    ];

    /// The kind's name in the report (the names `--json` errors use elsewhere in the CLI).
    pub fn name(self) -> &'static str {
        match self {
            Failed::Timeout => "timeout",
            Failed::NoHandler => "no_handler",
            Failed::Handler => "handler_error",
            Failed::Connection => "connection",
            Failed::Other => "other",
        }
    }

    /// The kind of a client error, as `outcome::Failure` sorts them.
    pub fn of(e: &Error) -> Failed {
        match e {
            Error::Timeout { .. } => Failed::Timeout,
            Error::NoHandler { .. } => Failed::NoHandler,
            Error::Rpc(_) => Failed::Handler,
            Error::Connect { .. } | Error::ConnectionClosed { .. } => Failed::Connection,
            _ => Failed::Other,
        }
    }
}

/// A latency histogram in nanoseconds (3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

/// What a shard (or a whole run) holds.
pub struct Totals {
    /// Latencies of the calls that succeeded, in ns.
    pub hist: Histogram<u64>,
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed, by [`Failed::ALL`] index.
    pub errors: [u64; 5],
    /// When the last recorded call ended.
    pub last: Option<Instant>,
}

impl Totals {
    pub fn new() -> Self {
        Totals {
            hist: histogram(),
            ok: 0,
            errors: [0; 5],
            last: None,
        }
    }

    /// Calls, failed or not.
    pub fn calls(&self) -> u64 {
        self.ok + self.errors.iter().sum::<u64>()
    }

    fn add(&mut self, other: &Totals) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
        self.last = self.last.max(other.last);
    }
}

/// The shards tasks hand their records to; a few, so that tasks on different threads rarely
/// wait for each other.
pub struct Shards(Vec<Mutex<Totals>>);

impl Shards {
    pub fn new(n: usize) -> Self {
        Shards((0..n.max(1)).map(|_| Mutex::new(Totals::new())).collect())
    }

    /// Everything recorded so far, merged.
    pub fn merged(&self) -> Totals {
        let mut all = Totals::new();
        for shard in &self.0 {
            all.add(&shard.lock().expect("shard lock"));
        }
        all
    }
}

/// One task's records not handed over yet.
pub struct Local {
    shard: usize,
    latencies: Vec<u64>,
    ok: u64,
    errors: [u64; 5],
    last: Option<Instant>,
    next_flush: Instant,
}

impl Local {
    /// Records of task `task`.
    pub fn new(task: usize, shards: &Shards) -> Self {
        Local {
            shard: task % shards.0.len(),
            latencies: Vec::with_capacity(BATCH),
            ok: 0,
            errors: [0; 5],
            last: None,
            next_flush: Instant::now() + FLUSH_EVERY,
        }
    }

    /// A call that succeeded after `latency`, ended at `now`.
    pub fn ok(&mut self, latency: Duration, now: Instant, shards: &Shards) {
        self.latencies
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        self.ok += 1;
        self.ended(now, shards);
    }

    /// A call that failed, ended at `now`.
    pub fn failed(&mut self, why: Failed, now: Instant, shards: &Shards) {
        self.errors[why as usize] += 1;
        self.ended(now, shards);
    }

    fn ended(&mut self, now: Instant, shards: &Shards) {
        self.last = Some(now);
        if self.latencies.len() >= BATCH || now >= self.next_flush {
            self.next_flush = now + FLUSH_EVERY;
            self.flush(shards);
        }
    }

    /// Hands everything over.
    pub fn flush(&mut self, shards: &Shards) {
        let mut shard = shards.0[self.shard].lock().expect("shard lock");
        for &ns in &self.latencies {
            shard.hist.saturating_record(ns.clamp(1, MAX_NS));
        }
        shard.ok += self.ok;
        for (theirs, mine) in shard.errors.iter_mut().zip(self.errors) {
            *theirs += mine;
        }
        shard.last = shard.last.max(self.last);
        self.latencies.clear();
        self.ok = 0;
        self.errors = [0; 5];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_reach_the_shards_in_batches_and_at_the_end() {
        let shards = Shards::new(2);
        let mut a = Local::new(0, &shards);
        let mut b = Local::new(1, &shards);
        let now = Instant::now();
        for i in 1..=10u64 {
            a.ok(Duration::from_micros(i * 100), now, &shards);
        }
        b.failed(Failed::Handler, now, &shards);
        b.failed(Failed::Timeout, now, &shards);
        assert_eq!(
            shards.merged().calls(),
            0,
            "nothing handed over before a batch or a flush"
        );
        a.flush(&shards);
        b.flush(&shards);
        let all = shards.merged();
        assert_eq!((all.ok, all.calls()), (10, 12));
        assert_eq!(all.errors[Failed::Handler as usize], 1);
        assert_eq!(all.errors[Failed::Timeout as usize], 1);
        assert_eq!(all.hist.len(), 10);
        let p50 = all.hist.value_at_quantile(0.5);
        assert!((499_000..=501_000).contains(&p50), "{p50}");
    }
}
