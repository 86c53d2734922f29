// Event ordering where it does not fit: on a request handler, both at once, a key that is not
// a field name in a string.
use switchboard::prelude::*;

#[message_pattern("quote", concurrent)]
async fn quote(id: String) -> String {
    id
}

#[message_pattern("price", key = "sku")]
async fn price(id: String) -> String {
    id
}

#[event_pattern("order_updated", concurrent, key = "orderId")]
async fn order_updated(id: String) {
    let _ = id;
}

#[event_pattern("order_shipped", key = orderId)]
async fn order_shipped(id: String) {
    let _ = id;
}

#[event_pattern("order_paid", key = "")]
async fn order_paid(id: String) {
    let _ = id;
}

#[event_pattern("order_lost", concurrent = "yes", concurrent)]
async fn order_lost(id: String) {
    let _ = id;
}

fn main() {}
