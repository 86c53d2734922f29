//! [`Headers`]: the string key/value pairs that travel beside a payload (NestJS 12's
//! `metadata`, NATS and Kafka headers, AMQP headers, gRPC metadata).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A message's headers. Cheap to clone: the map is shared until someone changes it.
///
/// ```
/// use switchboard::Headers;
///
/// let mut headers = Headers::new();
/// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert_eq!(headers.get("traceparent").map(str::len), Some(55));
/// assert!(headers.get("tenant").is_none());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Option<Arc<HashMap<String, String>>>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(None)
    }

    /// One header's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.as_ref()?.get(name).map(String::as_str)
    }

    /// Sets a header, replacing an earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        Arc::make_mut(self.0.get_or_insert_with(Default::default)).insert(name.into(), value.into());
    }

    /// Removes a header, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let map = self.0.as_mut()?;
        let old = Arc::make_mut(map).remove(name);
        if map.is_empty() {
            self.0 = None;
        }
        old
    }

    /// Every header, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    /// The headers as a map, `None` when there are none.
    pub fn as_map(&self) -> Option<&HashMap<String, String>> {
        self.0.as_deref().filter(|m| !m.is_empty())
    }
}

impl From<HashMap<String, String>> for Headers {
    fn from(map: HashMap<String, String>) -> Self {
        Headers((!map.is_empty()).then(|| Arc::new(map)))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let map: HashMap<String, String> = iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        map.into()
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for Headers {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl fmt::Debug for Headers {
    /// Names only: header values may carry credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.iter().map(|(k, _)| k).collect();
        names.sort_unstable();
        f.debug_set().entries(names).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_until_changed() {
        let mut a: Headers = [("x", "1")].into_iter().collect();
        let b = a.clone();
        a.insert("y", "2");
        assert_eq!((a.len(), b.len()), (2, 1));
        assert_eq!(a.remove("x").as_deref(), Some("1"));
        assert_eq!(a.remove("y").as_deref(), Some("2"));
        assert!(a.is_empty() && a.as_map().is_none());
    }

    #[test]
    fn debug_shows_names_not_values() {
        let h: Headers = [("authorization", "Bearer secret")].into_iter().collect();
        assert_eq!(format!("{h:?}"), r#"{"authorization"}"#);
    }
}
