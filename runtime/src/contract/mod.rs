//! [`Contract`]: a fingerprint of what a pattern's payload and reply look like on the wire, so
//! that a caller can tell whether an instance of a service speaks the same contract as the
//! code it was compiled against.
//!
//! Every `#[message_pattern]` and `#[event_pattern]` descriptor has one
//! ([`Message::contract`](crate::Message::contract)); a service publishes its patterns'
//! contracts when it registers with a discovery backend, and a client found through discovery
//! skips the instances whose contract for a pattern differs from its own.
//!
//! The fingerprint is taken from what serde sees of each type ([`Shape`]): field names, variant
//! names, sequence, map, option and primitive kinds, nested as they are. Renaming a Rust type
//! changes nothing on the wire and nothing here; adding, renaming or retyping a field does. A
//! type that is not `Deserialize` (a reply only ever serialised) is known by its name instead.
//! The same shapes give the JSON Schemas a service describes itself with
//! ([`Signature`], the built-in describe pattern).

use std::fmt;
use std::str::FromStr;

mod shape;

pub use shape::{Shape, shape_of};

/// What a pattern's types look like: its payload's shape, its reply's (requests only), and
/// the [`Contract`] they make.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[message_pattern("users.get")]
/// async fn get_user(id: u64) -> Option<String> { None }
///
/// let signature = GET_USER.signature().unwrap();
/// assert_eq!(signature.payload.json_schema(), serde_json::json!({ "type": "integer", "minimum": 0 }));
/// assert_eq!(Some(signature.contract()), GET_USER.contract());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The payload's shape.
    pub payload: Shape,
    /// The reply's shape; `None` for an event.
    pub reply: Option<Shape>,
    contract: Contract,
}

impl Signature {
    /// The signature of a pattern with these shapes.
    pub fn new(payload: Shape, reply: Option<Shape>) -> Self {
        let mut shapes = vec![payload.fingerprint()];
        shapes.extend(reply.as_ref().map(Shape::fingerprint));
        Signature {
            contract: Contract::of(&shapes),
            payload,
            reply,
        }
    }

    /// The contract of these types.
    pub fn contract(&self) -> Contract {
        self.contract
    }
}

/// The fingerprint of a pattern's payload and reply types (64 bits, shown as 16 hex digits).
///
/// ```
/// use switchboard::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct GetUser { id: String }
///
/// #[message_pattern("users.get")]
/// async fn get_user(req: GetUser) -> String { req.id }
///
/// let contract = GET_USER.contract().expect("a handler's descriptor has a contract");
/// assert_eq!(contract.to_string().len(), 16);
/// assert_eq!(contract.to_string().parse::<switchboard::Contract>().unwrap(), contract);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Contract(u64);

impl Contract {
    /// The contract of a pattern whose types have the given shape fingerprints
    /// ([`Shape::fingerprint`]), in order (payload, then reply).
    pub fn of(shapes: &[u64]) -> Contract {
        let mut h = shape::Fnv::new();
        for s in shapes {
            h.write(&s.to_le_bytes());
        }
        Contract(h.finish())
    }

    /// The fingerprint as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl From<u64> for Contract {
    fn from(value: u64) -> Self {
        Contract(value)
    }
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Contract({self})")
    }
}

/// A contract that is not 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a contract is 16 hex digits")]
pub struct ParseContractError;

impl FromStr for Contract {
    type Err = ParseContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            true => u64::from_str_radix(s, 16).map(Contract).map_err(|_| ParseContractError),
            false => Err(ParseContractError),
        }
    }
}
