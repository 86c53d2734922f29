use serde::{Deserialize, Serialize};
use switchboard_eventstore::{Aggregate, StoredEvent, aggregate};

#[derive(Clone, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}
impl StoredEvent for Deposited {
    const NAME: &'static str = "DEPOSITED";
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

#[aggregate(version = 2)]
impl Aggregate for Account {
    const TYPE: &'static str = "account";
    const SCHEMA: u64 = 7;
    type Event = Deposited;
    type Command = u64;
    type Error = std::convert::Infallible;
    fn apply(&mut self, event: Deposited) {
        self.balance += event.amount
    }
    fn handle(&self, amount: u64) -> Result<Vec<Deposited>, Self::Error> {
        Ok(vec![Deposited { amount }])
    }
}

fn main() {}
