// A handler taking `State<Db>` added to a service whose state does not provide a `Db`.
use switchboard::prelude::*;

#[derive(Clone)]
pub struct Db;

#[derive(Clone)]
pub struct App {
    pub name: String,
}

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String, State(db): State<Db>) -> String {
    let _ = db;
    id
}

fn main() {
    // No state at all.
    let _ = Microservice::new().handler(GET_USER);
    // A state without a `Db` in it.
    let _ = Microservice::new()
        .with_state(App { name: "users".into() })
        .handler(GET_USER);
}
