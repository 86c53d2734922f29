//! [`Memory`]: a registry inside this process, for tests and single-binary deployments.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt};

use crate::backend::{Backend, Lease, Publisher, Watch};
use crate::{Instance, Result};

/// Registrations kept in memory; every clone shares them.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    inner: Arc<Mutex<Services>>,
}

#[derive(Debug, Default)]
struct Services {
    instances: HashMap<String, Vec<Instance>>,
    watchers: HashMap<String, Vec<Publisher>>,
}

impl Services {
    fn changed(&mut self, service: &str) {
        let now = self.instances.get(service).cloned().unwrap_or_default();
        if let Some(watchers) = self.watchers.get_mut(service) {
            watchers.retain(|w| !w.is_closed());
            for w in watchers.iter() {
                w.publish(now.clone());
            }
        }
    }
}

impl Memory {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn put(&self, instance: Instance) {
        let mut services = self.inner.lock().expect("registry lock");
        let service = instance.service.clone();
        let list = services.instances.entry(service.clone()).or_default();
        list.retain(|i| i.id != instance.id);
        list.push(instance);
        services.changed(&service);
    }

    fn remove(&self, service: &str, id: &str) {
        let mut services = self.inner.lock().expect("registry lock");
        if let Some(list) = services.instances.get_mut(service) {
            list.retain(|i| i.id != id);
        }
        services.changed(service);
    }
}

impl Backend for Memory {
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Box<dyn Lease>>> {
        let (service, id) = (instance.service.clone(), instance.id.clone());
        self.put(instance);
        let lease = MemoryLease {
            registry: self.clone(),
            service,
            id,
        };
        std::future::ready(Ok(Box::new(lease) as Box<dyn Lease>)).boxed()
    }

    fn watch(&self, service: &str) -> BoxFuture<'static, Result<Watch>> {
        let mut services = self.inner.lock().expect("registry lock");
        let now = services.instances.get(service).cloned().unwrap_or_default();
        let (publisher, watch) = Watch::channel(now);
        services.watchers.entry(service.to_owned()).or_default().push(publisher);
        std::future::ready(Ok(watch)).boxed()
    }

    fn describe(&self) -> String {
        "in-process registry".into()
    }
}

/// A registration in a [`Memory`] registry; dropped without deregistering, it stays (as a
/// crashed process's would until its TTL, which memory does not have).
#[derive(Debug)]
struct MemoryLease {
    registry: Memory,
    service: String,
    id: String,
}

impl Lease for MemoryLease {
    fn update(&self, instance: Instance) -> BoxFuture<'_, Result<()>> {
        self.registry.put(instance);
        std::future::ready(Ok(())).boxed()
    }

    fn deregister(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.registry.remove(&self.service, &self.id);
        std::future::ready(Ok(())).boxed()
    }
}
