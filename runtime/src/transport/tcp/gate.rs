//! A future that is polled again only once it has woken its task.
//!
//! A connection's `select!` polls every branch that is not ready on each turn, and at one
//! request in flight a turn is a request. The branches that almost never fire (the shutdown
//! signal, the idle timer) cost most there: a watch's waiter takes a lock on every poll, a
//! timer checks its entry. Behind a gate, such a branch costs a flag check until it wakes:
//! a load, not an atomic read-modify-write (each of which waits for the core's pending stores).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// `fut`, polled only when it has asked to be (and on the first poll).
pub(super) struct Gated<F> {
    fut: Pin<Box<F>>,
    flag: Arc<Flag>,
    /// The waker `fut` sees: it raises the flag, then wakes whatever task polled last.
    waker: Waker,
    /// The task's waker as last registered in `flag.task`, which holds it until a wake.
    registered: Option<Waker>,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Gated<F> {
    pub(super) fn new(fut: F) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gated {
            fut: Box::pin(fut),
            waker: Waker::from(flag.clone()),
            flag,
            registered: None,
        }
    }

    /// The future, to change (a timer's deadline, say): it is polled on the next turn.
    pub(super) fn get_mut(&mut self) -> Pin<&mut F> {
        self.flag.woken.store(true, Ordering::Relaxed);
        self.fut.as_mut()
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let same = this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        // Not woken, and the same task registered: a wake from now on raises the flag and
        // wakes this task, which polls again.
        if same && !this.flag.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // The task first: a wake after this finds it; one before has raised the flag.
        this.flag.task.register(cx.waker());
        if !same {
            this.registered = Some(cx.waker().clone());
        }
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.fut.as_mut().poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn polls_again_only_after_a_wake() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let counted = polls.clone();
        let mut gated = Gated::new(std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut rx).poll(cx).map(|_| ())
        }));
        for _ in 0..5 {
            assert!((&mut gated).now_or_never().is_none());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled again without a wake");
        tx.send(()).unwrap();
        assert!((&mut gated).now_or_never().is_some());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_wake_reaches_the_task_that_polled_last() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (a, b) = (Arc::new(Count(0.into())), Arc::new(Count(0.into())));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut gated = Gated::new(rx);
        let mut poll = |waker: &Waker| Pin::new(&mut gated).poll(&mut Context::from_waker(waker));
        assert!(poll(&wa).is_pending());
        assert!(poll(&wa).is_pending(), "the same task, not woken: pending at once");
        assert!(poll(&wb).is_pending(), "another task: registered in its place");
        tx.send(()).unwrap();
        assert_eq!((a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)), (0, 1));
        assert!(poll(&wb).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_timer_fires_and_can_be_moved() {
        let mut gated = Gated::new(tokio::time::sleep(Duration::from_secs(10)));
        assert!((&mut gated).now_or_never().is_none());
        let later = tokio::time::Instant::now() + Duration::from_secs(60);
        gated.get_mut().reset(later);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!((&mut gated).now_or_never().is_none(), "fired at the old deadline");
        (&mut gated).await;
        assert!(tokio::time::Instant::now() >= later);
    }
}
