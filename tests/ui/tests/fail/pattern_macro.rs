// `pattern!` reports its mistakes like the attributes do, and nothing else.
use switchboard::{MessageDef, PatternLit, pattern};

const EMPTY: PatternLit = pattern!();
const DUPLICATE: PatternLit = pattern!({ cmd = "a", cmd = "b" });
const BAD: MessageDef<String, String> = MessageDef::new(pattern!({ cmd = CMD, v = 1 + 1 }));

fn main() {
    let _ = (EMPTY, DUPLICATE, BAD);
}
