// `switchboard::Error` (what a call made inside a handler fails with) converts into
// `RpcError`, so a handler may return `Result<T, switchboard::Error>` and pass a failed call
// on with `?`: a remote handler's error unchanged, anything else as its text.
use switchboard::prelude::*;

const CALL_UPSTREAM: MessageDef<String, String> = MessageDef::new(pattern!("upstream"));

#[message_pattern("upstream")]
async fn upstream(id: String) -> RpcResult<String> {
    Err(RpcError::new(format!("upstream refused {id}")))
}

#[message_pattern("proxy")]
async fn proxy(id: String) -> Result<String, switchboard::Error> {
    let client = Client::connect("mem://ui-switchboard-error").await?;
    client.send(CALL_UPSTREAM, id).await
}

#[message_pattern("proxy_alias")]
async fn proxy_alias(id: String) -> switchboard::Result<String> {
    proxy(id).await
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = Microservice::new()
        .handler(UPSTREAM)
        .handler(PROXY)
        .handler(PROXY_ALIAS)
        .listen("mem://ui-switchboard-error")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://ui-switchboard-error").await.unwrap();
    for err in [
        client.send(PROXY, "7".to_string()).await.unwrap_err(),
        client.send(PROXY_ALIAS, "7".to_string()).await.unwrap_err(),
    ] {
        assert_eq!(err.as_rpc(), Some(&RpcError::new("upstream refused 7")), "{err}");
    }
    server.shutdown().await.unwrap();
}
