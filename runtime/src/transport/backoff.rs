//! Reconnect backoff for clients: after a failed connect, calls fail at once with the last
//! error until the next attempt is due; the wait doubles from 100 ms up to 5 s.

use std::time::{Duration, Instant};

const MIN: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(5);

/// Failed connects so far and when the next attempt may run.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
    /// Connections made so far (kept across failures).
    connections: u64,
}

impl Backoff {
    /// The reason to fail now, while the next attempt is not yet due.
    pub(crate) fn wait_reason(&self) -> Option<String> {
        let at = self.retry_at.filter(|at| *at > Instant::now())?;
        Some(format!(
            "{} (next attempt in {} ms)",
            self.last_error,
            at.saturating_duration_since(Instant::now()).as_millis()
        ))
    }

    /// Records a failed attempt; returns its reason.
    pub(crate) fn failed(&mut self, reason: String) -> String {
        self.failures += 1;
        let delay = MIN.saturating_mul(1 << self.failures.min(6)).min(MAX);
        self.retry_at = Some(Instant::now() + delay);
        self.last_error = reason.clone();
        reason
    }

    /// Records a successful attempt; true when an earlier connection was lost (a reconnect).
    pub(crate) fn succeeded(&mut self) -> bool {
        let connections = self.connections + 1;
        *self = Backoff {
            connections,
            ..Backoff::default()
        };
        connections > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_blocks_attempts_until_it_is_due_and_success_clears_it() {
        let mut b = Backoff::default();
        assert_eq!(b.wait_reason(), None);
        assert_eq!(b.failed("refused".into()), "refused");
        assert!(
            b.wait_reason()
                .is_some_and(|r| r.starts_with("refused (next attempt in"))
        );
        assert!(!b.succeeded(), "a first connection");
        assert_eq!(b.wait_reason(), None);
        assert!(b.succeeded(), "then a reconnect");
    }
}
