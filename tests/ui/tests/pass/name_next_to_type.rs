// The descriptor's type (`get_user`, named like the function) is glob-imported next to it, so
// an item of the user's of that name in the type namespace (a module, a struct) takes
// precedence instead of clashing, and the handler still serves and is called by `GET_USER`.
use switchboard::prelude::*;

mod health {
    pub const OK: &str = "ok";
}

#[message_pattern("health")]
async fn health() -> String {
    health::OK.to_owned()
}

#[allow(non_camel_case_types)]
#[derive(Debug, PartialEq)]
struct version {
    major: u32,
}

#[message_pattern("version")]
async fn version() -> u32 {
    version { major: 2 }.major
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = Microservice::new()
        .handler(HEALTH)
        .handler(VERSION)
        .listen("mem://ui-name-next-to-type")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://ui-name-next-to-type").await.unwrap();
    assert_eq!(client.send(HEALTH, ()).await.unwrap(), "ok");
    assert_eq!(client.send(VERSION, ()).await.unwrap(), 2);
    assert_eq!(version { major: 1 }, version { major: 1 });
    server.shutdown().await.unwrap();
}
