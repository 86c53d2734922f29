//! Colours for people: on a terminal, unless `NO_COLOR` is set (<https://no-color.org>).

use std::io::IsTerminal;

use crate::outcome::Failure;

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const BOLD_CYAN: &str = "\x1b[1;36m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// How the REPL writes what is not a reply value.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    color: bool,
}

impl Style {
    /// Colours when stderr is a terminal and `NO_COLOR` is unset or empty.
    pub fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: std::io::stderr().is_terminal() && !no_color,
        }
    }

    /// Whether colours are on.
    pub fn colored(&self) -> bool {
        self.color
    }

    fn paint(&self, color: &str, text: &str) -> String {
        if self.color {
            format!("{color}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// A failed command, in red on stderr; the REPL goes on.
    pub fn error(&self, failure: &Failure) {
        eprintln!(
            "{}",
            self.paint(RED, &format!("error ({}): {failure}", failure.kind_name()))
        );
    }

    /// Something the user should know (a service that cannot describe itself, a call
    /// cancelled), in yellow on stderr.
    pub fn notice(&self, text: &str) {
        eprintln!("{}", self.paint(YELLOW, text));
    }

    /// Something by the way (the greeting, settings), dimmed on stderr.
    pub fn info(&self, text: &str) {
        eprintln!("{}", self.paint(DIM, text));
    }

    /// A name in the help.
    pub fn bold(&self, text: &str) -> String {
        self.paint(BOLD, text)
    }

    /// The prompt for `url`, plain and coloured (the line editor picks).
    pub fn prompt(&self, url: &str) -> (String, String) {
        let plain = format!("{url}> ");
        let colored = self.paint(BOLD_CYAN, &plain);
        (plain, colored)
    }
}
