//! [`Headers`]: the string key/value pairs that travel beside a payload (NestJS 12's
//! `metadata`, NATS and Kafka headers, AMQP headers, gRPC metadata).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

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
#[derive(Clone, Default)]
pub struct Headers(Option<Arc<Map>>);

/// Up to [`FEW`] headers in a vector, searched in order (a message has a few: comparing
/// them beats hashing a key), the first two inside the map's own allocation; a map beyond
/// that, so a peer that sends thousands costs no quadratic time.
#[derive(Clone)]
enum Map {
    Few(SmallVec<[(Name, String); 2]>),
    Many(HashMap<Name, String>),
}

const FEW: usize = 16;

/// A header's name: the ones Switchboard and W3C tracing put on most messages are kept
/// without an allocation of their own.
type Name = Cow<'static, str>;

const KNOWN: [&str; 5] = [
    crate::service::TIMEOUT_HEADER,
    "traceparent",
    "tracestate",
    "baggage",
    crate::resilience::IDEMPOTENCY_KEY_HEADER,
];

fn name_of<N: AsRef<str> + Into<String>>(name: N) -> Name {
    match KNOWN.iter().find(|known| **known == name.as_ref()) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(name.into()),
    }
}

impl Map {
    fn get(&self, name: &str) -> Option<&str> {
        match self {
            Map::Few(v) => v.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
            Map::Many(m) => m.get(name).map(String::as_str),
        }
    }

    fn insert(&mut self, name: Name, value: String) {
        match self {
            Map::Few(v) => match v.iter().position(|(k, _)| *k == name) {
                Some(at) => v[at].1 = value,
                None if v.len() < FEW => v.push((name, value)),
                None => {
                    let mut m: HashMap<Name, String> = std::mem::take(v).into_iter().collect();
                    m.insert(name, value);
                    *self = Map::Many(m);
                }
            },
            Map::Many(m) => {
                m.insert(name, value);
            }
        }
    }

    fn remove(&mut self, name: &str) -> Option<String> {
        match self {
            Map::Few(v) => {
                let at = v.iter().position(|(k, _)| k == name)?;
                Some(v.remove(at).1)
            }
            Map::Many(m) => m.remove(name),
        }
    }

    fn len(&self) -> usize {
        match self {
            Map::Few(v) => v.len(),
            Map::Many(m) => m.len(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let (few, many) = match self {
            Map::Few(v) => (Some(v.iter().map(|(k, v)| (&**k, v.as_str()))), None),
            Map::Many(m) => (None, Some(m.iter().map(|(k, v)| (&**k, v.as_str())))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(None)
    }

    /// One header's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.as_ref()?.get(name)
    }

    /// Sets a header, replacing an earlier value.
    pub fn insert<N: AsRef<str> + Into<String>>(&mut self, name: N, value: impl Into<String>) {
        let map = self.0.get_or_insert_with(|| Arc::new(Map::Few(SmallVec::new())));
        Arc::make_mut(map).insert(name_of(name), value.into());
    }

    /// Removes a header, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let map = self.0.as_mut()?;
        let old = Arc::make_mut(map).remove(name);
        if map.len() == 0 {
            self.0 = None;
        }
        old
    }

    /// Every header, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().flat_map(|m| m.iter())
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }
}

impl PartialEq for Headers {
    /// The same names with the same values, in any order.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Eq for Headers {}

impl From<HashMap<String, String>> for Headers {
    fn from(map: HashMap<String, String>) -> Self {
        let named = map.into_iter().map(|(k, v)| (name_of(k), v));
        match named.len() {
            0 => Headers(None),
            n if n <= FEW => Headers(Some(Arc::new(Map::Few(named.collect())))),
            _ => Headers(Some(Arc::new(Map::Many(named.collect())))),
        }
    }
}

/// Headers being read off the wire: built unshared, so an insert touches no reference count.
#[derive(Default)]
pub(crate) struct Building(Option<Map>);

impl Building {
    /// Sets a header, replacing an earlier value.
    pub(crate) fn insert<N: AsRef<str> + Into<String>>(&mut self, name: N, value: impl Into<String>) {
        self.0
            .get_or_insert_with(|| Map::Few(SmallVec::new()))
            .insert(name_of(name), value.into());
    }

    /// The headers built.
    pub(crate) fn done(self) -> Headers {
        Headers(self.0.map(Arc::new))
    }
}

impl<K: AsRef<str> + Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Building::default();
        for (k, v) in iter {
            headers.insert(k, v);
        }
        headers.done()
    }
}

impl<K: AsRef<str> + Into<String>, V: Into<String>> Extend<(K, V)> for Headers {
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
        assert!(a.is_empty() && a == Headers::new());
    }

    /// Past a few headers the vector becomes a map: the same answers, no quadratic time for
    /// a peer that sends thousands; equality ignores order either way.
    #[test]
    fn many_headers_keep_their_last_values() {
        let mut many = Headers::new();
        for round in 0..2 {
            for i in 0..1000 {
                many.insert(format!("h{i}"), format!("{round}-{i}"));
            }
        }
        assert_eq!(many.len(), 1000);
        assert_eq!(many.get("h999"), Some("1-999"));
        assert_eq!(many.remove("h0").as_deref(), Some("1-0"));
        assert_eq!(many.iter().count(), 999);
        let few: Headers = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        let reversed: Headers = [("b", "2"), ("a", "3")].into_iter().collect();
        assert_eq!((few.len(), few.get("a")), (2, Some("3")));
        assert_eq!(few, reversed);
        assert_ne!(few, [("b", "2"), ("a", "1")].into_iter().collect::<Headers>());
        let from_map: Headers = HashMap::from([("a".to_string(), "3".to_string()), ("b".into(), "2".into())]).into();
        assert_eq!(from_map, few);
    }

    /// The names on most messages are kept without an allocation of their own, whatever the
    /// caller passed them as; they read and compare as any other.
    #[test]
    fn known_names_are_kept_without_allocating() {
        let mut h = Headers::new();
        h.insert(crate::service::TIMEOUT_HEADER, "100");
        h.insert(String::from("traceparent"), "00-1");
        h.insert("tenant", "acme");
        let Some(Map::Few(v)) = h.0.as_deref() else {
            panic!("a few headers are a vector")
        };
        let borrowed: Vec<bool> = v.iter().map(|(k, _)| matches!(k, Cow::Borrowed(_))).collect();
        assert_eq!(borrowed, [true, true, false]);
        assert_eq!(h.get("traceparent"), Some("00-1"));
        let same: Headers = [("tenant", "acme"), ("traceparent", "00-1"), ("sb-timeout-ms", "100")]
            .into_iter()
            .collect();
        assert_eq!(h, same);
    }

    #[test]
    fn debug_shows_names_not_values() {
        let h: Headers = [("authorization", "Bearer secret")].into_iter().collect();
        assert_eq!(format!("{h:?}"), r#"{"authorization"}"#);
    }
}
