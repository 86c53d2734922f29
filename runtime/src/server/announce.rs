//! [`Announce`]: how a running service tells a registry that it is there, and that it is
//! leaving. `switchboard-discovery` implements it for etcd, Consul and its other registries;
//! [`Microservice::register`](super::Microservice::register) calls it.

use futures_util::future::BoxFuture;

use crate::contract::Contract;
use crate::error::Result;
use crate::service::Kind;
use crate::transport::health::Health;

/// One pattern a service serves, as a registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The normalised route.
    pub route: String,
    /// Request or event.
    pub kind: Kind,
    /// The fingerprint of its payload and reply types, when its handler has one.
    pub contract: Option<Contract>,
}

/// What a service tells a registry once every transport takes messages.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Announcement {
    /// The service's name ([`Microservice::name`](super::Microservice::name)).
    pub name: String,
    /// Its version ([`Microservice::version`](super::Microservice::version)), if given.
    pub version: Option<String>,
    /// The URLs peers reach it on, without passwords (ports resolved).
    pub urls: Vec<String>,
    /// Every pattern it serves (the built-in health patterns left out).
    pub patterns: Vec<Served>,
    /// Its health, to follow: a registration marks the instance critical while it is not
    /// ready.
    pub health: Health,
}

/// A registry a service registers with when it starts and leaves before it drains.
pub trait Announce: Send + Sync + 'static {
    /// Registers the service; what it returns withdraws the registration.
    fn announce(&self, service: Announcement) -> BoxFuture<'static, Result<Box<dyn Announced>>>;
}

/// A service's registration, held while it runs.
pub trait Announced: Send + Sync + std::fmt::Debug {
    /// Removes the registration (callers stop sending new calls once they see it go).
    fn withdraw(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}
