// Every policy option, on free functions, group methods and hand-written descriptors.
use std::time::Duration;
use switchboard::prelude::*;
use switchboard::PatternOptions;

#[message_pattern({ cmd = "charge" }, idempotent, retries = 2, timeout = "1m30s", concurrency = 32, rate = "200/s")]
async fn charge(amount: u64) -> u64 {
    amount
}

#[message_pattern("quote", idempotent = true, timeout = "500ms", rate = "10/100ms", crate = ::switchboard)]
async fn quote() -> f64 {
    1.0
}

#[event_pattern("audit", concurrency = 1, timeout = "2s")]
async fn audit(line: String) {
    let _ = line;
}

#[event_pattern("order_updated", key = "orderId")]
async fn order_updated(order: serde_json::Value) {
    let _ = order;
}

#[event_pattern("page_viewed", concurrent, concurrency = 64)]
async fn page_viewed(url: String) {
    let _ = url;
}

struct Billing;

#[handlers]
impl Billing {
    #[message_pattern("refund", idempotent, retries = 1)]
    async fn refund(&self, amount: u64) -> u64 {
        amount
    }
}

const REMOTE: MessageDef<u64, u64> =
    MessageDef::new(pattern!("remote")).with_options(PatternOptions::new().idempotent().retries(3).timeout(Duration::from_secs(1)));

fn main() {
    use switchboard::{Handler, Message};
    let o = CHARGE.options();
    assert!(o.is_idempotent());
    assert_eq!(o.get_retries(), 2);
    assert_eq!(o.get_timeout(), Some(Duration::from_secs(90)));
    assert_eq!(o.get_concurrency(), Some(32));
    assert_eq!(o.get_rate(), Some((200, Duration::from_secs(1))));
    assert_eq!(QUOTE.options().get_rate(), Some((10, Duration::from_millis(100))));
    assert_eq!(AUDIT.info().options().get_concurrency(), Some(1));
    assert_eq!(Billing::REFUND.options().get_retries(), 1);
    assert_eq!(REMOTE.options().get_retries(), 3);
    use switchboard::EventOrder;
    assert_eq!(AUDIT.info().options().get_order(), EventOrder::InOrder);
    assert_eq!(ORDER_UPDATED.info().options().get_order(), EventOrder::ByKey("orderId"));
    assert_eq!(PAGE_VIEWED.info().options().get_order(), EventOrder::Concurrent);
    let _ = (charge, quote, audit, order_updated, page_viewed);
}
