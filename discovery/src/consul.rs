//! [`Consul`]: registration and discovery through a Consul agent's HTTP API (feature
//! `consul`): a service with a TTL check kept passing by a heartbeat, blocking health queries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::{Backend, Lease, Publisher, Watch};
use crate::backoff::{Backoff, jitter};
use crate::url::RegistryUrl;
use crate::{Error, Instance, Result, Status};

/// The agent asked when none is named.
const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";
/// The TTL of an instance's check when none is given.
const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How long an instance stays critical before Consul removes it, when not given.
const DEFAULT_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// How long a blocking health query waits for a change, when not given.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The longest wait Consul takes.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// The deadline of a request that does not block (and what a blocking one gets on top of
/// its wait).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_BODY: usize = 4 << 20;
/// The most of an answer's body quoted in an error.
const EXCERPT: usize = 200;
/// The least time between the starts of two health queries of one watch.
const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(50);
/// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between failed health queries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The metadata key holding how many chunks the record has.
const META_COUNT: &str = "sb-n";
/// The longest metadata value Consul takes.
const META_CHUNK: usize = 512;
/// Consul takes 64 metadata keys: the count and 63 chunks.
const META_MAX_CHUNKS: usize = 63;

/// A Consul agent, reached over its HTTP API: services register with it, clients find them
/// through it.
///
/// **Registering** an [`Instance`] puts it as a Consul service (`PUT
/// /v1/agent/service/register`): the service's name and id are the instance's, its address
/// and port those of its first `tcp`, `tls` or `grpc` URL, its tags `switchboard` and the
/// schemes of its URLs, and its metadata the whole record as JSON, cut into the values `sb-0`,
/// `sb-1`, … (at most 512 bytes each, Consul's limit) with their count in `sb-n`. A record
/// longer than Consul's metadata holds (63 values: about 32 KB of JSON) is refused. The
/// service has one check, `service:<id>`, a TTL check ([`ttl`](Self::ttl), 10 s by default)
/// that a task of the lease keeps passing (`PUT /v1/agent/check/pass/…` every third of the
/// TTL), or failing while the instance is [critical](Status::Critical); when a heartbeat
/// fails it is retried, and when the agent answers that it does not know the check (it was
/// restarted, or removed the service) the instance is registered again. Deregistering
/// removes the service; a lease dropped without it (a crash) stops the heartbeat: Consul marks
/// the check critical when its TTL runs out and removes the service once it has been critical
/// for [`deregister_critical_after`](Self::deregister_critical_after) (1 min by default, which
/// is also Consul's minimum; its reaper runs every 30 s). An instance critical for that long
/// while running is removed too; its next heartbeat registers it again.
///
/// **Watching** a service asks `GET /v1/health/service/<name>?passing=true`, then the same
/// as a blocking query (`index=` the last `X-Consul-Index`, `wait=`
/// [`wait`](Self::wait), a minute by default, less a small random part), as Consul's
/// documentation of blocking queries says: an index that goes backwards starts again from 0,
/// one of 0 is taken as 1, queries start at least 50 ms apart, and a failed query is tried
/// again after 100 ms, doubling up to 5 s, the last list kept meanwhile. Each entry's record
/// is read back from its metadata; an entry without it (a service not registered by
/// Switchboard) or whose record cannot be read becomes an instance with the entry's id, the
/// URL `tcp://<address>:<port>` and no known patterns, after a warning.
///
/// The ACL [`token`](Self::token) goes in the `X-Consul-Token` header of every request and
/// never in a log line, an error or `Debug`. Only plain HTTP is spoken: the usual deployment
/// is an agent on every host, reached on the loopback interface.
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard::prelude::*;
/// use switchboard_discovery::Registry;
/// use switchboard_discovery::consul::Consul;
///
/// #[message_pattern("users.get")]
/// async fn get_user(id: u64) -> String { format!("user {id}") }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let consul = Consul::new("http://127.0.0.1:8500")
///     .token("b1gs33cr3t")
///     .ttl(Duration::from_secs(10))
///     .deregister_critical_after(Duration::from_secs(60));
/// let registry = Registry::new(consul);
/// // The same by URL:
/// let same = Registry::connect("consul://127.0.0.1:8500?token=b1gs33cr3t&ttl=10s&deregister_after=1m").await?;
///
/// let server = Microservice::new().name("users").handler(GET_USER)
///     .register(registry.clone())
///     .listen("tcp://127.0.0.1:0").start().await?;
/// let users = Client::discover("users", &same).connect().await?;
/// println!("{}", users.send(GET_USER, 1).await?);
/// server.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Consul {
    /// `http://host:port`, without a trailing `/`.
    address: Arc<str>,
    token: Option<Token>,
    ttl: Duration,
    deregister_after: Duration,
    wait: Duration,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

/// An ACL token, shown as `***`.
#[derive(Clone)]
struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Debug for Consul {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consul")
            .field("address", &self.address)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .field("deregister_critical_after", &self.deregister_after)
            .field("wait", &self.wait)
            .finish()
    }
}

impl Consul {
    /// The agent at `address` (`http://host:port`, or `host:port`), without a token, with
    /// the default TTL (10 s), removal after 1 min critical, and queries waiting 1 min. User
    /// info in the address is dropped: Consul takes the [`token`](Self::token) instead.
    pub fn new(address: impl Into<String>) -> Self {
        let address = address.into();
        let address = address.trim().trim_end_matches('/');
        let (scheme, rest) = address.split_once("://").unwrap_or(("http", address));
        // Up to the last `@`, whatever a password holds: an agent's address has no other.
        let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let address = format!("{scheme}://{rest}");
        Consul {
            address: address.into(),
            token: None,
            ttl: DEFAULT_TTL,
            deregister_after: DEFAULT_DEREGISTER_AFTER,
            wait: DEFAULT_WAIT,
            // The timer closes connections idle for long (90 s).
            http: HttpClient::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .build_http(),
        }
    }

    /// The agent a registry URL names: `consul://host:port` (`127.0.0.1:8500` when empty)
    /// with the parameters `token=` (an ACL token), `ttl=` and `deregister_after=` (durations
    /// such as `500ms`, `10s`, `1m`: see [`ttl`](Self::ttl) and
    /// [`deregister_critical_after`](Self::deregister_critical_after)) and `wait=` (see
    /// [`wait`](Self::wait)). Other parameters are refused, besides the client options
    /// `balance=` and `transport=`.
    pub fn from_url(url: &RegistryUrl) -> Result<Self> {
        url.only(&["token", "ttl", "deregister_after", "wait"])?;
        let authority = match url.authority.as_str() {
            "" => DEFAULT_ADDRESS,
            a => a,
        };
        if authority.contains(',') {
            return Err(url.invalid(
                "name one Consul agent, consul://host:port (a service registers with the agent of its host)",
            ));
        }
        if authority.contains('@') {
            return Err(url.invalid("give the ACL token as ?token=…, not in the address"));
        }
        let mut consul = Consul::new(format!("http://{authority}"));
        if let Err(e) = consul.address.parse::<hyper::Uri>() {
            return Err(url.invalid(format!("not an address: {e}")));
        }
        if let Some(token) = url.param("token") {
            if token.is_empty() {
                return Err(url.invalid("the token is empty"));
            }
            consul = consul.token(token);
        }
        let duration = |key: &str| -> Result<Option<Duration>> {
            match url.param(key) {
                None => Ok(None),
                Some(v) => match parse_duration(v) {
                    Ok(d) if d.is_zero() => Err(url.invalid(format!("{key} must be more than 0"))),
                    Ok(d) => Ok(Some(d)),
                    Err(reason) => Err(url.invalid(format!("{key}: {reason}"))),
                },
            }
        };
        if let Some(ttl) = duration("ttl")? {
            consul = consul.ttl(ttl);
        }
        if let Some(after) = duration("deregister_after")? {
            consul = consul.deregister_critical_after(after);
        }
        if let Some(wait) = duration("wait")? {
            if wait > MAX_WAIT {
                return Err(url.invalid("wait: Consul waits 10m at most"));
            }
            consul = consul.wait(wait);
        }
        Ok(consul)
    }

    /// Sends `token` as the ACL token (`X-Consul-Token`) of every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then(|| Token(token.into()));
        self
    }

    /// The TTL of each registered instance's check (default 10 s; at least 3 ms): a
    /// heartbeat goes every third of it, and an instance whose heartbeats stop for this long
    /// (its process died) is marked critical, so clients stop calling it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(3));
        self
    }

    /// How long an instance's check stays critical before Consul removes the instance
    /// (default 1 min; Consul takes no less than a minute, and removes within 30 s after).
    pub fn deregister_critical_after(mut self, after: Duration) -> Self {
        self.deregister_after = after.max(Duration::from_millis(1));
        self
    }

    /// How long a watch's blocking query waits for a change before asking again (default
    /// 1 min, at most 10 min). Changes arrive as they happen whatever this is; a proxy between
    /// here and the agent may close connections idle for less.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait.clamp(Duration::from_millis(1), MAX_WAIT);
        self
    }

    /// Sends one request to the agent and reads its answer (bounded, within `timeout`).
    async fn call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer> {
        let context = format!("{what}: {method} {}{path}", self.address);
        if self.address.starts_with("https://") {
            return Err(Error::refused(format!(
                "{context}: this client speaks plain HTTP only: use the local agent's HTTP port"
            )));
        }
        let uri: hyper::Uri = format!("{}{path}", self.address)
            .parse()
            .map_err(|e| Error::backend(format!("{context}: not an address"), e))?;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(Token(token)) = &self.token {
            let mut value = HeaderValue::from_str(token)
                .map_err(|_| Error::refused(format!("{context}: the ACL token is not a valid header value")))?;
            value.set_sensitive(true);
            request = request.header("X-Consul-Token", value);
        }
        let body = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(body))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|e| Error::backend(context.clone(), e))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| Error::backend(format!("{context}: no answer"), e))?;
            let status = response.status();
            let index = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|source| Error::Backend {
                    context: format!("{context}: reading the answer (at most {} MiB)", MAX_BODY >> 20),
                    source: Some(source),
                })?
                .to_bytes();
            Ok(Answer {
                status,
                index,
                body,
                context: context.clone(),
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|e| Error::backend(format!("{context}: no answer within {timeout:?}"), e))?
    }

    /// The error for an answer that is not a success: its status and the start of its body.
    fn refusal(&self, answer: &Answer) -> Error {
        let mut text = String::from_utf8_lossy(&answer.body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(Token(token)) = &self.token {
            text = text.replace(&**token, "***");
        }
        if text.chars().count() > EXCERPT {
            text = text.chars().take(EXCERPT).collect::<String>() + "…";
        }
        match text.is_empty() {
            true => Error::refused(format!("{}: Consul answered {}", answer.context, answer.status)),
            false => Error::refused(format!("{}: Consul answered {}: {text}", answer.context, answer.status)),
        }
    }

    /// Registers (or registers again) `instance` as a service with its TTL check.
    async fn put_service(&self, instance: &Instance) -> Result<()> {
        let body = self.registration(instance)?;
        let what = format!("registering `{}` instance {}", instance.service, instance.id);
        let answer = self
            .call(
                &what,
                Method::PUT,
                "/v1/agent/service/register",
                Some(body),
                REQUEST_TIMEOUT,
            )
            .await?;
        match answer.status.is_success() {
            true => Ok(()),
            false => Err(self.refusal(&answer)),
        }
    }

    /// The JSON of `PUT /v1/agent/service/register` for `instance`.
    fn registration(&self, instance: &Instance) -> Result<Vec<u8>> {
        let status = match instance.status {
            Status::Passing => "passing",
            Status::Critical => "critical",
        };
        let mut body = serde_json::json!({
            "ID": instance.id,
            "Name": instance.service,
            "Tags": tags_of(instance),
            "Meta": meta_of(instance)?,
            "Check": {
                "CheckID": check_id(&instance.id),
                "Name": "Switchboard heartbeat",
                "TTL": go_duration(self.ttl),
                "DeregisterCriticalServiceAfter": go_duration(self.deregister_after),
                "Status": status,
            },
        });
        if let Some((host, port)) = address_of(instance) {
            body["Address"] = host.into();
            body["Port"] = port.into();
        }
        Ok(serde_json::to_vec(&body).expect("a registration serialises"))
    }

    /// Sets the instance's check to its status (and restarts its TTL).
    async fn beat(&self, instance: &Instance) -> Result<Beat> {
        let verb = match instance.status {
            Status::Passing => "pass",
            Status::Critical => "fail",
        };
        let path = format!("/v1/agent/check/{verb}/{}", encode(&check_id(&instance.id)));
        let what = format!("heartbeat of `{}` instance {}", instance.service, instance.id);
        let answer = self.call(&what, Method::PUT, &path, None, REQUEST_TIMEOUT).await?;
        if answer.status.is_success() {
            return Ok(Beat::Sent);
        }
        // Consul answers 404 for a check it does not know (500 before 1.11, saying so).
        let body = String::from_utf8_lossy(&answer.body).to_ascii_lowercase();
        let unknown = body.contains("unknown check") || body.contains("does not have associated ttl");
        match answer.status == StatusCode::NOT_FOUND || (answer.status.is_server_error() && unknown) {
            true => Ok(Beat::Lost),
            false => Err(self.refusal(&answer)),
        }
    }

    /// Removes the service `id` (one the agent does not know is gone already).
    async fn remove_service(&self, service: &str, id: &str) -> Result<()> {
        let path = format!("/v1/agent/service/deregister/{}", encode(id));
        let what = format!("deregistering `{service}` instance {id}");
        let answer = self.call(&what, Method::PUT, &path, None, REQUEST_TIMEOUT).await?;
        match answer.status.is_success() || answer.status == StatusCode::NOT_FOUND {
            true => Ok(()),
            false => Err(self.refusal(&answer)),
        }
    }

    /// The passing instances of `service` and the answer's index; a blocking query when
    /// `index` is not 0.
    async fn health(&self, service: &str, index: u64, warned: &mut HashSet<String>) -> Result<(u64, Vec<Instance>)> {
        let mut path = format!("/v1/health/service/{}?passing=true", encode(service));
        let mut timeout = REQUEST_TIMEOUT;
        if index > 0 {
            // A little less than the wait, at random, so that watchers spread out.
            let wait = self.wait - jitter(self.wait / 16);
            path.push_str(&format!("&index={index}&wait={}", go_duration(wait)));
            // Consul adds up to wait/16 of its own.
            timeout += wait + wait / 16;
        }
        let what = format!("listing the instances of `{service}`");
        let answer = self.call(&what, Method::GET, &path, None, timeout).await?;
        if !answer.status.is_success() {
            return Err(self.refusal(&answer));
        }
        let Some(index) = answer.index else {
            return Err(Error::refused(format!(
                "{}: the answer has no X-Consul-Index header: is this Consul's HTTP API?",
                answer.context
            )));
        };
        let entries: Vec<Entry> = serde_json::from_slice(&answer.body)
            .map_err(|e| Error::backend(format!("{}: not a list of health entries", answer.context), e))?;
        warned.retain(|id| entries.iter().any(|e| &e.service.id == id));
        let instances = entries
            .into_iter()
            .filter_map(|e| instance_of(service, e, warned))
            .collect();
        Ok((index, instances))
    }
}

impl Backend for Consul {
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Box<dyn Lease>>> {
        let consul = self.clone();
        async move {
            consul.put_service(&instance).await?;
            let (service, id) = (instance.service.clone(), instance.id.clone());
            let state = Arc::new(Mutex::new(instance));
            let heartbeat = tokio::spawn(heartbeat(consul.clone(), state.clone()));
            Ok(Box::new(ConsulLease {
                consul,
                service,
                id,
                state,
                heartbeat,
            }) as Box<dyn Lease>)
        }
        .boxed()
    }

    fn watch(&self, service: &str) -> BoxFuture<'static, Result<Watch>> {
        let consul = self.clone();
        let service = service.to_owned();
        async move {
            let mut warned = HashSet::new();
            let (index, instances) = consul.health(&service, 0, &mut warned).await?;
            let (publisher, watch) = Watch::channel(instances);
            tokio::spawn(follow(consul, service, next_index(0, index), warned, publisher));
            Ok(watch)
        }
        .boxed()
    }

    fn list(&self, service: &str) -> BoxFuture<'static, Result<Vec<Instance>>> {
        let consul = self.clone();
        let service = service.to_owned();
        async move {
            let (_, instances) = consul.health(&service, 0, &mut HashSet::new()).await?;
            Ok(instances)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        match self.token {
            Some(_) => format!("Consul agent at {} (with an ACL token)", self.address),
            None => format!("Consul agent at {}", self.address),
        }
    }
}

/// An answer of the agent.
struct Answer {
    status: StatusCode,
    /// `X-Consul-Index`.
    index: Option<u64>,
    body: Bytes,
    /// What was asked, for errors.
    context: String,
}

/// What a heartbeat found.
enum Beat {
    Sent,
    /// The agent does not know the check: the instance is to be registered again.
    Lost,
}

/// Keeps a watch up to date with blocking queries until nobody watches.
async fn follow(consul: Consul, service: String, mut index: u64, mut warned: HashSet<String>, publisher: Publisher) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut failing = false;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = publisher.closed() => return,
            result = consul.health(&service, index, &mut warned) => result,
        };
        let pause = match result {
            Ok((returned, instances)) => {
                index = next_index(index, returned);
                publisher.publish(instances);
                if failing {
                    tracing::info!(service = %service, registry = %consul.describe(), "listing the instances works again");
                    failing = false;
                }
                backoff.reset();
                MIN_QUERY_INTERVAL.saturating_sub(started.elapsed())
            }
            Err(e) => {
                let pause = backoff.next();
                match failing {
                    false => {
                        tracing::warn!(service = %service, error = %e.chain(), retry_in = ?pause, "could not list the instances; the last list stands")
                    }
                    true => {
                        tracing::debug!(service = %service, error = %e.chain(), retry_in = ?pause, "could not list the instances")
                    }
                }
                failing = true;
                pause
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = publisher.closed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The index of the next blocking query after one that returned `returned`, by Consul's
/// rules: an index that went backwards (the agent's state was reset) starts over at 0, and
/// one of 0 is taken as 1 (an index of 0 would not block).
fn next_index(previous: u64, returned: u64) -> u64 {
    match returned < previous {
        true => 0,
        false => returned.max(1),
    }
}

/// A registration with Consul, kept passing by its heartbeat task.
struct ConsulLease {
    consul: Consul,
    service: String,
    id: String,
    /// The record as registered, locked while the heartbeat or an update talks to Consul.
    state: Arc<Mutex<Instance>>,
    heartbeat: JoinHandle<()>,
}

impl fmt::Debug for ConsulLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulLease")
            .field("service", &self.service)
            .field("id", &self.id)
            .field("consul", &self.consul)
            .finish()
    }
}

impl Lease for ConsulLease {
    fn update(&self, instance: Instance) -> BoxFuture<'_, Result<()>> {
        async move {
            if instance.id != self.id || instance.service != self.service {
                return Err(Error::refused(format!(
                    "the lease of `{}` instance {} cannot take the record of `{}` instance {}",
                    self.service, self.id, instance.service, instance.id
                )));
            }
            let mut current = self.state.lock().await;
            // Taken first: should Consul fail now, the heartbeat goes on with this record.
            *current = instance;
            self.consul.put_service(&current).await?;
            // Registering again may keep the check's status: set it.
            match self.consul.beat(&current).await? {
                Beat::Sent => Ok(()),
                Beat::Lost => Err(Error::refused(format!(
                    "Consul at {} lost `{}` instance {} as it was registered again",
                    self.consul.address, self.service, self.id
                ))),
            }
        }
        .boxed()
    }

    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        async move {
            // Once the heartbeat is not talking to Consul, it stops for good.
            let current = self.state.lock().await;
            self.heartbeat.abort();
            drop(current);
            self.consul.remove_service(&self.service, &self.id).await
        }
        .boxed()
    }
}

impl Drop for ConsulLease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Sets the check of the instance in `state` every third of the TTL; retries failures;
/// registers the instance again when the agent lost it.
async fn heartbeat(consul: Consul, state: Arc<Mutex<Instance>>) {
    let period = consul.ttl / 3;
    let mut backoff = Backoff::new(FIRST_BACKOFF.min(period), period);
    let mut failing = false;
    let mut delay = period;
    loop {
        tokio::time::sleep(delay).await;
        let instance = state.lock().await;
        let outcome = match consul.beat(&instance).await {
            Ok(Beat::Sent) => Ok(false),
            Ok(Beat::Lost) => consul.put_service(&instance).await.map(|()| true),
            Err(e) => Err(e),
        };
        let (service, id) = (instance.service.clone(), instance.id.clone());
        drop(instance);
        match outcome {
            Ok(registered) => {
                if registered {
                    tracing::info!(service = %service, id = %id, registry = %consul.describe(), "the agent had lost this instance: registered it again");
                } else if failing {
                    tracing::info!(service = %service, id = %id, "heartbeats go through again");
                }
                failing = false;
                backoff.reset();
                delay = period;
            }
            Err(e) => {
                delay = backoff.next();
                match failing {
                    false => {
                        tracing::warn!(service = %service, id = %id, error = %e.chain(), retry_in = ?delay, "heartbeat failed")
                    }
                    true => {
                        tracing::debug!(service = %service, id = %id, error = %e.chain(), retry_in = ?delay, "heartbeat failed")
                    }
                }
                failing = true;
            }
        }
    }
}

/// One entry of `GET /v1/health/service/<name>` (the fields read).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    #[serde(default)]
    node: Option<EntryNode>,
    service: EntryService,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryNode {
    #[serde(default)]
    address: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryService {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    meta: Option<HashMap<String, String>>,
}

/// The instance an entry stands for: the record in its metadata, else its address (after a
/// warning, once per entry id in `warned`).
fn instance_of(service: &str, entry: Entry, warned: &mut HashSet<String>) -> Option<Instance> {
    let id = entry.service.id;
    match entry.service.meta.as_ref().and_then(|meta| record_of(&id, meta)) {
        Some(Ok(instance)) => return Some(instance),
        Some(Err(e)) => {
            if warned.insert(id.clone()) {
                tracing::warn!(service, id = %id, error = %e.chain(), "unreadable Switchboard record in Consul's service metadata: calling the entry's address, its patterns not known");
            }
        }
        None => {
            if warned.insert(id.clone()) {
                tracing::warn!(service, id = %id, "a Consul entry without a Switchboard record (sb-n metadata), not registered by Switchboard: calling its address, its patterns not known");
            }
        }
    }
    let node = entry.node.and_then(|n| n.address).unwrap_or_default();
    let host = entry.service.address.filter(|a| !a.is_empty()).unwrap_or(node);
    let port = entry.service.port.unwrap_or(0);
    if host.is_empty() || port == 0 {
        tracing::debug!(service, id = %id, "a Consul entry without an address and port: skipped");
        return None;
    }
    let host = match host.contains(':') && !host.starts_with('[') {
        true => format!("[{host}]"),
        false => host,
    };
    Some(Instance::new(service, id, [format!("tcp://{host}:{port}")]))
}

/// The record kept in a service's metadata; `None` when there is none.
fn record_of(id: &str, meta: &HashMap<String, String>) -> Option<Result<Instance>> {
    let count = meta.get(META_COUNT)?;
    let unreadable = |reason: String| Some(Err(Error::refused(format!("the record of {id} in Consul: {reason}"))));
    let count = match count.parse::<usize>() {
        Ok(n) if (1..=META_MAX_CHUNKS).contains(&n) => n,
        _ => return unreadable(format!("{META_COUNT} is `{count}`, not a count of chunks")),
    };
    let mut json = String::new();
    for i in 0..count {
        match meta.get(&format!("sb-{i}")) {
            Some(chunk) => json.push_str(chunk),
            None => return unreadable(format!("chunk sb-{i} of {count} is missing")),
        }
    }
    Some(Instance::from_json(&format!("Consul service {id}"), json.as_bytes()))
}

/// The record of `instance` as Consul service metadata: its JSON in values of at most
/// [`META_CHUNK`] bytes, `sb-0` … and their count `sb-n`.
fn meta_of(instance: &Instance) -> Result<BTreeMap<String, String>> {
    let json = instance.to_json();
    let chunks = chunks(&json, META_CHUNK);
    if chunks.len() > META_MAX_CHUNKS {
        return Err(Error::refused(format!(
            "the record of `{}` instance {} is {} bytes of JSON, more than Consul's service metadata holds \
             ({META_MAX_CHUNKS} values of {META_CHUNK} bytes): serve fewer patterns, or shorter URLs",
            instance.service,
            instance.id,
            json.len()
        )));
    }
    let mut meta: BTreeMap<String, String> = chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| (format!("sb-{i}"), (*chunk).to_owned()))
        .collect();
    meta.insert(META_COUNT.to_owned(), chunks.len().to_string());
    Ok(meta)
}

/// `text` cut into pieces of at most `max` bytes, on character boundaries.
fn chunks(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (chunk, tail) = rest.split_at(end);
        out.push(chunk);
        rest = tail;
    }
    out
}

/// The service's tags: `switchboard` and the schemes of its URLs.
fn tags_of(instance: &Instance) -> Vec<String> {
    let mut tags = vec!["switchboard".to_owned()];
    for url in &instance.urls {
        if let Some((scheme, _)) = url.split_once("://")
            && !tags.iter().any(|t| t == scheme)
        {
            tags.push(scheme.to_owned());
        }
    }
    tags
}

/// The host and port of the instance's first `tcp`, `tls` or `grpc` URL.
fn address_of(instance: &Instance) -> Option<(String, u16)> {
    instance.urls.iter().find_map(|url| {
        let (scheme, rest) = url.split_once("://")?;
        if !matches!(scheme, "tcp" | "tls" | "grpc") {
            return None;
        }
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        let authority = authority.rsplit_once('@').map_or(authority, |(_, hosts)| hosts);
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, port) = v6.split_once("]:")?;
                (host, port)
            }
            None => authority.rsplit_once(':')?,
        };
        Some((host.to_owned(), port.parse().ok()?))
    })
}

/// The id of an instance's TTL check.
fn check_id(id: &str) -> String {
    format!("service:{id}")
}

/// `segment` %-encoded for a URL path (letters, digits, `-._~:@` kept).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'@' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A duration as Consul (Go) reads it: `10s`, or `1500ms`.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    match ms % 1000 {
        0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// `500ms`, `10s`, `1m`, `2h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("`{text}` is not a duration such as 500ms, 10s, 1m");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).map(Duration::from_millis).ok_or_else(bad)
}

/// An error with its sources, for a log line.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_in_an_address_is_dropped() {
        for (given, kept) in [
            ("http://u:s3cret@consul:8500", "http://consul:8500"),
            ("u:s3/cret@consul:8500/", "http://consul:8500"),
            ("https://consul.internal:8501", "https://consul.internal:8501"),
            ("127.0.0.1:8500", "http://127.0.0.1:8500"),
        ] {
            let consul = Consul::new(given);
            assert_eq!(&*consul.address, kept, "{given}");
            assert!(!format!("{consul:?}").contains("s3"), "{consul:?}");
        }
    }

    #[test]
    fn index_rules_follow_consuls_documentation() {
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(7, 7), 7, "a timeout returns the same index");
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(9, 3), 0, "backwards: start over");
        assert_eq!(next_index(0, 0), 1, "0 is taken as 1");
        assert_eq!(next_index(5, 0), 0, "0 after 5 went backwards");
    }

    #[test]
    fn records_are_cut_on_character_boundaries() {
        let mut instance = Instance::new("users", "users-1", ["tcp://127.0.0.1:3001"]);
        instance.version = Some("é".repeat(700));
        let meta = meta_of(&instance).unwrap();
        let count: usize = meta["sb-n"].parse().unwrap();
        assert_eq!(count, 3);
        assert!(meta.values().all(|v| v.len() <= META_CHUNK));
        let meta: HashMap<String, String> = meta.into_iter().collect();
        assert_eq!(record_of("users-1", &meta).unwrap().unwrap(), instance);
    }

    #[test]
    fn durations_read_and_written() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_micros(10)), "1ms");
    }

    #[test]
    fn addresses_from_urls() {
        let at = |urls: &[&str]| address_of(&Instance::new("s", "i", urls.iter().copied()));
        assert_eq!(
            at(&["nats://n:4222", "tcp://10.0.0.1:3001"]),
            Some(("10.0.0.1".into(), 3001))
        );
        assert_eq!(at(&["grpc://[::1]:50051/x"]), Some(("::1".into(), 50051)));
        assert_eq!(at(&["tls://u:p@host:443?server_name=x"]), Some(("host".into(), 443)));
        assert_eq!(at(&["redis://r:6379"]), None);
        assert_eq!(encode("service:a b/c"), "service:a%20b%2Fc");
    }
}
