//! Service discovery for Switchboard: services register themselves in a registry when they
//! start and leave it before they drain; clients find a service by name, follow its
//! instances, and balance each call over those that serve the pattern with the contract the
//! client was compiled against.
//!
//! ```
//! use switchboard::prelude::*;
//! use switchboard_discovery::Registry;
//!
//! #[message_pattern("users.get")]
//! async fn get_user(id: u64) -> String { format!("user {id}") }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::connect("mem://lib-doc").await?;
//! let server = Microservice::new().name("users").handler(GET_USER)
//!     .register(registry.clone())            // registered once it listens, withdrawn on shutdown
//!     .listen("tcp://127.0.0.1:0").start().await?;
//! let users = switchboard_discovery::connect("mem://lib-doc/users?balance=round_robin").await?;
//! assert_eq!(users.send(GET_USER, 1).await?, "user 1");
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Registries, chosen by URL ([`Registry::connect`]) or built ([`Registry::new`]):
//!
//! | URL | backend | registers | finds |
//! |---|---|---|---|
//! | `mem://name` | [`Memory`]: in this process | yes | yes |
//! | `static://h:p,h:p/service` | [`List`]: fixed URLs | no | yes |
//! | `etcd://h:p[,h:p]` | etcd v3 (feature `etcd`): a lease per instance, a prefix watch | yes | yes |
//! | `consul://h:p` | Consul's agent API (feature `consul`): a TTL check, blocking health queries | yes | yes |
//! | `dns://[h:p]?domain=d` | DNS SRV records (feature `dns`) | no | yes |
//!
//! Balancing ([`Balance`]): power of two choices over Peak-EWMA load (default), round robin,
//! or rendezvous hashing on a payload field. An instance that refuses connections is ejected at
//! once and readmitted once a connection succeeds; one that keeps failing is ejected for a
//! while. With [`Registry::circuit_breaker`] (or `?circuit=5,30s`) each instance has its own
//! circuit per pattern, so an instance failing one pattern is left out of that pattern's calls
//! only. Hedges and retries go to an instance the call has not tried yet
//! ([`Tried`](switchboard::resilience::Tried)). For broker transports (Redis, NATS, RabbitMQ,
//! MQTT, Kafka) the broker balances (queue groups, consumer groups): every instance has the same
//! URL, so a discovered client has one endpoint and the registry reports membership and health
//! only.

#![warn(missing_docs)]

mod backend;
#[cfg(any(feature = "etcd", feature = "consul", feature = "dns"))]
mod backoff;
mod balance;
#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "dns")]
pub mod dns;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod instance;
mod list;
mod mem;
mod registry;
mod url;

pub use backend::{Backend, Lease, Publisher, Watch};
pub use balance::Balance;
pub use error::{Error, Result};
pub use instance::{Fit, Instance, Pattern, PatternKind, Status};
pub use list::List;
pub use mem::Memory;
pub use registry::Registry;
pub use url::RegistryUrl;

/// A client of the service named in `url`'s path, found through the registry the URL names:
/// `etcd://127.0.0.1:2379/users?balance=p2c`, `mem://tests/users?circuit=5,30s`,
/// `static://10.0.0.1:3001,10.0.0.2:3001/users`. Connected: at least one instance is found.
pub async fn connect(url: &str) -> switchboard::Result<switchboard::Client> {
    url::builder(url).await?.connect().await
}

/// A client of the service named in `url`'s path, to configure (timeouts, layers) before it is
/// built: as [`connect`], without waiting for an instance.
pub async fn builder(url: &str) -> switchboard::Result<switchboard::ClientBuilder> {
    url::builder(url).await
}

/// True for a URL that names a registry rather than a transport (`etcd://`, `consul://`,
/// `dns://`, `static://`, and `mem://` with a service path is left to the caller).
pub fn is_registry_url(url: &str) -> bool {
    matches!(
        url.split_once("://").map(|(scheme, _)| scheme),
        Some("etcd" | "consul" | "dns" | "static")
    )
}
