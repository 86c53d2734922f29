// A handler returning a `Result` alias of its own answers as any `Result` does: the `Ok` value,
// or the error as an `RpcError` (not `{"Ok": ...}` / `{"Err": ...}`).
use switchboard::prelude::*;

#[derive(Debug)]
pub struct DbError(String);

impl From<DbError> for RpcError {
    fn from(e: DbError) -> Self {
        RpcError::new(format!("database: {}", e.0))
    }
}

pub type DbResult<T> = Result<T, DbError>;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u32,
    pub name: String,
}

#[message_pattern({ cmd = "get_user" })]
async fn get_user(id: u32) -> DbResult<User> {
    match id {
        0 => Err(DbError("no user 0".into())),
        id => Ok(User { id, name: "Ada".into() }),
    }
}

// A caller names the reply type it decodes (the alias is the handler's business).
const GET: MessageDef<u32, User> = MessageDef::new(pattern!({ cmd = "get_user" }));

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = Microservice::new()
        .handler(GET_USER)
        .listen("mem://ui-result-alias")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://ui-result-alias").await.unwrap();

    assert_eq!(
        client.send(GET, 7).await.unwrap(),
        User {
            id: 7,
            name: "Ada".into()
        }
    );
    // On the wire: the value itself.
    let raw: serde_json::Value = client
        .send_raw(serde_json::json!({ "cmd": "get_user" }), 7)
        .await
        .unwrap();
    assert_eq!(raw, serde_json::json!({ "id": 7, "name": "Ada" }));

    // The error, converted by `From<DbError> for RpcError`.
    let err = client.send(GET, 0).await.unwrap_err();
    let rpc = err.as_rpc().expect("the handler's error, as an RpcError");
    assert_eq!(rpc, &RpcError::new("database: no user 0"));

    server.shutdown().await.unwrap();
}
