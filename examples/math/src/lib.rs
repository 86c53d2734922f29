//! The math service: `{cmd: "add"}`.

use switchboard::PatternOptions;
use switchboard::prelude::*;

/// Two numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRequest {
    /// Left operand.
    pub a: f64,
    /// Right operand.
    pub b: f64,
}

/// Their sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddReply {
    /// `a + b`.
    pub result: f64,
}

/// What `add` declares (it can be repeated safely; callers retry twice and wait 5 s), for
/// callers that describe it by hand.
pub const ADD_OPTIONS: PatternOptions = PatternOptions::new()
    .idempotent()
    .retries(2)
    .timeout(std::time::Duration::from_secs(5));

/// Adds two numbers. Typed callers retry a failed call twice and give up after 5 s.
#[message_pattern({ cmd = "add" }, idempotent, retries = 2, timeout = "5s")]
pub async fn add(req: AddRequest) -> AddReply {
    tracing::info!(a = req.a, b = req.b, "add");
    AddReply { result: req.a + req.b }
}
