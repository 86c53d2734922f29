// A typo in a type is reported at the user's token. (When the compiler has no similar name to
// offer, it reports the name twice: once with its "missing a type parameter" hint for the
// function, once without, for the descriptor that names the same type.)
use switchboard::prelude::*;

#[message_pattern(cmd = "get_user")]
async fn get_user(id: Strin) -> Result<Usr, RpcError> {
    todo!("{id}")
}

fn main() {}
