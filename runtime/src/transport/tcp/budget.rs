//! The bytes a server's connections may hold in their read buffers together, beyond a small
//! allowance each: a few peers sending huge frames slowly cannot take the machine's memory
//! (each connection's frame cap and deadline bound one; this bounds them all).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a connection may buffer without asking (most frames fit).
pub(super) const ALLOWANCE: usize = 64 * 1024;

/// The server's budget, shared by its connections.
#[derive(Debug)]
pub(super) struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
        })
    }
}

/// One connection's share of the budget; given back when dropped.
#[derive(Debug)]
pub(super) struct Share {
    budget: Arc<Budget>,
    held: usize,
}

impl Share {
    pub(super) fn new(budget: Arc<Budget>) -> Self {
        Share { budget, held: 0 }
    }

    /// Adjusts the share to a buffer of `capacity` bytes: false when the budget cannot cover
    /// it (the connection should close).
    pub(super) fn cover(&mut self, capacity: usize) -> bool {
        let want = capacity.saturating_sub(ALLOWANCE);
        if want == self.held {
            // The usual case (within the allowance): no shared counter touched.
            return true;
        }
        if want < self.held {
            self.budget.used.fetch_sub(self.held - want, Ordering::Relaxed);
            self.held = want;
            return true;
        }
        let more = want - self.held;
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(more).filter(|&total| total <= self.budget.limit)
            })
            .is_ok();
        if taken {
            self.held = want;
        }
        taken
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_take_and_give_back() {
        let budget = Budget::new(1000);
        let mut a = Share::new(budget.clone());
        let mut b = Share::new(budget.clone());
        assert!(a.cover(ALLOWANCE), "the allowance costs nothing");
        assert!(a.cover(ALLOWANCE + 800));
        assert!(!b.cover(ALLOWANCE + 300), "only 200 left");
        assert!(b.cover(ALLOWANCE + 200));
        assert!(a.cover(ALLOWANCE + 100), "shrinking gives back");
        assert!(b.cover(ALLOWANCE + 900));
        drop(b);
        assert_eq!(budget.used.load(Ordering::Relaxed), 100);
    }
}
