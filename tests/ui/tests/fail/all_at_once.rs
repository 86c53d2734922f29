// Every mistake in one handler is reported in one go, each at its token.
use switchboard::prelude::*;

#[message_pattern({ cmd = "add", cmd = "sum" })]
fn add<T>(a: i64, b: i64, _ctx: &Context) -> i64 {
    a + b
}

fn main() {}
