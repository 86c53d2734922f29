use switchboard::{Client, MessageDef, pattern};
use switchboard_saga::{Saga, Step};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Order {
    qty: u32,
}

const CHARGE: MessageDef<u32, u64> = MessageDef::new(pattern!("payment.charge"));
const SHIP: MessageDef<u64, u64> = MessageDef::new(pattern!("shipping.ship"));
const CANCEL: MessageDef<u64, ()> = MessageDef::new(pattern!("shipping.cancel"));

fn saga(c: &Client) {
    let _ = Saga::<Order>::new("order")
        .pivot(Step::new("charge", c, CHARGE, |o: &Order| o.qty))
        .step(Step::new("ship", c, SHIP, |_: &Order| 1))
        .step(Step::new("ship again", c, SHIP, |_: &Order| 1).compensate(CANCEL, |_, id| *id));
}

fn main() {}
