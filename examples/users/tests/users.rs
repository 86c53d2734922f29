//! The users service's handlers, tested through the testing kit (`switchboard::testing`):
//! in-process, on virtual time, with faults where the store would fail.

use example_users::{NewUser, User, Users};
use switchboard::prelude::*;
use switchboard::testing::{Fault, Faults, Harness, TestService};
use switchboard::{Error, Message};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn users(faults: Faults) -> switchboard::Result<Harness> {
    TestService::new(Microservice::new().group(Users::new()))
        .faults(faults)
        .start()
        .await
}

fn ada() -> NewUser {
    NewUser {
        name: "Ada".into(),
        email: "ada@example.com".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_created_user_can_be_read_back() -> TestResult {
    let svc = users(Faults::seeded(1)).await?;
    let client = svc.client();
    let created = client.send(Users::CREATE_USER, ada()).await?;
    let expected = User {
        id: "100".into(),
        name: "Ada".into(),
        email: "ada@example.com".into(),
    };
    assert_eq!(created, expected);
    assert_eq!(client.send(Users::GET_USER, "100".to_string()).await?, expected);

    let handled = svc.handled(Users::CREATE_USER.route());
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].payload_as::<NewUser>()?.name, "Ada");
    assert_eq!(handled[0].reply(), Some(&serde_json::to_value(&expected)?));
    assert_eq!(svc.handled(Users::GET_USER.route())[0].payload, "100");
    svc.shutdown().await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_unknown_user_is_a_404() -> TestResult {
    let svc = users(Faults::seeded(1)).await?;
    let err = svc.client().send(Users::GET_USER, "7".to_string()).await.unwrap_err();
    let rpc = err.as_rpc().expect("the handler's own error");
    assert_eq!((rpc.code(), rpc.message()), (Some(404), Some("user 7 not found")));
    let handled = svc.handled(Users::GET_USER.route());
    assert_eq!(handled[0].error(), Some(rpc));
    // A handler's own error is an answer: a typed caller does not retry it.
    assert_eq!(svc.sent(Users::GET_USER.route()).len(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn get_user_is_retried_while_the_service_is_unavailable() -> TestResult {
    // get_user declares `idempotent, retries = 3`: its typed callers try up to 4 times.
    let faults = Faults::seeded(7).on(
        Users::GET_USER.route(),
        Fault::fail(RpcError::unavailable("store restarting")).first(2),
    );
    let svc = users(faults).await?;
    let user = svc.client().send(Users::GET_USER, "42".to_string()).await?;
    assert_eq!(user.name, "John Doe");
    let attempts = svc.sent(Users::GET_USER.route());
    let numbers: Vec<_> = attempts.iter().map(|s| s.header("sb-attempt")).collect();
    assert_eq!(numbers, [Some("1"), Some("2"), Some("3")]);
    assert_eq!(
        svc.handled(Users::GET_USER.route()).len(),
        1,
        "two never reached the store"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn create_user_is_never_repeated_by_its_callers() -> TestResult {
    let faults = Faults::seeded(7).on(
        Users::CREATE_USER.route(),
        Fault::fail(RpcError::unavailable("store restarting")).nth(1),
    );
    let svc = users(faults).await?;
    let client = svc.client();
    let err = client.send(Users::CREATE_USER, ada()).await.unwrap_err();
    assert!(matches!(&err, Error::Rpc(e) if e.is_unavailable()), "{err}");
    assert_eq!(
        svc.sent(Users::CREATE_USER.route()).len(),
        1,
        "not idempotent: sent once"
    );
    // The failed call never reached the store: the next user still gets the first id.
    assert_eq!(client.send(Users::CREATE_USER, ada()).await?.id, "100");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_duplicated_create_makes_two_users() -> TestResult {
    // What an at-least-once transport can do to a call that is not idempotent.
    let faults = Faults::seeded(3).on(Users::CREATE_USER.route(), Fault::duplicate());
    let svc = users(faults).await?;
    let client = svc.client();
    let first = client.send(Users::CREATE_USER, ada()).await?;
    let both = svc.wait_handled(Users::CREATE_USER.route(), 2).await?;
    let ids: Vec<_> = both
        .iter()
        .map(|h| h.reply().and_then(|u| u["id"].as_str()).map(str::to_owned))
        .collect();
    assert!(ids.contains(&Some(first.id.clone())));
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "the store made a second user");
    Ok(())
}
