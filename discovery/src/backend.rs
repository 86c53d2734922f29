//! [`Backend`]: what a registry (etcd, Consul, DNS, a static list, in-process) does, and
//! [`Watch`], the instance set it keeps up to date.

use std::fmt;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
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

    /// The instances of `service` now, listed once, in any order. By default the first list of
    /// a [`watch`](Self::watch) that is then dropped; a backend that can list without setting
    /// up what following takes (a watch stream, a blocking query) does that instead.
    fn list(&self, service: &str) -> BoxFuture<'static, Result<Vec<Instance>>> {
        let watch = self.watch(service);
        async move { Ok(watch.await?.current().to_vec()) }.boxed()
    }

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
fn normalise(instances: Vec<Instance>) -> Arc<[Instance]> {
    sorted(instances).into()
}

/// `instances` sorted by id, one per id (the last listed).
pub(crate) fn sorted(mut instances: Vec<Instance>) -> Vec<Instance> {
    instances.reverse();
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    instances.dedup_by(|a, b| a.id == b.id);
    instances
}

#[cfg(test)]
mod tests {
    use futures_util::future::FutureExt;

    use super::*;
    use crate::{Error, Registry};

    /// A backend that lists and cannot follow (`follows: false`), or follows and lists only
    /// through the trait's default (`true`).
    struct Test {
        follows: bool,
    }

    /// The same, with its own `list`.
    struct ListOnly;

    impl Backend for Test {
        fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Box<dyn Lease>>> {
            let refused = Error::refused(format!("cannot register {}", instance.id));
            std::future::ready(Err(refused)).boxed()
        }

        fn watch(&self, service: &str) -> BoxFuture<'static, Result<Watch>> {
            let result = match self.follows {
                true => Ok(Watch::channel(two(service)).1),
                false => Err(Error::refused("no watch here")),
            };
            std::future::ready(result).boxed()
        }

        fn describe(&self) -> String {
            "a test backend".to_owned()
        }
    }

    impl Backend for ListOnly {
        fn register(&self, instance: Instance) -> BoxFuture<'static, Result<Box<dyn Lease>>> {
            Test { follows: false }.register(instance)
        }

        fn watch(&self, service: &str) -> BoxFuture<'static, Result<Watch>> {
            Test { follows: false }.watch(service)
        }

        fn list(&self, service: &str) -> BoxFuture<'static, Result<Vec<Instance>>> {
            std::future::ready(Ok(two(service))).boxed()
        }

        fn describe(&self) -> String {
            "a test backend that only lists".to_owned()
        }
    }

    fn two(service: &str) -> Vec<Instance> {
        vec![
            Instance::new(service, "b", ["tcp://127.0.0.1:2"]),
            Instance::new(service, "a", ["tcp://127.0.0.1:1"]),
        ]
    }

    /// `Registry::instances` lists once, through the backend's `list` (no watch is set up:
    /// this one has none), or by default through a watch; sorted by id either way.
    #[tokio::test]
    async fn instances_are_listed_without_a_watch() {
        let ids = |listed: Vec<Instance>| listed.into_iter().map(|i| i.id).collect::<Vec<_>>();
        let listed = Registry::new(ListOnly).instances("users").await.unwrap();
        assert_eq!(ids(listed), ["a", "b"]);
        let listed = Registry::new(Test { follows: true }).instances("users").await.unwrap();
        assert_eq!(ids(listed), ["a", "b"], "by default, through a watch");
        let err = Registry::new(Test { follows: false })
            .instances("users")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no watch here"), "{err}");
    }
}
