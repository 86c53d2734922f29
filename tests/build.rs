//! With the `grpc` feature: the proto-first test service (proto/hero.proto) through
//! switchboard-codegen's `.proto` path. Without it, nothing.

fn main() {
    #[cfg(feature = "grpc")]
    switchboard_codegen::proto::compile(&["proto/hero.proto"], &["proto"]).unwrap_or_else(|e| e.fail_build());
}
