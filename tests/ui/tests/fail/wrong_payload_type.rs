use switchboard::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct User {
    pub id: String,
}

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String) -> Result<User, RpcError> {
    Ok(User { id })
}

async fn caller(client: &Client) -> switchboard::Result<()> {
    let _user = client.send(GET_USER, 42).await?;
    Ok(())
}

fn main() {}
