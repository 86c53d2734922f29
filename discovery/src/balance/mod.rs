//! [`Balanced`]: a client transport over every instance of a service, following the
//! registry, spreading calls with [`Balance`].

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use switchboard::resilience::{Guarded, Rejection, Tried};
use switchboard::transport::ClientTransport;
use switchboard::{Contract, Error, Outbound, Replies};
use tokio::sync::OnceCell;

use crate::Registry;
use crate::backend::Watch;
use crate::instance::{Fit, Instance, Status};

mod endpoint;

use endpoint::{Circuited, Endpoint};

/// How long a removed instance's connections stay open for the calls still on them.
const CLOSE_AFTER: Duration = Duration::from_secs(30);

/// How a client spreads calls over a service's instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Balance {
    /// Power of two choices over Peak-EWMA load (round-trip estimate × calls in flight): two
    /// instances drawn at random, the less loaded one called. An instance left out since a
    /// slow reply is sent one call again once sixteen times its fair share of calls (64 at
    /// least) have gone elsewhere and 250 ms have passed, and its estimate starts over from
    /// that reply, so a passing stall does not keep it out for the minute a decaying peak
    /// would. The default.
    #[default]
    PeakEwma,
    /// Each instance in turn.
    RoundRobin,
    /// The same instance for the same key (rendezvous hashing, so an instance leaving moves
    /// only its own keys): the key is the payload's top-level field `field`; a call without
    /// it is balanced as [`PeakEwma`](Self::PeakEwma).
    Hash {
        /// The payload field whose value is the key.
        field: String,
    },
}

impl FromStr for Balance {
    type Err = String;

    /// `p2c` (or `peak_ewma`), `round_robin`, `hash:<field>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "p2c" | "peak_ewma" => Ok(Balance::PeakEwma),
            "round_robin" => Ok(Balance::RoundRobin),
            _ => match s.strip_prefix("hash:") {
                Some(field) if !field.is_empty() => Ok(Balance::Hash {
                    field: field.to_owned(),
                }),
                _ => Err(format!(
                    "unknown balance `{s}`: p2c, round_robin or hash:<payload field>"
                )),
            },
        }
    }
}

/// The transport of a client found through discovery.
pub(crate) struct Balanced {
    shared: Arc<Shared>,
}

struct Shared {
    service: String,
    label: String,
    registry: Registry,
    /// The instances that take calls, each with its endpoint.
    members: RwLock<Arc<[Member]>>,
    /// Endpoints by URL, shared by instances on one URL (a broker).
    endpoints: RwLock<HashMap<String, Arc<Endpoint>>>,
    /// Set once the first list is in.
    started: OnceCell<()>,
    /// Dropped with the client: stops following the registry.
    _following: std::sync::OnceLock<tokio::sync::oneshot::Sender<()>>,
    next: AtomicUsize,
    /// Choices made so far (an endpoint left out of many is tried again).
    choices: AtomicU64,
}

#[derive(Clone)]
struct Member {
    instance: Instance,
    endpoint: Arc<Endpoint>,
}

impl Balanced {
    pub fn new(service: &str, registry: Registry) -> Self {
        Balanced {
            shared: Arc::new(Shared {
                service: service.to_owned(),
                label: format!("discover://{service}"),
                registry,
                members: RwLock::new(Arc::from([])),
                endpoints: RwLock::new(HashMap::new()),
                started: OnceCell::new(),
                _following: std::sync::OnceLock::new(),
                next: AtomicUsize::new(0),
                choices: AtomicU64::new(0),
            }),
        }
    }
}

impl Shared {
    /// Lists the instances once, then follows the registry in a task of its own (which ends
    /// when the client is dropped).
    async fn start(self: &Arc<Self>) -> Result<(), Error> {
        self.started
            .get_or_try_init(|| async {
                let watch = self
                    .registry
                    .backend()
                    .watch(&self.service)
                    .await
                    .map_err(|e| Error::Connect {
                        addr: self.label.clone(),
                        reason: format!("cannot list the instances: {e}"),
                    })?;
                self.update(&watch.current());
                let (following, dropped) = tokio::sync::oneshot::channel();
                let _ = self._following.set(following);
                tokio::spawn(follow(Arc::downgrade(self), watch, dropped));
                Ok::<(), Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Takes the registry's list: passing instances become members; endpoints no instance
    /// uses any more are closed once their calls are done.
    fn update(&self, instances: &[Instance]) {
        let mut endpoints = self.endpoints.write().expect("endpoints lock");
        let mut members = Vec::with_capacity(instances.len());
        for instance in instances.iter().filter(|i| i.status == Status::Passing) {
            let Some(url) = self.url_of(instance) else {
                tracing::warn!(service = %self.service, id = %instance.id, urls = ?instance.urls.iter().map(|u| switchboard::transport::redact(u)).collect::<Vec<_>>(), "no URL of this instance can be called from here (a broker's, registered without its password: connect to the broker); skipped");
                continue;
            };
            let endpoint = match endpoints.get(url) {
                Some(e) => e.clone(),
                None => match switchboard::transport::client_for(url) {
                    Ok(transport) => {
                        let circuits = self.registry.options.circuit.as_ref().map(|b| b.detached());
                        let e = Arc::new(Endpoint::new(url.to_owned(), transport, circuits));
                        endpoints.insert(url.to_owned(), e.clone());
                        // Connected ahead of its first calls; those sent before it is up are
                        // not taken as samples of its speed.
                        let (transport, endpoint) = (e.transport.clone(), Arc::downgrade(&e));
                        tokio::spawn(async move {
                            if transport.connect().await.is_ok()
                                && let Some(e) = endpoint.upgrade()
                            {
                                e.mark_connected();
                            }
                        });
                        e
                    }
                    Err(e) => {
                        tracing::warn!(service = %self.service, id = %instance.id, error = %e, "cannot call this instance; skipped");
                        continue;
                    }
                },
            };
            members.push(Member {
                instance: instance.clone(),
                endpoint,
            });
        }
        let gone: Vec<Arc<Endpoint>> = endpoints
            .iter()
            .filter(|(url, _)| !members.iter().any(|m| &m.endpoint.url == *url))
            .map(|(_, e)| e.clone())
            .collect();
        for e in &gone {
            endpoints.remove(&e.url);
            tokio::spawn(close_when_idle(e.clone()));
        }
        tracing::debug!(service = %self.service, members = members.len(), removed = gone.len(), "instances updated");
        *self.members.write().expect("members lock") = members.into();
    }

    /// The URL of `instance` calls go to.
    /// A URL registered without its password (`amqp://guest:***@…`) cannot be called: a broker
    /// service's callers connect to the broker themselves.
    fn url_of<'i>(&self, instance: &'i Instance) -> Option<&'i str> {
        const ORDER: [&str; 9] = ["tcp", "tls", "grpc", "mem", "nats", "redis", "amqp", "mqtt", "kafka"];
        let scheme = |url: &str| url.split_once("://").map(|(s, _)| s.to_owned()).unwrap_or_default();
        let callable = |url: &&String| !url.contains("***@");
        match &self.registry.options.transport {
            Some(wanted) => instance
                .urls
                .iter()
                .filter(callable)
                .find(|u| &scheme(u) == wanted)
                .map(String::as_str),
            None => ORDER
                .iter()
                .find_map(|s| instance.urls.iter().filter(callable).find(|u| scheme(u) == *s))
                .map(String::as_str),
        }
    }

    /// The endpoint for `out`, let through its circuit for the route. Left out: instances
    /// whose circuit for the route is open (with all open, the call is refused); then, while
    /// others remain, ejected instances and instances this call already tried.
    fn pick(&self, out: &Outbound) -> Result<(Arc<Endpoint>, Circuited), Error> {
        let members = self.members.read().expect("members lock").clone();
        let contract = out.extensions.get::<Contract>().copied();
        let mut other_contract = 0;
        let mut fit: Vec<&Member> = Vec::with_capacity(members.len());
        for m in members.iter() {
            match m.instance.fit(&out.route, contract) {
                Fit::Serves => fit.push(m),
                Fit::OtherContract => other_contract += 1,
                Fit::NotServed => {}
            }
        }
        if fit.is_empty() {
            return Err(self.none_fit(out, members.len(), other_contract));
        }
        let tried = out.extensions.get::<Tried>().filter(|t| !t.is_empty());
        // The one chosen is let through its circuit for the route; one that refuses (open, or
        // its probes out) is left out and the choice made again among the others.
        let mut retry_after: Option<Duration> = None;
        while !fit.is_empty() {
            let chosen = self.choose(out, &fit, tried);
            let seen = chosen.endpoint.circuit(&out.route);
            match chosen.endpoint.enter(out, seen) {
                Ok(pass) => {
                    if let Some(tried) = out.extensions.get::<Tried>() {
                        tried.record(chosen.endpoint.id);
                    }
                    return Ok((chosen.endpoint.clone(), pass));
                }
                Err(why) => {
                    if let Rejection::CircuitOpen { retry_after: r } = why {
                        retry_after = Some(retry_after.map_or(r, |least| least.min(r)));
                    }
                    let refused = chosen.endpoint.clone();
                    fit.retain(|m| !Arc::ptr_eq(&m.endpoint, &refused));
                }
            }
        }
        // Every instance that serves the route has its circuit open: refused, no round trip.
        let reason = Rejection::CircuitOpen {
            retry_after: retry_after.unwrap_or_default(),
        };
        tracing::debug!(service = %self.service, pattern = &*out.route, "every instance's circuit is open: call refused");
        // As the client's own breaker refuses (counted as shed).
        let refused = <Outbound as Guarded>::reject(&out.route, reason.clone()).err();
        Err(refused.unwrap_or_else(|| Error::Rejected {
            pattern: out.route.to_string(),
            reason,
        }))
    }

    /// The member of `fit` to call: ejected ones are left out while others remain, then those
    /// already `tried`; then the balance picks.
    fn choose<'m>(&self, out: &Outbound, fit: &[&'m Member], tried: Option<&Tried>) -> &'m Member {
        let healthy: Vec<&Member> = fit.iter().copied().filter(|m| !m.endpoint.is_ejected()).collect();
        let mut pool = if healthy.is_empty() { fit } else { &healthy[..] };
        let untried: Vec<&Member>;
        if let Some(tried) = tried {
            untried = pool
                .iter()
                .copied()
                .filter(|m| !tried.contains(m.endpoint.id))
                .collect();
            if !untried.is_empty() {
                pool = &untried;
            }
        }
        match &self.registry.options.balance {
            Balance::RoundRobin => pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()],
            Balance::Hash { field } => match key_of(&out.payload, field) {
                Some(key) => rendezvous(pool, &key),
                None => two_choices(pool, self.choices.fetch_add(1, Ordering::Relaxed) + 1),
            },
            Balance::PeakEwma => two_choices(pool, self.choices.fetch_add(1, Ordering::Relaxed) + 1),
        }
    }

    fn none_fit(&self, out: &Outbound, members: usize, other_contract: usize) -> Error {
        if other_contract > 0 {
            return Error::Incompatible {
                pattern: out.route.to_string(),
                service: self.service.clone(),
                reason: format!(
                    "{other_contract} of its {members} instances serve it with another contract (built from other payload or reply types)"
                ),
            };
        }
        let reason = match members {
            0 => format!("no instance of `{}` is registered and passing", self.service),
            n => format!("none of its {n} instances serves pattern `{}`", out.route),
        };
        Error::Connect {
            addr: self.label.clone(),
            reason,
        }
    }

    /// Sends `out` to the instance picked for it, counting the call in its load, its health
    /// and its circuit (where `failed` says what is a failure).
    async fn send<T>(
        self: Arc<Self>,
        out: Outbound,
        send: impl FnOnce(Arc<dyn ClientTransport>, Outbound) -> BoxFuture<'static, switchboard::Result<T>>,
        failed: fn(&switchboard::Result<T>) -> bool,
    ) -> switchboard::Result<T> {
        self.start().await?;
        let (endpoint, circuit) = self.pick(&out)?;
        let call = endpoint.start();
        let result = send(endpoint.transport.clone(), out).await;
        call.done(&result);
        circuit.finish(failed(&result));
        result
    }

    fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .read()
            .expect("endpoints lock")
            .values()
            .cloned()
            .collect()
    }
}

/// Power of two choices: the cheaper of two drawn at random, the balancer's `calls`-th choice.
fn two_choices<'m>(pool: &[&'m Member], calls: u64) -> &'m Member {
    let chosen = match pool.len() {
        1 => pool[0],
        n => {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            let starved_after = endpoint::starved_after(n);
            match pool[a].endpoint.cost(calls, starved_after) <= pool[b].endpoint.cost(calls, starved_after) {
                true => pool[a],
                false => pool[b],
            }
        }
    };
    chosen.endpoint.chosen(calls);
    chosen
}

/// The member whose id scores highest with `key`.
fn rendezvous<'m>(pool: &[&'m Member], key: &[u8]) -> &'m Member {
    let score = |m: &Member| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in key.iter().chain(b"\0").chain(m.instance.id.as_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // FNV's low bits mix poorly: finish with a multiply-xorshift.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    };
    pool.iter()
        .copied()
        .max_by_key(|m| score(m))
        .expect("pool is not empty")
}

/// The JSON text of the payload's top-level field `field`.
fn key_of(payload: &[u8], field: &str) -> Option<Vec<u8>> {
    let fields: HashMap<String, &serde_json::value::RawValue> = serde_json::from_slice(payload).ok()?;
    fields.get(field).map(|v| v.get().as_bytes().to_vec())
}

/// Follows the registry until the client is gone (dropping the watch stops the backend's
/// watching) or the backend stops.
async fn follow(shared: Weak<Shared>, mut watch: Watch, mut dropped: tokio::sync::oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            changed = watch.changed() => if !changed { return },
            _ = &mut dropped => return,
        }
        let Some(shared) = shared.upgrade() else { return };
        shared.update(&watch.current());
    }
}

/// Closes an endpoint no instance uses once its calls are done (or after [`CLOSE_AFTER`]).
async fn close_when_idle(endpoint: Arc<Endpoint>) {
    let deadline = tokio::time::Instant::now() + CLOSE_AFTER;
    // A call that picked it just before it was removed, on another thread, counts itself in
    // within moments: not closed under it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while endpoint.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    endpoint.transport.close().await;
}

impl fmt::Debug for Balanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balanced")
            .field("service", &self.shared.service)
            .finish()
    }
}

impl ClientTransport for Balanced {
    fn connect(&self) -> BoxFuture<'_, switchboard::Result<()>> {
        async move {
            self.shared.start().await?;
            if self.shared.members.read().expect("members lock").is_empty() {
                return Err(Error::Connect {
                    addr: self.shared.label.clone(),
                    reason: format!("no instance of `{}` is registered and passing", self.shared.service),
                });
            }
            Ok(())
        }
        .boxed()
    }

    fn request(self: Arc<Self>, out: Outbound) -> BoxFuture<'static, switchboard::Result<Replies>> {
        self.shared
            .clone()
            .send(out, |t, out| t.request(out), <Outbound as Guarded>::failed)
            .boxed()
    }

    fn emit(self: Arc<Self>, out: Outbound) -> BoxFuture<'static, switchboard::Result<()>> {
        self.shared
            .clone()
            .send(
                out,
                |t, out| t.emit(out),
                |r| r.as_ref().is_err_and(Error::is_unavailable),
            )
            .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let all = self.shared.endpoints();
            futures_util::future::join_all(all.iter().map(|e| e.transport.close())).await;
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, switchboard::Result<()>> {
        async move {
            for e in self.shared.endpoints() {
                e.transport.flush().await?;
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        let transport = switchboard::transport::client_for("tcp://127.0.0.1:9").unwrap();
        let endpoint = Arc::new(Endpoint::new("tcp://127.0.0.1:9".into(), transport, None));
        endpoint.mark_connected();
        Member {
            instance: Instance::new("users", id, ["tcp://127.0.0.1:9"]),
            endpoint,
        }
    }

    /// The balancer's `call`-th call to `m`, answered after `ms`.
    async fn answered(m: &Member, call: u64, ms: u64) {
        m.endpoint.chosen(call);
        let started = m.endpoint.start();
        tokio::time::advance(Duration::from_millis(ms)).await;
        started.done(&Ok::<(), Error>(()));
    }

    /// An instance left out since a slow reply is sent one call, not one per caller that
    /// chooses before that call starts.
    #[tokio::test(start_paused = true)]
    async fn a_left_out_instance_is_chosen_once_until_its_call_starts() {
        let (slow, fast) = (member("slow"), member("fast"));
        answered(&slow, 1, 100).await;
        // Its estimate grows stale (250 ms) while 60 calls go to the other.
        tokio::time::advance(Duration::from_millis(300)).await;
        answered(&fast, 60, 1).await;
        let calls = 1 + endpoint::starved_after(2) + 5;
        let pool = [&slow, &fast];
        let picks: Vec<&str> = (0..10)
            .map(|i| two_choices(&pool, calls + i).instance.id.as_str())
            .collect();
        assert_eq!(picks.iter().filter(|&&id| id == "slow").count(), 1, "{picks:?}");
        assert_eq!(picks[0], "slow", "the left-out one first: {picks:?}");
    }
}
