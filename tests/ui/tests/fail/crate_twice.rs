use switchboard::prelude::*;

#[message_pattern("math.add", crate = ::switchboard, crate = ::switchboard)]
async fn add(v: (i64, i64)) -> i64 {
    v.0 + v.1
}

fn main() {}
