//! How a command ends: values and errors on stdout/stderr (or JSON lines), and the exit code
//! for each kind of failure.

use std::io::Write;
use std::process::ExitCode;

use serde_json::{Value, json};
use switchboard::Error;

/// Why a command failed, with its exit code.
#[derive(Debug)]
pub struct Failure {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 1: anything else (a reply that is not JSON, …).
    Other,
    /// 2: bad usage or input (an unknown transport, a payload that is not JSON, …).
    Usage,
    /// 3: nothing handles the pattern.
    NoHandler,
    /// 4: no answer in time.
    Timeout,
    /// 5: the service cannot be reached, or the connection was lost.
    Unreachable,
    /// 6: the handler answered with an error.
    Handler,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Other => 1,
            Kind::Usage => 2,
            Kind::NoHandler => 3,
            Kind::Timeout => 4,
            Kind::Unreachable => 5,
            Kind::Handler => 6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Other => "error",
            Kind::Usage => "usage",
            Kind::NoHandler => "no_handler",
            Kind::Timeout => "timeout",
            Kind::Unreachable => "unreachable",
            Kind::Handler => "handler_error",
        }
    }
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            kind: Kind::Usage,
            message: message.into(),
        }
    }

    pub fn unreachable(message: impl Into<String>) -> Self {
        Failure {
            kind: Kind::Unreachable,
            message: message.into(),
        }
    }

    pub fn other(message: impl Into<String>) -> Self {
        Failure {
            kind: Kind::Other,
            message: message.into(),
        }
    }

    /// The kind of failure in words: `no handler`, `timeout`, `unreachable`, …
    pub fn kind_name(&self) -> String {
        self.kind.name().replace('_', " ")
    }

    /// The same kind (and exit code), told in other words.
    pub fn with_message(self, message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            ..self
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::NoHandler { .. } => Kind::NoHandler,
            Error::Timeout { .. } => Kind::Timeout,
            Error::Connect { .. } | Error::ConnectionClosed { .. } => Kind::Unreachable,
            Error::Rpc(_) => Kind::Handler,
            Error::InvalidUrl { .. } => Kind::Usage,
            _ => Kind::Other,
        };
        let message = match &e {
            // The error value as the handler gave it.
            Error::Rpc(rpc) => rpc.value().to_string(),
            _ => e.to_string(),
        };
        Failure { kind, message }
    }
}

/// Where results go.
pub struct Output {
    pub json: bool,
}

impl Output {
    /// One value of a reply.
    pub fn value(&self, v: &Value) {
        let line = if self.json { json!({ "value": v }) } else { v.clone() };
        println!("{line}");
    }

    /// The end of a command that succeeded (printed in JSON mode, and for an emit).
    pub fn done(&self, emit: bool) {
        if self.json {
            println!("{}", json!({ "ok": true }));
        } else if emit {
            eprintln!("emitted");
        }
    }

    /// Reports `f` and gives its exit code.
    pub fn fail(&self, f: &Failure) -> ExitCode {
        if self.json {
            println!(
                "{}",
                json!({ "error": { "kind": f.kind.name(), "message": f.message } })
            );
        } else {
            eprintln!(
                "switchboard: {} ({}): {}",
                f.kind.name().replace('_', " "),
                f.kind.code(),
                f.message
            );
        }
        let _ = std::io::stdout().flush();
        ExitCode::from(f.kind.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_error_has_its_exit_code() {
        let cases = [
            (
                Error::NoHandler {
                    pattern: "x".into(),
                    addr: "tcp://a".into(),
                },
                3,
            ),
            (Error::Rpc(switchboard::RpcError::new("bad")), 6),
            (Error::ConnectionClosed { addr: "tcp://a".into() }, 5),
            (
                Error::InvalidUrl {
                    url: "x".into(),
                    reason: "y".into(),
                },
                2,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Failure::from(e).kind.code(), code);
        }
    }
}
