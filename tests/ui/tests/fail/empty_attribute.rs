use switchboard::prelude::*;

#[message_pattern()]
async fn ping() {}

#[event_pattern]
async fn tick() {}

fn main() {}
