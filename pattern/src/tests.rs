//! Cases from `nestjs-wire-examples/pattern-normalization.txt` (NestJS 11.2.6, ICU 78).

use super::*;

fn route(json: &str) -> String {
    route_of_wire_pattern(json).expect("valid JSON")
}

#[test]
fn strings_and_numbers_route_as_written() {
    assert_eq!(route(r#""get_user""#), "get_user");
    assert_eq!(route("42"), "42");
    assert_eq!(route("1.50"), "1.5");
    assert_eq!(route("-0"), "0");
    assert_eq!(route("1e21"), "1e+21");
}

#[test]
fn object_keys_are_sorted() {
    assert_eq!(route(r#"{"cmd":"get_user"}"#), r#"{"cmd":"get_user"}"#);
    assert_eq!(route(r#"{"b":1,"a":2}"#), r#"{"a":2,"b":1}"#);
    assert_eq!(route(r#"{"role":"user","cmd":"x"}"#), r#"{"cmd":"x","role":"user"}"#);
}

#[test]
fn key_order_is_icu_collation_not_bytes() {
    assert_eq!(route(r#"{"B":1,"a":1,"A":1,"b":1}"#), r#"{"a":1,"A":1,"b":1,"B":1}"#);
    assert_eq!(
        route(r#"{"1":1,"2":1,"10":1,"_a":1,"a":1,"Z":1,"é":1,"-x":1}"#),
        r#"{"_a":1,"-x":1,"1":1,"10":1,"2":1,"a":1,"é":1,"Z":1}"#
    );
    // Byte order would put `aB` first.
    assert_eq!(route(r#"{"aB":1,"a_b":2}"#), r#"{"a_b":2,"aB":1}"#);
    assert_eq!(
        route(r#"{"v":2,"role":"user","nested":{"b":1,"a":"x"},"cmd":"get","Zeta":"z","_x":1}"#),
        r#"{"_x":1,"cmd":"get","nested":{"a":"x","b":1},"role":"user","v":2,"Zeta":"z"}"#
    );
}

#[test]
fn nested_values_arrays_and_literals() {
    assert_eq!(
        route(r#"{"a":true,"b":null,"c":[1,"x"],"d":{"z":1,"y":"q"}}"#),
        r#"{"a":true,"b":null,"c":{"0":1,"1":"x"},"d":{"y":"q","z":1}}"#
    );
    assert_eq!(route(r#"["x","y"]"#), r#"{"0":"x","1":"y"}"#);
    assert_eq!(route(r#"{"a":1.5,"b":0,"c":1e+21}"#), r#"{"a":1.5,"b":0,"c":1e+21}"#);
    assert_eq!(route(r#"{"s":"with space"}"#), r#"{"s":"with space"}"#);
}

#[test]
fn quotes_and_backslashes_are_escaped_but_nothing_else() {
    assert_eq!(route(r#"{"k\"q":"v\"q"}"#), r#"{"k\"q":"v\"q"}"#);
    assert_eq!(route(r#"{"k":"a\\b"}"#), r#"{"k":"a\\b"}"#);
    assert_eq!(route(r#"{"k":"line\nbreak"}"#), "{\"k\":\"line\nbreak\"}");
}

#[test]
fn depth_and_key_caps() {
    assert_eq!(
        route(r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}"#),
        r#"{"a":{"b":{"c":{"d":{"e":{"f":[MAX_DEPTH_REACHED]}}}}}}"#
    );
    let many: Vec<String> = (0..21).map(|i| format!("\"k{i}\":1")).collect();
    assert_eq!(route(&format!("{{{}}}", many.join(","))), TOO_MANY_KEYS_MARKER);
}

#[test]
fn stringified_object_patterns_route_like_objects() {
    // NestJS's `emit` sends the route string; its server parses and renormalises it.
    assert_eq!(route(r#""{\"b\":1,\"a\":2}""#), r#"{"a":2,"b":1}"#);
    assert_eq!(route_of_str("not json {".into()), "not json {");
}

#[test]
fn json_keeps_written_order() {
    let p = Pattern::Object(vec![
        ("cmd".into(), Pattern::String("sum".into())),
        ("a".into(), Pattern::Number(1.0)),
    ]);
    assert_eq!(p.to_json(), r#"{"cmd":"sum","a":1}"#);
    assert_eq!(p.route(), r#"{"a":1,"cmd":"sum"}"#);
    assert_eq!(p.depth(), 1);
}
