//! [`List`]: a fixed list of instances (`static://`), for when the addresses are known.

use std::collections::HashMap;

use futures_util::future::{BoxFuture, FutureExt};

use crate::backend::{Backend, Lease, Watch};
use crate::{Error, Instance, Result};

/// Services at fixed URLs. Finding only: registering with it is refused.
///
/// ```
/// use switchboard_discovery::List;
///
/// let list = List::new().service("users", ["tcp://10.0.0.1:3001", "tcp://10.0.0.2:3001"]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct List {
    services: HashMap<String, Vec<Instance>>,
}

impl List {
    /// No services.
    pub fn new() -> Self {
        Self::default()
    }

    /// `service` at each of `urls` (one instance per URL, its id the URL without its password:
    /// ids are logged).
    pub fn service<U: Into<String>>(mut self, service: &str, urls: impl IntoIterator<Item = U>) -> Self {
        let instances = urls
            .into_iter()
            .map(|url| {
                let url = url.into();
                Instance::new(service, switchboard::transport::redact(&url), [url])
            })
            .collect();
        self.services.insert(service.to_owned(), instances);
        self
    }
}

impl Backend for List {
    fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Box<dyn Lease>>> {
        let refused = Error::refused(format!(
            "a static list cannot register `{}`: list its URLs where it is found, or use etcd or Consul",
            instance.service
        ));
        std::future::ready(Err(refused)).boxed()
    }

    fn watch(&self, service: &str) -> BoxFuture<'static, Result<Watch>> {
        let instances = self.services.get(service).cloned().unwrap_or_default();
        // Nothing ever changes: the publisher may go (its last value stays).
        let (_publisher, watch) = Watch::channel(instances);
        std::future::ready(Ok(watch)).boxed()
    }

    fn describe(&self) -> String {
        format!("static list of {} services", self.services.len())
    }
}
