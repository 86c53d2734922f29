//! Switchboard's own MessagePack wire, between Switchboard peers only (`?codec=msgpack`).
//!
//! NestJS reads none of it, so it is offered only where no NestJS peer can be on the other
//! end by surprise: a TCP (or TLS) connection that a Switchboard server acknowledged, and the
//! in-process transport. On a broker, NestJS services share the channels; there it is refused.
//!
//! On TCP a client opens with a four-byte hello. Its first byte, `0xC1`, is one MessagePack never
//! uses and can never start a NestJS frame (those start with the ASCII digits of a length),
//! so one server tells its NestJS clients from its msgpack ones by a connection's first byte,
//! and answers the hello with the same four bytes. A NestJS server never answers it: the
//! client gives up within its connect timeout, with an error that says why.
//!
//! Then both ways, frames: a big-endian `u32` length, then the body. A request or event body
//! is an array `[id | nil, pattern, headers]` followed by the payload (one MessagePack value);
//! a reply body is an array `[id, tag]`, followed by the value for a value, the last
//! value and an error (see `frame`). Values are written with field names (structs as maps)
//! and in serde's human-readable forms, so a value encoded by a handler and one converted
//! from JSON (a stream's items, a layer's reply) decode the same way.
//!
//! A client picks it by URL; the server needs nothing:
//!
//! ```
//! use switchboard::prelude::*;
//!
//! #[message_pattern("double")]
//! async fn double(n: u32) -> u32 {
//!     n * 2
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> switchboard::Result<()> {
//! let server = Microservice::new().handler(DOUBLE).listen("tcp://127.0.0.1:0").start().await?;
//! let client = Client::connect(&format!("{}?codec=msgpack", server.local_url())).await?;
//! assert_eq!(client.send(DOUBLE, 21).await?, 42);
//! // Where NestJS peers share the channel, it is refused.
//! assert!(Client::builder("redis://127.0.0.1:6379?codec=msgpack").build().is_err());
//! # server.shutdown().await
//! # }
//! ```

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::transport::Endpoint;

#[cfg(feature = "tcp")]
pub(crate) mod frame;

/// The encoding of payloads and replies on a connection, chosen by a client URL's `codec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Codec {
    /// NestJS's JSON packets (the default, and the only one a NestJS peer reads).
    #[default]
    Json,
    /// Switchboard's MessagePack frames.
    MsgPack,
}

impl Codec {
    /// Takes the URL's `codec` parameter out of `ep` (so that the transport's own parameter
    /// check does not see it): `json` or `msgpack`, the latter only where no NestJS peer can
    /// be reached by the URL.
    pub(crate) fn take(ep: &mut Endpoint) -> Result<Codec> {
        let Some(i) = ep.params.iter().position(|(k, _)| k == "codec") else {
            return Ok(Codec::Json);
        };
        let (_, name) = ep.params.remove(i);
        let bad = |reason: String| Error::InvalidUrl {
            url: ep.redacted(),
            reason,
        };
        if ep.params.iter().any(|(k, _)| k == "codec") {
            return Err(bad("`codec` is given twice".into()));
        }
        match name.as_str() {
            "json" => Ok(Codec::Json),
            "msgpack" => match ep.scheme.as_str() {
                "tcp" | "tls" | "mem" => Ok(Codec::MsgPack),
                scheme => Err(bad(format!(
                    "codec=msgpack is only spoken between Switchboard peers on tcp://, tls:// and mem://; \
                     on {scheme}:// NestJS services share the channels and could not read it (drop `codec`, \
                     or use codec=json)"
                ))),
            },
            other => Err(bad(format!(
                "unknown codec `{}`; the codecs are `json` (NestJS's, the default) and `msgpack` \
                 (between Switchboard peers on tcp://, tls:// and mem://)",
                crate::text::for_log(other)
            ))),
        }
    }
}

/// A value could not be encoded or decoded as MessagePack: the source of
/// [`Error::MsgPack`](crate::Error::MsgPack).
///
/// ```
/// use switchboard::prelude::*;
///
/// #[message_pattern("name")]
/// async fn name() -> String {
///     "Ada".into()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let server = Microservice::new().handler(NAME).listen("mem://msgpack-error-doc").start().await?;
/// let client = Client::connect("mem://msgpack-error-doc?codec=msgpack").await?;
/// // A reply of another type than the one asked for.
/// let err = client.send_raw::<u32>("name", ()).await.unwrap_err();
/// assert!(matches!(err, switchboard::Error::MsgPack { .. }), "{err}");
/// assert_eq!(err.kind(), "codec");
/// # server.shutdown().await
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum MsgPackError {
    /// Serialising a value failed.
    #[error(transparent)]
    Encode(#[from] rmp_serde::encode::Error),
    /// The bytes are not a value of the type asked for.
    #[error(transparent)]
    Decode(#[from] rmp_serde::decode::Error),
    /// Converting to or from JSON failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Bytes were left after the value.
    #[error("{0} bytes after the value")]
    Trailing(usize),
}

/// `value` as MessagePack: structs as maps, human-readable forms.
pub(crate) fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> std::result::Result<Bytes, MsgPackError> {
    let mut out = Vec::with_capacity(64);
    write(&mut out, value)?;
    Ok(Bytes::from(out))
}

/// Appends `value` as MessagePack to `out`.
pub(crate) fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> std::result::Result<(), MsgPackError> {
    let mut ser = rmp_serde::Serializer::new(out).with_struct_map().with_human_readable();
    value.serialize(&mut ser)?;
    Ok(())
}

/// One MessagePack value, the whole of `bytes`, as `T`.
pub(crate) fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, MsgPackError> {
    let mut rd = bytes;
    let value = T::deserialize(&mut deserializer(&mut rd))?;
    at_end(rd)?;
    Ok(value)
}

/// The deserializer [`from_msgpack`] reads with (human-readable forms; nesting capped by
/// rmp_serde at 1024 levels; a string's or array's announced length allocates only as its
/// bytes are there).
pub(crate) fn deserializer<'a, 'b>(
    rd: &'a mut &'b [u8],
) -> rmp_serde::Deserializer<
    rmp_serde::decode::ReadReader<&'a mut &'b [u8]>,
    rmp_serde::config::HumanReadableConfig<rmp_serde::config::DefaultConfig>,
> {
    rmp_serde::Deserializer::new(rd).with_human_readable()
}

/// An error when bytes are left after the value.
pub(crate) fn at_end(rest: &[u8]) -> std::result::Result<(), MsgPackError> {
    match rest.len() {
        0 => Ok(()),
        n => Err(MsgPackError::Trailing(n)),
    }
}

/// JSON text as MessagePack (for what was encoded as JSON before the codec was known).
pub(crate) fn json_to_msgpack(json: &[u8]) -> std::result::Result<Bytes, MsgPackError> {
    let value: serde_json::Value = serde_json::from_slice(json)?;
    to_msgpack(&value)
}

/// A MessagePack value as JSON text, as JavaScript would write it.
pub(crate) fn msgpack_to_json(bytes: &[u8]) -> std::result::Result<Bytes, MsgPackError> {
    let value: serde_json::Value = from_msgpack(bytes)?;
    Ok(Bytes::from(crate::json::to_vec(&value)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct User {
        id: String,
        tags: Vec<String>,
        age: Option<u8>,
    }

    #[test]
    fn values_round_trip_and_match_their_json() {
        let user = User {
            id: "7".into(),
            tags: vec!["a".into()],
            age: None,
        };
        let packed = to_msgpack(&user).unwrap();
        assert_eq!(from_msgpack::<User>(&packed).unwrap(), user);
        // Structs travel as maps, so the same bytes come from the value's JSON.
        let json = serde_json::to_vec(&user).unwrap();
        assert_eq!(json_to_msgpack(&json).unwrap(), packed);
        assert_eq!(msgpack_to_json(&packed).unwrap(), Bytes::from(json));
        assert!(matches!(
            from_msgpack::<User>(&[&packed[..], &[0xC0]].concat()),
            Err(MsgPackError::Trailing(1))
        ));
        assert!(from_msgpack::<User>(b"\xC1").is_err());
    }
}
