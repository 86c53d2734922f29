//! One line of the REPL read as a command: `call {"cmd":"sum"} [1, 2, 3] -H tenant=acme`.
//!
//! A line is split into words at white space, except inside JSON: a word that starts with `{`,
//! `[` or `"` runs to its matching end, so patterns and payloads may contain spaces. After the
//! pattern, everything up to the first known flag is the payload.

use std::time::Duration;

use serde_json::Value;

use crate::input;
use crate::outcome::Failure;

/// The commands, each with its usage and what it does: for `help` and completion.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "call",
        "call PATTERN [PAYLOAD] [-H NAME=VALUE]... [-t DURATION]",
        "sends a request, prints each value of the reply (Ctrl-C cancels)",
    ),
    (
        "emit",
        "emit PATTERN [PAYLOAD] [-H NAME=VALUE]... [-t DURATION]",
        "emits an event",
    ),
    (
        "listen",
        "listen [PATTERN]... [-n COUNT] [--json]",
        "prints what passes on the broker until Ctrl-C (Redis, NATS, MQTT, Kafka)",
    ),
    (
        "describe",
        "describe [--schemas] [--json]",
        "shows what the service serves (and learns its patterns for Tab)",
    ),
    ("connect", "connect URL", "switches to another service"),
    (
        "timeout",
        "timeout [DURATION]",
        "shows or sets how long calls wait: 500ms, 5s, 1m",
    ),
    (
        "header",
        "header [NAME=VALUE | --clear [NAME]]",
        "shows, sets or clears the headers sent with every call and event",
    ),
    ("help", "help", "this list"),
    ("exit", "exit", "leaves (so does Ctrl-D)"),
];

/// What a line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Nothing (an empty line).
    Nothing,
    /// `call`: a request.
    Call(Message),
    /// `emit`: an event.
    Emit(Message),
    /// `listen`: the patterns (none: everything), how many messages, as JSON lines.
    Listen {
        patterns: Vec<Value>,
        count: Option<usize>,
        json: bool,
    },
    /// `describe`.
    Describe { schemas: bool, json: bool },
    /// `connect URL`.
    Connect(String),
    /// `timeout [DURATION]`: set, or show when `None`.
    Timeout(Option<Duration>),
    /// `header …`.
    Header(HeaderChange),
    /// `help`.
    Help,
    /// `exit` or `quit`.
    Exit,
}

/// Whether a line carries a secret (a password in a URL, an authorization header, a payload's
/// `password`), parsed or not: such a line is kept out of the history file, as redis-cli keeps
/// no `AUTH`.
pub fn holds_secret(line: &str) -> bool {
    let quotes = ['"', '\''];
    line.split_whitespace().any(|word| {
        let word = word.trim_matches(quotes);
        // `name:value` and `name=value` pieces: headers, and a JSON payload's members.
        let named = word.split([',', '{', '}', '[', ']']).any(|piece| {
            let piece = piece.trim_matches(quotes);
            piece
                .split_once([':', '='])
                .is_some_and(|(name, _)| switchboard::transport::is_secret_name(name.trim_matches(quotes)))
        });
        named || switchboard::transport::redact(word) != word
    })
}

/// A call or an event to send.
#[derive(Debug, PartialEq)]
pub struct Message {
    pub pattern: Value,
    pub payload: Value,
    /// `-H` headers of this line only (on top of the sticky ones).
    pub headers: Vec<(String, String)>,
    /// `-t`: this line's deadline instead of the session's.
    pub timeout: Option<Duration>,
}

/// What `header` does to the sticky headers.
#[derive(Debug, PartialEq)]
pub enum HeaderChange {
    Show,
    Set(String, String),
    Remove(String),
    Clear,
}

/// The flags of `command`, each with whether it takes a value.
pub fn flags(command: &str) -> &'static [(&'static str, bool)] {
    match command {
        "call" | "emit" => &[("-H", true), ("--header", true), ("-t", true), ("--timeout", true)],
        "listen" => &[("-n", true), ("--count", true), ("--json", false)],
        "describe" => &[("--schemas", false), ("--json", false)],
        "header" => &[("--clear", false)],
        _ => &[],
    }
}

/// Reads one line.
pub fn parse(line: &str) -> Result<Command, Failure> {
    let words = words(line);
    let Some(&(_, command)) = words.first() else {
        return Ok(Command::Nothing);
    };
    let known = flags(command);
    // The words before the first flag, and the flags with their values.
    let first_flag = words
        .iter()
        .skip(1)
        .position(|(_, w)| is_flag(known, w))
        .map_or(words.len(), |i| i + 1);
    let mut given = read_flags(command, known, &words[first_flag..])?;
    // Words after the flags count with the words before them (`header --clear tenant`), but
    // a payload goes before the flags.
    let mut args: Vec<(usize, &str)> = words[1..first_flag].to_vec();
    args.append(&mut given.after);
    let no_more = |max: usize| match args.get(max) {
        Some((_, extra)) => Err(Failure::usage(format!("`{command}` does not take {extra:?}"))),
        None => Ok(()),
    };
    let command = match command {
        "call" | "emit" => {
            let flags_at = words.get(first_flag).map_or(line.len(), |&(at, _)| at);
            if let Some(&(_, extra)) = args.iter().find(|&&(at, _)| at > flags_at) {
                return Err(Failure::usage(format!(
                    "{extra:?} after the flags: the payload goes right after the pattern"
                )));
            }
            let Some(&(pattern_at, pattern)) = args.first() else {
                return Err(Failure::usage(format!(
                    "`{command}` needs a pattern: {}",
                    usage(command)
                )));
            };
            // The payload: the text between the pattern and the flags, spaces and all.
            let payload_text = line[pattern_at + pattern.len()..flags_at].trim();
            let message = Message {
                pattern: input::pattern(pattern),
                payload: payload(payload_text)?,
                headers: given.headers,
                timeout: given.timeout,
            };
            if command == "call" {
                Command::Call(message)
            } else {
                Command::Emit(message)
            }
        }
        "listen" => Command::Listen {
            patterns: args.iter().map(|(_, p)| input::pattern(p)).collect(),
            count: given.count,
            json: given.json,
        },
        "describe" => {
            no_more(0)?;
            Command::Describe {
                schemas: given.schemas,
                json: given.json,
            }
        }
        "connect" => {
            no_more(1)?;
            let (_, url) = args
                .first()
                .ok_or_else(|| Failure::usage(format!("`connect` needs a URL: {}", usage("connect"))))?;
            Command::Connect((*url).to_owned())
        }
        "timeout" => {
            no_more(1)?;
            Command::Timeout(args.first().map(|(_, d)| input::duration(d)).transpose()?)
        }
        "header" => {
            no_more(1)?;
            let arg = args.first().map(|(_, a)| unquote(a));
            Command::Header(match (given.clear, arg) {
                (true, Some(name)) => HeaderChange::Remove(name),
                (true, None) => HeaderChange::Clear,
                (false, Some(pair)) => {
                    let (name, value) = input::header(&pair)?;
                    HeaderChange::Set(name, value)
                }
                (false, None) => HeaderChange::Show,
            })
        }
        "help" | "?" => Command::Help,
        "exit" | "quit" => Command::Exit,
        other => {
            return Err(Failure::usage(format!("no command `{other}`: `help` lists them")));
        }
    };
    Ok(command)
}

/// The usage line of `command`.
pub fn usage(command: &str) -> &'static str {
    COMMANDS
        .iter()
        .find(|(name, _, _)| *name == command)
        .map_or("", |(_, usage, _)| usage)
}

/// The payload: `null` when there is none (as NestJS sends `undefined`), else JSON.
fn payload(text: &str) -> Result<Value, Failure> {
    match text {
        "" => Ok(Value::Null),
        // On the command line `-` reads stdin; here stdin is the terminal.
        "-" => Err(Failure::usage(
            "the REPL reads no payload from stdin: write it on the line",
        )),
        text => input::payload(Some(text)),
    }
}

#[derive(Default)]
struct Given<'a> {
    /// Words that belong to no flag.
    after: Vec<(usize, &'a str)>,
    headers: Vec<(String, String)>,
    timeout: Option<Duration>,
    count: Option<usize>,
    json: bool,
    schemas: bool,
    clear: bool,
}

fn is_flag(known: &[(&str, bool)], word: &str) -> bool {
    let name = word.split_once('=').map_or(word, |(name, _)| name);
    known.iter().any(|(flag, _)| *flag == name)
}

fn read_flags<'a>(command: &str, known: &[(&str, bool)], words: &[(usize, &'a str)]) -> Result<Given<'a>, Failure> {
    let mut given = Given::default();
    let mut words = words.iter().copied();
    while let Some((at, word)) = words.next() {
        if !word.starts_with('-') {
            given.after.push((at, word));
            continue;
        }
        let (name, inline) = match word.split_once('=') {
            Some((name, value)) if name.starts_with('-') => (name, Some(value.to_owned())),
            _ => (word, None),
        };
        let Some(&(flag, takes_value)) = known.iter().find(|(flag, _)| *flag == name) else {
            return Err(Failure::usage(format!(
                "`{command}` does not take {word:?}: {}",
                usage(command)
            )));
        };
        let value = match (takes_value, inline) {
            (false, None) => String::new(),
            (false, Some(_)) => return Err(Failure::usage(format!("{flag} takes no value"))),
            (true, Some(value)) => value,
            (true, None) => words
                .next()
                .map(|(_, value)| unquote(value))
                .ok_or_else(|| Failure::usage(format!("{flag} needs a value")))?,
        };
        match flag {
            "-H" | "--header" => given.headers.push(input::header(&value)?),
            "-t" | "--timeout" => given.timeout = Some(input::duration(&value)?),
            "-n" | "--count" => {
                given.count = Some(
                    value
                        .parse()
                        .map_err(|_| Failure::usage(format!("{flag} {value:?} is not a count")))?,
                );
            }
            "--json" => given.json = true,
            "--schemas" => given.schemas = true,
            "--clear" => given.clear = true,
            _ => unreachable!("every known flag is handled"),
        }
    }
    Ok(given)
}

/// A word without its double quotes, when it is a JSON string (`"tenant=acme corp"`).
fn unquote(word: &str) -> String {
    match serde_json::from_str::<Value>(word) {
        Ok(Value::String(s)) if word.starts_with('"') => s,
        _ => word.to_owned(),
    }
}

/// The words of `line` with where each starts: white space separates them, except inside a
/// word that starts with `{`, `[` or `"`, which runs to its matching end (or the end of the
/// line, when it is not closed yet).
pub fn words(line: &str) -> Vec<(usize, &str)> {
    let mut words = Vec::new();
    let mut at = 0;
    while at < line.len() {
        let rest = &line[at..];
        let skipped = rest.len() - rest.trim_start().len();
        at += skipped;
        if at >= line.len() {
            break;
        }
        let len = word_len(&line[at..]);
        words.push((at, &line[at..at + len]));
        at += len;
    }
    words
}

/// The length of the word at the start of `text` (which starts with no white space).
fn word_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let nested = matches!(bytes.first(), Some(b'{' | b'[' | b'"'));
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' if nested => in_string = true,
            b'{' | b'[' if nested => depth += 1,
            b'}' | b']' if nested => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            b if b.is_ascii_whitespace() && (!nested || depth == 0) => return i,
            _ => {}
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lines_with_secrets_are_known() {
        let secret = holds_secret;
        assert!(secret("connect redis://:s3cret@127.0.0.1:6379"));
        assert!(secret("connect nats://s3cret@127.0.0.1:4222"));
        assert!(secret("connect nats://127.0.0.1:4222?token=s3cret"));
        assert!(secret(r#"header "Authorization: Bearer x""#));
        assert!(secret("header x-api-key:k"));
        assert!(secret(r#"call sum [1] -H "x-auth-token:t""#));
        assert!(!secret("connect tcp://127.0.0.1:3001"));
        assert!(!secret("header tenant:acme"));
        assert!(!secret("header --clear authorization"));
        assert!(!secret("call sum [1] -H tenant:acme"));
        // Lines that do not parse, too.
        assert!(secret("connect redis://:pw@h extra"));
        assert!(secret("call s [1] -H authorization:t -t bad"));
        assert!(secret(r#"call login {"user":"ada","password":"pw"}"#));
        assert!(!secret(r#"call {"cmd":"sum"} [1,2]"#));
    }

    fn message(line: &str) -> Message {
        match parse(line).unwrap() {
            Command::Call(m) | Command::Emit(m) => m,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn json_with_spaces_stays_one_word() {
        let m = message(r#"call {"cmd": "sum"} [1, 2, 3] -H tenant=acme -t 2s"#);
        assert_eq!(m.pattern, json!({"cmd": "sum"}));
        assert_eq!(m.payload, json!([1, 2, 3]));
        assert_eq!(m.headers, [("tenant".to_owned(), "acme".to_owned())]);
        assert_eq!(m.timeout, Some(Duration::from_secs(2)));

        let m = message(r#"emit user_created {"id": 1, "name": "Ada -H x=y"}"#);
        assert_eq!(m.pattern, json!("user_created"));
        assert_eq!(
            m.payload,
            json!({"id": 1, "name": "Ada -H x=y"}),
            "a flag inside JSON is JSON"
        );

        let m = message(r#"call "math add" -1 --header=x=a=b"#);
        assert_eq!(m.pattern, json!("math add"));
        assert_eq!(m.payload, json!(-1), "a negative number is no flag");
        assert_eq!(m.headers, [("x".to_owned(), "a=b".to_owned())]);
        let m = message("call sum");
        assert_eq!(m.payload, Value::Null);
        let m = message(r#"call sum -H "tenant=acme corp""#);
        assert_eq!(m.headers, [("tenant".to_owned(), "acme corp".to_owned())]);
    }

    #[test]
    fn other_commands() {
        assert_eq!(parse("   ").unwrap(), Command::Nothing);
        assert_eq!(parse("exit").unwrap(), Command::Exit);
        assert_eq!(
            parse("listen user_created {\"cmd\":\"sum\"} -n 2").unwrap(),
            Command::Listen {
                patterns: vec![json!("user_created"), json!({"cmd": "sum"})],
                count: Some(2),
                json: false
            }
        );
        assert_eq!(
            parse("describe --schemas").unwrap(),
            Command::Describe {
                schemas: true,
                json: false
            }
        );
        assert_eq!(
            parse("connect nats://127.0.0.1:4222").unwrap(),
            Command::Connect("nats://127.0.0.1:4222".into())
        );
        assert_eq!(
            parse("timeout 500ms").unwrap(),
            Command::Timeout(Some(Duration::from_millis(500)))
        );
        assert_eq!(parse("timeout").unwrap(), Command::Timeout(None));
        assert_eq!(
            parse("header tenant=acme").unwrap(),
            Command::Header(HeaderChange::Set("tenant".into(), "acme".into()))
        );
        assert_eq!(
            parse("header --clear tenant").unwrap(),
            Command::Header(HeaderChange::Remove("tenant".into()))
        );
        assert_eq!(parse("header --clear").unwrap(), Command::Header(HeaderChange::Clear));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let error = |line: &str| parse(line).unwrap_err().to_string();
        assert!(error("cal sum").contains("no command `cal`"), "{}", error("cal sum"));
        assert!(error("call").contains("needs a pattern"));
        assert!(error("call sum {oops").contains("not JSON"));
        assert!(error("call sum 1 -H").contains("-H needs a value"));
        assert!(error("call sum 1 -H novalue").contains("NAME=VALUE"));
        let refused = error(r#"call sum 1 -H "Authorization Bearer s3cret""#);
        assert!(
            refused.contains("\"Authorization\"") && !refused.contains("s3cret"),
            "{refused}"
        );
        assert!(error("call sum 1 -t soon").contains("not a duration"));
        assert!(error("call sum -").contains("stdin"));
        assert!(error("describe now").contains("does not take"));
        assert!(error("listen -n many").contains("not a count"));
        assert!(error("connect").contains("needs a URL"));
        assert!(error("call sum -t 1s [1]").contains("after the flags"));
    }

    #[test]
    fn words_keep_unclosed_json_whole() {
        assert_eq!(words(r#"call {"cmd": "s"#), [(0, "call"), (5, r#"{"cmd": "s"#)]);
        assert_eq!(
            words(r#" a "b c" [1, [2]] d"#),
            [(1, "a"), (3, "\"b c\""), (9, "[1, [2]]"), (18, "d")]
        );
        assert_eq!(words(r#"x {"a":"}"} y"#), [(0, "x"), (2, r#"{"a":"}"}"#), (12, "y")]);
    }
}
