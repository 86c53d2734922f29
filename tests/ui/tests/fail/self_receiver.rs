// A handler method with `&self` in an `impl` block that is not marked `#[handlers]`.
use switchboard::prelude::*;

pub struct Users;

impl Users {
    #[message_pattern({ cmd = "get_user" })]
    async fn get_user(&self, id: String) -> String {
        id
    }
}

fn main() {}
