//! The messages a user reads: every `#[message_pattern]` mistake has a file in `fail/` and the
//! compiler's output in the `.stderr` next to it; everything in `pass/` must compile and run.
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p switchboard-ui-tests`
//! and read every one before committing it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/pass/*.rs");
    t.compile_fail("tests/fail/*.rs");
}
