// A fallback that is not of the call's reply type.
use switchboard::prelude::*;

#[derive(Serialize, Deserialize)]
struct User {
    id: String,
}

#[message_pattern("get_user")]
async fn get_user(id: String) -> User {
    User { id }
}

async fn caller(users: &Client) -> switchboard::Result<User> {
    users.send(GET_USER, "42".to_string()).fallback("nobody").await
}

fn main() {
    let _ = caller;
}
