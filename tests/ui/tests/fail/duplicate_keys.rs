use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user", role = "admin", cmd = "find_user" })]
async fn get_user(id: String) -> String {
    id
}

fn main() {}
