// A pattern key written where options go: after the pattern, or without the braces.
use switchboard::prelude::*;

#[message_pattern("users", cmd = "get")]
async fn get_user(id: String) -> String {
    id
}

#[message_pattern(cmd = "create_user")]
async fn create_user(name: String) -> String {
    name
}

fn main() {}
