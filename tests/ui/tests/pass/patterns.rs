// Every pattern form, and the route and JSON the macro computes for it.
use switchboard::prelude::*;
use switchboard::{Kind, PatternLit};

#[message_pattern("math.add")]
async fn string_pattern() {}

#[message_pattern(42)]
async fn number_pattern() {}

#[message_pattern(-1.5)]
async fn negative_number() {}

#[message_pattern({ cmd = "get_user" })]
async fn object_pattern() {}

#[message_pattern({ cmd = "get", role = "user", v = 2, nested = { b = 1, a = "x" }, flag = true, none = null, list = [1, "x"], neg = -3 })]
async fn nested_pattern() {}

#[message_pattern({ "Zeta" = "z", cmd = "x", r#type = "raw", "with-dash" = 1 })]
async fn string_keys() {}

#[message_pattern({ cmd = "braced_opt" }, crate = ::switchboard)]
async fn braced_with_option() {}

#[message_pattern("with_option", crate = switchboard,)]
async fn string_with_option() {}

#[message_pattern(["a", "b"])]
async fn array_pattern() {}

#[message_pattern({})]
async fn empty_object() {}

#[event_pattern("user_created")]
async fn event_string() {}

#[event_pattern({ kind = "audit", level = 3 })]
async fn event_object() {}

// The documented route of a mixed-case pattern, verified against NestJS.
#[message_pattern({ cmd = "get", role = "user", v = 2, nested = { b = 1, a = "x" }, Zeta = "z", _x = 1 })]
async fn icu_order() {}

const ADD: PatternLit = pattern!({ cmd = "add" });
const ADD_DEF: MessageDef<(i64, i64), i64> = MessageDef::new(pattern!({ cmd = "add" }));
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
    assert_eq!(message(STRING_PATTERN), ("math.add", r#""math.add""#));
    assert_eq!(message(NUMBER_PATTERN), ("42", "42"));
    assert_eq!(message(NEGATIVE_NUMBER), ("-1.5", "-1.5"));
    assert_eq!(
        message(OBJECT_PATTERN),
        (r#"{"cmd":"get_user"}"#, r#"{"cmd":"get_user"}"#)
    );
    assert_eq!(
        message(NESTED_PATTERN),
        (
            r#"{"cmd":"get","flag":true,"list":{"0":1,"1":"x"},"neg":-3,"nested":{"a":"x","b":1},"none":null,"role":"user","v":2}"#,
            r#"{"cmd":"get","role":"user","v":2,"nested":{"b":1,"a":"x"},"flag":true,"none":null,"list":[1,"x"],"neg":-3}"#
        )
    );
    assert_eq!(
        message(STRING_KEYS).0,
        r#"{"cmd":"x","type":"raw","with-dash":1,"Zeta":"z"}"#
    );
    assert_eq!(message(BRACED_WITH_OPTION).0, r#"{"cmd":"braced_opt"}"#);
    assert_eq!(message(STRING_WITH_OPTION).0, "with_option");
    assert_eq!(message(ARRAY_PATTERN), (r#"{"0":"a","1":"b"}"#, r#"["a","b"]"#));
    assert_eq!(message(EMPTY_OBJECT), ("{}", "{}"));
    assert_eq!(event(EVENT_STRING), ("user_created", r#""user_created""#));
    assert_eq!(event(EVENT_OBJECT).0, r#"{"kind":"audit","level":3}"#);
    assert_eq!(
        message(ICU_ORDER).0,
        r#"{"_x":1,"cmd":"get","nested":{"a":"x","b":1},"role":"user","v":2,"Zeta":"z"}"#
    );

    // The handler's description carries the same strings.
    let info = NESTED_PATTERN.info();
    assert_eq!(info.route(), message(NESTED_PATTERN).0);
    assert_eq!(info.pattern(), message(NESTED_PATTERN).1);
    assert_eq!(info.kind(), Kind::Request);
    assert_eq!(EVENT_OBJECT.info().kind(), Kind::Event);

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
