// A hand-written descriptor that retries without saying the pattern is idempotent.
use switchboard::prelude::*;
use switchboard::PatternOptions;

const CHARGE: MessageDef<u64, u64> = MessageDef::new(pattern!("charge")).with_options(PatternOptions::new().retries(2));

fn main() {
    let _ = CHARGE;
}
