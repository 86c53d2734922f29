//! [`Backoff`]: the waits between attempts after a registry failed, shared by the backends.

use std::time::Duration;

/// Waits that double from `first` up to `max`, each with up to an eighth more at random (so
/// that instances that failed together do not retry together).
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

#[allow(dead_code)] // each backend uses some of it
impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The next wait; the one after it is twice as long (up to the maximum).
    pub(crate) fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (now * 2).min(self.max);
        now + jitter(now / 8)
    }

    /// Sleeps for the next wait.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next()).await;
    }

    /// After a success: the next wait is the first again.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A random duration from 0 to `max`.
pub(crate) fn jitter(max: Duration) -> Duration {
    Duration::from_nanos(fastrand::u64(..=max.as_nanos().min(u128::from(u64::MAX)) as u64))
}
