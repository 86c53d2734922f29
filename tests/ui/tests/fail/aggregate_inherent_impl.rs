use switchboard_eventstore::aggregate;

struct Account {
    balance: u64,
}

#[aggregate]
impl Account {
    fn balance(&self) -> u64 {
        self.balance
    }
}

fn main() {}
