//! The process-wide handler registry and the route table built from it.
//!
//! `#[message_pattern]` and `#[event_pattern]` submit a [`HandlerEntry`] through
//! `inventory`; [`Registry::collect`] gathers every entry linked into the binary and
//! [`Routes`] maps routes to handlers once, at start-up.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::handler::HandlerFn;

/// Whether a handler answers requests or listens to events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerKind {
    /// `#[message_pattern]`: one per route, answers.
    Message,
    /// `#[event_pattern]`: any number per route, all run, no answer.
    Event,
}

/// One registered handler, as the attribute macros describe it.
pub struct HandlerEntry {
    /// Message or event.
    pub kind: HandlerKind,
    /// The normalised route key.
    pub route: &'static str,
    /// The pattern as JSON, as written.
    pub pattern: &'static str,
    /// The function's name.
    pub name: &'static str,
    /// `module_path!()` of the function.
    pub module: &'static str,
    /// Source file of the function.
    pub file: &'static str,
    /// Source line of the function.
    pub line: u32,
    /// The type-erased entry point.
    pub call: HandlerFn,
}

impl HandlerEntry {
    /// `module::name (file:line)`, for messages about this handler.
    pub fn location(&self) -> String {
        format!("{}::{} ({}:{})", self.module, self.name, self.file, self.line)
    }
}

impl fmt::Debug for HandlerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerEntry")
            .field("kind", &self.kind)
            .field("route", &self.route)
            .field("handler", &self.location())
            .finish()
    }
}

/// An entry submitted to `inventory`. Wraps a reference so a descriptor can point at the
/// same static entry.
#[doc(hidden)]
pub struct Registration(pub &'static HandlerEntry);

inventory::collect!(Registration);

/// A handler function that can be served on its own: every `#[message_pattern]` and
/// `#[event_pattern]` function is one.
pub trait Handler: Copy {
    /// The handler's registry entry.
    fn entry(&self) -> &'static HandlerEntry;
}

/// A set of handlers to serve.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    entries: Vec<&'static HandlerEntry>,
}

impl Registry {
    /// Every handler linked into this binary.
    pub fn collect() -> Self {
        let mut entries: Vec<_> = inventory::iter::<Registration>.into_iter().map(|r| r.0).collect();
        // inventory's order is unspecified; sort so start-up errors are deterministic.
        entries.sort_by_key(|e| (e.route, e.module, e.name));
        Registry { entries }
    }

    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one handler.
    pub fn add(&mut self, entry: &'static HandlerEntry) {
        if !self.entries.iter().any(|e| std::ptr::eq(*e, entry)) {
            self.entries.push(entry);
        }
    }

    /// The handlers in the set.
    pub fn entries(&self) -> &[&'static HandlerEntry] {
        &self.entries
    }

    /// Builds the route table, refusing an empty set and two request handlers for one route.
    pub fn routes(&self) -> Result<Routes> {
        if self.entries.is_empty() {
            return Err(Error::Registry(
                "no handlers to serve: mark async fns with #[message_pattern] or #[event_pattern] \
                 (handlers from a library crate are linked only when the binary uses them: add those \
                 with `.handler(f)`)"
                    .into(),
            ));
        }
        let mut by_route: HashMap<&'static str, RouteHandlers> = HashMap::new();
        let mut duplicates = Vec::new();
        for &entry in &self.entries {
            let slot = by_route.entry(entry.route).or_insert_with(|| RouteHandlers {
                route: entry.route,
                message: None,
                events: Vec::new(),
            });
            match entry.kind {
                HandlerKind::Message => match slot.message {
                    Some(first) => duplicates.push(format!(
                        "pattern {} has two request handlers: {} and {}",
                        entry.route,
                        first.location(),
                        entry.location()
                    )),
                    None => slot.message = Some(entry),
                },
                HandlerKind::Event => slot.events.push(entry),
            }
        }
        if !duplicates.is_empty() {
            return Err(Error::Registry(duplicates.join("; ")));
        }
        let mut lookup = HashMap::default();
        for (route, handlers) in by_route {
            let handlers = Arc::new(handlers);
            // A NestJS client sends an object pattern in its written key order; index that
            // form too so the common case skips normalisation.
            for e in handlers.message.iter().chain(&handlers.events) {
                lookup
                    .entry(Box::<str>::from(e.pattern))
                    .or_insert_with(|| handlers.clone());
            }
            lookup.insert(Box::<str>::from(route), handlers);
        }
        Ok(Routes { lookup })
    }
}

/// The handlers of one route.
#[derive(Debug)]
pub struct RouteHandlers {
    /// The normalised route key.
    pub route: &'static str,
    /// The request handler, if any.
    pub message: Option<&'static HandlerEntry>,
    /// The event listeners, in registration order.
    pub events: Vec<&'static HandlerEntry>,
}

/// The route table: route key (or a pattern's written JSON) to handlers.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    // Keys are the registered routes, fixed at start-up; a fast hash is safe here.
    lookup: HashMap<Box<str>, Arc<RouteHandlers>, rustc_hash::FxBuildHasher>,
}

impl Routes {
    /// Handlers for a normalised route.
    pub fn get(&self, route: &str) -> Option<&Arc<RouteHandlers>> {
        self.lookup.get(route)
    }

    /// The pattern to dispatch a message that arrived on `channel` with, for brokers that
    /// route by channel (NestJS looks handlers up by channel there): the route itself when it
    /// is served, so that dispatch needs no parsing, else the channel as a JSON string (a
    /// miss that names it).
    #[cfg_attr(
        not(any(feature = "redis", feature = "nats", feature = "mqtt", feature = "kafka")),
        allow(dead_code)
    )]
    pub(crate) fn channel_pattern<'a>(&self, channel: &'a str) -> std::borrow::Cow<'a, str> {
        if self.lookup.contains_key(channel) {
            std::borrow::Cow::Borrowed(channel)
        } else {
            std::borrow::Cow::Owned(serde_json::Value::from(channel).to_string())
        }
    }

    /// Handlers for a pattern as it arrived on the wire (raw JSON of the `pattern` field),
    /// resolved as a NestJS server does; the route is returned for messages about misses.
    pub fn resolve(&self, raw_pattern: &str) -> std::result::Result<&Arc<RouteHandlers>, String> {
        if let Some(h) = self.lookup.get(raw_pattern) {
            return Ok(h);
        }
        let route = match simple_json_string(raw_pattern) {
            Some(s) => switchboard_pattern::route_of_str(s.to_owned()),
            None => switchboard_pattern::route_of_wire_pattern(raw_pattern).unwrap_or_else(|| raw_pattern.to_owned()),
        };
        self.lookup.get(route.as_str()).ok_or(route)
    }

    /// Every route served, once each (the table also indexes patterns by their written form).
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.lookup
            .iter()
            .filter(|(key, h)| &***key == h.route)
            .map(|(_, h)| h.route)
    }
}

/// The content of a JSON string literal without escapes, without allocating.
fn simple_json_string(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains(['\\', '"'])).then_some(inner)
}
