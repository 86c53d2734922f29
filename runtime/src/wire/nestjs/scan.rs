//! Where a JSON value ends, without parsing it: how `packet` splits a NestJS packet by
//! hand. Sixteen bytes are classified at once (SSE2 on x86-64, a plain loop elsewhere), so
//! finding a value's end takes a step per quote and bracket, not one per byte.
//!
//! Strings and scalars are checked; objects and arrays are only found by nesting, their
//! insides checked by whoever reads them (the handler's decoding for `data`, the route
//! lookup or `Packet::check_pattern` for `pattern`).

/// Bits of one block of up to 16 bytes, bit `k` for the block's byte `k`.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Masks {
    quote: u32,
    backslash: u32,
    /// Below 0x20.
    control: u32,
    /// `{` and `[`.
    open: u32,
    /// `}` and `]`.
    close: u32,
}

impl Masks {
    /// What ends or breaks a string.
    fn string(&self) -> u32 {
        self.quote | self.backslash | self.control
    }

    fn shifted(self, by: usize) -> Masks {
        Masks {
            quote: self.quote >> by,
            backslash: self.backslash >> by,
            control: self.control >> by,
            open: self.open >> by,
            close: self.close >> by,
        }
    }
}

/// The block of `b` that starts at `i`: its masks and how many of its bytes lie in `b`
/// (16 but at the end). `None` at the end of `b`.
#[inline(always)]
fn block(b: &[u8], i: usize) -> Option<(Masks, usize)> {
    let left = b.len().checked_sub(i).filter(|&n| n > 0)?;
    if left >= 16 {
        return Some((classify(b[i..i + 16].try_into().ok()?), 16));
    }
    let m = match b.len().checked_sub(16) {
        // The last 16 bytes of `b`, shifted so that bit 0 is byte `i`: no copy.
        Some(start) => classify(b[start..].try_into().ok()?).shifted(i - start),
        // A slice shorter than a block: padded with spaces, which need no look.
        None => {
            let mut pad = [b' '; 16];
            pad[..left].copy_from_slice(&b[i..]);
            classify(&pad)
        }
    };
    Some((m, left))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classify(w: &[u8; 16]) -> Masks {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of x86-64; the load reads exactly the 16 bytes of `w`.
    unsafe {
        let v = _mm_loadu_si128(w.as_ptr().cast());
        let bits = |m: __m128i| _mm_movemask_epi8(m) as u32;
        let eq = |v: __m128i, c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        // Unsigned `v <= 0x1F`: SSE2 has no unsigned compare, but has an unsigned max.
        let control = eq(_mm_max_epu8(v, _mm_set1_epi8(0x1F)), 0x1F);
        // `[` and `{`, `]` and `}` differ only in 0x20.
        let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
        Masks {
            quote: bits(eq(v, b'"')),
            backslash: bits(eq(v, b'\\')),
            control: bits(control),
            open: bits(eq(folded, b'{')),
            close: bits(eq(folded, b'}')),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn classify(w: &[u8; 16]) -> Masks {
    classify_bytes(w)
}

/// [`classify`] a byte at a time: other targets, and the reference in tests.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn classify_bytes(w: &[u8; 16]) -> Masks {
    let mut m = Masks::default();
    for (k, &c) in w.iter().enumerate() {
        let bit = 1 << k;
        match c {
            b'"' => m.quote |= bit,
            b'\\' => m.backslash |= bit,
            0x00..=0x1F => m.control |= bit,
            _ => {}
        }
        match c | 0x20 {
            b'{' => m.open |= bit,
            b'}' => m.close |= bit,
            _ => {}
        }
    }
    m
}

/// End of the JSON value starting at `at`.
pub(super) fn value_end(b: &[u8], at: usize) -> Option<usize> {
    match *b.get(at)? {
        b'"' => string_end(b, at),
        b'{' | b'[' => nested_end(b, at),
        _ => scalar_end(b, at),
    }
}

/// End of the object or array starting at `at`, found by nesting outside strings.
fn nested_end(b: &[u8], at: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut i) = (0usize, false, at);
    loop {
        let (m, len) = block(b, i)?;
        if m.backslash != 0 {
            // An escape (rare): byte by byte through this block.
            match walk(b, (i, len), m, &mut depth, &mut in_string)? {
                Walked::End(end) => return Some(end),
                Walked::Next(next) => i = next,
            }
            continue;
        }
        // Without escapes every quote opens or closes a string: a prefix XOR of the quotes
        // marks the strings' bytes (an opening quote in, a closing one out).
        let inside = prefix_xor(m.quote) ^ if in_string { u32::MAX } else { 0 };
        if m.control & inside != 0 {
            return None;
        }
        let mut brackets = (m.open | m.close) & !inside;
        while brackets != 0 {
            let k = brackets.trailing_zeros();
            brackets &= brackets - 1;
            if m.open & (1 << k) != 0 {
                depth += 1;
            } else {
                depth -= 1;
                if depth == 0 {
                    return Some(i + k as usize + 1);
                }
            }
        }
        in_string = inside >> (len - 1) & 1 == 1;
        i += len;
    }
}

/// Bit `k` set where an odd number of bits `0..=k` of `x` are (its low 16 bits).
fn prefix_xor(mut x: u32) -> u32 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x
}

enum Walked {
    End(usize),
    Next(usize),
}

/// [`nested_end`] through the block at `i` a byte of interest at a time.
fn walk(b: &[u8], (i, len): (usize, usize), m: Masks, depth: &mut usize, in_string: &mut bool) -> Option<Walked> {
    let strings = m.string();
    let mut look = strings | m.open | m.close;
    while look != 0 {
        let k = look.trailing_zeros();
        let (p, bit) = (i + k as usize, 1 << k);
        look &= look - 1;
        if *in_string {
            match b[p] {
                _ if strings & bit == 0 => {} // a bracket inside a string
                b'"' => *in_string = false,
                // Go on after the escape, which may end past this block.
                b'\\' => return Some(Walked::Next(escape_end(b, p)?)),
                _ => return None,
            }
        } else if m.open & bit != 0 {
            *depth += 1;
        } else if m.close & bit != 0 {
            *depth -= 1;
            if *depth == 0 {
                return Some(Walked::End(p + 1));
            }
        } else if b[p] == b'"' {
            *in_string = true;
        }
        // A stray `\` or control byte outside strings is left to whoever reads the value.
    }
    Some(Walked::Next(i + len))
}

/// End of a JSON string starting at `at` (a `"`); control characters make it invalid.
pub(super) fn string_end(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        let (m, len) = block(b, i)?;
        let look = m.string();
        if look == 0 {
            i += len;
            continue;
        }
        let p = i + look.trailing_zeros() as usize;
        match b[p] {
            b'"' => return Some(p + 1),
            b'\\' => i = escape_end(b, p)?,
            _ => return None,
        }
    }
}

/// End of the escape at `p` (a `\`). Only JSON's escapes: an `id` is echoed back verbatim
/// and must stay valid JSON.
fn escape_end(b: &[u8], p: usize) -> Option<usize> {
    match b.get(p + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(p + 2),
        b'u' if b.get(p + 2..p + 6)?.iter().all(u8::is_ascii_hexdigit) => Some(p + 6),
        _ => None,
    }
}

/// Where JSON whitespace from `at` ends.
#[inline(always)]
pub(super) fn skip_space(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// End of a JSON string, number, `true`, `false` or `null` starting at `at`, checked.
pub(super) fn scalar_end(b: &[u8], at: usize) -> Option<usize> {
    if *b.get(at)? == b'"' {
        return string_end(b, at);
    }
    let len = b[at..]
        .iter()
        .position(|&c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))?;
    let token = &b[at..at + len];
    let valid = matches!(token, b"true" | b"false" | b"null") || is_json_number(token);
    valid.then_some(at + len)
}

/// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(t: &[u8]) -> bool {
    let digits = |t: &[u8], i: usize| i + t[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = usize::from(t.first() == Some(&b'-'));
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(t, i),
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        let j = digits(t, i + 1);
        if j == i + 1 {
            return false;
        }
        i = j;
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let j = digits(t, i);
        if j == i {
            return false;
        }
        i = j;
    }
    i == t.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_classified_like_a_byte_loop() {
        // Every byte value, at every position of a block.
        for c in 0..=255u8 {
            for k in 0..16 {
                let mut w = *b"a{b}c[d]e\"f\\g h\n";
                w[k] = c;
                assert_eq!(classify(&w), classify_bytes(&w), "byte {c:#x} at {k}");
            }
        }
    }

    #[test]
    fn strings_end_at_their_closing_quote_wherever_it_falls() {
        for pad in 0..40 {
            let fill = "a".repeat(pad);
            let ok = [
                format!(r#""{fill}""#),
                format!(r#""{fill}\"x""#),
                format!(r#""{fill}\\""#),
                format!(r#""{fill}\u00e9é""#),
                format!(r#""{fill}{{[}}]""#),
            ];
            for text in ok {
                for tail in ["", ",", r#","id":"0123456789abcdef"}"#] {
                    let b = format!("{text}{tail}").into_bytes();
                    assert_eq!(string_end(&b, 0), Some(text.len()), "{text}{tail}");
                }
            }
            for bad in [
                format!("\"{fill}\u{1}\""),
                format!(r#""{fill}\x""#),
                format!(r#""{fill}\u12g4""#),
                format!(r#""{fill}"#),
                format!(r#""{fill}\"#),
            ] {
                assert_eq!(string_end(bad.as_bytes(), 0), None, "{bad:?}");
            }
        }
    }

    #[test]
    fn objects_and_arrays_end_at_their_closing_bracket() {
        for pad in 0..40 {
            let fill = "a".repeat(pad);
            let ok = [
                format!(r#"{{"{fill}":1}}"#),
                format!(r#"{{"k":"{fill}}}]\"{{","n":[1,{{"x":[]}}]}}"#),
                format!(r#"[{fill:?},"\\",{{}},[[]]]"#),
                format!(r#"{{ "k" : "\u00e9{fill}\n" }}"#),
                format!(r#"{{"k":"{fill}}}]{{[","l":["]"]}}"#),
            ];
            for text in ok {
                for tail in ["", "}", r#","id":"0123456789abcdef"}"#] {
                    let b = format!("{text}{tail}").into_bytes();
                    assert_eq!(value_end(&b, 0), Some(text.len()), "{text}{tail}");
                    // Where it starts inside a longer slice.
                    let b = format!(r#"{{"data":{text}{tail}"#).into_bytes();
                    assert_eq!(value_end(&b, 8), Some(8 + text.len()), "{text}{tail}");
                }
            }
            for bad in [
                format!(r#"{{"{fill}":1"#),
                format!(r#"{{"{fill}}}"#),
                format!("[\"{fill}\u{1}\"]"),
                format!(r#"["{fill}\q"]"#),
            ] {
                assert_eq!(value_end(bad.as_bytes(), 0), None, "{bad:?}");
            }
        }
    }

    #[test]
    fn random_json_ends_where_serde_says() {
        // A small xorshift: the same values on every run.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        fn value(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> serde_json::Value {
            const CHARS: [char; 12] = ['a', '"', '\\', '{', '}', '[', ']', 'é', '\n', '\u{1}', ' ', '😀'];
            match next(if depth > 3 { 3 } else { 5 }) {
                0 => serde_json::Value::from(next(1000) as i64 - 500),
                1 | 2 => (0..next(40))
                    .map(|_| CHARS[next(12) as usize])
                    .collect::<String>()
                    .into(),
                3 => (0..next(5)).map(|_| value(next, depth + 1)).collect(),
                _ => (0..next(5))
                    .map(|k| (format!("k{k}{}", CHARS[next(12) as usize]), value(next, depth + 1)))
                    .collect(),
            }
        }
        for _ in 0..3000 {
            let v = value(&mut next, 0);
            for text in [
                serde_json::to_string(&v).unwrap(),
                serde_json::to_string_pretty(&v).unwrap(),
            ] {
                for tail in [",", r#"}"#, r#","id":"0123456789abcdef"}"#] {
                    let b = format!("{text}{tail}").into_bytes();
                    assert_eq!(value_end(&b, 0), Some(text.len()), "{text}{tail}");
                }
            }
        }
    }

    #[test]
    fn scalars_are_checked() {
        for (text, end) in [
            ("12,", Some(2)),
            ("-0.5e+3}", Some(7)),
            ("true]", Some(4)),
            ("null ", Some(4)),
        ] {
            assert_eq!(value_end(text.as_bytes(), 0), end, "{text}");
        }
        for bad in ["01,", "1.,", "-,", "tru,", "1e,", "7"] {
            assert_eq!(value_end(bad.as_bytes(), 0), None, "{bad}");
        }
    }
}
