// A handler written as an associated function of an `impl` block that is not marked
// `#[handlers]`.
use switchboard::prelude::*;

pub struct Users;

impl Users {
    #[message_pattern({ cmd = "get_user" })]
    pub async fn get_user(id: String) -> String {
        id
    }
}

fn main() {}
