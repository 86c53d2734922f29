//! The math service's `add` through the testing kit: its declared 5 s timeout on virtual time.

use std::time::Duration;

use example_math::{ADD, AddReply, AddRequest};
use switchboard::Message;
use switchboard::prelude::*;
use switchboard::testing::{Fault, Faults, TestService};
use tokio::time::Instant;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test(start_paused = true)]
async fn a_slow_network_within_the_declared_timeout_only_delays_the_sum() -> TestResult {
    let math = TestService::new(Microservice::new().handler(ADD))
        .faults(Faults::seeded(1).on(ADD.route(), Fault::delay(Duration::from_secs(2))))
        .start()
        .await?;
    let start = Instant::now();
    let sum = math.client().send(ADD, AddRequest { a: 5.0, b: 3.0 }).await?;
    assert_eq!(sum, AddReply { result: 8.0 });
    assert!(start.elapsed() >= Duration::from_secs(2), "virtual time passed");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn past_the_declared_5_s_the_caller_gives_up_and_add_never_runs() -> TestResult {
    let math = TestService::new(Microservice::new().handler(ADD))
        .faults(Faults::seeded(1).on(ADD.route(), Fault::delay(Duration::from_secs(60))))
        .start()
        .await?;
    let start = Instant::now();
    let err = math
        .client()
        .send(ADD, AddRequest { a: 5.0, b: 3.0 })
        .await
        .unwrap_err();
    assert!(matches!(err, switchboard::Error::Timeout { .. }), "{err}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?} of virtual time"
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        math.handled(ADD.route()).is_empty(),
        "dropped at the caller's deadline, before it ran"
    );
    Ok(())
}
