//! [`Instance`]: what a registry records of one running instance of a service.

use serde::{Deserialize, Serialize};
use switchboard::Contract;
use switchboard::server::announce::{Announcement, Served};

/// One running instance of a service, as registered: stored as this JSON in every backend
/// (etcd's value, Consul's service metadata).
///
/// ```
/// use switchboard_discovery::{Instance, Status};
///
/// let users = Instance::new("users", "users-1", ["tcp://127.0.0.1:3001"]);
/// assert_eq!(users.status, Status::Passing);
/// let json = serde_json::to_string(&users).unwrap();
/// assert_eq!(serde_json::from_str::<Instance>(&json).unwrap(), users);
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The service's name.
    pub service: String,
    /// This instance's id, unique among the service's instances.
    pub id: String,
    /// The URLs it serves on: without passwords when registered by a service; as listed in
    /// a static list (`Debug` hides their passwords).
    pub urls: Vec<String>,
    /// Its version, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether it takes calls.
    #[serde(default)]
    pub status: Status,
    /// The patterns it serves; empty when not known (a static list, DNS, a NestJS service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<Pattern>,
}

/// Without passwords: a static list's URLs carry the credentials its callers connect with.
impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| switchboard::transport::redact(u)).collect();
        f.debug_struct("Instance")
            .field("service", &self.service)
            .field("id", &self.id)
            .field("urls", &urls)
            .field("version", &self.version)
            .field("status", &self.status)
            .field("patterns", &self.patterns)
            .finish()
    }
}

/// Whether an instance takes calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Ready: every transport takes messages.
    #[default]
    Passing,
    /// Registered but not ready (a broker connection lost, or shutting down): skipped.
    Critical,
}

/// One pattern an instance serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pattern {
    /// The normalised route.
    pub route: String,
    /// `request` or `event`.
    pub kind: PatternKind,
    /// The fingerprint of its payload and reply types (16 hex digits), when known.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "contract_hex")]
    pub contract: Option<Contract>,
}

/// A pattern's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternKind {
    /// Request/response.
    Request,
    /// Event.
    Event,
}

/// What an instance offers a call to `route` with `contract` (`None`: the caller's contract
/// is not known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// It serves the pattern with the same contract, or one side's contract is not known.
    Serves,
    /// It lists its patterns and this one is not among them.
    NotServed,
    /// It serves the pattern with another contract.
    OtherContract,
}

impl Instance {
    /// An instance of `service` serving on `urls`, passing, patterns not known.
    pub fn new<U: Into<String>>(
        service: impl Into<String>,
        id: impl Into<String>,
        urls: impl IntoIterator<Item = U>,
    ) -> Self {
        Instance {
            service: service.into(),
            id: id.into(),
            urls: urls.into_iter().map(Into::into).collect(),
            version: None,
            status: Status::Passing,
            patterns: Vec::new(),
        }
    }

    /// The record of a service announcing itself, with a fresh instance id. A URL on an
    /// unspecified address (`0.0.0.0`, `[::]`: every interface) is registered with `host`
    /// instead, where callers on other machines reach it.
    pub fn announced(service: &Announcement, host: &str) -> Self {
        Instance {
            service: service.name.clone(),
            id: format!("{}-{:016x}", service.name, fastrand::u64(..)),
            urls: service.urls.iter().map(|url| advertised(url, host)).collect(),
            version: service.version.clone(),
            status: match service.health.is_ready() {
                true => Status::Passing,
                false => Status::Critical,
            },
            patterns: service.patterns.iter().map(Pattern::from).collect(),
        }
    }

    /// Whether a call to `route` with `contract` may go to this instance.
    pub fn fit(&self, route: &str, contract: Option<Contract>) -> Fit {
        if self.patterns.is_empty() {
            return Fit::Serves;
        }
        match self.patterns.iter().find(|p| p.route == route) {
            None => Fit::NotServed,
            Some(p) => match (p.contract, contract) {
                (Some(theirs), Some(ours)) if theirs != ours => Fit::OtherContract,
                _ => Fit::Serves,
            },
        }
    }

    /// The record as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an instance record serialises")
    }

    /// A record read from a registry at `key`.
    pub fn from_json(key: &str, json: &[u8]) -> crate::Result<Self> {
        serde_json::from_slice(json).map_err(|source| crate::Error::Record {
            key: key.to_owned(),
            source,
        })
    }
}

/// `url` with an unspecified host (`0.0.0.0`, `[::]`) replaced by `host`.
fn advertised(url: &str, host: &str) -> String {
    for any in ["0.0.0.0:", "[::]:"] {
        if let Some((scheme, rest)) = url.split_once("://")
            && let Some(port_and_tail) = rest.strip_prefix(any)
        {
            let host = match host.contains(':') && !host.starts_with('[') {
                true => format!("[{host}]"),
                false => host.to_owned(),
            };
            return format!("{scheme}://{host}:{port_and_tail}");
        }
    }
    url.to_owned()
}

/// Where callers on other machines reach this one: `SWITCHBOARD_ADVERTISE_HOST`, else the
/// machine's host name.
pub(crate) fn default_advertise_host() -> String {
    std::env::var("SWITCHBOARD_ADVERTISE_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl From<&Served> for Pattern {
    fn from(served: &Served) -> Self {
        Pattern {
            route: served.route.clone(),
            kind: match served.kind {
                switchboard::Kind::Request => PatternKind::Request,
                switchboard::Kind::Event => PatternKind::Event,
            },
            contract: served.contract,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::advertised;

    #[test]
    fn unspecified_hosts_are_advertised() {
        assert_eq!(advertised("tcp://0.0.0.0:3001", "10.0.0.5"), "tcp://10.0.0.5:3001");
        assert_eq!(
            advertised("grpc://[::]:50051", "users-1.svc"),
            "grpc://users-1.svc:50051"
        );
        assert_eq!(advertised("tcp://0.0.0.0:3001", "fd00::5"), "tcp://[fd00::5]:3001");
        assert_eq!(
            advertised("tls://0.0.0.0:3443?server_name=users", "h"),
            "tls://h:3443?server_name=users"
        );
        assert_eq!(advertised("tcp://127.0.0.1:3001", "10.0.0.5"), "tcp://127.0.0.1:3001");
        assert_eq!(advertised("nats://0.0.0.0:4222", "h"), "nats://h:4222");
        assert_eq!(advertised("mem://users", "h"), "mem://users");
    }
}

mod contract_hex {
    use serde::{Deserialize, Deserializer, Serializer};
    use switchboard::Contract;

    pub fn serialize<S: Serializer>(contract: &Option<Contract>, s: S) -> Result<S::Ok, S::Error> {
        match contract {
            Some(c) => s.collect_str(c),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Contract>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}
