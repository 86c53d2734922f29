use switchboard::{Client, MessageDef, pattern};
use switchboard_saga::{Saga, Step};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Order {
    qty: u32,
}

const CHARGE: MessageDef<u32, u64> = MessageDef::new(pattern!("payment.charge"));
const REFUND: MessageDef<u64, ()> = MessageDef::new(pattern!("payment.refund"));

fn saga(c: &Client) {
    let _ = Saga::<Order>::new("order")
        .pivot(Step::new("charge", c, CHARGE, |o: &Order| o.qty).compensate(REFUND, |_, id| *id));
}

fn main() {}
