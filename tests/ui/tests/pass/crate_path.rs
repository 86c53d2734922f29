// `crate = path` for a `switchboard` re-exported under another name.
mod platform {
    pub use switchboard as rpc;
}

use platform::rpc::{Message, PatternLit};

#[platform::rpc::message_pattern("math.add", crate = crate::platform::rpc)]
async fn add(v: (i64, i64)) -> i64 {
    v.0 + v.1
}

#[platform::rpc::event_pattern({ event = "added" }, crate = crate::platform::rpc)]
async fn added(v: i64) {
    let _ = v;
}

const P: PatternLit = platform::rpc::pattern!({ cmd = "x" }, crate = crate::platform::rpc);

fn main() {
    assert_eq!(add.route(), "math.add");
    assert_eq!(P.route, r#"{"cmd":"x"}"#);
    let _ = added;
}
