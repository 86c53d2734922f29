//! The generic service's messages (`switchboard.proto`, written by hand with prost's derive
//! so that the runtime needs no build script) and the mapping between [`RpcError`]s and
//! gRPC statuses (docs/nestjs-wire.md §8).

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value as Json;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::error::{NO_MESSAGE_HANDLER, RpcError};

/// The generic service's name, as in `/switchboard.Switchboard/Send`.
pub const SERVICE: &str = "switchboard.Switchboard";
/// The path of a request.
pub const SEND_PATH: &str = "/switchboard.Switchboard/Send";
/// The path of an event.
pub const EMIT_PATH: &str = "/switchboard.Switchboard/Emit";
/// The trailer carrying an error's JSON value, so that a Switchboard client gets it back
/// exactly; other clients see the status code and message.
pub const ERROR_TRAILER: &str = "sb-error-bin";

/// A request or event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Packet {
    /// The pattern as JSON.
    #[prost(string, tag = "1")]
    pub pattern: String,
    /// The payload as JSON text, absent when there was none.
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub data: Option<Bytes>,
    /// Headers.
    #[prost(map = "string, string", tag = "3")]
    pub metadata: HashMap<String, String>,
}

/// One reply value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The value as JSON text.
    #[prost(bytes = "bytes", tag = "1")]
    pub json: Bytes,
}

/// An event's acknowledgement.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Accepted {}

/// The status for a handler's error, as NestJS's gRPC server makes it: an object with a
/// numeric `code` becomes that status with its `message`; anything else is UNKNOWN, with
/// the error's message (`Internal server error` for unexpected failures). The JSON value
/// travels in the `sb-error-bin` trailer as well.
pub fn status_of(err: &RpcError) -> Status {
    let code = match err.value() {
        Json::Object(map) => map
            .get("code")
            .and_then(Json::as_i64)
            .filter(|c| (1..=16).contains(c))
            .map(|c| Code::from_i32(c as i32))
            .unwrap_or(Code::Unknown),
        _ => Code::Unknown,
    };
    let message = match err.message() {
        Some(m) => m.to_owned(),
        None => err.value().to_string(),
    };
    let mut meta = MetadataMap::new();
    if let Ok(json) = serde_json::to_vec(err.value()) {
        meta.insert_bin(ERROR_TRAILER, MetadataValue::from_bytes(&json));
    }
    Status::with_metadata(code, message, meta)
}

/// The status for a request nobody handles.
pub fn no_handler_status() -> Status {
    Status::unimplemented(NO_MESSAGE_HANDLER)
}

/// The error value a status stands for: the JSON in `sb-error-bin` when a Switchboard
/// server sent one; otherwise `{"code": <status>, "message": <details>}`, the shape an
/// `RpcException` needs to come back as the same status (and what grpc-js errors carry).
pub fn rpc_error_of(status: &Status) -> RpcError {
    if let Some(json) = status.metadata().get_bin(ERROR_TRAILER)
        && let Ok(bytes) = json.to_bytes()
        && let Ok(value) = serde_json::from_slice::<Json>(&bytes)
    {
        return RpcError::from_value(value);
    }
    RpcError::from_value(serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nest_mapping() {
        let s = status_of(&RpcError::from_value(json!({"code": 5, "message": "hero not found"})));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "hero not found"));
        let s = status_of(&RpcError::internal());
        assert_eq!((s.code(), s.message()), (Code::Unknown, "Internal server error"));
        let s = status_of(&RpcError::new("text"));
        assert_eq!((s.code(), s.message()), (Code::Unknown, "text"));
        let s = status_of(&RpcError::from_value(json!({"code": 42, "message": "custom"})));
        assert_eq!(s.code(), Code::Unknown, "not a gRPC code");
        assert_eq!(
            rpc_error_of(&s).value(),
            &json!({"code": 42, "message": "custom"}),
            "the value round-trips"
        );
        let foreign = Status::not_found("nope");
        assert_eq!(rpc_error_of(&foreign).value(), &json!({"code": 5, "message": "nope"}));
    }
}
