//! [`Shape`]: a type's wire shape, traced through its `Deserialize` impl.
//!
//! A deserializer that holds no data answers each request of the type with a made-up value and
//! writes down what was asked: "a struct with fields `id`, `name`", "a sequence of …", "an
//! enum of variants …". Enums are traced once per variant (pass `k` takes variant `k` of each
//! enum, and the passes are merged); recursion is cut at a fixed depth, and a type that refuses
//! a made-up value (a string that must parse as a UUID) is [`Shape::Unknown`] from there, the
//! same way on every build.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// Below this depth options are `Some`, sequences and maps have one element, enums take
/// each variant in turn.
const OPEN_DEPTH: usize = 8;
/// Past this depth the trace stops (a type that cannot end, such as `struct A(Box<A>)`).
const MAX_DEPTH: usize = 64;
/// The most things traced in one pass.
const MAX_NODES: usize = 4096;
/// The most passes (enums with more variants are traced up to this one).
const MAX_PASSES: usize = 64;

/// What a type looks like on the wire, as its `Deserialize` impl asks for it.
///
/// ```
/// use serde::Deserialize;
/// use switchboard::contract::Shape;
///
/// #[derive(Deserialize)]
/// struct User { id: u64, email: Option<String> }
///
/// let shape = Shape::of::<User>();
/// assert_eq!(
///     shape.json_schema(),
///     serde_json::json!({
///         "type": "object",
///         "properties": {
///             "id": { "type": "integer", "minimum": 0 },
///             "email": { "anyOf": [{ "type": "string" }, { "type": "null" }] }
///         },
///         "required": ["id"]
///     })
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shape {
    /// Not known: the type refused a made-up value, or the trace was cut (recursion).
    Unknown,
    /// Anything: a self-describing type (`serde_json::Value`, an untagged or internally tagged
    /// enum).
    Any,
    /// A type that is not `Deserialize`, known by its Rust name only.
    Named(String),
    /// `true` or `false`.
    Bool,
    /// An integer of `bits` bits.
    Integer {
        /// Signed or not.
        signed: bool,
        /// 8 to 128.
        bits: u8,
    },
    /// A floating-point number.
    Float,
    /// One character.
    Char,
    /// A string.
    Str,
    /// Bytes.
    Bytes,
    /// `null`.
    Unit,
    /// The inner shape or `null`.
    Optional(Box<Shape>),
    /// A sequence of one shape.
    Seq(Box<Shape>),
    /// A fixed sequence of shapes.
    Tuple(Vec<Shape>),
    /// A map from keys to values.
    Map(Box<Shape>, Box<Shape>),
    /// An object with these fields, in order (names as serde writes them).
    Struct(Vec<(String, Shape)>),
    /// One of these variants (externally tagged, as serde writes enums by default), each with
    /// its content ([`Shape::Unit`] for a unit variant).
    Enum(Vec<(String, Shape)>),
    /// A newtype struct: the inner shape.
    Newtype(Box<Shape>),
}

impl Shape {
    /// The shape of `T`.
    pub fn of<'de, T: Deserialize<'de>>() -> Shape {
        let mut merged = Shape::Unknown;
        let mut pass = 0;
        loop {
            let mut trace = Trace {
                nodes: vec![Node::Unknown],
                pass,
                widest: 1,
            };
            // A refusal leaves the rest of the tree unknown: nothing to do with the error.
            let _ = T::deserialize(Tracer {
                trace: &mut trace,
                slot: 0,
                depth: 0,
            });
            merged = merged.merge(trace.shape(0));
            pass += 1;
            if pass >= trace.widest || pass >= MAX_PASSES {
                return merged;
            }
        }
    }

    /// Fills what `self` does not know from `other` (the same type traced taking other enum
    /// variants).
    fn merge(self, other: Shape) -> Shape {
        use Shape::*;
        match (self, other) {
            (Unknown, other) => other,
            (Optional(a), Optional(b)) => Optional(Box::new(a.merge(*b))),
            (Seq(a), Seq(b)) => Seq(Box::new(a.merge(*b))),
            (Newtype(a), Newtype(b)) => Newtype(Box::new(a.merge(*b))),
            (Map(ka, va), Map(kb, vb)) => Map(Box::new(ka.merge(*kb)), Box::new(va.merge(*vb))),
            (Tuple(a), Tuple(b)) if a.len() == b.len() => {
                Tuple(a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect())
            }
            (Struct(a), Struct(b)) if a.len() == b.len() => {
                Struct(a.into_iter().zip(b).map(|((n, x), (_, y))| (n, x.merge(y))).collect())
            }
            (Enum(a), Enum(b)) if a.len() == b.len() => {
                Enum(a.into_iter().zip(b).map(|((n, x), (_, y))| (n, x.merge(y))).collect())
            }
            (known, _) => known,
        }
    }

    /// A stable 64-bit fingerprint (FNV-1a over a canonical walk), the same on every build and
    /// platform.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        self.write(&mut h);
        h.finish()
    }

    fn write(&self, h: &mut Fnv) {
        let tag = |h: &mut Fnv, t: &str| {
            h.write(t.as_bytes());
            h.write(b";");
        };
        match self {
            Shape::Unknown => tag(h, "?"),
            Shape::Any => tag(h, "any"),
            Shape::Named(name) => {
                tag(h, "name");
                tag(h, name);
            }
            Shape::Bool => tag(h, "bool"),
            Shape::Integer { signed, bits } => tag(h, &format!("{}{bits}", if *signed { 'i' } else { 'u' })),
            Shape::Float => tag(h, "float"),
            Shape::Char => tag(h, "char"),
            Shape::Str => tag(h, "str"),
            Shape::Bytes => tag(h, "bytes"),
            Shape::Unit => tag(h, "unit"),
            Shape::Optional(s) => {
                tag(h, "option");
                s.write(h);
            }
            Shape::Seq(s) => {
                tag(h, "seq");
                s.write(h);
            }
            Shape::Newtype(s) => {
                tag(h, "newtype");
                s.write(h);
            }
            Shape::Tuple(items) => {
                tag(h, &format!("tuple{}", items.len()));
                items.iter().for_each(|s| s.write(h));
            }
            Shape::Map(k, v) => {
                tag(h, "map");
                k.write(h);
                v.write(h);
            }
            Shape::Struct(fields) | Shape::Enum(fields) => {
                tag(
                    h,
                    if matches!(self, Shape::Struct(_)) {
                        "struct"
                    } else {
                        "enum"
                    },
                );
                tag(h, &fields.len().to_string());
                for (name, s) in fields {
                    tag(h, name);
                    s.write(h);
                }
            }
        }
    }

    /// The shape as a JSON Schema (draft 2020-12). Every field but an `Option` is listed as
    /// required (serde's `default` cannot be seen from outside); what is not known is `{}`.
    pub fn json_schema(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Shape::Unknown | Shape::Any => json!({}),
            Shape::Named(name) => {
                json!({ "description": format!("`{name}` (its shape is not known: not `Deserialize`)") })
            }
            Shape::Bool => json!({ "type": "boolean" }),
            Shape::Integer { signed: true, .. } => json!({ "type": "integer" }),
            Shape::Integer { signed: false, .. } => json!({ "type": "integer", "minimum": 0 }),
            Shape::Float => json!({ "type": "number" }),
            Shape::Char => json!({ "type": "string", "minLength": 1, "maxLength": 1 }),
            Shape::Str => json!({ "type": "string" }),
            Shape::Bytes => json!({ "type": "array", "items": { "type": "integer", "minimum": 0, "maximum": 255 } }),
            Shape::Unit => json!({ "type": "null" }),
            Shape::Optional(s) => json!({ "anyOf": [s.json_schema(), { "type": "null" }] }),
            Shape::Seq(s) => json!({ "type": "array", "items": s.json_schema() }),
            Shape::Newtype(s) => s.json_schema(),
            Shape::Tuple(items) => json!({
                "type": "array",
                "prefixItems": items.iter().map(Shape::json_schema).collect::<Vec<_>>(),
                "minItems": items.len(),
                "maxItems": items.len(),
            }),
            Shape::Map(_, v) => json!({ "type": "object", "additionalProperties": v.json_schema() }),
            Shape::Struct(fields) => {
                let properties: serde_json::Map<String, serde_json::Value> =
                    fields.iter().map(|(n, s)| (n.clone(), s.json_schema())).collect();
                let required: Vec<&str> = fields
                    .iter()
                    .filter(|(_, s)| !matches!(s, Shape::Optional(_)))
                    .map(|(n, _)| n.as_str())
                    .collect();
                json!({ "type": "object", "properties": properties, "required": required })
            }
            Shape::Enum(variants) => {
                let one_of: Vec<serde_json::Value> = variants
                    .iter()
                    .map(|(name, content)| match content {
                        Shape::Unit => json!({ "const": name }),
                        content => json!({
                            "type": "object",
                            "properties": { name.as_str(): content.json_schema() },
                            "required": [name],
                            "additionalProperties": false,
                        }),
                    })
                    .collect();
                json!({ "oneOf": one_of })
            }
        }
    }
}

/// The fingerprint of `T`'s shape ([`Shape::of`], [`Shape::fingerprint`]).
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
    Shape::of::<T>().fingerprint()
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

/// One pass's tree, in an arena: each tracer fills its slot.
struct Trace {
    nodes: Vec<Node>,
    /// Which variant of each enum this pass takes.
    pass: usize,
    /// The most variants of any enum met.
    widest: usize,
}

enum Node {
    Unknown,
    Leaf(Shape),
    Option(usize),
    Seq(usize),
    Newtype(usize),
    Tuple(Vec<usize>),
    Map(usize, usize),
    Struct(Vec<(&'static str, usize)>),
    /// The variants, and the one this pass took with its content's slot.
    Enum(&'static [&'static str], usize, usize),
}

impl Trace {
    fn slot(&mut self) -> Result<usize, Stop> {
        if self.nodes.len() >= MAX_NODES {
            return Err(Stop);
        }
        self.nodes.push(Node::Unknown);
        Ok(self.nodes.len() - 1)
    }

    fn shape(&self, at: usize) -> Shape {
        let boxed = |i: usize| Box::new(self.shape(i));
        match &self.nodes[at] {
            Node::Unknown => Shape::Unknown,
            Node::Leaf(s) => s.clone(),
            Node::Option(i) => Shape::Optional(boxed(*i)),
            Node::Seq(i) => Shape::Seq(boxed(*i)),
            Node::Newtype(i) => Shape::Newtype(boxed(*i)),
            Node::Tuple(items) => Shape::Tuple(items.iter().map(|&i| self.shape(i)).collect()),
            Node::Map(k, v) => Shape::Map(boxed(*k), boxed(*v)),
            Node::Struct(fields) => Shape::Struct(fields.iter().map(|&(n, i)| (n.to_owned(), self.shape(i))).collect()),
            Node::Enum(variants, taken, content) => Shape::Enum(
                variants
                    .iter()
                    .enumerate()
                    .map(|(k, n)| {
                        let content = if k == *taken {
                            self.shape(*content)
                        } else {
                            Shape::Unknown
                        };
                        ((*n).to_owned(), content)
                    })
                    .collect(),
            ),
        }
    }
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

/// Fills the node at `slot`.
struct Tracer<'t> {
    trace: &'t mut Trace,
    slot: usize,
    depth: usize,
}

impl<'t> Tracer<'t> {
    fn set(&mut self, node: Node) -> Result<(), Stop> {
        if self.depth > MAX_DEPTH {
            return Err(Stop);
        }
        self.trace.nodes[self.slot] = node;
        Ok(())
    }

    fn leaf(&mut self, shape: Shape) -> Result<(), Stop> {
        self.set(Node::Leaf(shape))
    }

    fn at(self, slot: usize) -> Tracer<'t> {
        Tracer {
            trace: self.trace,
            slot,
            depth: self.depth + 1,
        }
    }

    fn open(&self) -> bool {
        self.depth < OPEN_DEPTH
    }
}

fn int(signed: bool, bits: u8) -> Shape {
    Shape::Integer { signed, bits }
}

macro_rules! leaves {
    ($($method:ident => $visit:ident($($value:expr)?), $shape:expr;)*) => {
        $(
            fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Stop> {
                self.leaf($shape)?;
                visitor.$visit($($value)?)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Stop;

    leaves! {
        deserialize_bool => visit_bool(false), Shape::Bool;
        deserialize_i8 => visit_i8(1), int(true, 8);
        deserialize_i16 => visit_i16(1), int(true, 16);
        deserialize_i32 => visit_i32(1), int(true, 32);
        deserialize_i64 => visit_i64(1), int(true, 64);
        deserialize_i128 => visit_i128(1), int(true, 128);
        deserialize_u8 => visit_u8(1), int(false, 8);
        deserialize_u16 => visit_u16(1), int(false, 16);
        deserialize_u32 => visit_u32(1), int(false, 32);
        deserialize_u64 => visit_u64(1), int(false, 64);
        deserialize_u128 => visit_u128(1), int(false, 128);
        deserialize_f32 => visit_f32(1.0), Shape::Float;
        deserialize_f64 => visit_f64(1.0), Shape::Float;
        deserialize_char => visit_char('a'), Shape::Char;
        deserialize_str => visit_borrowed_str(""), Shape::Str;
        deserialize_string => visit_borrowed_str(""), Shape::Str;
        deserialize_bytes => visit_borrowed_bytes(&[]), Shape::Bytes;
        deserialize_byte_buf => visit_borrowed_bytes(&[]), Shape::Bytes;
        deserialize_unit => visit_unit(), Shape::Unit;
        deserialize_identifier => visit_borrowed_str(""), Shape::Str;
        deserialize_any => visit_unit(), Shape::Any;
        deserialize_ignored_any => visit_unit(), Shape::Any;
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Stop> {
        let slot = self.trace.slot()?;
        self.set(Node::Option(slot))?;
        match self.open() {
            true => visitor.visit_some(self.at(slot)),
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
        let slot = self.trace.slot()?;
        self.set(Node::Newtype(slot))?;
        visitor.visit_newtype_struct(self.at(slot))
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Stop> {
        let slot = self.trace.slot()?;
        self.set(Node::Seq(slot))?;
        let slots = if self.open() { vec![slot] } else { Vec::new() };
        visitor.visit_seq(Elements {
            tracer: self,
            slots,
            next: 0,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(mut self, len: usize, visitor: V) -> Result<V::Value, Stop> {
        let slots = (0..len).map(|_| self.trace.slot()).collect::<Result<Vec<_>, _>>()?;
        self.set(Node::Tuple(slots.clone()))?;
        visitor.visit_seq(Elements {
            tracer: self,
            slots,
            next: 0,
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
        let (key, value) = (self.trace.slot()?, self.trace.slot()?);
        self.set(Node::Map(key, value))?;
        let left = usize::from(self.open());
        visitor.visit_map(Entries {
            tracer: self,
            key,
            value,
            left,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let slots = fields
            .iter()
            .map(|f| self.trace.slot().map(|s| (*f, s)))
            .collect::<Result<Vec<_>, _>>()?;
        self.set(Node::Struct(slots.clone()))?;
        visitor.visit_map(Fields {
            tracer: self,
            fields: slots,
            next: 0,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        if variants.is_empty() {
            return Err(Stop);
        }
        self.trace.widest = self.trace.widest.max(variants.len());
        let taken = match self.open() {
            true => self.trace.pass.min(variants.len() - 1),
            false => 0,
        };
        let content = self.trace.slot()?;
        self.set(Node::Enum(variants, taken, content))?;
        let name = variants[taken];
        visitor.visit_enum(Variant {
            tracer: self.at(content),
            name,
        })
    }

    fn is_human_readable(&self) -> bool {
        true
    }
}

/// A sequence or tuple whose elements fill `slots` (a sequence: one slot, one element).
struct Elements<'t> {
    tracer: Tracer<'t>,
    slots: Vec<usize>,
    next: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Stop> {
        let Some(&slot) = self.slots.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let tracer = Tracer {
            trace: self.tracer.trace,
            slot,
            depth: self.tracer.depth + 1,
        };
        seed.deserialize(tracer).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.slots.len() - self.next)
    }
}

/// A map of `left` made-up entries, filling the key and value slots.
struct Entries<'t> {
    tracer: Tracer<'t>,
    key: usize,
    value: usize,
    left: usize,
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Stop> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let tracer = Tracer {
            trace: self.tracer.trace,
            slot: self.key,
            depth: self.tracer.depth + 1,
        };
        seed.deserialize(tracer).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let tracer = Tracer {
            trace: self.tracer.trace,
            slot: self.value,
            depth: self.tracer.depth + 1,
        };
        seed.deserialize(tracer)
    }
}

/// A struct's fields, each named by its key and made up as its type asks.
struct Fields<'t> {
    tracer: Tracer<'t>,
    fields: Vec<(&'static str, usize)>,
    next: usize,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Stop> {
        let Some(&(name, _)) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let (_, slot) = self.fields[self.next];
        self.next += 1;
        let tracer = Tracer {
            trace: self.tracer.trace,
            slot,
            depth: self.tracer.depth + 1,
        };
        seed.deserialize(tracer)
    }
}

/// The variant a pass takes; its content fills the enum's content slot.
struct Variant<'t> {
    tracer: Tracer<'t>,
    name: &'static str,
}

impl<'de, 't> de::EnumAccess<'de> for Variant<'t> {
    type Error = Stop;
    type Variant = Tracer<'t>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Tracer<'t>), Stop> {
        let value = seed.deserialize(self.name.into_deserializer())?;
        Ok((value, self.tracer))
    }
}

impl<'de> de::VariantAccess<'de> for Tracer<'_> {
    type Error = Stop;

    fn unit_variant(mut self) -> Result<(), Stop> {
        self.leaf(Shape::Unit)
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
    use serde_json::json;

    use super::{Shape, shape_of};

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
        Zero,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum ExprChangedLast {
        Lit(i64),
        Add(Box<ExprChangedLast>, Box<ExprChangedLast>),
        Neg { of: Box<ExprChangedLast>, twice: bool },
        Zero,
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
        let Shape::Enum(variants) = Shape::of::<Expr>() else {
            panic!("an enum")
        };
        let names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Lit", "Add", "Neg", "Zero"]);
        assert!(
            variants.iter().all(|(_, s)| *s != Shape::Unknown),
            "every variant traced: {variants:?}"
        );
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
        // The field list is known before any field is traced.
        assert_ne!(shape_of::<Strict>(), shape_of::<StrictMore>());
        assert_eq!(
            Shape::of::<Strict>(),
            Shape::Struct(vec![("id".into(), Shape::Str), ("name".into(), Shape::Unknown)])
        );
    }

    #[test]
    fn json_schemas_follow_serde() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        #[serde(rename_all = "camelCase")]
        struct Order {
            order_id: u64,
            lines: Vec<(String, u32)>,
            note: Option<String>,
            status: Status,
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        enum Status {
            Open,
            Shipped { carrier: String },
        }
        assert_eq!(
            Shape::of::<Order>().json_schema(),
            json!({
                "type": "object",
                "properties": {
                    "orderId": { "type": "integer", "minimum": 0 },
                    "lines": { "type": "array", "items": {
                        "type": "array",
                        "prefixItems": [{ "type": "string" }, { "type": "integer", "minimum": 0 }],
                        "minItems": 2, "maxItems": 2
                    }},
                    "note": { "anyOf": [{ "type": "string" }, { "type": "null" }] },
                    "status": { "oneOf": [
                        { "const": "Open" },
                        { "type": "object", "properties": { "Shipped": {
                            "type": "object",
                            "properties": { "carrier": { "type": "string" } },
                            "required": ["carrier"]
                        }}, "required": ["Shipped"], "additionalProperties": false }
                    ]}
                },
                "required": ["orderId", "lines", "status"]
            })
        );
        assert_eq!(Shape::of::<serde_json::Value>().json_schema(), json!({}));
        assert_eq!(
            Shape::of::<HashMap<String, f64>>().json_schema(),
            json!({ "type": "object", "additionalProperties": { "type": "number" } })
        );
    }
}
