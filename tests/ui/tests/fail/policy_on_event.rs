// Caller-side options on an event, whose sender waits for no reply.
use switchboard::prelude::*;

#[event_pattern("user_created", idempotent, retries = 3, concurrency = 4)]
async fn user_created(id: String) {
    let _ = id;
}

fn main() {}
