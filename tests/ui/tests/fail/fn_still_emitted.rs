// A mistake in the attribute is the only error: the function is still emitted, so its
// callers compile and do not add "cannot find function" errors.
use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user", cmd = "find_user" })]
async fn get_user(id: String) -> String {
    id
}

async fn caller() -> String {
    get_user("42".to_string()).await
}

fn main() {
    let _ = caller();
}
