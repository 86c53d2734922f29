// `GET_USER` is a constant, so `let GET_USER = ...` is a pattern that compares against it,
// not a new binding (a `let get_user` is fine: see pass/let_binding.rs).
use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String) -> String {
    id
}

fn main() {
    let GET_USER = 42;
    let _ = GET_USER;
}
