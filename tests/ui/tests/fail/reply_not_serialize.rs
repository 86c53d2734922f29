use switchboard::prelude::*;

pub struct User {
    pub id: String,
}

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String) -> Result<User, RpcError> {
    Ok(User { id })
}

#[message_pattern({ cmd = "get_plain" })]
async fn get_plain(id: String) -> User {
    User { id }
}

fn main() {}
