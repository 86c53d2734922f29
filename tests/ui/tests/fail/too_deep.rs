use switchboard::prelude::*;

#[message_pattern({ a = { b = { c = { d = { e = { f = { g = 1 } } } } } } })]
async fn deep() {}

fn main() {}
