// Policy options with values that are not what they take.
use switchboard::prelude::*;

#[message_pattern("a", timeout = "2 seconds")]
async fn a() {}

#[message_pattern("b", timeout = 2)]
async fn b() {}

#[message_pattern("c", concurrency = 0)]
async fn c() {}

#[message_pattern("d", rate = "fast")]
async fn d() {}

#[message_pattern("e", idempotent, retries = 100)]
async fn e() {}

#[message_pattern("f", idempotent = "yes")]
async fn f() {}

#[message_pattern("g", timeout = "1s", timeout = "2s")]
async fn g() {}

fn main() {}
