//! Tab completion: command names, then the service's patterns (from its description: requests
//! after `call`, events after `emit`, both after `listen`), then `--flags`; and, once a pattern
//! is typed, its payload's type as a dimmed hint.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};
use serde_json::Value;
use switchboard::server::describe::Description;

use super::commands::{COMMANDS, flags, words};

/// The patterns of the service the REPL is connected to, as they are typed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Patterns {
    pub requests: Vec<String>,
    pub events: Vec<String>,
    /// Each pattern's payload type in a line, when the service gave its schema.
    pub payloads: BTreeMap<String, String>,
}

impl Patterns {
    /// The patterns `description` lists.
    pub fn of(description: &Description) -> Self {
        let mut patterns = Patterns::default();
        for described in &description.patterns {
            let typed = typed(&described.pattern);
            let list = match described.kind.as_str() {
                "event" => &mut patterns.events,
                _ => &mut patterns.requests,
            };
            if let Some(schema) = &described.payload {
                patterns.payloads.insert(typed.clone(), crate::describe::brief(schema));
            }
            if !list.contains(&typed) {
                list.push(typed);
            }
        }
        patterns
    }
}

/// A pattern as it is typed: a text pattern as the word when the word reads back as that
/// text, anything else as JSON (`{"cmd":"sum"}`, `"two words"`, `"42"`).
fn typed(pattern: &Value) -> String {
    match pattern {
        Value::String(s)
            if !s.is_empty()
                && !s.starts_with(['{', '[', '"'])
                && !s.contains(char::is_whitespace)
                && crate::input::pattern(s) == *pattern =>
        {
            s.clone()
        }
        other => other.to_string(),
    }
}

/// The line editor's helper: completion from the patterns it shares with the session (which
/// updates them on `connect` and `describe`).
pub struct ReplHelper {
    patterns: Arc<Mutex<Patterns>>,
    /// Whether hints are dimmed.
    color: bool,
}

impl ReplHelper {
    pub fn new(patterns: Arc<Mutex<Patterns>>, color: bool) -> Self {
        ReplHelper { patterns, color }
    }

    /// The payload's type after `call PATTERN ` or `emit PATTERN `, when nothing follows yet.
    fn payload_hint(&self, line: &str, pos: usize) -> Option<String> {
        if pos != line.len() || !line.ends_with(' ') {
            return None;
        }
        let words = words(line);
        match words.as_slice() {
            [(_, "call" | "emit"), (_, pattern)] => {
                let patterns = self.patterns.lock().unwrap_or_else(PoisonError::into_inner);
                patterns.payloads.get(*pattern).cloned()
            }
            _ => None,
        }
    }

    /// The candidates for the word that ends at `pos`, and where that word starts.
    fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        let before = &line[..pos];
        let mut words = words(before);
        // At white space a new word starts, empty so far.
        if before.is_empty() || before.ends_with(char::is_whitespace) {
            words.push((pos, ""));
        }
        let Some(&(start, word)) = words.last() else {
            return (pos, Vec::new());
        };
        let index = words.len() - 1;
        let command = words[0].1;
        let all: Vec<String> = if index == 0 {
            COMMANDS.iter().map(|(name, _, _)| (*name).to_owned()).collect()
        } else if word.starts_with('-') {
            flags(command).iter().map(|(flag, _)| (*flag).to_owned()).collect()
        } else if flags(command)
            .iter()
            .any(|(flag, takes_value)| *takes_value && words[index - 1].1 == *flag)
        {
            // A flag's value: nothing known to offer.
            Vec::new()
        } else {
            let patterns = self.patterns.lock().unwrap_or_else(PoisonError::into_inner);
            match (command, index) {
                ("call", 1) => patterns.requests.clone(),
                ("emit", 1) => patterns.events.clone(),
                ("listen", _) => patterns.requests.iter().chain(&patterns.events).cloned().collect(),
                _ => Vec::new(),
            }
        };
        let mut matching: Vec<String> = all.into_iter().filter(|c| c.starts_with(word)).collect();
        matching.sort();
        matching.dedup();
        (start, matching)
    }
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, candidates) = self.candidates(line, pos);
        let only = candidates.len() == 1;
        let pairs = candidates
            .into_iter()
            .map(|c| Pair {
                // One candidate: completed, and the next word can start.
                replacement: if only { format!("{c} ") } else { c.clone() },
                display: c,
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<String> {
        self.payload_hint(line, pos)
    }
}

impl Highlighter for ReplHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        if self.color {
            Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
        } else {
            Cow::Borrowed(hint)
        }
    }
}

impl Validator for ReplHelper {}

impl Helper for ReplHelper {}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn helper() -> ReplHelper {
        let description: Description = serde_json::from_value(json!({
            "name": "shop",
            "version": null,
            "patterns": [
                { "pattern": {"cmd": "order.place"}, "route": "{cmd:order.place}", "kind": "request",
                  "handler": "shop::place", "policy": {},
                  "payload": { "type": "object", "properties": { "id": { "type": "string" } }, "required": ["id"] } },
                { "pattern": "order.placed", "route": "order.placed", "kind": "event",
                  "handler": "shop::placed", "policy": {} },
                { "pattern": "order.count", "route": "order.count", "kind": "request",
                  "handler": "shop::count", "policy": {} },
            ]
        }))
        .unwrap();
        ReplHelper::new(Arc::new(Mutex::new(Patterns::of(&description))), false)
    }

    fn complete(line: &str) -> (usize, Vec<String>) {
        helper().candidates(line, line.len())
    }

    #[test]
    fn commands_then_patterns_by_kind_then_flags() {
        assert_eq!(complete("ca"), (0, vec!["call".to_owned()]));
        assert_eq!(complete("").1.len(), COMMANDS.len());
        assert_eq!(
            complete("call order."),
            (5, vec!["order.count".to_owned()]),
            "requests only"
        );
        assert_eq!(
            complete("emit order."),
            (5, vec!["order.placed".to_owned()]),
            "events only"
        );
        assert_eq!(
            complete("call {\"cmd\": \"o").1,
            Vec::<String>::new(),
            "JSON as the service wrote it"
        );
        assert_eq!(
            complete("call {\"cmd\":\"o"),
            (5, vec!["{\"cmd\":\"order.place\"}".to_owned()])
        );
        assert_eq!(
            complete("listen order.count ").1,
            ["order.count", "order.placed", "{\"cmd\":\"order.place\"}"]
        );
        assert_eq!(complete("call order.count 1 --h"), (19, vec!["--header".to_owned()]));
        assert!(complete("call order.count 1 -t ").1.is_empty(), "a flag's value");
        assert!(complete("call order.count ").1.is_empty(), "no payload to offer");
        assert_eq!(complete("describe --").1, ["--json", "--schemas"]);
    }

    #[test]
    fn the_payload_type_as_a_hint() {
        let helper = helper();
        let hint = |line: &str| helper.payload_hint(line, line.len());
        assert_eq!(hint("call {\"cmd\":\"order.place\"} ").as_deref(), Some("{id: string}"));
        assert_eq!(hint("call {\"cmd\":\"order.place\"}"), None, "not before the space");
        assert_eq!(
            hint("call {\"cmd\":\"order.place\"} {"),
            None,
            "not once the payload starts"
        );
        assert_eq!(hint("call order.count "), None, "no schema, no hint");
    }
}
