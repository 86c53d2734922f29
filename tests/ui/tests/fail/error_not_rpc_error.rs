use switchboard::prelude::*;

pub struct DbError;

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String) -> Result<String, DbError> {
    Ok(id)
}

fn main() {}
