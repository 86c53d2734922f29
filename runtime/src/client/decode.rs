//! Decoding a reply into the type a caller asked for.
//!
//! A reply's value is decoded as the caller's type. When that type is a `Result` (a handler
//! returning `type DbResult<T> = Result<T, DbError>` has that as its descriptor's reply type),
//! the value is its `Ok` and an error reply its `Err`, as the handler returned them: on the
//! wire NestJS sends the value or the error itself, never `{"Ok": …}`.

use serde::de::{self, DeserializeOwned, DeserializeSeed, EnumAccess, VariantAccess, Visitor};
use serde_json::de::SliceRead;

use crate::error::RpcError;

/// Decodes a reply value as `R`; a `Result` type takes it as its `Ok`.
pub(crate) fn value<R: DeserializeOwned>(json: &[u8]) -> serde_json::Result<R> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = R::deserialize(Variant { de: &mut de, as_: "Ok" })?;
    de.end()?;
    Ok(value)
}

/// Decodes a MessagePack reply value (`?codec=msgpack`) as `R`, as [`value`] does JSON.
pub(crate) fn packed<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, crate::wire::msgpack::MsgPackError> {
    let mut rd = bytes;
    let value = R::deserialize(Variant {
        de: &mut crate::wire::msgpack::deserializer(&mut rd),
        as_: "Ok",
    })?;
    crate::wire::msgpack::at_end(rd)?;
    Ok(value)
}

/// An error reply as `R`, when `R` is a `Result` whose error type it decodes into.
pub(crate) fn error<R: DeserializeOwned>(err: &RpcError) -> Option<R> {
    let json = serde_json::to_vec(err.value()).ok()?;
    let mut de = serde_json::Deserializer::from_slice(&json);
    let mut seen = false;
    let value = R::deserialize(OnlyResult {
        inner: Variant {
            de: &mut de,
            as_: "Err",
        },
        seen: &mut seen,
    });
    match value {
        Ok(v) if seen => Some(v),
        _ => None,
    }
}

/// A deserializer (serde_json's, rmp_serde's), whose `Result` (if the target is one) is the
/// variant `as_`.
struct Variant<D> {
    de: D,
    as_: &'static str,
}

const RESULT: (&str, &[&str]) = ("Result", &["Ok", "Err"]);

macro_rules! forward {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.de.$method(visitor)
            }
        )*
    };
}

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for Variant<D> {
    type Error = D::Error;

    forward! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, Self::Error> {
        self.de.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.de.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Self::Error> {
        self.de.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.de.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.de.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        if (name, variants) == RESULT {
            visitor.visit_enum(self)
        } else {
            self.de.deserialize_enum(name, variants, visitor)
        }
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

impl<'de, D: de::Deserializer<'de>> EnumAccess<'de> for Variant<D> {
    type Error = D::Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Self::Error> {
        let name = seed.deserialize(de::value::StrDeserializer::<D::Error>::new(self.as_))?;
        Ok((name, self))
    }
}

impl<'de, D: de::Deserializer<'de>> VariantAccess<'de> for Variant<D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        de::Deserialize::deserialize(self.de)
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Self::Error> {
        seed.deserialize(self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_tuple(self.de, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_struct(self.de, "", fields, visitor)
    }
}

/// [`Variant`] that notes whether the target asked for a `Result` at all: an error reply
/// only becomes a value of a `Result` type.
struct OnlyResult<'a, 'de, 'b> {
    inner: Variant<&'a mut serde_json::Deserializer<SliceRead<'de>>>,
    seen: &'b mut bool,
}

impl<'de> de::Deserializer<'de> for OnlyResult<'_, 'de, '_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a Result"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        if (name, variants) != RESULT {
            return Err(de::Error::custom("not a Result"));
        }
        *self.seen = true;
        self.inner.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    struct DbError {
        code: u32,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct User {
        id: String,
    }

    #[test]
    fn plain_types_decode_as_serde_json_does() {
        assert_eq!(value::<User>(br#"{"id":"7"}"#).unwrap(), User { id: "7".into() });
        assert_eq!(value::<Option<u8>>(b"null").unwrap(), None);
        assert!(value::<u8>(b"300").is_err());
        assert!(value::<u8>(b"1 2").is_err(), "trailing data");
        // A `Result` nested inside another type keeps serde's own shape.
        assert_eq!(value::<Vec<Result<u8, String>>>(br#"[{"Ok":1}]"#).unwrap(), vec![Ok(1)]);
    }

    #[test]
    fn a_result_takes_the_value_as_ok_and_an_error_as_err() {
        assert_eq!(
            value::<Result<User, DbError>>(br#"{"id":"7"}"#).unwrap(),
            Ok(User { id: "7".into() })
        );
        let err = RpcError::from_value(serde_json::json!({"status": "error", "code": 3}));
        assert_eq!(error::<Result<User, DbError>>(&err), Some(Err(DbError { code: 3 })));
        // Not a `Result`, or an error that is not the `Result`'s: no value.
        assert_eq!(error::<User>(&err), None);
        assert_eq!(error::<Result<User, u32>>(&err), None);
    }
}
