use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user" })]
fn get_user(id: String) -> String {
    id
}

fn main() {}
