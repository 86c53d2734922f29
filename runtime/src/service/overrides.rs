//! [`Overrides`]: the policies patterns declare, changed from configuration without recompiling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use switchboard_pattern::units::{parse_duration_ms, parse_rate};

use super::PatternOptions;
use crate::error::{Error, Result};

/// The environment variable holding overrides as JSON.
pub const POLICY_ENV: &str = "SWITCHBOARD_POLICY";
/// The environment variable naming a JSON file of overrides.
pub const POLICY_FILE_ENV: &str = "SWITCHBOARD_POLICY_FILE";
/// The largest overrides file read (a bigger one is an error, not read).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Changes to declared [`PatternOptions`], keyed by route (the pattern as NestJS writes it:
/// `"charge"`, `"{\"cmd\":\"sum\"}"`), with `"*"` for every pattern. A route's own entry beats
/// `"*"`, which beats what the attribute declared; what an entry leaves out stays as declared.
///
/// Given to a service ([`Microservice::policy_overrides`](crate::Microservice::policy_overrides):
/// `timeout`, `concurrency`, `rate`) and to a client
/// ([`ClientBuilder::policy_overrides`](crate::ClientBuilder::policy_overrides): `timeout`,
/// `retries`). `retries` never makes a pattern repeatable: it applies to patterns declared
/// `idempotent` only (a service refuses to start with retries for one of its patterns that is
/// not; a client ignores them with a warning).
///
/// ```
/// use std::time::Duration;
/// use switchboard::{Overrides, PatternOptions};
///
/// let overrides = Overrides::from_json(
///     r#"{ "charge": { "timeout": "3s", "retries": 1 }, "*": { "concurrency": 64 } }"#,
/// )?;
/// let declared = PatternOptions::new().idempotent().retries(2).timeout(Duration::from_secs(2));
/// let charge = overrides.apply("charge", declared);
/// assert_eq!(charge.get_timeout(), Some(Duration::from_secs(3)));
/// assert_eq!((charge.get_retries(), charge.get_concurrency()), (1, Some(64)));
/// # Ok::<(), switchboard::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides(Option<Arc<HashMap<String, Override>>>);

/// One entry of [`Overrides`]: each field replaces the declared one when set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawOverride")]
pub(crate) struct Override {
    timeout: Option<Duration>,
    concurrency: Option<u32>,
    rate: Option<(u32, Duration)>,
    retries: Option<u32>,
}

/// An entry as written: durations and rates as text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    timeout: Option<String>,
    concurrency: Option<u32>,
    rate: Option<String>,
    retries: Option<u32>,
}

impl TryFrom<RawOverride> for Override {
    type Error = String;

    fn try_from(raw: RawOverride) -> std::result::Result<Self, String> {
        let timeout = raw
            .timeout
            .map(|t| {
                parse_duration_ms(&t)
                    .map(Duration::from_millis)
                    .ok_or_else(|| format!("`timeout`: {t:?} is not a duration like \"2s\", \"500ms\" or \"1m30s\""))
            })
            .transpose()?;
        let rate = raw
            .rate
            .map(|r| {
                parse_rate(&r)
                    .map(|(n, ms)| (n, Duration::from_millis(ms)))
                    .ok_or_else(|| format!("`rate`: {r:?} is not a rate like \"200/s\" or \"10/100ms\""))
            })
            .transpose()?;
        if raw.concurrency == Some(0) {
            return Err("`concurrency` must be at least 1".into());
        }
        Ok(Override {
            timeout,
            concurrency: raw.concurrency,
            rate,
            retries: raw.retries,
        })
    }
}

impl Override {
    /// Fields set here replace those of `under`.
    fn over(self, under: Override) -> Override {
        Override {
            timeout: self.timeout.or(under.timeout),
            concurrency: self.concurrency.or(under.concurrency),
            rate: self.rate.or(under.rate),
            retries: self.retries.or(under.retries),
        }
    }
}

impl Overrides {
    /// No overrides.
    pub const fn new() -> Self {
        Overrides(None)
    }

    /// Adds (or replaces) the entry for `route` (`"*"`: every pattern).
    fn set(mut self, route: impl Into<String>, o: Override) -> Self {
        Arc::make_mut(self.0.get_or_insert_with(Default::default)).insert(route.into(), o);
        self
    }

    /// Reads `{ "<route>": { "timeout": "2s", "concurrency": 32, "rate": "200/s", "retries": 2 }, … }`.
    /// Unknown fields, bad durations or rates and a zero concurrency are errors that name the route.
    pub fn from_json(text: &str) -> Result<Overrides> {
        let entries: HashMap<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut out = Overrides::new();
        for (route, value) in entries {
            let o: Override = serde_json::from_value(value).map_err(|e| invalid(format!("pattern {route:?}: {e}")))?;
            out = out.set(route, o);
        }
        Ok(out)
    }

    /// What the environment says: `SWITCHBOARD_POLICY` (JSON, as [`from_json`](Self::from_json))
    /// or `SWITCHBOARD_POLICY_FILE` (a file of it, at most 1 MiB); none when neither is set.
    pub fn from_env() -> Result<Overrides> {
        let text = std::env::var(POLICY_ENV).ok();
        let file = std::env::var_os(POLICY_FILE_ENV);
        match (text, file) {
            (Some(_), Some(_)) => Err(invalid(format!("set {POLICY_ENV} or {POLICY_FILE_ENV}, not both"))),
            (Some(text), None) => Self::from_json(&text),
            (None, Some(path)) => {
                let path = std::path::PathBuf::from(path);
                let read = || -> std::io::Result<String> {
                    let file = std::fs::File::open(&path)?;
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_FILE_BYTES + 1), &mut text)?;
                    Ok(text)
                };
                let text = read().map_err(|e| invalid(format!("{POLICY_FILE_ENV} ({}): {e}", path.display())))?;
                if text.len() as u64 > MAX_FILE_BYTES {
                    return Err(invalid(format!(
                        "{POLICY_FILE_ENV} ({}): larger than 1 MiB",
                        path.display()
                    )));
                }
                Self::from_json(&text)
            }
            (None, None) => Ok(Overrides::new()),
        }
    }

    /// True when nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }

    /// The entry that applies to `route` (its own over `"*"`), if any.
    fn entry(&self, route: &str) -> Option<Override> {
        let map = self.0.as_deref()?;
        match (map.get(route), map.get("*")) {
            (Some(own), Some(all)) => Some(own.over(*all)),
            (own, all) => own.or(all).copied(),
        }
    }

    /// The routes named, `"*"` aside.
    pub(crate) fn routes(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .flat_map(|m| m.keys().map(String::as_str))
            .filter(|r| *r != "*")
    }

    /// `declared`, changed by the entry for `route`. Retries are kept for idempotent patterns
    /// only (see [`retries_refused`](Self::retries_refused)).
    pub fn apply(&self, route: &str, declared: PatternOptions) -> PatternOptions {
        match self.entry(route) {
            None => declared,
            Some(o) => declared.overridden(o.timeout, o.concurrency, o.rate, o.retries),
        }
    }

    /// True when the entry for `route` sets retries that `declared` cannot take (the pattern
    /// is not idempotent).
    pub fn retries_refused(&self, route: &str, declared: PatternOptions) -> bool {
        !declared.is_idempotent() && self.entry(route).is_some_and(|o| o.retries.is_some_and(|n| n > 0))
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig {
        what: "policy overrides",
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_route_beats_every_pattern_which_beats_the_attribute() {
        let o = Overrides::from_json(
            r#"{"charge": {"timeout": "3s"}, "*": {"timeout": "9s", "concurrency": 4, "rate": "10/100ms"}}"#,
        )
        .unwrap();
        let declared = PatternOptions::new().timeout(ms(100)).concurrency(32);
        let charge = o.apply("charge", declared);
        assert_eq!(charge.get_timeout(), Some(ms(3_000)));
        assert_eq!(charge.get_concurrency(), Some(4));
        assert_eq!(charge.get_rate(), Some((10, ms(100))));
        let other = o.apply("other", declared);
        assert_eq!(other.get_timeout(), Some(ms(9_000)));
        assert_eq!(Overrides::new().apply("charge", declared), declared);
        let only = Overrides::from_json(r#"{"x": {"concurrency": 2}}"#).unwrap();
        assert_eq!(
            only.apply("y", declared),
            declared,
            "another route's entry changes nothing"
        );
        assert_eq!(
            only.apply("x", declared).get_timeout(),
            Some(ms(100)),
            "unset fields stay"
        );
    }

    #[test]
    fn retries_apply_to_idempotent_patterns_only() {
        let o = Overrides::from_json(r#"{"*": {"retries": 3}}"#).unwrap();
        let safe = PatternOptions::new().idempotent().retries(1);
        assert_eq!(o.apply("a", safe).get_retries(), 3);
        assert!(!o.retries_refused("a", safe));
        let unsafe_ = PatternOptions::new();
        assert_eq!(o.apply("a", unsafe_).get_retries(), 0);
        assert!(o.retries_refused("a", unsafe_));
        let none = Overrides::from_json(r#"{"a": {"retries": 0}}"#).unwrap();
        assert!(!none.retries_refused("a", unsafe_), "no retries asked");
    }

    #[test]
    fn bad_entries_are_clear_errors() {
        for (text, needle) in [
            (r#"{"a": {"timeout": "2x"}}"#, "`timeout`: \"2x\""),
            (r#"{"a": {"rate": "5"}}"#, "`rate`: \"5\""),
            (r#"{"a": {"concurrency": 0}}"#, "at least 1"),
            (r#"{"a": {"timout": "2s"}}"#, "unknown field `timout`"),
            (r#"{"a": {"retries": -1}}"#, "pattern \"a\""),
            (r#"["a"]"#, "policy overrides"),
            ("{", "policy overrides"),
        ] {
            let err = Overrides::from_json(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
