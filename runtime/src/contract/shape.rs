//! [`shape_of`]: a type's wire shape, traced through its `Deserialize` impl.
//!
//! A deserializer that holds no data answers each request of the type with a made-up value and
//! writes down what was asked: "a struct with fields `id`, `name`", "a sequence of …", "an
//! enum of variants …". Enums are traced once per variant (pass `k` takes variant `k` of each
//! enum); recursion is cut at a fixed depth, and a type that refuses a made-up value (a string
//! that must parse as a UUID) ends its trace there, the same way on every build.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// Below this depth options are `Some`, sequences and maps have one element.
const OPEN_DEPTH: usize = 8;
/// Past this depth the trace stops (a type that cannot end, such as `struct A(Box<A>)`).
const MAX_DEPTH: usize = 64;
/// The most things traced in one pass.
const MAX_NODES: usize = 4096;
/// The most passes (enums with more variants are traced up to this one).
const MAX_PASSES: usize = 64;

/// The shape of `T` as serde sees it, hashed (FNV-1a, the same on every build and platform).
///
/// ```
/// use serde::Deserialize;
/// use switchboard::contract::shape_of;
///
/// #[derive(Deserialize)]
/// struct V1 { id: String }
/// #[derive(Deserialize)]
/// struct Renamed { id: String }
/// #[derive(Deserialize)]
/// struct V2 { id: String, email: Option<String> }
///
/// assert_eq!(shape_of::<V1>(), shape_of::<Renamed>()); // the Rust name is not on the wire
/// assert_ne!(shape_of::<V1>(), shape_of::<V2>());
/// ```
pub fn shape_of<'de, T: Deserialize<'de>>() -> u64 {
    let mut all = Fnv::new();
    let mut pass = 0;
    loop {
        let mut trace = Trace {
            out: Fnv::new(),
            pass,
            widest: 1,
            nodes: 0,
        };
        let ended = T::deserialize(Tracer {
            trace: &mut trace,
            depth: 0,
        })
        .is_err();
        if ended {
            trace.out.write(b"!");
        }
        all.write(&trace.out.finish().to_le_bytes());
        pass += 1;
        if pass >= trace.widest || pass >= MAX_PASSES {
            return all.finish();
        }
    }
}

/// 64-bit FNV-1a.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

struct Trace {
    out: Fnv,
    /// Which variant of each enum this pass takes.
    pass: usize,
    /// The most variants of any enum met.
    widest: usize,
    nodes: usize,
}

/// Why a trace stopped: the type refused a made-up value, or it went too deep or too wide.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("trace stopped")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

struct Tracer<'t> {
    trace: &'t mut Trace,
    depth: usize,
}

impl Tracer<'_> {
    fn note(&mut self, what: &str) -> Result<(), Stop> {
        self.trace.nodes += 1;
        if self.trace.nodes > MAX_NODES || self.depth > MAX_DEPTH {
            return Err(Stop);
        }
        self.trace.out.write(what.as_bytes());
        self.trace.out.write(b";");
        Ok(())
    }

    fn names(&mut self, names: &[&str]) {
        for n in names {
            self.trace.out.write(n.as_bytes());
            self.trace.out.write(b",");
        }
        self.trace.out.write(b";");
    }

    fn deeper(&mut self) -> Tracer<'_> {
        Tracer {
            trace: self.trace,
            depth: self.depth + 1,
        }
    }

    fn open(&self) -> bool {
        self.depth < OPEN_DEPTH
    }
}

macro_rules! primitive {
    ($($method:ident => $visit:ident($($value:expr)?), $name:literal;)*) => {
        $(
            fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Stop> {
                self.note($name)?;
                visitor.$visit($($value)?)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Stop;

    primitive! {
        deserialize_bool => visit_bool(false), "bool";
        deserialize_i8 => visit_i8(1), "i8";
        deserialize_i16 => visit_i16(1), "i16";
        deserialize_i32 => visit_i32(1), "i32";
        deserialize_i64 => visit_i64(1), "i64";
        deserialize_i128 => visit_i128(1), "i128";
        deserialize_u8 => visit_u8(1), "u8";
        deserialize_u16 => visit_u16(1), "u16";
        deserialize_u32 => visit_u32(1), "u32";
        deserialize_u64 => visit_u64(1), "u64";
        deserialize_u128 => visit_u128(1), "u128";
        deserialize_f32 => visit_f32(1.0), "f32";
        deserialize_f64 => visit_f64(1.0), "f64";
        deserialize_char => visit_char('a'), "char";
        deserialize_str => visit_borrowed_str(""), "str";
        deserialize_string => visit_borrowed_str(""), "str";
        deserialize_bytes => visit_borrowed_bytes(&[]), "bytes";
        deserialize_byte_buf => visit_borrowed_bytes(&[]), "bytes";
        deserialize_unit => visit_unit(), "unit";
        deserialize_identifier => visit_str(""), "ident";
        deserialize_any => visit_unit(), "any";
        deserialize_ignored_any => visit_unit(), "ignored";
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Stop> {
        self.note("option")?;
        match self.open() {
            true => visitor.visit_some(self.deeper()),
            false => visitor.visit_none(),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Stop> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.note("newtype")?;
        visitor.visit_newtype_struct(self.deeper())
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Stop> {
        self.note("seq")?;
        let len = usize::from(self.open());
        visitor.visit_seq(Elements {
            tracer: self,
            left: len,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(mut self, len: usize, visitor: V) -> Result<V::Value, Stop> {
        self.note(&format!("tuple{len}"))?;
        visitor.visit_seq(Elements {
            tracer: self,
            left: len,
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Stop> {
        self.note("map")?;
        let left = usize::from(self.open());
        visitor.visit_map(Entries { tracer: self, left })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.note("struct")?;
        self.names(fields);
        visitor.visit_map(Fields {
            tracer: self,
            fields,
            next: 0,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.note("enum")?;
        self.names(variants);
        if variants.is_empty() {
            return Err(Stop);
        }
        self.trace.widest = self.trace.widest.max(variants.len());
        let index = match self.open() {
            true => self.trace.pass.min(variants.len() - 1),
            false => 0,
        };
        visitor.visit_enum(Variant {
            tracer: self,
            name: variants[index],
        })
    }

    fn is_human_readable(&self) -> bool {
        true
    }
}

/// A sequence or tuple of `left` made-up elements.
struct Elements<'t> {
    tracer: Tracer<'t>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Stop> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.tracer.deeper()).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// A map of `left` made-up entries.
struct Entries<'t> {
    tracer: Tracer<'t>,
    left: usize,
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Stop> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.tracer.deeper()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        seed.deserialize(self.tracer.deeper())
    }
}

/// A struct's fields, each named by its key and made up as its type asks.
struct Fields<'t> {
    tracer: Tracer<'t>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Stop> {
        let Some(&name) = self.fields.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        seed.deserialize(self.tracer.deeper())
    }
}

/// The variant a pass takes.
struct Variant<'t> {
    tracer: Tracer<'t>,
    name: &'static str,
}

impl<'de, 't> de::EnumAccess<'de> for Variant<'t> {
    type Error = Stop;
    type Variant = Tracer<'t>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Tracer<'t>), Stop> {
        let value = seed.deserialize(self.name.into_deserializer())?;
        let Tracer { trace, depth } = self.tracer;
        Ok((
            value,
            Tracer {
                trace,
                depth: depth + 1,
            },
        ))
    }
}

impl<'de> de::VariantAccess<'de> for Tracer<'_> {
    type Error = Stop;

    fn unit_variant(mut self) -> Result<(), Stop> {
        self.note("unit")
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Stop> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Stop> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Stop> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    use super::shape_of;

    #[test]
    fn borrowed_types_have_a_shape() {
        // The same on the wire: the same shape.
        assert_eq!(shape_of::<&str>(), shape_of::<String>());
        assert_ne!(shape_of::<&str>(), shape_of::<u64>());
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct User {
        id: String,
        tags: Vec<String>,
        manager: Option<Box<User>>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Expr {
        Lit(i64),
        Add(Box<Expr>, Box<Expr>),
        Neg { of: Box<Expr> },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum ExprChangedLast {
        Lit(i64),
        Add(Box<ExprChangedLast>, Box<ExprChangedLast>),
        Neg { of: Box<ExprChangedLast>, twice: bool },
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Wrapper(u32);

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct WrapperWide(u64);

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Endless(Box<Endless>);

    #[test]
    fn recursive_types_end_and_are_stable() {
        assert_eq!(shape_of::<User>(), shape_of::<User>());
        assert_eq!(shape_of::<Expr>(), shape_of::<Expr>());
        // A type no finite value has still gets a shape.
        assert_eq!(shape_of::<Endless>(), shape_of::<Endless>());
    }

    #[test]
    fn every_variant_counts() {
        assert_ne!(shape_of::<Expr>(), shape_of::<ExprChangedLast>());
    }

    #[test]
    fn kinds_and_widths_count() {
        assert_ne!(shape_of::<Wrapper>(), shape_of::<WrapperWide>());
        assert_ne!(shape_of::<Vec<String>>(), shape_of::<Vec<i64>>());
        assert_ne!(
            shape_of::<HashMap<String, i64>>(),
            shape_of::<HashMap<String, String>>()
        );
        assert_ne!(shape_of::<Option<String>>(), shape_of::<String>());
        assert_eq!(shape_of::<(i64, String)>(), shape_of::<(i64, String)>());
        assert_ne!(shape_of::<(i64, String)>(), shape_of::<(String, i64)>());
    }

    #[test]
    fn a_type_that_refuses_made_up_values_is_still_fingerprinted() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Strict {
            #[serde(deserialize_with = "refuse")]
            id: String,
            name: String,
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct StrictMore {
            #[serde(deserialize_with = "refuse")]
            id: String,
            name: String,
            email: String,
        }
        fn refuse<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
            let s = String::deserialize(d)?;
            Err(serde::de::Error::custom(format!("not an id: {s:?}")))
        }
        // The field list is written before any field is traced.
        assert_ne!(shape_of::<Strict>(), shape_of::<StrictMore>());
    }
}
