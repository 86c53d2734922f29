//! [`Backend`]: what a registry (etcd, Consul, DNS, a static list, in-process) does, and
//! [`Watch`], the instance set it keeps up to date.

use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::{Instance, Result};

/// A registry's backend. Registration is optional: a static list or DNS only finds.
pub trait Backend: Send + Sync + 'static {
    /// Registers `instance` until the returned lease is deregistered; a crashed process's
    /// registration ends on its own (a lease's TTL, a failing check) where the backend can.
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Box<dyn Lease>>>;

    /// The instances of `service`, listed once before this resolves, then kept up to date
    /// until every clone of the [`Watch`] is dropped.
    fn watch(&self, service: &str) -> BoxFuture<'static, Result<Watch>>;

    /// What it is, for `Debug` and logs (never a password or token).
    fn describe(&self) -> String;
}

/// One instance's registration.
pub trait Lease: Send + Sync + fmt::Debug {
    /// Replaces the registered record (its status changed).
    fn update(&self, instance: Instance) -> BoxFuture<'_, Result<()>>;
    /// Removes the registration.
    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}

/// The instances of a service, as last seen.
#[derive(Clone)]
pub struct Watch(watch::Receiver<Arc<[Instance]>>);

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Watch").field(&self.0.borrow().len()).finish()
    }
}

impl Watch {
    /// A watch that starts with `instances`, and its publisher.
    pub fn channel(instances: Vec<Instance>) -> (Publisher, Watch) {
        let (tx, rx) = watch::channel(normalise(instances));
        (Publisher(tx), Watch(rx))
    }

    /// The instances now, sorted by id.
    pub fn current(&self) -> Arc<[Instance]> {
        self.0.borrow().clone()
    }

    /// Waits for the next change; `false` once the backend stopped watching.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// Where a backend publishes a service's instances.
#[derive(Debug)]
pub struct Publisher(watch::Sender<Arc<[Instance]>>);

impl Publisher {
    /// Publishes the instances seen now (watchers wake only if they differ from the last).
    pub fn publish(&self, instances: Vec<Instance>) {
        let next = normalise(instances);
        self.0.send_if_modified(|now| {
            let changed = *now != next;
            if changed {
                *now = next;
            }
            changed
        });
    }

    /// Resolves once nobody watches any more: the backend can stop.
    pub async fn closed(&self) {
        self.0.closed().await
    }

    /// True once nobody watches.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// Sorted by id, one record per id (the last one given).
fn normalise(mut instances: Vec<Instance>) -> Arc<[Instance]> {
    instances.reverse();
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    instances.dedup_by(|a, b| a.id == b.id);
    instances.into()
}
