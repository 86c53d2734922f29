//! The resilient service against a math service that fails, through the testing kit: the
//! breaker's 30 s open time runs on virtual time, so the test takes no time.

use std::time::Duration;

use example_math::{ADD, AddReply, AddRequest};
use example_resilient::{Answer, BreakerSettings, ResilientService};
use switchboard::Message;
use switchboard::prelude::*;
use switchboard::testing::{Fault, Faults, TestService};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn five_and_three() -> AddRequest {
    AddRequest { a: 5.0, b: 3.0 }
}

#[tokio::test(start_paused = true)]
async fn math_answers_through_the_resilient_service() -> TestResult {
    let math = TestService::new(Microservice::new().handler(ADD)).start().await?;
    let service = ResilientService::new(math.url(), BreakerSettings::default())?;
    let resilient = TestService::new(Microservice::new().group(service)).start().await?;
    let answer = resilient
        .client()
        .send(ResilientService::RESILIENT_ADD, five_and_three())
        .await?;
    assert_eq!(answer, Answer::Sum(AddReply { result: 8.0 }));
    let added = math.handled(ADD.route());
    assert_eq!(added[0].payload_as::<AddRequest>()?.a, 5.0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn math_down_answers_degraded_and_the_breaker_probes_after_30_s() -> TestResult {
    // Math fails its first 5 messages, as a service that is down and then back.
    let math = TestService::new(Microservice::new().handler(ADD))
        .faults(Faults::seeded(1).on(ADD.route(), Fault::fail(RpcError::unavailable("math is down")).first(5)))
        .start()
        .await?;
    let service = ResilientService::new(math.url(), BreakerSettings::default())?;
    let resilient = TestService::new(Microservice::new().group(service)).start().await?;
    let client = resilient.client();

    let mut reached = Vec::new();
    for _ in 0..6 {
        let answer = client.send(ResilientService::RESILIENT_ADD, five_and_three()).await?;
        assert_eq!(answer, Answer::degraded());
        reached.push(math.decisions_for(ADD.route()).len());
    }
    // `add` declares 2 retries, which wrap the caller's breaker: the first call makes 3
    // attempts, the second 2 more, the fifth failure in a row opens the breaker, and from then
    // on no call reaches math.
    assert_eq!(reached, [3, 5, 5, 5, 5, 5]);
    assert!(math.handled(ADD.route()).is_empty());

    // 29 s later it is still open; at 30 s (virtual time: the test does not wait) a probe
    // goes through, finds math back, and closes it.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(
        client.send(ResilientService::RESILIENT_ADD, five_and_three()).await?,
        Answer::degraded()
    );
    assert_eq!(math.decisions_for(ADD.route()).len(), 5);
    tokio::time::advance(Duration::from_secs(1)).await;
    let answer = client.send(ResilientService::RESILIENT_ADD, five_and_three()).await?;
    assert_eq!(answer, Answer::Sum(AddReply { result: 8.0 }));
    assert_eq!(math.handled(ADD.route()).len(), 1);
    Ok(())
}
