//! [`Tried`]: where a call's attempts went, shared by its attempts, so that a hedge or a retry
//! can go elsewhere.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use super::Outbound;

/// The endpoints a call's attempts were sent to, in its extensions: a hedged or retried call
/// carries one, shared by all its attempts (the hedge of [`Policy`](crate::resilience::Policy)
/// and the [`Retry`](crate::resilience::Retry) put it there before the first attempt). A
/// transport that picks among endpoints (the discovery crate's balancer) records its pick and
/// sends a later attempt to an endpoint not tried yet, while one remains; other transports
/// ignore it. Keys are whatever the picking transport numbers its endpoints with.
///
/// ```
/// use switchboard::Extensions;
/// use switchboard::resilience::Tried;
///
/// let mut ext = Extensions::new();
/// ext.insert(Tried::new());
/// let attempt = ext.clone(); // each attempt's extensions share the record
/// attempt.get::<Tried>().unwrap().record(7);
/// assert!(ext.get::<Tried>().unwrap().contains(7));
/// assert!(!ext.get::<Tried>().unwrap().contains(8));
/// ```
#[derive(Clone, Default)]
pub struct Tried(Arc<Mutex<Keys>>);

/// The keys, the first few inline: a hedge or the default retry tries at most three.
#[derive(Default)]
struct Keys {
    inline: [u64; INLINE],
    len: usize,
    more: Vec<u64>,
}

const INLINE: usize = 3;

impl Keys {
    fn as_slices(&self) -> (&[u64], &[u64]) {
        (&self.inline[..self.len.min(INLINE)], &self.more)
    }

    fn contains(&self, key: u64) -> bool {
        let (inline, more) = self.as_slices();
        inline.contains(&key) || more.contains(&key)
    }

    fn push(&mut self, key: u64) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = key,
            None => self.more.push(key),
        }
        self.len += 1;
    }

    fn to_vec(&self) -> Vec<u64> {
        let (inline, more) = self.as_slices();
        [inline, more].concat()
    }
}

impl Tried {
    /// Nothing tried yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes that an attempt went to endpoint `key` (once per endpoint).
    pub fn record(&self, key: u64) {
        let mut keys = self.lock();
        if !keys.contains(key) {
            keys.push(key);
        }
    }

    /// True when an attempt went to endpoint `key`.
    pub fn contains(&self, key: u64) -> bool {
        self.lock().contains(key)
    }

    /// The endpoints tried, in the order first tried.
    pub fn keys(&self) -> Vec<u64> {
        self.lock().to_vec()
    }

    /// How many endpoints were tried.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// True before the first attempt is sent.
    pub fn is_empty(&self) -> bool {
        self.lock().len == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        // The keys stay valid whatever panicked while they were held.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives `out` a record, unless it has one (a retried call's hedges share the retry's).
    pub(crate) fn attach(out: &mut Outbound) {
        if out.extensions.get::<Tried>().is_none() {
            out.extensions.insert(Tried::new());
        }
    }
}

impl fmt::Debug for Tried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Tried").field(&self.lock().to_vec()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Kind;

    #[test]
    fn attempts_share_one_record_and_keys_are_kept_once() {
        let tried = Tried::new();
        assert!(tried.is_empty());
        let attempt = tried.clone();
        attempt.record(3);
        attempt.record(1);
        attempt.record(3);
        assert_eq!(tried.keys(), [3, 1]);
        assert_eq!(tried.len(), 2);
        assert!(tried.contains(1) && !tried.contains(2));
        assert_eq!(format!("{tried:?}"), "Tried([3, 1])");
        assert!(!Tried::new().contains(3), "a new record is its own");
        for k in [7, 8, 9, 3] {
            tried.record(k);
        }
        assert_eq!(tried.keys(), [3, 1, 7, 8, 9], "past the inline keys too");
        assert!(tried.contains(9) && tried.contains(1) && !tried.contains(10));
        assert_eq!(tried.len(), 5);
    }

    #[test]
    fn attach_keeps_a_record_already_there() {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut out = Outbound::new(Kind::Request, "\"p\"", "p", Default::default(), deadline);
        assert!(out.extensions.get::<Tried>().is_none(), "a plain call carries none");
        Tried::attach(&mut out);
        let first = out.clone();
        first.extensions.get::<Tried>().unwrap().record(9);
        Tried::attach(&mut out);
        assert!(out.extensions.get::<Tried>().unwrap().contains(9));
    }
}
