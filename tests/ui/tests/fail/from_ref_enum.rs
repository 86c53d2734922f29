use switchboard::prelude::*;

#[derive(Clone, FromRef)]
pub enum App {
    Test,
    Live,
}

fn main() {}
