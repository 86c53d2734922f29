// An argument that is neither the payload (it is not `Deserialize`) nor an extractor: a
// dependency such as a database handle comes from the service's state.
use switchboard::prelude::*;

#[derive(Clone)]
pub struct Db;

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String, db: Db) -> String {
    let _ = db;
    id
}

fn main() {}
