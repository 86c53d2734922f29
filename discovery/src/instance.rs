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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The service's name.
    pub service: String,
    /// This instance's id, unique among the service's instances.
    pub id: String,
    /// The URLs it serves on, without passwords.
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

    /// The record of a service announcing itself, with a fresh instance id.
    pub fn announced(service: &Announcement) -> Self {
        Instance {
            service: service.name.clone(),
            id: format!("{}-{:016x}", service.name, fastrand::u64(..)),
            urls: service.urls.clone(),
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
