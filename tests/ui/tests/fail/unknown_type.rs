// A typo in a type is reported once, at the user's token, as the compiler reports it in any
// function: the macro writes the user's types once, where the same help applies.
use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: Strin) -> Result<Usr, RpcError> {
    todo!("{id}")
}

pub struct Users;

#[handlers]
impl Users {
    #[message_pattern({ cmd = "find_user" })]
    async fn find(&self, id: u32) -> Option<Usr> {
        todo!("{id}")
    }
}

fn main() {}
