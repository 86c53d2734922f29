//! [`Registry`]: a backend with the options clients of it use; what a service registers
//! with ([`Announce`]) and a client finds services through ([`Discover`]).

use std::fmt;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use switchboard::resilience::CircuitBreaker;
use switchboard::server::announce::{Announce, Announced, Announcement};
use switchboard::transport::ClientTransport;
use switchboard::{Client, Discover};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::backend::{Backend, Lease, Watch};
use crate::balance::{Balance, Balanced};
use crate::instance::Status;
use crate::{Instance, Result};

/// A service registry: where services register themselves and clients find them.
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard_discovery::Registry;
///
/// #[message_pattern("users.get")]
/// async fn get_user(id: u64) -> String { format!("user {id}") }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = Registry::connect("mem://doc").await?;  // or etcd://127.0.0.1:2379, consul://…
/// let a = Microservice::new().name("users").handler(GET_USER).register(registry.clone())
///     .listen("tcp://127.0.0.1:0").start().await?;
/// let b = Microservice::new().name("users").handler(GET_USER).register(registry.clone())
///     .listen("tcp://127.0.0.1:0").start().await?;
///
/// let users = Client::discover("users", &registry).connect().await?;  // balanced over a and b
/// assert_eq!(users.send(GET_USER, 7).await?, "user 7");
/// assert_eq!(registry.instances("users").await?.len(), 2);
/// # a.shutdown().await?; b.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Registry {
    backend: Arc<dyn Backend>,
    pub(crate) options: ClientOptions,
}

/// How clients of a registry pick and reach instances.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientOptions {
    pub balance: Balance,
    /// The scheme of the instance URL calls use (`tcp`, `grpc`, …); by default the first of
    /// an instance's URLs in the order tcp, tls, grpc, mem, then the brokers.
    pub transport: Option<String>,
    /// The host a service on `0.0.0.0` registers its URLs with.
    pub advertise: Option<String>,
    /// The breaker each instance of a client's service gets its own circuits from.
    pub circuit: Option<CircuitBreaker>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("backend", &self.backend.describe())
            .field("balance", &self.options.balance)
            .field("transport", &self.options.transport)
            .field("circuit", &self.options.circuit)
            .finish()
    }
}

impl Registry {
    /// A registry over `backend`.
    pub fn new(backend: impl Backend) -> Self {
        Registry {
            backend: Arc::new(backend),
            options: ClientOptions::default(),
        }
    }

    /// The registry at `url`: `mem://name` (in this process), `static://host:port,…/service`,
    /// `etcd://host:port[,host:port]` (feature `etcd`), `consul://host:port` (feature
    /// `consul`), `dns://[resolver]?domain=…` (feature `dns`). Query parameters
    /// `balance=p2c|round_robin|hash:<field>`, `transport=<scheme>` and
    /// `circuit=<failures in a row>[,<open time>]` (`circuit=5,30s`: circuits per instance, see
    /// [`circuit_breaker`](Self::circuit_breaker)) set what its clients do.
    pub async fn connect(url: &str) -> Result<Registry> {
        crate::url::registry(url).await
    }

    /// Clients of this registry balance calls with `balance` (default [`Balance::PeakEwma`]).
    pub fn balance(mut self, balance: Balance) -> Self {
        self.options.balance = balance;
        self
    }

    /// Clients of this registry call instances on their URL of this scheme (`tcp`, `grpc`, …).
    pub fn transport(mut self, scheme: impl Into<String>) -> Self {
        self.options.transport = Some(scheme.into());
        self
    }

    /// The host a service listening on every interface (`0.0.0.0`, `[::]`) registers its URLs
    /// with (default: `SWITCHBOARD_ADVERTISE_HOST`, else the machine's host name).
    pub fn advertise(mut self, host: impl Into<String>) -> Self {
        self.options.advertise = Some(host.into());
        self
    }

    /// Clients of this registry keep circuits per instance: each instance (endpoint) gets its
    /// own circuit per pattern, configured as `breaker` ([`CircuitBreaker::detached`]), so one
    /// failing instance is left out of that pattern's calls while the others take them. A call
    /// goes to an instance whose circuit for its pattern is closed (or half-open, as a probe);
    /// when every instance serving it is open, the call is refused at once with
    /// [`Rejected`](switchboard::Error::Rejected) /
    /// [`CircuitOpen`](switchboard::resilience::Rejection::CircuitOpen), without a round trip.
    /// A failure is what [`Guarded::failed`](switchboard::resilience::Guarded::failed) says of a
    /// client's call: the instance could not be reached, did not answer before the call's
    /// deadline, or answered `UNAVAILABLE`; a handler's own error is an answer. An attempt its
    /// caller gave up on earlier (a lost hedge, a per-attempt timeout) is not counted. Each
    /// client has its own circuits; transitions are `tracing` events naming the instance URL
    /// (its password hidden). `breaker` itself keeps no circuits of its own here.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::resilience::CircuitBreaker;
    /// use switchboard_discovery::Registry;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::connect("mem://circuits-doc").await?.circuit_breaker(
    ///     CircuitBreaker::new().consecutive_failures(5).open_for(Duration::from_secs(30)),
    /// );
    /// let users = switchboard::Client::discover("users", &registry).build()?;
    /// # drop(users);
    /// # Ok(()) }
    /// ```
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.options.circuit = Some(breaker);
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Registers `instance` by hand (a service registers itself with
    /// [`Microservice::register`](switchboard::Microservice::register)).
    pub async fn register(&self, instance: Instance) -> Result<Box<dyn Lease>> {
        self.backend.register(instance).await
    }

    /// The instances of `service` now, sorted by id: listed once (an etcd range read, one
    /// Consul health query, one DNS resolution), not followed as [`watch`](Self::watch) does.
    pub async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        Ok(crate::backend::sorted(self.backend.list(service).await?))
    }

    /// The instances of `service`, kept up to date.
    pub async fn watch(&self, service: &str) -> Result<Watch> {
        self.backend.watch(service).await
    }

    /// A client of `service` through this registry, connected (at least one instance found).
    pub async fn client(&self, service: &str) -> switchboard::Result<Client> {
        Client::discover(service, self).connect().await
    }
}

impl Discover for Registry {
    fn transport(&self, service: &str) -> switchboard::Result<Arc<dyn ClientTransport>> {
        Ok(Arc::new(Balanced::new(service, self.clone())))
    }
}

impl Announce for Registry {
    fn announce(&self, service: Announcement) -> BoxFuture<'static, switchboard::Result<Box<dyn Announced>>> {
        let backend = self.backend.clone();
        let host = self
            .options
            .advertise
            .clone()
            .unwrap_or_else(crate::instance::default_advertise_host);
        async move {
            let instance = Instance::announced(&service, &host);
            let lease = backend.register(instance.clone()).await?;
            tracing::info!(service = %instance.service, id = %instance.id, registry = %backend.describe(), "registered");
            let lease = Arc::new(Mutex::new(Some(lease)));
            let follow = tokio::spawn(follow_health(instance.clone(), service.health.clone(), lease.clone()));
            Ok(Box::new(Registration {
                instance,
                backend: backend.describe(),
                lease,
                follow,
            }) as Box<dyn Announced>)
        }
        .boxed()
    }
}

/// Marks the instance critical while the service is not ready, passing again once it is.
async fn follow_health(
    mut instance: Instance,
    health: switchboard::server::Health,
    lease: Arc<Mutex<Option<Box<dyn Lease>>>>,
) {
    let mut changes = health.subscribe();
    loop {
        let status = match health.is_ready() {
            true => Status::Passing,
            false => Status::Critical,
        };
        if status != instance.status {
            instance.status = status;
            if let Some(lease) = lease.lock().await.as_ref()
                && let Err(e) = lease.update(instance.clone()).await
            {
                tracing::warn!(service = %instance.service, id = %instance.id, error = %e, "could not update the registration");
            }
        }
        changes.changed().await;
    }
}

/// A service's registration, withdrawn on shutdown.
struct Registration {
    instance: Instance,
    backend: String,
    lease: Arc<Mutex<Option<Box<dyn Lease>>>>,
    follow: JoinHandle<()>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("service", &self.instance.service)
            .field("id", &self.instance.id)
            .field("registry", &self.backend)
            .finish()
    }
}

impl Announced for Registration {
    fn withdraw(self: Box<Self>) -> BoxFuture<'static, switchboard::Result<()>> {
        async move {
            self.follow.abort();
            let Some(lease) = self.lease.lock().await.take() else {
                return Ok(());
            };
            lease.deregister().await?;
            tracing::info!(service = %self.instance.service, id = %self.instance.id, "deregistered");
            Ok(())
        }
        .boxed()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.follow.abort();
    }
}
