//! Two request handlers for one route are a start-up error naming both.

use switchboard::prelude::*;

#[message_pattern({ cmd = "dup" })]
async fn first() -> u32 {
    1
}

#[message_pattern({ cmd = "dup" })]
async fn second() -> u32 {
    2
}

#[event_pattern({ cmd = "dup" })]
async fn listener() {}

#[tokio::test]
async fn duplicate_request_handlers_name_both_functions() {
    let err = Microservice::from_registry()
        .listen("mem://dup")
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(r#"pattern {"cmd":"dup"} has two request handlers"#),
        "{err}"
    );
    assert!(err.contains("duplicate_handlers::first"), "{err}");
    assert!(err.contains("duplicate_handlers::second"), "{err}");
    assert!(
        !err.contains("listener"),
        "an event listener beside a request handler is fine: {err}"
    );
    // Either one alone is fine, and so is the event listener beside it.
    let s = Microservice::new()
        .handler(FIRST)
        .handler(LISTENER)
        .listen("mem://dup-ok")
        .start()
        .await
        .unwrap();
    s.shutdown().await.unwrap();
}
