// The function is not its descriptor: a service serves `GET_USER`, a client calls `GET_USER`.
use switchboard::prelude::*;

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String) -> String {
    id
}

#[event_pattern("user_created")]
async fn user_created(id: String) {
    let _ = id;
}

async fn caller(client: &Client) -> switchboard::Result<()> {
    let _user = client.send(get_user, "42".to_string()).await?;
    client.emit(user_created, "42".to_string()).await?;
    Ok(())
}

fn main() {
    let _ = Microservice::new().handler(get_user);
}
