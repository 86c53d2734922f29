// `retries` on a handler not marked `idempotent`: a repeat could charge twice.
use switchboard::prelude::*;

#[message_pattern("charge", retries = 2, timeout = "2s")]
async fn charge(amount: u64) -> u64 {
    amount
}

fn main() {}
