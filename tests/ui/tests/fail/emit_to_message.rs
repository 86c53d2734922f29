// `emit` sends an event; a request/response pattern is called with `send`.
use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String) -> String {
    id
}

async fn caller(client: &Client) -> switchboard::Result<()> {
    client.emit(GET_USER, "42".to_string()).await?;
    Ok(())
}

fn main() {}
