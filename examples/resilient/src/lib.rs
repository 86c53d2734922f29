//! The resilient service: the seed's `ResilientService`, which calls the math service through
//! a circuit breaker and answers `{"status":"degraded"}` instead of failing while math is down.
//!
//! The policy is declared, not written by hand: math's `add` declares itself idempotent with
//! 2 retries and a 5 s timeout (`#[message_pattern(..., idempotent, retries = 2, timeout = "5s")]`),
//! which every typed caller applies; this service adds the breaker (open after 5 failures in a
//! row, half-open after 30 s) and the typed fallback.

use std::time::Duration;

use example_math::{AddReply, AddRequest};
use switchboard::prelude::*;
use switchboard::resilience::{CircuitBreaker, Policy};

/// Math's `add`, as this service reads its answer: the sum, or the fallback's degraded status.
pub const ADD_OR_DEGRADED: MessageDef<AddRequest, Answer> =
    MessageDef::new(pattern!({ cmd = "add" })).with_options(example_math::ADD_OPTIONS);

/// A sum, or word that the math service could not be reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer {
    /// `{"result": 8}`.
    Sum(AddReply),
    /// `{"status": "degraded"}`.
    Degraded {
        /// Always `"degraded"`.
        status: String,
    },
}

impl Answer {
    /// The fallback.
    pub fn degraded() -> Self {
        Answer::Degraded {
            status: "degraded".into(),
        }
    }
}

/// How the breaker around math behaves (the seed's numbers by default).
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Failures in a row that open it.
    pub failures: u32,
    /// How long it stays open before a probe.
    pub half_open_after: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            half_open_after: Duration::from_secs(30),
        }
    }
}

/// The service: a client of math behind a circuit breaker.
pub struct ResilientService {
    math: Client,
}

impl ResilientService {
    /// A client of math at `url`, behind the breaker.
    pub fn new(math_url: &str, settings: BreakerSettings) -> switchboard::Result<Self> {
        let breaker = CircuitBreaker::new()
            .failure_rate(None)
            .consecutive_failures(settings.failures)
            .open_for(settings.half_open_after);
        let math = Client::builder(math_url)
            .layer(Policy::new().circuit_breaker(breaker))
            // Deadlines and retries changed without recompiling (SWITCHBOARD_POLICY).
            .policy_overrides(switchboard::Overrides::from_env()?)
            .build()?;
        Ok(ResilientService { math })
    }
}

#[handlers]
impl ResilientService {
    /// Adds with the math service, or answers `{"status":"degraded"}` when it cannot.
    #[message_pattern({ cmd = "resilient_add" })]
    pub async fn resilient_add(&self, req: AddRequest) -> RpcResult<Answer> {
        let answer = self
            .math
            .send(ADD_OR_DEGRADED, req)
            .fallback(Answer::degraded())
            .await?;
        if let Answer::Degraded { .. } = answer {
            tracing::warn!("math is unavailable; answering degraded");
        }
        Ok(answer)
    }
}
