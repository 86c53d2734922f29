//! [`Extensions`]: values a layer attaches to a message for the layers and handlers after it
//! (an authenticated user, a tenant, a span), looked up by type.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

type Map = HashMap<TypeId, Arc<dyn Any + Send + Sync>, rustc_hash::FxBuildHasher>;

/// A type map. Cheap to clone: the map is shared until someone changes it.
///
/// ```
/// use switchboard::Extensions;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Tenant(String);
///
/// let mut ext = Extensions::new();
/// ext.insert(Tenant("acme".into()));
/// assert_eq!(ext.get::<Tenant>(), Some(&Tenant("acme".into())));
/// assert!(ext.get::<u32>().is_none());
/// ```
#[derive(Clone, Default)]
pub struct Extensions(Option<Arc<Map>>);

impl Extensions {
    /// Empty.
    pub const fn new() -> Self {
        Extensions(None)
    }

    /// Adds a value, replacing one of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        Arc::make_mut(self.0.get_or_insert_with(Default::default)).insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if one was added.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.as_ref()?.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// Removes the value of type `T`; true if there was one.
    pub fn remove<T: Send + Sync + 'static>(&mut self) -> bool {
        match self.0.as_mut() {
            Some(map) => Arc::make_mut(map).remove(&TypeId::of::<T>()).is_some(),
            None => false,
        }
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extensions({} values)", self.0.as_ref().map_or(0, |m| m.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_until_changed() {
        let mut a = Extensions::new();
        a.insert(1u32);
        let b = a.clone();
        a.insert("x");
        assert_eq!(b.get::<&str>(), None);
        assert_eq!(a.get::<&str>(), Some(&"x"));
        assert!(a.remove::<u32>());
        assert!(!a.remove::<u32>());
        assert_eq!(b.get::<u32>(), Some(&1));
    }
}
