//! Registry URLs: `mem://name`, `static://host:port,…/service`, `etcd://…`, `consul://…`,
//! `dns://…`, each with the client options `balance=` and `transport=`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::balance::Balance;
use crate::{Error, List, Memory, Registry, Result};

/// A registry URL taken apart, for a backend's `from_url`.
#[derive(Debug, Clone)]
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

impl RegistryUrl {
    /// Takes `url` apart.
    pub fn parse(url: &str) -> Result<Self> {
        let shown = redact(url);
        let invalid = |reason: &str| Error::InvalidUrl {
            url: shown.clone(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("expected scheme://…"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
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
            if !known.contains(&k.as_str()) && k != "balance" && k != "transport" {
                return Err(self.invalid(format!("unknown parameter `{k}`")));
            }
        }
        Ok(())
    }
}

/// `url` with the values of `token`/`password` parameters and a user info's password hidden.
pub(crate) fn redact(url: &str) -> String {
    let base = switchboard::transport::redact(url);
    match base.split_once('?') {
        None => base,
        Some((head, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if matches!(k, "token" | "password") => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{head}?{}", query.join("&"))
        }
    }
}

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
    Ok(registry)
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
