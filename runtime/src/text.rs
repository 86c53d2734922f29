//! Text that came from a remote peer, made safe to show: bounded (an attacker's megabytes
//! never come back in an error reply or fill a log), escaped (a newline cannot forge a log
//! line), and without Rust type names (which tell a caller nothing and leak internals).

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest remote text shown in a log field.
const LOG_MAX: usize = 160;
/// Bytes kept from each end of a long error message.
const ERROR_END: usize = 120;

/// Remote text for a log line: control characters escaped, cut after [`LOG_MAX`] bytes.
pub(crate) fn for_log(text: &str) -> impl fmt::Display + '_ {
    struct Escaped<'a>(&'a str);
    impl fmt::Display for Escaped<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut written = 0;
            for c in self.0.chars() {
                if written >= LOG_MAX {
                    return write!(f, "… ({} bytes)", self.0.len());
                }
                written += c.len_utf8();
                // Control characters, and the invisible ones that reorder or hide text.
                if c.is_control()
                    || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
                {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    f.write_char(c)?;
                }
            }
            Ok(())
        }
    }
    Escaped(text)
}

/// At most so many log lines a second for one kind of remote mistake (a flood of unknown
/// patterns must not become a flood of warnings); the lines held back are counted.
pub(crate) struct Throttle {
    per_second: u32,
    second: AtomicU64,
    count: AtomicU32,
    held_back: AtomicU64,
}

impl Throttle {
    pub(crate) const fn new(per_second: u32) -> Self {
        Throttle {
            per_second,
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when this line may be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let second = self.second.load(Ordering::Relaxed);
        if now != second
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A payload's decoding error as a caller may see it: serde's message with any value it
/// quotes cut to its ends, and `struct Foo`-style expectations said in JSON's words.
pub(crate) fn payload_error(e: &(impl fmt::Display + ?Sized)) -> String {
    let mut ends = Ends::default();
    // `Ends` never fails; serde's message is written once, without a copy of its length.
    let _ = write!(ends, "{e}");
    json_words(&ends.finish())
}

/// True when `e`'s message starts with `prefix`, without writing out the rest of it.
pub(crate) fn starts_with(e: &impl fmt::Display, prefix: &str) -> bool {
    struct Head<'a>(String, &'a str);
    impl fmt::Write for Head<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                if self.0.len() >= self.1.len() {
                    // Enough read: stop the formatting.
                    return Err(fmt::Error);
                }
                self.0.push(c);
            }
            Ok(())
        }
    }
    let mut head = Head(String::new(), prefix);
    let _ = write!(head, "{e}");
    head.0.starts_with(prefix)
}

/// The first and last [`ERROR_END`] bytes of what is written, and how much was cut.
#[derive(Default)]
struct Ends {
    head: String,
    tail: std::collections::VecDeque<char>,
    tail_len: usize,
    cut: usize,
}

impl fmt::Write for Ends {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.head.len() < ERROR_END {
                self.head.push(c);
                continue;
            }
            self.tail.push_back(c);
            self.tail_len += c.len_utf8();
            while self.tail_len > ERROR_END {
                let old = self.tail.pop_front().expect("not empty");
                self.tail_len -= old.len_utf8();
                self.cut += old.len_utf8();
            }
        }
        Ok(())
    }
}

impl Ends {
    fn finish(self) -> String {
        let tail: String = self.tail.into_iter().collect();
        match self.cut {
            0 => self.head + &tail,
            cut => format!("{}…({cut} bytes)…{tail}", self.head),
        }
    }
}

/// serde's names for a Rust type, after "expected", in JSON's words.
fn json_words(message: &str) -> String {
    const SHAPES: [(&str, &str); 4] = [
        ("tuple struct ", "an array"),
        ("unit struct ", "null"),
        ("struct ", "an object"),
        ("enum ", "one of its variants"),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("expected ") {
        let after = at + "expected ".len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        if let Some((prefix, words)) = SHAPES.iter().find(|(p, _)| rest.starts_with(p)) {
            let name = &rest[prefix.len()..];
            let end = name
                .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | ':' | '<' | '>')))
                .unwrap_or(name.len());
            out.push_str(words);
            rest = &name[end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct AddRequest {
        a: i64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Pair(i64, i64);

    #[test]
    fn a_huge_value_is_cut_and_type_names_are_gone() {
        let huge = format!("\"{}\"", "x".repeat(1_000_000));
        let e = serde_json::from_str::<AddRequest>(&huge).unwrap_err();
        let shown = payload_error(&e);
        assert!(shown.len() < 2 * ERROR_END + 40, "{} bytes", shown.len());
        assert!(shown.starts_with("invalid type: string \"xxx"), "{shown}");
        assert!(
            shown.ends_with("expected an object at line 1 column 1000002"),
            "{shown}"
        );
        assert!(!shown.contains("AddRequest"), "{shown}");

        let e = serde_json::from_str::<Pair>("{}").unwrap_err();
        assert_eq!(
            payload_error(&e),
            "invalid type: map, expected an array at line 1 column 0"
        );
        let e = serde_json::from_str::<AddRequest>("{}").unwrap_err();
        assert_eq!(payload_error(&e), "missing field `a` at line 1 column 2");
    }

    #[test]
    fn a_throttle_lets_so_many_through_and_counts_the_rest() {
        let t = Throttle::new(3);
        let allowed: Vec<_> = (0..10).map(|_| t.allow()).collect();
        // The second may turn over in between; then more get through, never fewer.
        assert!(allowed.iter().filter(|a| a.is_some()).count() >= 3);
        if allowed[3].is_none() {
            assert_eq!(t.held_back.load(Ordering::Relaxed), 7);
        }
    }

    #[test]
    fn a_message_s_start_is_read_without_the_rest() {
        let e = serde_json::from_str::<AddRequest>(r#"{"a":1,"a":2}"#).unwrap_err();
        assert!(starts_with(&e, "duplicate field"));
        assert!(!starts_with(&e, "invalid type"));
    }

    #[test]
    fn log_text_is_escaped_and_bounded() {
        assert_eq!(for_log("a\nINFO forged").to_string(), "a\\nINFO forged");
        assert_eq!(for_log("evil\u{202E}txt").to_string(), "evil\\u{202e}txt");
        let long = "é".repeat(1000);
        let shown = for_log(&long).to_string();
        assert!(shown.len() < LOG_MAX + 32, "{}", shown.len());
        assert!(shown.ends_with("… (2000 bytes)"), "{shown}");
    }
}
