//! Integration tests live in `tests/`; shared handlers in `tests/common`.
