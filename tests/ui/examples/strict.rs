//! Strict lints.
#![warn(missing_docs, unreachable_pub, unused_qualifications, unused_results, missing_debug_implementations, missing_copy_implementations, trivial_casts, trivial_numeric_casts, unused_import_braces, variant_size_differences, single_use_lifetimes, unused_lifetimes, elided_lifetimes_in_paths, let_underscore_drop, meta_variable_misuse, non_ascii_idents, redundant_lifetimes, unit_bindings)]
use switchboard::prelude::*;

/// A user.
#[derive(Serialize, Deserialize, Debug)]
pub struct User {
    /// Id.
    pub id: String,
}

mod inner {
    use super::*;
    /// Looks a user up.
    #[message_pattern(cmd = "get_user")]
    pub(crate) async fn get_user(id: String, ctx: Context) -> Result<User, RpcError> {
        let _ = ctx;
        Ok(User { id })
    }

    /// Ticks.
    #[message_pattern("ticks")]
    pub async fn ticks(n: u32) -> impl futures_util::Stream<Item = u32> {
        futures_util::stream::iter(0..n)
    }

    /// Counts.
    #[event_pattern("count")]
    pub async fn count(n: u32) -> ReplyStream<u32> {
        ReplyStream::iter(0..n)
    }
}

fn main() {
    let _ = inner::get_user;
    let _ = inner::ticks;
    let _ = inner::count;
}
