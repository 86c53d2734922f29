// `#[handlers]` takes only `crate = <path>`; a pattern goes on each method.
use switchboard::prelude::*;

pub struct Users;

#[handlers({ cmd = "users" })]
impl Users {
    #[message_pattern({ cmd = "get_user" })]
    async fn get(&self, id: String) -> String {
        id
    }
}

fn main() {}
