//! JSON as JavaScript writes it: numbers in `Number.prototype.toString` form
//! (`6`, not `6.0`), so replies from a Rust handler are byte-identical to a NestJS one's.

use serde::Serialize;

/// serde_json's compact output, with floats written as JavaScript writes them.
#[derive(Clone, Copy, Default)]
struct JsFormatter;

impl serde_json::ser::Formatter for JsFormatter {
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, value: f64) -> std::io::Result<()> {
        w.write_all(ryu_js::Buffer::new().format_finite(value).as_bytes())
    }

    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, value: f32) -> std::io::Result<()> {
        self.write_f64(w, f64::from(value))
    }
}

/// Appends `value` as JSON to `out`, JavaScript style.
pub fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    write_to(out, value)
}

/// Writes `value` as JSON, JavaScript style.
pub fn write_to<W: std::io::Write, T: Serialize + ?Sized>(out: W, value: &T) -> serde_json::Result<()> {
    write_into(out, value).map(drop)
}

/// Writes `value` as JSON into `out`, JavaScript style, and hands `out` back.
pub(crate) fn write_into<W: std::io::Write, T: Serialize + ?Sized>(out: W, value: &T) -> serde_json::Result<W> {
    let mut ser = serde_json::Serializer::with_formatter(out, JsFormatter);
    value.serialize(&mut ser)?;
    Ok(ser.into_inner())
}

/// Serialises `value` to JSON bytes, JavaScript style.
///
/// ```
/// assert_eq!(switchboard::json::to_vec(&serde_json::json!({"result": 8.0})).unwrap(), br#"{"result":8}"#);
/// ```
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, JsFormatter))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_look_like_javascript() {
        let text = |v: serde_json::Value| String::from_utf8(super::to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            text(serde_json::json!([6.0, 1.5, 1e21, -0.0, 1e-7, 3])),
            "[6,1.5,1e+21,0,1e-7,3]"
        );
        assert_eq!(String::from_utf8(super::to_vec(&f64::NAN).unwrap()).unwrap(), "null");
    }
}
