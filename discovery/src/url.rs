//! Registry URLs: `mem://name`, `static://host:port,…/service`, `etcd://…`, `consul://…`,
//! `dns://…`, each with the client options `balance=`, `transport=` and `circuit=`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use switchboard::resilience::CircuitBreaker;
use switchboard::transport::redact;

use crate::balance::Balance;
use crate::{Error, List, Memory, Registry, Result};

/// A registry URL taken apart, for a backend's `from_url`. Its `Debug` shows the URL without
/// secrets.
#[derive(Clone)]
pub struct RegistryUrl {
    /// `etcd`, `consul`, …
    pub scheme: String,
    /// `host:port[,host:port]`, or a name for `mem`.
    pub authority: String,
    /// The path without its leading `/` (a service name), possibly empty.
    pub path: String,
    /// The query parameters in order.
    pub query: Vec<(String, String)>,
    /// The URL without secrets, for errors.
    pub shown: String,
}

impl std::fmt::Debug for RegistryUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RegistryUrl").field(&self.shown).finish()
    }
}

impl RegistryUrl {
    /// Takes `url` apart.
    pub fn parse(url: &str) -> Result<Self> {
        let shown = redact(url);
        let invalid = |reason: &str| Error::InvalidUrl {
            url: shown.clone(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("expected scheme://…"))?;
        let (rest, query) = switchboard::transport::split_query(rest);
        let query = query.unwrap_or_default();
        // The path starts after the user info (a password may hold a `/`).
        let hosts_at = rest.rfind('@').map_or(0, |at| at + 1);
        let (authority, path) = match rest[hosts_at..].find('/') {
            Some(slash) => (&rest[..hosts_at + slash], &rest[hosts_at + slash + 1..]),
            None => (rest, ""),
        };
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((k.to_owned(), v.to_owned()));
        }
        Ok(RegistryUrl {
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_owned(),
            path: path.trim_end_matches('/').to_owned(),
            query: pairs,
            shown,
        })
    }

    /// The value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// An [`Error::InvalidUrl`] for this URL.
    pub fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::InvalidUrl {
            url: self.shown.clone(),
            reason: reason.into(),
        }
    }

    /// Refuses query parameters not in `known` (the client options are always known).
    pub fn only(&self, known: &[&str]) -> Result<()> {
        for (k, _) in &self.query {
            if !known.contains(&k.as_str()) && !CLIENT_OPTIONS.contains(&k.as_str()) {
                return Err(self.invalid(format!("unknown parameter `{k}`")));
            }
        }
        Ok(())
    }
}

/// The query parameters every registry URL takes: how its clients call.
const CLIENT_OPTIONS: [&str; 3] = ["balance", "transport", "circuit"];

/// The registry at `url`, with its client options.
pub(crate) async fn registry(url: &str) -> Result<Registry> {
    let parsed = RegistryUrl::parse(url)?;
    let registry = match parsed.scheme.as_str() {
        "mem" => {
            parsed.only(&[])?;
            Registry::new(named_memory(&parsed.authority))
        }
        "static" => {
            parsed.only(&[])?;
            if parsed.path.is_empty() {
                return Err(parsed.invalid("a static list names its service: static://host:port,host:port/service"));
            }
            let scheme = parsed.param("transport").unwrap_or("tcp");
            let urls = parsed
                .authority
                .split(',')
                .filter(|a| !a.is_empty())
                .map(|a| format!("{scheme}://{a}"));
            Registry::new(List::new().service(&parsed.path, urls))
        }
        #[cfg(feature = "etcd")]
        "etcd" => Registry::new(crate::etcd::Etcd::from_url(&parsed).await?),
        #[cfg(feature = "consul")]
        "consul" => Registry::new(crate::consul::Consul::from_url(&parsed)?),
        #[cfg(feature = "dns")]
        "dns" => Registry::new(crate::dns::Dns::from_url(&parsed)?),
        #[cfg(not(feature = "etcd"))]
        "etcd" => return Err(not_built(&parsed, "etcd")),
        #[cfg(not(feature = "consul"))]
        "consul" => return Err(not_built(&parsed, "consul")),
        #[cfg(not(feature = "dns"))]
        "dns" => return Err(not_built(&parsed, "dns")),
        other => {
            return Err(parsed.invalid(format!("unknown registry `{other}`: mem, static, etcd, consul or dns")));
        }
    };
    client_options(registry, &parsed)
}

#[allow(dead_code)]
fn not_built(url: &RegistryUrl, feature: &'static str) -> Error {
    Error::NotBuilt {
        url: url.shown.clone(),
        feature,
    }
}

fn client_options(mut registry: Registry, url: &RegistryUrl) -> Result<Registry> {
    if let Some(balance) = url.param("balance") {
        registry = registry.balance(balance.parse::<Balance>().map_err(|reason| url.invalid(reason))?);
    }
    if let Some(scheme) = url.param("transport")
        && url.scheme != "static"
    {
        registry = registry.transport(scheme);
    }
    if let Some(circuit) = url.param("circuit") {
        registry = registry.circuit_breaker(circuit_option(circuit).map_err(|reason| url.invalid(reason))?);
    }
    Ok(registry)
}

/// `circuit=<n>[,<open time>]`: each instance's circuit for a pattern opens after `n` failures
/// in a row, for the open time (`500ms`, `30s`, `2m`; 10 s by default).
fn circuit_option(value: &str) -> std::result::Result<CircuitBreaker, String> {
    let bad = || format!("bad circuit `{value}`: <failures in a row>[,<open time>], e.g. circuit=5,30s");
    let (n, open) = match value.split_once(',') {
        Some((n, open)) => (n, Some(open)),
        None => (value, None),
    };
    let n: u32 = n.trim().parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
    let mut breaker = CircuitBreaker::new().failure_rate(None).consecutive_failures(n);
    if let Some(open) = open {
        breaker = breaker.open_for(duration(open.trim()).ok_or_else(bad)?);
    }
    Ok(breaker)
}

/// `250ms`, `30s`, `2m`: at most a day.
fn duration(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (d <= Duration::from_secs(86_400)).then_some(d)
}

/// The in-process registry called `name` (one per name in the process).
fn named_memory(name: &str) -> Memory {
    static ALL: OnceLock<Mutex<HashMap<String, Memory>>> = OnceLock::new();
    let mut all = ALL.get_or_init(Default::default).lock().expect("registries lock");
    all.entry(name.to_owned()).or_default().clone()
}

/// A client builder for the service a URL names in its path:
/// `etcd://127.0.0.1:2379/users?balance=p2c`.
pub(crate) async fn builder(url: &str) -> switchboard::Result<switchboard::ClientBuilder> {
    let parsed = RegistryUrl::parse(url)?;
    let service = match parsed.scheme.as_str() {
        // A static list's path is the service it lists.
        _ if parsed.path.is_empty() => {
            return Err(parsed
                .invalid("name the service in the path: etcd://127.0.0.1:2379/users")
                .into());
        }
        _ => parsed.path.clone(),
    };
    let registry = registry(url).await?;
    Ok(switchboard::Client::discover(&service, &registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let url = RegistryUrl::parse("consul://h:8500?Token=s3cret&ttl=10s").unwrap();
        assert_eq!(
            format!("{url:?}"),
            r#"RegistryUrl("consul://h:8500?Token=***&ttl=10s")"#
        );
        let err = url.only(&["ttl"]).unwrap_err().to_string();
        assert!(err.contains("`Token`") && !err.contains("s3cret"), "{err}");
        let url = RegistryUrl::parse("etcd://u:s3/cr?et@h:2379/svc?x=1").unwrap();
        assert_eq!(
            (url.authority.as_str(), url.path.as_str()),
            ("u:s3/cr?et@h:2379", "svc")
        );
        assert_eq!(url.param("x"), Some("1"));
        assert!(!url.shown.contains("s3") && !url.shown.contains("et@"), "{}", url.shown);
        let list = List::new().service("orders", ["amqp://guest:s3cret@mq:5672/"]);
        assert!(!format!("{list:?}").contains("s3cret"), "{list:?}");
    }

    #[test]
    fn circuit_option_takes_a_count_and_an_open_time() {
        assert!(circuit_option("5").is_ok());
        assert!(circuit_option("5,30s").is_ok());
        assert!(circuit_option("3, 250ms").is_ok());
        assert!(circuit_option("1,2m").is_ok());
        for bad in [
            "",
            "0",
            "-1",
            "x",
            "5,",
            "5,30",
            "5,30h",
            "5,s",
            "5,99999999999999999999s",
            "5,1441m",
            "5,1s,2",
        ] {
            let err = circuit_option(bad).expect_err(bad);
            assert!(err.contains("circuit=5,30s"), "{bad}: {err}");
        }
        assert_eq!(duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(duration("1440m"), Some(Duration::from_secs(86_400)));
    }
}
