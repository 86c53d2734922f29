//! [`Local`]: a value handed over in-process instead of encoded, as a `mem://` call's payload
//! or reply (Moleculer's local calls pass objects the same way). Either side still gets JSON
//! when it wants another type than the one sent.

use std::any::Any;
use std::fmt;

use bytes::Bytes;
use serde::Serialize;

/// A value of some `Serialize` type, not encoded yet.
pub struct Local {
    value: Box<dyn Any + Send>,
    to_json: fn(&(dyn Any + Send)) -> serde_json::Result<Bytes>,
    to_msgpack: fn(&(dyn Any + Send)) -> Result<Bytes, crate::wire::msgpack::MsgPackError>,
    type_name: &'static str,
}

impl Local {
    /// Wraps a value.
    pub(crate) fn new<T: Serialize + Send + 'static>(value: T) -> Self {
        Local {
            value: Box::new(value),
            to_json: |v| {
                let v = v.downcast_ref::<T>().expect("a Local keeps the type it was made with");
                super::to_json(v)
            },
            to_msgpack: |v| {
                let v = v.downcast_ref::<T>().expect("a Local keeps the type it was made with");
                crate::wire::msgpack::to_msgpack(v)
            },
            type_name: std::any::type_name::<T>(),
        }
    }

    /// The value, if it is a `T`; itself otherwise.
    pub(crate) fn take<T: 'static>(self) -> Result<T, Local> {
        match self.value.downcast::<T>() {
            Ok(v) => Ok(*v),
            Err(value) => Err(Local { value, ..self }),
        }
    }

    /// The value as JSON, as JavaScript would write it.
    pub(crate) fn to_json(&self) -> serde_json::Result<Bytes> {
        (self.to_json)(&*self.value)
    }

    /// The value as MessagePack (`?codec=msgpack`), straight from the value.
    pub(crate) fn to_msgpack(&self) -> Result<Bytes, crate::wire::msgpack::MsgPackError> {
        (self.to_msgpack)(&*self.value)
    }
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Local({})", self.type_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_as_its_type_or_encoded_for_another() {
        let v = Local::new(vec![1u8, 2]);
        let v = v.take::<String>().unwrap_err();
        assert_eq!(v.to_json().unwrap(), Bytes::from_static(b"[1,2]"));
        assert_eq!(v.to_msgpack().unwrap(), Bytes::from_static(&[0x92, 1, 2]));
        assert_eq!(v.take::<Vec<u8>>().unwrap(), [1, 2]);
    }
}
