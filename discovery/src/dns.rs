//! [`Dns`]: finding a service's instances in DNS SRV records (feature `dns`), as Kubernetes
//! headless services and Consul's DNS interface publish them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::time::Instant;

use crate::backend::{Backend, Lease, Publisher, Watch};
use crate::backoff::Backoff;
use crate::url::RegistryUrl;
use crate::{Error, Instance, Result};

/// The shortest wait before resolving again, whatever the records' TTL.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest wait before resolving again, whatever the records' TTL.
const MAX_REFRESH: Duration = Duration::from_secs(60);
/// How long an empty answer (NXDOMAIN, no SRV records) stands when the server gives no
/// negative TTL (no SOA record).
const EMPTY_REFRESH: Duration = Duration::from_secs(5);
/// The first wait after a failed resolution; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between failed resolutions.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Targets whose addresses are looked up at once.
const ADDRESS_LOOKUPS: usize = 16;

/// Services found in DNS SRV records. Finding only: registering with it is refused (DNS
/// records are published by the platform: Kubernetes, Consul, a zone file).
///
/// A service `users` is looked up as the SRV records `_users._tcp.<domain>` (every
/// Switchboard transport runs over TCP); without a domain, as `_users._tcp` with the
/// resolver's search list. A service name that starts with `_` or ends with `.` is taken as
/// the SRV name as it is (`_grpc._tcp.users.prod.internal.`).
///
/// Each SRV record of the answer becomes an [`Instance`]: its id is `target:port`, its URLs
/// `<transport>://<ip>:<port>` for each address of the target (the A/AAAA records of the
/// answer's additional section when the server sent them, else looked up, 16 targets at a
/// time, so a slow server does not time each target one after another; a lookup that fails,
/// rather than finding no address, fails the resolution; a `tls` URL names
/// the target as its `server_name`; a client calls the first), passing, its patterns not
/// known. Only the records of the lowest priority are used, and their weights are not: the
/// client's [`Balance`](crate::Balance) spreads the calls over the instances. A target of `.`
/// (the service is decidedly not available), or one without an address, is skipped.
///
/// The records are resolved again when the shortest TTL of the answer runs out (kept within
/// 1 s … 60 s; an empty answer stands for its negative TTL, 5 s when the server gives none).
/// A failed resolution keeps the last list, logs a warning and is retried after 1 s, then 2,
/// 4 … up to 30 s. NXDOMAIN or no SRV records is an empty list: the service has no instance
/// now. Watching a service fails only when its first resolution fails for another reason
/// (the resolver unreachable, a server failure).
///
/// ```no_run
/// use switchboard::prelude::*;
/// use switchboard_discovery::{Balance, Registry, dns::Dns};
///
/// #[message_pattern("users.get")]
/// async fn get_user(id: u64) -> String { format!("user {id}") }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // _users._tcp.svc.cluster.local through the resolvers of /etc/resolv.conf:
/// let dns = Dns::system().domain("svc.cluster.local");
/// let users = Client::discover("users", &Registry::new(dns).balance(Balance::RoundRobin))
///     .connect()
///     .await?;
/// println!("{}", users.send(GET_USER, 1).await?);
///
/// // The same by URL, asking the DNS server at 10.96.0.10:53:
/// let users = switchboard_discovery::connect("dns://10.96.0.10:53/users?domain=svc.cluster.local").await?;
/// println!("{}", users.send(GET_USER, 2).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dns {
    /// The DNS server asked; `None`: the system's (resolv.conf).
    server: Option<SocketAddr>,
    domain: Option<String>,
    transport: String,
    /// Built on first use (reading the system's configuration can fail; that is reported
    /// when a service is first watched).
    resolver: Arc<Mutex<Option<TokioResolver>>>,
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns")
            .field("server", &self.server)
            .field("domain", &self.domain)
            .field("transport", &self.transport)
            .finish()
    }
}

impl Dns {
    /// SRV records found through the system's resolvers (`/etc/resolv.conf` on Unix: its
    /// name servers, search list and options).
    pub fn system() -> Self {
        Dns::build(None)
    }

    /// SRV records asked of the DNS server at `server` (over UDP, and TCP for a truncated
    /// answer), with no search list.
    pub fn with_resolver(server: SocketAddr) -> Self {
        Dns::build(Some(server))
    }

    fn build(server: Option<SocketAddr>) -> Self {
        Dns {
            server,
            domain: None,
            transport: "tcp".to_owned(),
            resolver: Arc::new(Mutex::new(None)),
        }
    }

    /// Services are looked up as `_<service>._tcp.<domain>.` (`svc.cluster.local`,
    /// `service.consul`).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        let domain: String = domain.into();
        let domain = domain.trim_matches('.');
        self.domain = (!domain.is_empty()).then(|| domain.to_owned());
        self
    }

    /// The scheme of the instances' URLs (`tcp` by default, `tls`, `grpc`, …): what the
    /// services listen on at the ports their SRV records give.
    pub fn transport(mut self, scheme: impl Into<String>) -> Self {
        self.transport = scheme.into();
        self
    }

    /// The registry of a `dns://[server:port]?domain=…&transport=…` URL: an empty authority
    /// is the system's resolvers; a server without a port is asked on port 53.
    pub fn from_url(url: &RegistryUrl) -> Result<Self> {
        url.only(&["domain"])?;
        let mut dns = match url.authority.as_str() {
            "" => Dns::system(),
            authority => Dns::with_resolver(parse_server(authority).ok_or_else(|| {
                url.invalid(format!(
                    "`{}` is not a DNS server's address: an IP address and port (10.96.0.10:53), or nothing for the system's resolvers",
                    switchboard::transport::redact(authority)
                ))
            })?),
        };
        if let Some(domain) = url.param("domain") {
            dns = dns.domain(domain);
        }
        if let Some(scheme) = url.param("transport") {
            if scheme == "mem" {
                return Err(
                    url.invalid("DNS records name network addresses: `transport=mem` cannot be found through them")
                );
            }
            dns = dns.transport(scheme);
        }
        Ok(dns)
    }

    /// The SRV name `service` is looked up as.
    fn srv_name(&self, service: &str) -> String {
        if service.starts_with('_') || service.ends_with('.') {
            return service.to_owned();
        }
        match &self.domain {
            Some(domain) => format!("_{service}._tcp.{domain}."),
            None => format!("_{service}._tcp"),
        }
    }

    /// `service`'s lookup, and its first resolution.
    async fn first(&self, service: String) -> Result<(Lookup, Resolved)> {
        let srv = self.srv_name(&service);
        let name: Name = srv
            .parse()
            .map_err(|e| Error::backend(format!("`{service}` cannot be looked up in DNS as `{srv}`"), e))?;
        let lookup = Lookup {
            resolver: self.resolver()?,
            name,
            service,
            transport: self.transport.clone(),
        };
        let first = lookup.resolve().await.map_err(|e| {
            Error::backend(
                format!("cannot resolve the SRV records `{srv}` ({})", self.describe()),
                e,
            )
        })?;
        tracing::debug!(service = %lookup.service, srv = %srv, instances = first.instances.len(), "resolved");
        Ok((lookup, first))
    }

    fn resolver(&self) -> Result<TokioResolver> {
        let mut built = self.resolver.lock().expect("resolver lock");
        if let Some(resolver) = built.as_ref() {
            return Ok(resolver.clone());
        }
        let resolver = match self.server {
            None => TokioResolver::builder_tokio()
                .map_err(|e| Error::backend("cannot read the system's DNS configuration", e))?,
            Some(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let name_server = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
                let config = ResolverConfig::from_name_servers(vec![name_server]);
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                    .with_options(ResolverOpts::default())
            }
        }
        .build()
        .map_err(|e| Error::backend(format!("cannot set up the DNS resolver ({})", self.describe()), e))?;
        *built = Some(resolver.clone());
        Ok(resolver)
    }
}

/// `ip:port`, `[ipv6]:port`, or an address without a port (53).
fn parse_server(authority: &str) -> Option<SocketAddr> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = authority
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(authority);
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
}

impl Backend for Dns {
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Box<dyn Lease>>> {
        let refused = Error::refused(format!(
            "DNS cannot register `{}`: publish its SRV records with the platform (a Kubernetes headless service, Consul), or register with etcd or Consul",
            instance.service
        ));
        std::future::ready(Err(refused)).boxed()
    }

    fn watch(&self, service: &str) -> BoxFuture<'static, Result<Watch>> {
        let dns = self.clone();
        let service = service.to_owned();
        async move {
            let (lookup, first) = dns.first(service).await?;
            let (publisher, watch) = Watch::channel(first.instances);
            tokio::spawn(follow(lookup, publisher, first.refresh));
            Ok(watch)
        }
        .boxed()
    }

    fn list(&self, service: &str) -> BoxFuture<'static, Result<Vec<Instance>>> {
        let dns = self.clone();
        let service = service.to_owned();
        async move { Ok(dns.first(service).await?.1.instances) }.boxed()
    }

    fn describe(&self) -> String {
        let server = match self.server {
            Some(server) => format!("DNS SRV records from {server}"),
            None => "DNS SRV records from the system's resolvers".to_owned(),
        };
        match &self.domain {
            Some(domain) => format!("{server} in {domain}"),
            None => server,
        }
    }
}

/// How one service is looked up.
struct Lookup {
    resolver: TokioResolver,
    name: Name,
    service: String,
    transport: String,
}

/// One resolution's outcome.
struct Resolved {
    instances: Vec<Instance>,
    /// When to resolve again.
    refresh: Duration,
}

impl Lookup {
    /// The SRV records of the lowest priority, each with its target's addresses.
    async fn resolve(&self) -> std::result::Result<Resolved, NetError> {
        // The records are looked up afresh at each refresh (the schedule follows their TTL
        // already; a TTL over the 60 s ceiling would otherwise be served from the cache).
        self.resolver.clear_lookup_cache(self.name.clone(), RecordType::SRV);
        let answer = match self.resolver.srv_lookup(self.name.clone()).await {
            Ok(answer) => answer,
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
                let refresh = none.negative_ttl.map_or(EMPTY_REFRESH, seconds);
                return Ok(Resolved {
                    instances: Vec::new(),
                    refresh: refresh.clamp(MIN_REFRESH, MAX_REFRESH),
                });
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        let records: Vec<_> = answer
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some((r.ttl, srv)),
                _ => None,
            })
            .collect();
        let mut ttl = records
            .iter()
            .map(|(ttl, _)| seconds(*ttl))
            .min()
            .unwrap_or(EMPTY_REFRESH);
        let lowest = records.iter().map(|(_, srv)| srv.priority).min();
        let targets: Vec<_> = records
            .iter()
            .filter(|(_, srv)| Some(srv.priority) == lowest && !srv.target.is_root())
            .map(|(_, srv)| *srv)
            .collect();
        // Each target's addresses, a few targets at a time (one after another, a slow server
        // would time each).
        // (`stream::buffered` would do, but its closure's future fails the spawned task's
        // `Send` check: a known higher-ranked lifetime limitation.)
        let mut lookups = targets.iter().map(|srv| self.addresses(&answer, srv, now));
        let mut running = futures_util::stream::FuturesOrdered::new();
        let mut addresses = Vec::with_capacity(targets.len());
        loop {
            running.extend(lookups.by_ref().take(ADDRESS_LOOKUPS - running.len()));
            match running.next().await {
                Some(found) => addresses.push(found),
                None => break,
            }
        }
        let mut instances = Vec::new();
        for (srv, found) in targets.iter().zip(addresses) {
            let (addrs, until) = found?;
            if let Some(until) = until {
                ttl = ttl.min(until);
            }
            if addrs.is_empty() {
                continue;
            }
            let target = srv.target.to_string();
            let host = target.trim_end_matches('.');
            let urls = addrs.iter().map(|ip| {
                let addr = SocketAddr::new(*ip, srv.port);
                match self.transport.as_str() {
                    "tls" => format!("tls://{addr}?server_name={host}"),
                    scheme => format!("{scheme}://{addr}"),
                }
            });
            instances.push(Instance::new(&self.service, format!("{host}:{}", srv.port), urls));
        }
        Ok(Resolved {
            instances,
            refresh: ttl.clamp(MIN_REFRESH, MAX_REFRESH),
        })
    }
}

impl Lookup {
    /// A target's addresses, and how long they hold: from the answer's additional section
    /// when it carries them, else looked up; none when the target has none.
    async fn addresses(
        &self,
        answer: &hickory_resolver::lookup::Lookup,
        srv: &hickory_resolver::proto::rr::rdata::SRV,
        now: Instant,
    ) -> std::result::Result<(Vec<IpAddr>, Option<Duration>), NetError> {
        let mut addrs = Vec::new();
        let mut until = None::<Duration>;
        for r in answer.additionals().iter().filter(|r| r.name == srv.target) {
            if let Some(ip) = ip(r) {
                addrs.push(ip);
                until = Some(until.map_or(seconds(r.ttl), |t| t.min(seconds(r.ttl))));
            }
        }
        if addrs.is_empty() {
            // A and AAAA asked apart: hickory's `lookup_ip` asks for AAAA when the A query
            // fails for any reason, so a timed-out A read as "no address", and the target left
            // the list instead of the resolution failing (which keeps the last list).
            let (v4, v6) = tokio::join!(
                self.records(&srv.target, RecordType::A),
                self.records(&srv.target, RecordType::AAAA)
            );
            let (v4, v6) = match (v4, v6) {
                (Ok(v4), Ok(v6)) => (v4, v6),
                // One family's addresses are enough.
                (Ok(Some(v4)), Err(_)) => (Some(v4), None),
                (Err(_), Ok(Some(v6))) => (None, Some(v6)),
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
            for found in [v4, v6].into_iter().flatten() {
                let valid = found.valid_until().saturating_duration_since(now.into_std());
                until = Some(until.map_or(valid, |t| t.min(valid)));
                addrs.extend(found.answers().iter().filter_map(ip));
            }
            if addrs.is_empty() {
                tracing::debug!(service = %self.service, target = %srv.target, "the target of an SRV record has no address; skipped");
            }
        }
        Ok((addrs, until))
    }

    /// `name`'s records of `kind`, asked afresh; `None` when it has none.
    async fn records(
        &self,
        name: &Name,
        kind: RecordType,
    ) -> std::result::Result<Option<hickory_resolver::lookup::Lookup>, NetError> {
        self.resolver.clear_lookup_cache(name.clone(), kind);
        match self.resolver.lookup(name.clone(), kind).await {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.is_no_records_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// An address record's address.
fn ip(r: &hickory_resolver::proto::rr::Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

fn seconds(ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl))
}

/// Resolves the service again whenever its records expire, publishing what changed, until
/// nobody watches.
async fn follow(lookup: Lookup, publisher: Publisher, mut wait: Duration) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let refresh = async {
        loop {
            tokio::time::sleep(wait).await;
            match lookup.resolve().await {
                Ok(resolved) => {
                    publisher.publish(resolved.instances);
                    wait = resolved.refresh;
                    backoff.reset();
                }
                Err(e) => {
                    wait = backoff.next();
                    tracing::warn!(service = %lookup.service, srv = %lookup.name, error = %e, retry_in = ?wait, "cannot resolve the service's SRV records; keeping the last instances");
                }
            }
        }
    };
    tokio::select! {
        _ = publisher.closed() => {}
        _ = refresh => {}
    }
}
