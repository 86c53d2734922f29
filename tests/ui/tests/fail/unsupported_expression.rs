use switchboard::prelude::*;

const GET_USER: &str = "get_user";

#[message_pattern(cmd = GET_USER)]
async fn get_user(id: String) -> String {
    id
}

#[message_pattern(cmd = "add", version = 1 + 1)]
async fn add(v: (i64, i64)) -> i64 {
    v.0 + v.1
}

fn main() {}
