use switchboard::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct User {
    pub id: String,
}

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: String) -> Result<User, RpcError> {
    Ok(User { id })
}

async fn caller(client: &Client, id: String) -> switchboard::Result<()> {
    let n: u32 = client.send(GET_USER, id).await?;
    let _ = n;
    Ok(())
}

fn main() {}
