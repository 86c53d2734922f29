//! The math service: `{cmd: "add"}`.

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

/// Adds two numbers.
#[message_pattern({ cmd = "add" })]
pub async fn add(req: AddRequest) -> AddReply {
    tracing::info!(a = req.a, b = req.b, "add");
    AddReply { result: req.a + req.b }
}
