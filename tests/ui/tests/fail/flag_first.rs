// An option flag where the pattern goes.
use switchboard::prelude::*;

#[message_pattern(idempotent, "quote")]
async fn quote() -> f64 {
    1.0
}

fn main() {}
