//! A NestJS 12 service (tests/nestjs, from npm) as a saga participant, next to a Switchboard
//! one: its reply lands in the saga's state, it receives the step's idempotency key as packet
//! metadata, and its business error (an `RpcException`) compensates the Rust step before it.

mod common;

use std::sync::{Arc, Mutex};

use common::nest::{NestServer, nest_installed};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard::prelude::*;
use switchboard::{Client, MessageDef, State, pattern};
use switchboard_saga::log::MemoryLog;
use switchboard_saga::{Orchestrator, Saga, Status, Step};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Order {
    items: Vec<i64>,
    reservation: Option<u64>,
    total: Option<i64>,
    metadata: Option<Value>,
}

type Released = Arc<Mutex<Vec<u64>>>;

#[message_pattern("inventory.reserve")]
async fn reserve(items: Vec<i64>) -> u64 {
    items.len() as u64
}

#[message_pattern("inventory.release")]
async fn release(reservation: u64, State(released): State<Released>) {
    released.lock().unwrap().push(reservation);
}

/// NestJS's `{cmd:'sum'}`, `meta` (its packet metadata back) and `rpc_string` (throws).
const SUM: MessageDef<Vec<i64>, i64> = MessageDef::new(pattern!({ cmd = "sum" }));
const META: MessageDef<Vec<i64>, Value> = MessageDef::new(pattern!("meta"));
const FAILS: MessageDef<Vec<i64>, Value> = MessageDef::new(pattern!("rpc_string"));

#[tokio::test]
async fn a_nestjs_service_takes_part_in_a_saga_over_tcp() {
    let url = "tcp://127.0.0.1:0";
    if !nest_installed(12, url) {
        return;
    }
    let nest = NestServer::start(12, url).await;
    let nest_client = Client::connect(nest.url()).await.unwrap();
    let released = Released::default();
    let ours = "mem://saga-nest-inventory";
    let _inventory = Microservice::new()
        .with_state(released.clone())
        .handler(RESERVE)
        .handler(RELEASE)
        .listen(ours)
        .start()
        .await
        .unwrap();
    let inventory = Client::connect(ours).await.unwrap();
    let reserve = || {
        Step::new("reserve", &inventory, RESERVE, |o: &Order| o.items.clone())
            .on_reply(|o, r| o.reservation = Some(*r))
            .compensate(RELEASE, |_, r| *r)
    };
    let orchestrator = Orchestrator::builder(MemoryLog::new()).build();

    let completing = Saga::<Order>::new("nest-order")
        .step(reserve())
        .step(
            Step::new("meta", &nest_client, META, |o: &Order| o.items.clone())
                .on_reply(|o, m| o.metadata = Some(m.clone()))
                .compensate(SUM, |o, _| o.items.clone()),
        )
        .pivot(Step::new("sum", &nest_client, SUM, |o: &Order| o.items.clone()).on_reply(|o, t| o.total = Some(*t)));
    let done = orchestrator
        .register(completing)
        .run(
            "nest-1",
            Order {
                items: vec![1, 2, 3],
                ..Order::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(done.status, Status::Completed, "{:?}", done.error);
    assert_eq!(done.state.total, Some(6), "NestJS's reply is in the state");
    let metadata = done.state.metadata.expect("NestJS's metadata echoed");
    assert_eq!(metadata["idempotency-key"], "saga:nest-1:meta", "{metadata}");
    assert_eq!(metadata["sb-saga"], "nest-1");
    assert!(released.lock().unwrap().is_empty());

    let declining = Saga::<Order>::new("nest-declined").step(reserve()).pivot(Step::new(
        "charge",
        &nest_client,
        FAILS,
        |o: &Order| o.items.clone(),
    ));
    let done = orchestrator
        .register(declining)
        .run(
            "nest-2",
            Order {
                items: vec![4, 5],
                ..Order::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(done.status, Status::Compensated);
    assert!(
        done.error.as_deref().unwrap_or("").contains("bad thing"),
        "{:?}",
        done.error
    );
    assert_eq!(
        *released.lock().unwrap(),
        [2],
        "the Rust step before NestJS's failure was undone"
    );
}
