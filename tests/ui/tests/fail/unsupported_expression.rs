use switchboard::prelude::*;

const CMD: &str = "get_user";

#[message_pattern({ cmd = CMD })]
async fn get_user(id: String) -> String {
    id
}

#[message_pattern({ cmd = "add", version = 1 + 1 })]
async fn add(v: (i64, i64)) -> i64 {
    v.0 + v.1
}

fn main() {}
