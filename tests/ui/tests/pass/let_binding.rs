// The descriptor's type lives in the type namespace only, so a `let` (or an argument, or a
// closure parameter) named like a handler is an ordinary binding that shadows the function,
// as it would without the attribute; the descriptor `GET_USER` is untouched by it.
use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String) -> String {
    id
}

fn takes(get_user: u32) -> u32 {
    get_user + 1
}

fn main() {
    let get_user = 41;
    assert_eq!(takes(get_user), 42);
    let get_user = |id: &str| id.len();
    assert_eq!(get_user("ab"), 2);
    let _ = Microservice::new().handler(GET_USER);
    assert_eq!(GET_USER.info().name(), "get_user");
}
