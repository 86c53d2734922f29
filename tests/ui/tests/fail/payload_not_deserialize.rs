use switchboard::prelude::*;

pub struct Query {
    pub id: String,
}

#[message_pattern({ cmd = "find" })]
async fn find(query: Query) -> String {
    query.id
}

fn main() {}
