//! Compile-fail tests of the Switchboard macros live in `tests/`.
