// A policy option in `pattern!`, which only names a pattern.
use switchboard::prelude::*;

const QUOTE: MessageDef<String, f64> = MessageDef::new(pattern!("quote", timeout = "2s"));

fn main() {
    let _ = QUOTE;
}
