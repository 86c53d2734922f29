// A `Result` alias whose error does not convert into `RpcError`: reported at the alias.
use switchboard::prelude::*;

pub struct DbError;

pub type DbResult<T> = Result<T, DbError>;

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: u32) -> DbResult<String> {
    Ok(id.to_string())
}

fn main() {}
