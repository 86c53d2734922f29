//! [`Etcd`]: instances registered in etcd v3, each under a lease kept alive as its TTL check,
//! found with a prefix watch (feature `etcd`).
//!
//! Key layout: `<prefix>/<service>/<instance id>` holds the [`Instance`] record as JSON,
//! attached to a lease of the registry's TTL. A registered process keeps its lease alive every
//! third of the TTL; when it crashes, its key expires with the lease and every watcher sees it
//! go. When the lease is lost while the process lives (etcd restarted with an empty data
//! directory, or a partition longer than the TTL) the process grants a new lease and writes its
//! record again as soon as etcd answers.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinHandle;

use crate::backend::{Backend, Lease, Publisher, Watch};
use crate::backoff::Backoff;
use crate::{Error, Instance, RegistryUrl, Result};

/// Where instances are registered unless `prefix=` says otherwise.
pub const DEFAULT_PREFIX: &str = "/switchboard/services";
/// The default lease TTL: a crashed instance is gone from the registry within this.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);
/// The shortest TTL taken (etcd silently lengthens a lease shorter than 1.5 election timeouts,
/// 2 s by default).
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// The longest TTL taken (a crashed instance would stay listed longer than is useful).
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// etcd's client port, when an endpoint gives none.
const DEFAULT_PORT: u16 = 2379;
/// How long one request may take before etcd counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on open streams (watches, keep-alives) find a dead connection within
/// interval + timeout; etcd refuses pings more often than every 5 s.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection backoff: from this, doubling…
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// …up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// An etcd v3 registry. Clones share one connection.
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard_discovery::etcd::Etcd;
/// use switchboard_discovery::{Instance, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // By URL: etcd://[user:password@]host:port[,host:port]?prefix=/switchboard/services&ttl=3
/// let registry = Registry::connect("etcd://127.0.0.1:2379?ttl=5").await?;
///
/// // Or built:
/// let etcd = Etcd::builder(["10.0.0.1:2379", "10.0.0.2:2379"])
///     .user("switchboard", "secret")
///     .prefix("/prod/services")
///     .ttl(Duration::from_secs(5))
///     .build()?;
/// let registry = Registry::new(etcd);
///
/// let lease = registry.register(Instance::new("users", "users-1", ["tcp://10.0.0.7:3001"])).await?;
/// let users = registry.watch("users").await?;
/// assert_eq!(users.current().len(), 1);
/// lease.deregister().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port`, without user info.
    endpoints: Vec<String>,
    user: Option<(String, String)>,
    /// Without a trailing `/`.
    prefix: String,
    /// Seconds.
    ttl: i64,
    /// Connected on first use.
    client: OnceCell<Client>,
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.inner.endpoints)
            .field("user", &self.inner.user.as_ref().map(|(name, _)| name))
            .field("prefix", &self.inner.prefix)
            .field("ttl", &self.ttl())
            .finish()
    }
}

/// Options of an [`Etcd`] registry being built: [`Etcd::builder`].
#[derive(Clone)]
pub struct EtcdBuilder {
    endpoints: Vec<String>,
    user: Option<(String, String)>,
    prefix: String,
    ttl: Duration,
}

impl fmt::Debug for EtcdBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBuilder")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl EtcdBuilder {
    /// Authenticates as `name` with `password` (etcd's auth enabled).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Registers under `prefix` (default [`DEFAULT_PREFIX`]): keys are
    /// `<prefix>/<service>/<instance id>`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease TTL (default [`DEFAULT_TTL`], whole seconds from [`MIN_TTL`] to [`MAX_TTL`]):
    /// a crashed instance leaves the registry within it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The registry. It connects on first use: an unreachable etcd is reported by
    /// [`register`](Backend::register) and [`watch`](Backend::watch).
    pub fn build(self) -> Result<Etcd> {
        if self.ttl < MIN_TTL || self.ttl > MAX_TTL || self.ttl.subsec_nanos() != 0 {
            return Err(Error::refused(format!("etcd lease ttl {:?}: {}", self.ttl, ttl_rule())));
        }
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(with_port)
            .collect();
        if endpoints.is_empty() {
            return Err(Error::refused(
                "an etcd registry needs at least one endpoint (host:port)",
            ));
        }
        if let Some(bad) = endpoints.iter().find(|e| e.contains('@')) {
            // A user info left in an endpoint would be sent as a host name, and shown.
            let shown = bad.rsplit_once('@').map_or(bad.as_str(), |(_, host)| host);
            return Err(Error::refused(format!(
                "etcd endpoint `…@{shown}`: give the user with EtcdBuilder::user, not in the endpoint"
            )));
        }
        Ok(Etcd {
            inner: Arc::new(Inner {
                endpoints,
                user: self.user,
                prefix: self.prefix.trim_end_matches('/').to_owned(),
                ttl: self.ttl.as_secs() as i64,
                client: OnceCell::new(),
            }),
        })
    }
}

fn ttl_rule() -> String {
    format!(
        "give whole seconds from {} to {} (etcd lengthens a shorter lease; a longer one keeps a crashed instance listed)",
        MIN_TTL.as_secs(),
        MAX_TTL.as_secs()
    )
}

/// `host` → `host:2379`; `host:port`, `[v6]:port` (and with a scheme) as they are.
fn with_port(endpoint: &str) -> String {
    let authority = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    if has_port {
        endpoint.to_owned()
    } else {
        format!("{endpoint}:{DEFAULT_PORT}")
    }
}

impl Etcd {
    /// A registry at `endpoints` (`host:port`), to be given options and built.
    pub fn builder<E: Into<String>>(endpoints: impl IntoIterator<Item = E>) -> EtcdBuilder {
        EtcdBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            user: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: DEFAULT_TTL,
        }
    }

    /// The registry a URL names:
    /// `etcd://[user:password@]host:port[,host:port]?prefix=/switchboard/services&ttl=3`
    /// (`ttl` in seconds, 2 to 3600). It connects on first use.
    ///
    /// ```
    /// use switchboard_discovery::RegistryUrl;
    /// use switchboard_discovery::etcd::Etcd;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let url = RegistryUrl::parse("etcd://127.0.0.1:2379?prefix=/staging/services")?;
    /// let etcd = Etcd::from_url(&url).await?;
    /// assert_eq!(etcd.prefix(), "/staging/services");
    /// # Ok(()) }
    /// ```
    pub async fn from_url(url: &RegistryUrl) -> Result<Etcd> {
        url.only(&["prefix", "ttl"])?;
        let (user, hosts) = match url.authority.rsplit_once('@') {
            None => (None, url.authority.as_str()),
            Some((info, hosts)) => {
                let (name, password) = info.split_once(':').unwrap_or((info, ""));
                (Some((percent_decode(name), percent_decode(password))), hosts)
            }
        };
        let endpoints: Vec<&str> = hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
        if endpoints.is_empty() {
            return Err(url.invalid("name etcd's endpoints: etcd://host:port[,host:port]"));
        }
        let mut builder = Etcd::builder(endpoints);
        if let Some((name, password)) = user {
            builder = builder.user(name, password);
        }
        if let Some(prefix) = url.param("prefix") {
            builder = builder.prefix(percent_decode(prefix));
        }
        if let Some(ttl) = url.param("ttl") {
            let secs: u64 = ttl
                .parse()
                .map_err(|_| url.invalid(format!("ttl `{ttl}` is not a number of seconds")))?;
            if !(MIN_TTL.as_secs()..=MAX_TTL.as_secs()).contains(&secs) {
                return Err(url.invalid(format!("ttl {secs}: {}", ttl_rule())));
            }
            builder = builder.ttl(Duration::from_secs(secs));
        }
        builder.build().map_err(|e| url.invalid(e.to_string()))
    }

    /// The key prefix instances are registered under, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.inner.ttl as u64)
    }

    /// The endpoints, `host:port`.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// `<prefix>/<service>/`.
    fn service_prefix(&self, service: &str) -> String {
        format!("{}/{service}/", self.inner.prefix)
    }

    fn at(&self) -> String {
        format!("etcd at {}", self.inner.endpoints.join(","))
    }

    /// The client, connected on first use (and authenticated, with a user).
    async fn client(&self) -> Result<Client> {
        let client = self
            .inner
            .client
            .get_or_try_init(|| async {
                let mut options = ConnectOptions::new()
                    .with_connect_timeout(REQUEST_TIMEOUT)
                    .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
                    .with_auto_token_refresh(true);
                if let Some((name, password)) = &self.inner.user {
                    options = options.with_user(name.clone(), password.clone());
                }
                let connect = Client::connect(&self.inner.endpoints, Some(options));
                timed(format!("{}: cannot connect", self.at()), connect).await
            })
            .await?;
        Ok(client.clone())
    }

    /// Lists `<prefix>/<service>/`: the valid records by key, and the revision read.
    async fn listing(&self, service: &str) -> Result<(HashMap<String, Instance>, i64)> {
        let prefix = self.service_prefix(service);
        let mut client = self.client().await?;
        let response = timed(
            format!("{}: cannot list {prefix}", self.at()),
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut instances = HashMap::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(instance) = record(service, &prefix, &key, kv.value()) {
                instances.insert(key, instance);
            }
        }
        Ok((instances, revision))
    }

    /// Grants a lease and writes `instance` at `key` under it: the lease id.
    async fn grant_and_put(&self, key: &str, instance: &Instance) -> Result<i64> {
        let mut client = self.client().await?;
        let grant = timed(
            format!("{}: cannot grant a lease for {key}", self.at()),
            client.lease_grant(self.inner.ttl, None),
        )
        .await?;
        let lease = grant.id();
        self.put(&mut client, key, instance, lease).await?;
        Ok(lease)
    }

    async fn put(&self, client: &mut Client, key: &str, instance: &Instance, lease: i64) -> Result<()> {
        let put = client.put(key, instance.to_json(), Some(PutOptions::new().with_lease(lease)));
        timed(format!("{}: cannot write {key}", self.at()), put).await?;
        Ok(())
    }
}

/// `%XX` sequences decoded (a user info or a query value); anything else kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `fut`, given [`REQUEST_TIMEOUT`]; its failure reported as `context`.
async fn timed<T>(context: String, fut: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::backend(context, e)),
        Err(_) => Err(Error::refused(format!(
            "{context}: no answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

/// Whether etcd said the lease is gone (expired, revoked, or etcd lost its data).
fn lease_not_found(e: &Error) -> bool {
    let Error::Backend {
        source: Some(source), ..
    } = e
    else {
        return false;
    };
    match source.downcast_ref::<etcd_client::Error>() {
        Some(etcd_client::Error::LeaseKeepAliveError(m)) => m.contains("not found"),
        Some(etcd_client::Error::GRpcStatus(status)) => status.message().contains("lease not found"),
        _ => false,
    }
}

/// The instance recorded at `key` under `prefix` (`<prefix>/<service>/`), or `None` (with a
/// warning) when it is not one of `service`'s records.
fn record(service: &str, prefix: &str, key: &str, value: &[u8]) -> Option<Instance> {
    let id = key.strip_prefix(prefix)?;
    if id.is_empty() || id.contains('/') {
        return None; // Not an instance of this service (deeper keys are someone else's).
    }
    match Instance::from_json(key, value) {
        Ok(instance) if instance.service == service => Some(instance),
        Ok(instance) => {
            tracing::warn!(key, service = %instance.service, "skipping an instance record of another service in etcd");
            None
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "skipping an invalid instance record in etcd");
            None
        }
    }
}

/// Refuses names that would not make one key segment.
fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::refused(format!(
            "etcd registry: {what} `{name}` must be non-empty and without `/`"
        )));
    }
    Ok(())
}

impl Backend for Etcd {
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Box<dyn Lease>>> {
        let etcd = self.clone();
        async move {
            check_name("service", &instance.service)?;
            check_name("instance id", &instance.id)?;
            let key = format!("{}{}", etcd.service_prefix(&instance.service), instance.id);
            let lease = etcd.grant_and_put(&key, &instance).await?;
            let shared = Arc::new(Registered {
                etcd: etcd.clone(),
                key: key.clone(),
                state: Mutex::new(State {
                    record: instance,
                    lease: Some(lease),
                    stale: false,
                }),
            });
            let keeper = tokio::spawn(keep_alive(shared.clone()));
            Ok(Box::new(EtcdLease {
                shared,
                keeper: Some(keeper),
            }) as Box<dyn Lease>)
        }
        .boxed()
    }

    fn watch(&self, service: &str) -> BoxFuture<'static, Result<Watch>> {
        let etcd = self.clone();
        let service = service.to_owned();
        async move {
            check_name("service", &service)?;
            let (instances, revision) = etcd.listing(&service).await?;
            let (publisher, watch) = Watch::channel(instances.values().cloned().collect());
            tokio::spawn(async move {
                tokio::select! {
                    _ = publisher.closed() => {}
                    _ = follow(&etcd, &service, &publisher, instances, revision) => {}
                }
            });
            Ok(watch)
        }
        .boxed()
    }

    fn list(&self, service: &str) -> BoxFuture<'static, Result<Vec<Instance>>> {
        let etcd = self.clone();
        let service = service.to_owned();
        async move {
            check_name("service", &service)?;
            let (instances, _) = etcd.listing(&service).await?;
            Ok(instances.into_values().collect())
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!(
            "etcd at {} (prefix {}, ttl {}s)",
            self.inner.endpoints.join(","),
            self.inner.prefix,
            self.inner.ttl
        )
    }
}

/// Keeps `service`'s instances published from revision `revision` on: watches, and on any
/// failure re-lists and watches again (with backoff). Runs until dropped.
async fn follow(
    etcd: &Etcd,
    service: &str,
    publisher: &Publisher,
    mut instances: HashMap<String, Instance>,
    mut revision: i64,
) {
    let prefix = etcd.service_prefix(service);
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    loop {
        match watch_from(
            etcd,
            service,
            &prefix,
            publisher,
            &mut instances,
            revision,
            &mut backoff,
        )
        .await
        {
            Ok(()) => tracing::debug!(prefix, "etcd watch ended; watching again"),
            Err(e) => tracing::warn!(prefix, error = %e.chain(), "etcd watch failed; watching again"),
        }
        // Whatever happened while not watching is read again.
        loop {
            backoff.wait().await;
            match etcd.listing(service).await {
                Ok((now, at)) => {
                    instances = now;
                    revision = at;
                    publisher.publish(instances.values().cloned().collect());
                    break;
                }
                Err(e) => tracing::warn!(prefix, error = %e.chain(), "cannot list etcd; retrying"),
            }
        }
    }
}

/// Watches `prefix` from `revision + 1`, applying and publishing its events, until the watch
/// ends (`Ok`) or fails.
async fn watch_from(
    etcd: &Etcd,
    service: &str,
    prefix: &str,
    publisher: &Publisher,
    instances: &mut HashMap<String, Instance>,
    revision: i64,
    backoff: &mut Backoff,
) -> Result<()> {
    let mut client = etcd.client().await?;
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut stream = timed(
        format!("{}: cannot watch {prefix}", etcd.at()),
        client.watch(prefix, Some(options)),
    )
    .await?;
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Error::backend(format!("{}: watch of {prefix} broken", etcd.at()), e)),
        };
        if response.created() {
            backoff.reset();
        }
        if response.canceled() {
            let reason = match response.compact_revision() {
                0 => response.cancel_reason().to_owned(),
                compacted => format!("revision {} compacted (now from {compacted})", revision + 1),
            };
            return Err(Error::refused(format!(
                "{}: watch of {prefix} cancelled: {reason}",
                etcd.at()
            )));
        }
        if response.events().is_empty() {
            continue;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match event.event_type() {
                EventType::Put => match record(service, prefix, &key, kv.value()) {
                    Some(instance) => {
                        instances.insert(key, instance);
                    }
                    None => {
                        instances.remove(&key);
                    }
                },
                EventType::Delete => {
                    instances.remove(&key);
                }
            }
        }
        publisher.publish(instances.values().cloned().collect());
    }
}

/// An error with its sources, for a log line.
/// One registration, shared by its [`EtcdLease`] and its keep-alive task.
struct Registered {
    etcd: Etcd,
    key: String,
    state: Mutex<State>,
}

struct State {
    /// The record as last given.
    record: Instance,
    /// The lease the record is written under; `None` while it is being granted again.
    lease: Option<i64>,
    /// An update could not be written: the keep-alive task writes it once etcd answers.
    stale: bool,
}

/// How a keep-alive of a lease ended.
enum Ended {
    /// etcd no longer has the lease: grant another and write the record again.
    LeaseLost,
    /// etcd could not be reached or the stream broke: try again after a while.
    Broken(Error),
}

/// Keeps the lease alive every third of the TTL; grants a new one and writes the record again
/// when etcd lost it. Runs until aborted (deregistered or dropped).
async fn keep_alive(shared: Arc<Registered>) {
    let etcd = &shared.etcd;
    let ttl = etcd.ttl();
    // Reconnect within a third of the TTL at worst, so that a short outage keeps the lease.
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX.min(ttl / 3));
    loop {
        let lease = shared.state.lock().await.lease;
        let ended = match lease {
            Some(lease) => keep(&shared, lease, ttl, &mut backoff).await,
            None => match reregister(&shared).await {
                Ok(()) => {
                    backoff.reset();
                    continue;
                }
                Err(e) => Ended::Broken(e),
            },
        };
        match ended {
            Ended::LeaseLost => {
                tracing::warn!(key = %shared.key, "etcd lost the lease of this registration; registering again");
                let mut state = shared.state.lock().await;
                if state.lease == lease {
                    state.lease = None;
                }
            }
            Ended::Broken(e) => {
                tracing::warn!(key = %shared.key, error = %e.chain(), "cannot keep the etcd lease alive; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Grants a new lease and writes the record under it.
async fn reregister(shared: &Registered) -> Result<()> {
    let mut state = shared.state.lock().await;
    let lease = shared.etcd.grant_and_put(&shared.key, &state.record).await?;
    state.lease = Some(lease);
    state.stale = false;
    tracing::info!(key = %shared.key, "registered in etcd again");
    Ok(())
}

/// Keeps `lease` alive until that fails.
async fn keep(shared: &Registered, lease: i64, ttl: Duration, backoff: &mut Backoff) -> Ended {
    let etcd = &shared.etcd;
    let context = || format!("{}: cannot keep the lease of {} alive", etcd.at(), shared.key);
    let mut client = match etcd.client().await {
        Ok(client) => client,
        Err(e) => return Ended::Broken(e),
    };
    // Opening the stream sends the first keep-alive and reads its answer.
    let (mut keeper, mut answers) = match timed(context(), client.lease_keep_alive(lease)).await {
        Ok(stream) => stream,
        Err(e) if lease_not_found(&e) => return Ended::LeaseLost,
        Err(e) => return Ended::Broken(e),
    };
    backoff.reset();
    if let Err(e) = rewrite_if_stale(shared, &mut client, lease).await {
        return Ended::Broken(e);
    }
    let mut ticks = tokio::time::interval(ttl / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // The first tick is now: the stream's opening was this one.
    loop {
        ticks.tick().await;
        if let Err(e) = keeper.keep_alive().await {
            return Ended::Broken(Error::backend(context(), e));
        }
        match tokio::time::timeout(ttl, answers.message()).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return Ended::LeaseLost,
            Ok(Ok(None)) => return Ended::Broken(Error::refused(format!("{}: the stream ended", context()))),
            Ok(Err(e)) => return Ended::Broken(Error::backend(context(), e)),
            Err(_) => {
                return Ended::Broken(Error::refused(format!(
                    "{}: no answer within {}s",
                    context(),
                    ttl.as_secs()
                )));
            }
        }
    }
}

/// Writes the record again if an update could not be written.
async fn rewrite_if_stale(shared: &Registered, client: &mut Client, lease: i64) -> Result<()> {
    let mut state = shared.state.lock().await;
    if state.stale && state.lease == Some(lease) {
        shared.etcd.put(client, &shared.key, &state.record, lease).await?;
        state.stale = false;
    }
    Ok(())
}

/// A registration in etcd: a key under a lease kept alive by a task. Dropped without
/// [`deregister`](Lease::deregister), the task stops and the key expires with the TTL.
struct EtcdLease {
    shared: Arc<Registered>,
    keeper: Option<JoinHandle<()>>,
}

impl fmt::Debug for EtcdLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLease")
            .field("key", &self.shared.key)
            .field("registry", &self.shared.etcd.describe())
            .finish()
    }
}

impl Lease for EtcdLease {
    fn update(&self, instance: Instance) -> BoxFuture<'_, Result<()>> {
        async move {
            let shared = &self.shared;
            let mut state = shared.state.lock().await;
            state.record = instance;
            let Some(lease) = state.lease else {
                return Ok(()); // Being registered again: with this record.
            };
            let written = async {
                let mut client = shared.etcd.client().await?;
                shared.etcd.put(&mut client, &shared.key, &state.record, lease).await
            }
            .await;
            match written {
                Ok(()) => {
                    state.stale = false;
                    Ok(())
                }
                // The keep-alive task finds the lease gone and writes this record again.
                Err(e) if lease_not_found(&e) => Ok(()),
                Err(e) => {
                    state.stale = true;
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn deregister(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        async move {
            if let Some(keeper) = self.keeper.take() {
                keeper.abort();
                let _ = keeper.await;
            }
            let shared = &self.shared;
            let etcd = &shared.etcd;
            let lease = shared.state.lock().await.lease.take();
            let mut client = etcd.client().await?;
            if let Some(lease) = lease {
                let revoked = timed(
                    format!(
                        "{}: cannot revoke the lease of {} (it expires within {}s)",
                        etcd.at(),
                        shared.key,
                        etcd.inner.ttl
                    ),
                    client.lease_revoke(lease),
                )
                .await;
                match revoked {
                    Ok(_) => return Ok(()),
                    Err(e) if lease_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            // No lease of ours holds the key: make sure it is gone.
            timed(
                format!("{}: cannot delete {}", etcd.at(), shared.key),
                client.delete(shared.key.as_str(), None),
            )
            .await?;
            Ok(())
        }
        .boxed()
    }
}

impl Drop for EtcdLease {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RegistryUrl {
        RegistryUrl::parse(s).unwrap()
    }

    #[tokio::test]
    async fn reads_urls() {
        let etcd = Etcd::from_url(&url("etcd://a:1,b?prefix=/x/y/&ttl=10")).await.unwrap();
        assert_eq!(etcd.endpoints(), ["a:1", "b:2379"]);
        assert_eq!(etcd.prefix(), "/x/y");
        assert_eq!(etcd.ttl(), Duration::from_secs(10));
        let etcd = Etcd::from_url(&url("etcd://u:p%40ss@[::1]:2379,[::2]")).await.unwrap();
        assert_eq!(etcd.endpoints(), ["[::1]:2379", "[::2]:2379"]);
        assert_eq!(etcd.inner.user, Some(("u".into(), "p@ss".into())));
        assert_eq!(etcd.prefix(), DEFAULT_PREFIX);
        assert_eq!(etcd.ttl(), DEFAULT_TTL);
    }

    #[tokio::test]
    async fn refuses_bad_urls() {
        for (bad, says) in [
            ("etcd://a:1?ttl=1", "ttl 1"),
            ("etcd://a:1?ttl=3601", "ttl 3601"),
            ("etcd://a:1?ttl=x", "not a number"),
            ("etcd://a:1?lease=3", "unknown parameter `lease`"),
            ("etcd://u:secret@", "endpoints"),
        ] {
            let e = Etcd::from_url(&url(bad)).await.unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
    }

    #[test]
    fn decodes_percent() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
