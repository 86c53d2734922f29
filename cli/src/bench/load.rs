//! The drivers over [`Client`]: any transport. Closed loop: `-c` tasks, each with one call in
//! flight, spread over `-k` clients of one connection each. Open loop: calls released at
//! fixed intervals by a pacing thread, latency measured from each call's intended start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use switchboard::{Client, Message};
use tokio::sync::Semaphore;

use super::tally::{Failed, Local, Shards};
use super::{Plan, Stop};

/// The pattern, known at run time, as a typed descriptor: the call's payload is sent as it
/// was given and the reply is checked to be JSON without being kept.
#[derive(Clone, Copy)]
pub struct Pattern {
    json: &'static str,
    route: &'static str,
}

impl Pattern {
    /// The pattern given as JSON (`pattern_json`) and its NestJS route. Leaked: one per run.
    pub fn new(pattern_json: String, route: String) -> Self {
        Pattern {
            json: Box::leak(pattern_json.into_boxed_str()),
            route: Box::leak(route.into_boxed_str()),
        }
    }
}

impl Message for Pattern {
    type Request = Body;
    type Reply = IgnoredAny;
    fn pattern_json(&self) -> &'static str {
        self.json
    }
    fn route(&self) -> &'static str {
        self.route
    }
}

/// The payload as JSON text, written as it is.
pub struct Body(pub Box<RawValue>);

impl Serialize for Body {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Where the run is: when it started, when the measured part starts and, with a duration,
/// when it ends.
#[derive(Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    pub measured: Instant,
    pub end: Option<Instant>,
}

/// Closed loop: `plan.concurrency` tasks over `clients`, each sending its next call as soon
/// as the last one is answered.
pub async fn closed(
    plan: &Plan,
    clients: &[Client],
    pattern: Pattern,
    body: Arc<Body>,
    clock: Clock,
    shards: Arc<Shards>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..plan.concurrency {
        // An exact share of a fixed count, so the run makes exactly that many calls.
        let quota = match plan.stop {
            Stop::Count(n) => Some(share(n, plan.concurrency, task)),
            Stop::Duration(_) => None,
        };
        let client = clients[task % clients.len()].clone();
        let (body, shards) = (body.clone(), shards.clone());
        tasks.spawn(async move {
            let mut local = Local::new(task, &shards);
            let mut counted = 0;
            loop {
                let sent = Instant::now();
                let measured = sent >= clock.measured;
                if clock.end.is_some_and(|end| sent >= end) || quota.is_some_and(|q| measured && counted >= q) {
                    break;
                }
                let result = client.send(pattern, &*body).await;
                let now = Instant::now();
                if !measured {
                    continue;
                }
                counted += 1;
                match result {
                    Ok(_) => local.ok(now - sent, now, &shards),
                    Err(e) => local.failed(Failed::of(&e), now, &shards),
                }
            }
            local.flush(&shards);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Open loop: calls due every `1 / rate` s from the start, at most `plan.concurrency` in
/// flight; each call's latency runs from when it was due, so a call that had to wait (the
/// service or the driver fell behind) counts its wait. That is the correction for
/// coordinated omission: a slow reply does not hide the calls that should have been made
/// meanwhile. A call whose turn comes more than the timeout after it was due is counted as
/// a timeout without being sent, so an overloaded run ends at most a timeout late.
pub async fn open(
    plan: &Plan,
    clients: &[Client],
    pattern: Pattern,
    body: Arc<Body>,
    clock: Clock,
    shards: Arc<Shards>,
    rate: f64,
) {
    let interval = 1.0 / rate;
    let timeout = plan.timeout;
    // Calls k are due at k / rate: those before the measured part are the warm-up.
    let warmup_calls = ((clock.measured - clock.start).as_secs_f64() * rate).ceil() as u64;
    let total = match plan.stop {
        Stop::Count(n) => warmup_calls.saturating_add(n),
        Stop::Duration(d) => (((clock.measured - clock.start) + d).as_secs_f64() * rate).ceil() as u64,
    };
    let permits = Arc::new(Semaphore::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let pacer = {
        let (permits, workers) = (permits.clone(), plan.concurrency);
        std::thread::spawn(move || pace(&permits, clock.start, rate, total, workers))
    };
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..plan.concurrency {
        let client = clients[task % clients.len()].clone();
        let (body, shards, permits, next) = (body.clone(), shards.clone(), permits.clone(), next.clone());
        tasks.spawn(async move {
            let mut local = Local::new(task, &shards);
            loop {
                match permits.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let due = clock.start + Duration::from_secs_f64(k as f64 * interval);
                let measured = k >= warmup_calls;
                let now = Instant::now();
                if now.saturating_duration_since(due) > timeout {
                    if measured {
                        local.failed(Failed::Timeout, now, &shards);
                    }
                    continue;
                }
                let result = client.send(pattern, &*body).await;
                let now = Instant::now();
                if !measured {
                    continue;
                }
                match result {
                    Ok(_) => local.ok(now.saturating_duration_since(due), now, &shards),
                    Err(e) => local.failed(Failed::of(&e), now, &shards),
                }
            }
            local.flush(&shards);
        });
    }
    while tasks.join_next().await.is_some() {}
    let _ = pacer.join();
}

/// Releases one permit per call as it falls due (a thread of its own: tokio's timer ticks in
/// milliseconds, a thread's sleep is precise to tens of microseconds), then one per worker
/// so that each sees the end.
fn pace(permits: &Semaphore, start: Instant, rate: f64, total: u64, workers: usize) {
    let mut released = 0u64;
    while released < total {
        let now = Instant::now();
        let due = (((now - start).as_secs_f64() * rate) as u64 + 1).min(total);
        if due > released {
            permits.add_permits((due - released) as usize);
            released = due;
        }
        let next = start + Duration::from_secs_f64(released as f64 / rate);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    permits.add_permits(workers);
}

/// Task `i`'s part of `n` calls over `tasks` tasks (the first ones take one more).
pub fn share(n: u64, tasks: usize, i: usize) -> u64 {
    let tasks = tasks as u64;
    n / tasks + u64::from((i as u64) < n % tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_count() {
        for (n, tasks) in [(10u64, 3usize), (2, 8), (1_000_003, 64), (0, 4)] {
            let sum: u64 = (0..tasks).map(|i| share(n, tasks, i)).sum();
            assert_eq!(sum, n, "{n} over {tasks}");
        }
    }
}
