use switchboard_eventstore::aggregate;

#[aggregate]
struct Account {
    balance: u64,
}

fn main() {}
