// `crate = path` for a `switchboard` re-exported under another name: the handler, its
// descriptor, `pattern!` and a group all reach the runtime through that path.
mod platform {
    pub use switchboard as rpc;
}

use platform::rpc::{Event, Handler, Message, PatternLit};

#[platform::rpc::message_pattern("math.add", crate = crate::platform::rpc)]
async fn add(v: (i64, i64)) -> i64 {
    v.0 + v.1
}

#[platform::rpc::event_pattern({ event = "added" }, crate = crate::platform::rpc)]
async fn added(v: i64) {
    let _ = v;
}

pub struct Math;

#[platform::rpc::handlers(crate = crate::platform::rpc)]
impl Math {
    #[platform::rpc::message_pattern("math.double", crate = crate::platform::rpc)]
    async fn double(&self, n: i64) -> i64 {
        n * 2
    }
}

const P: PatternLit = platform::rpc::pattern!({ cmd = "x" }, crate = crate::platform::rpc);

fn main() {
    assert_eq!(ADD.route(), "math.add");
    assert_eq!(ADDED.route(), r#"{"event":"added"}"#);
    assert_eq!(Math::DOUBLE.info().route(), "math.double");
    assert_eq!(P.route, r#"{"cmd":"x"}"#);
    let _ = platform::rpc::Microservice::new()
        .handler(ADD)
        .handler(ADDED)
        .group(Math);
}
