// Every pattern form, and the route and JSON the macro computes for it.
use switchboard::prelude::*;
use switchboard::{Handler, PatternLit};

#[message_pattern("math.add")]
async fn string_pattern() {}

#[message_pattern(42)]
async fn number_pattern() {}

#[message_pattern(-1.5)]
async fn negative_number() {}

#[message_pattern(cmd = "get_user")]
async fn object_pattern() {}

#[message_pattern(cmd = "get", role = "user", v = 2, nested = { b = 1, a = "x" }, flag = true, none = null, list = [1, "x"], neg = -3)]
async fn nested_pattern() {}

#[message_pattern("Zeta" = "z", cmd = "x", r#type = "raw", "with-dash" = 1)]
async fn string_keys() {}

#[message_pattern({ cmd = "braced" })]
async fn braced() {}

#[message_pattern({ cmd = "braced_opt" }, crate = ::switchboard)]
async fn braced_with_option() {}

#[message_pattern("with_option", crate = switchboard,)]
async fn string_with_option() {}

#[message_pattern(["a", "b"])]
async fn array_pattern() {}

#[event_pattern("user_created")]
async fn event_string() {}

#[event_pattern(kind = "audit", level = 3)]
async fn event_object() {}

// The documented route of a mixed-case pattern, verified against NestJS.
#[message_pattern(cmd = "get", role = "user", v = 2, nested = { b = 1, a = "x" }, Zeta = "z", _x = 1)]
async fn icu_order() {}

const ADD: PatternLit = pattern!(cmd = "add");
const ADD_DEF: MessageDef<(i64, i64), i64> = MessageDef::new(pattern!(cmd = "add"));
const ECHO: MessageDef<String, String> = MessageDef::new(pattern!("echo"));
const CREATED: EventDef<String> = EventDef::new(pattern!("user_created"));
const WITH_CRATE: PatternLit = pattern!({ b = 1, a = 2 }, crate = ::switchboard);
static IN_STATIC: PatternLit = pattern!(42);

fn message<M: Message>(m: M) -> (&'static str, &'static str) {
    (m.route(), m.pattern_json())
}

fn event<E: Event>(e: E) -> (&'static str, &'static str) {
    (e.route(), e.pattern_json())
}

fn main() {
    assert_eq!(message(string_pattern), ("math.add", r#""math.add""#));
    assert_eq!(message(number_pattern), ("42", "42"));
    assert_eq!(message(negative_number), ("-1.5", "-1.5"));
    assert_eq!(
        message(object_pattern),
        (r#"{"cmd":"get_user"}"#, r#"{"cmd":"get_user"}"#)
    );
    assert_eq!(
        message(nested_pattern),
        (
            r#"{"cmd":"get","flag":true,"list":{"0":1,"1":"x"},"neg":-3,"nested":{"a":"x","b":1},"none":null,"role":"user","v":2}"#,
            r#"{"cmd":"get","role":"user","v":2,"nested":{"b":1,"a":"x"},"flag":true,"none":null,"list":[1,"x"],"neg":-3}"#
        )
    );
    assert_eq!(
        message(string_keys).0,
        r#"{"cmd":"x","type":"raw","with-dash":1,"Zeta":"z"}"#
    );
    assert_eq!(message(braced).0, r#"{"cmd":"braced"}"#);
    assert_eq!(message(braced_with_option).0, r#"{"cmd":"braced_opt"}"#);
    assert_eq!(message(string_with_option).0, "with_option");
    assert_eq!(message(array_pattern), (r#"{"0":"a","1":"b"}"#, r#"["a","b"]"#));
    assert_eq!(event(event_string), ("user_created", r#""user_created""#));
    assert_eq!(event(event_object).0, r#"{"kind":"audit","level":3}"#);
    assert_eq!(
        message(icu_order).0,
        r#"{"_x":1,"cmd":"get","nested":{"a":"x","b":1},"role":"user","v":2,"Zeta":"z"}"#
    );

    // The registry entry carries the same strings.
    assert_eq!(nested_pattern.entry().route, message(nested_pattern).0);
    assert_eq!(nested_pattern.entry().pattern, message(nested_pattern).1);

    assert_eq!(
        ADD,
        PatternLit {
            json: r#"{"cmd":"add"}"#,
            route: r#"{"cmd":"add"}"#
        }
    );
    assert_eq!(message(ADD_DEF).0, r#"{"cmd":"add"}"#);
    assert_eq!(message(ECHO), ("echo", r#""echo""#));
    assert_eq!(event(CREATED).0, "user_created");
    assert_eq!(WITH_CRATE.route, r#"{"a":2,"b":1}"#);
    assert_eq!(WITH_CRATE.json, r#"{"b":1,"a":2}"#);
    assert_eq!(IN_STATIC.route, "42");
}
