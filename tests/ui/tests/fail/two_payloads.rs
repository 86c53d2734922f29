use switchboard::prelude::*;

#[message_pattern("math.add")]
async fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() {}
