//! The client generated at build time from the users service's sources (the gateway's
//! `build.rs`), end to end against the real users service over TCP and gRPC. The gateway
//! does not depend on the users crate; this test links both, and their route keys agree.

#![cfg(feature = "grpc")]

use std::time::Duration;

use example_gateway::users::{self, NewUser, User, UsersClient};
use switchboard::{Client, Microservice};

async fn round_trip(url: &str) {
    // The users service's handlers, as its own binary serves them.
    let server = Microservice::new()
        .group(example_users::Users::new())
        .listen(url)
        .start()
        .await
        .expect("users service starts");
    let users = UsersClient::connect(server.local_url()).await.unwrap();
    let user: User = users.get_user("42".to_string()).await.unwrap();
    assert_eq!(
        user,
        User {
            id: "42".into(),
            name: "John Doe".into(),
            email: "john@example.com".into()
        }
    );
    let created = users
        .create_user(NewUser {
            name: "Ada".into(),
            email: "ada@example.com".into(),
        })
        .await
        .unwrap();
    assert_eq!((created.id.as_str(), created.name.as_str()), ("100", "Ada"));
    let id = created.id.clone();
    assert_eq!(
        users.get_user(&id).timeout(Duration::from_secs(5)).await.unwrap(),
        created
    );
    // The group's error reaches the generated client as the remote error.
    let missing = users.get_user("7".to_string()).await.unwrap_err();
    assert_eq!(
        missing.as_rpc().and_then(switchboard::RpcError::message),
        Some("user 7 not found")
    );
    // The generated descriptors work with a plain client too.
    let plain = Client::connect(server.local_url()).await.unwrap();
    assert_eq!(plain.send(users::GET_USER, "42".to_string()).await.unwrap().id, "42");
    // Nobody listens to user_created on the users service; the emit is still accepted.
    users.emit_user_created(&created).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn generated_client_over_tcp() {
    round_trip("tcp://127.0.0.1:0").await;
}

#[tokio::test]
async fn generated_client_over_grpc() {
    round_trip("grpc://127.0.0.1:0").await;
}

/// Both ends derive their keys with one parser, so comparing them with each other would pass
/// if it were wrong: each is checked against the key NestJS computes for the same pattern
/// (`JSON.stringify` of the pattern with its keys sorted), written out by hand.
#[test]
fn generated_route_keys_match_the_service() {
    use example_users::Users;
    use switchboard::Message;
    for (generated, served, nest) in [
        (
            users::GET_USER.route(),
            Users::GET_USER.route(),
            r#"{"cmd":"get_user"}"#,
        ),
        (
            users::CREATE_USER.route(),
            Users::CREATE_USER.route(),
            r#"{"cmd":"create_user"}"#,
        ),
    ] {
        assert_eq!(generated, nest, "generated client");
        assert_eq!(served, nest, "service");
    }
    assert_eq!(users::GET_USER.pattern_json(), r#"{"cmd":"get_user"}"#);
    assert_eq!(Users::GET_USER.pattern_json(), r#"{"cmd":"get_user"}"#);
}
