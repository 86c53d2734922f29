use switchboard::{Client, MessageDef, pattern};
use switchboard_saga::{Saga, Step};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Order {
    qty: u32,
}

const RESERVE: MessageDef<u32, u64> = MessageDef::new(pattern!("inventory.reserve"));
const CHARGE: MessageDef<u32, u64> = MessageDef::new(pattern!("payment.charge"));

fn saga(c: &Client) {
    let _ = Saga::<Order>::new("order")
        .step(Step::new("reserve", c, RESERVE, |o: &Order| o.qty))
        .pivot(Step::new("charge", c, CHARGE, |o: &Order| o.qty));
}

fn main() {}
