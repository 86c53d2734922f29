//! The result of a run: a table for people, a stable JSON object for scripts (also what
//! `--save` writes and `--compare` reads), and the comparison with a saved run.
//!
//! The JSON object (`"format": 1`; fields are only ever added):
//!
//! ```text
//! {"format":1, "url":…, "pattern":…, "driver":"pipelined"|"client"|"in-process",
//!  "mode":"closed"|"open", "concurrency":N, "connections":N, "rate":calls/s|null,
//!  "warmup_s":…, "elapsed_s":…, "calls":N, "ok":N,
//!  "errors":{"timeout":N,"no_handler":N,"handler_error":N,"connection":N,"other":N},
//!  "throughput":calls/s (failed calls included), "latency_from":"send"|"intended",
//!  "latency_us":{"min","mean","p50","p75","p90","p99","p99.9","max"},
//!  "curve":[[percentile, µs], …]}
//! ```

use std::fmt::Write as _;
use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tally::{Failed, Totals};

/// The JSON format's version.
pub const FORMAT: u32 = 1;

/// The percentiles of the summary, with their JSON names.
pub const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p75", 75.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
];

/// One run, as reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub url: String,
    pub pattern: Value,
    pub driver: String,
    pub mode: String,
    pub concurrency: usize,
    pub connections: usize,
    pub rate: Option<f64>,
    pub warmup_s: f64,
    pub elapsed_s: f64,
    pub calls: u64,
    pub ok: u64,
    pub errors: serde_json::Map<String, Value>,
    pub throughput: f64,
    pub latency_from: String,
    pub latency_us: serde_json::Map<String, Value>,
    /// The latency at percentiles from 0 to 99.999, for plots.
    pub curve: Vec<(f64, f64)>,
}

/// How the run went, besides what was counted.
pub struct Setup<'a> {
    pub url: &'a str,
    pub pattern: Value,
    pub driver: &'a str,
    pub open: bool,
    pub concurrency: usize,
    pub connections: usize,
    pub rate: Option<f64>,
    pub warmup_s: f64,
    pub elapsed_s: f64,
}

fn us(ns: u64) -> f64 {
    // Three decimals: nanosecond resolution, without float noise in the JSON.
    (ns as f64 / 1e3 * 1e3).round() / 1e3
}

impl Report {
    pub fn new(setup: Setup<'_>, totals: &Totals) -> Self {
        let h = &totals.hist;
        let calls = totals.calls();
        let mut errors = serde_json::Map::new();
        for kind in Failed::ALL {
            errors.insert(kind.name().into(), totals.errors[kind as usize].into());
        }
        let mut latency = serde_json::Map::new();
        if !h.is_empty() {
            latency.insert("min".into(), us(h.min()).into());
            latency.insert("mean".into(), ((h.mean() / 1e3 * 1e3).round() / 1e3).into());
            for (name, p) in PERCENTILES {
                latency.insert(name.into(), us(h.value_at_percentile(p)).into());
            }
            latency.insert("max".into(), us(h.max()).into());
        }
        let curve = if h.is_empty() {
            Vec::new()
        } else {
            // Evenly spaced in "nines": 0, 90, 99, 99.9, … and steps between.
            (0..=50)
                .map(|i| {
                    let p = 100.0 * (1.0 - 10f64.powf(-f64::from(i) / 10.0));
                    let p = (p * 1e4).round() / 1e4;
                    (p, us(h.value_at_percentile(p)))
                })
                .collect()
        };
        Report {
            format: FORMAT,
            url: setup.url.to_owned(),
            pattern: setup.pattern,
            driver: setup.driver.to_owned(),
            mode: if setup.open { "open" } else { "closed" }.to_owned(),
            concurrency: setup.concurrency,
            connections: setup.connections,
            rate: setup.rate,
            warmup_s: setup.warmup_s,
            elapsed_s: (setup.elapsed_s * 1e6).round() / 1e6,
            calls,
            ok: totals.ok,
            errors,
            throughput: if setup.elapsed_s > 0.0 {
                (calls as f64 / setup.elapsed_s * 10.0).round() / 10.0
            } else {
                0.0
            },
            latency_from: if setup.open { "intended" } else { "send" }.to_owned(),
            latency_us: latency,
            curve,
        }
    }

    /// Failed calls.
    pub fn failed(&self) -> u64 {
        self.calls - self.ok
    }

    /// The latency named `name` (`p50`, `max`, …), µs.
    pub fn latency(&self, name: &str) -> Option<f64> {
        self.latency_us.get(name).and_then(Value::as_f64)
    }

    /// The table for people.
    pub fn table(&self, style: Style) -> String {
        let mut out = String::new();
        let mode = match self.rate {
            Some(rate) => format!(
                "open loop at {} calls/s, at most {} in flight",
                thousands(rate),
                self.concurrency
            ),
            None => format!("closed loop, {} in flight", self.concurrency),
        };
        let _ = writeln!(
            out,
            "{} {} {}: {mode} over {} connection{} ({} driver)",
            style.bold("bench"),
            self.url,
            self.pattern,
            self.connections,
            if self.connections == 1 { "" } else { "s" },
            self.driver
        );
        let _ = writeln!(
            out,
            "  {:<12}{} calls/s   ({} calls in {:.2} s{})",
            "throughput",
            style.bold(&thousands(self.throughput)),
            thousands(self.calls as f64),
            self.elapsed_s,
            if self.warmup_s > 0.0 {
                format!(", after {:.2} s of warm-up", self.warmup_s)
            } else {
                String::new()
            }
        );
        let failed = self.failed();
        let errors = if failed == 0 {
            style.green("0")
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{} {}", k.replace('_', " "), n))
                .collect();
            style.red(&format!("{} ({})", thousands(failed as f64), kinds.join(", ")))
        };
        let _ = writeln!(out, "  {:<12}{errors}", "errors");
        if self.latency_us.is_empty() {
            let _ = writeln!(out, "  {:<12}none (no call succeeded)", "latency");
            return out;
        }
        let names: Vec<&str> = PERCENTILES.iter().map(|(n, _)| *n).chain(["max"]).collect();
        let _ = write!(out, "  {:<12}", "latency");
        for name in &names {
            let _ = write!(out, "{:>10}", name);
        }
        let _ = writeln!(
            out,
            "   (from each call's {})",
            if self.latency_from == "intended" {
                "intended start"
            } else {
                "send"
            }
        );
        let _ = write!(out, "  {:<12}", "");
        for name in &names {
            let _ = write!(out, "{:>10}", duration_us(self.latency(name).unwrap_or(f64::NAN)));
        }
        out.push('\n');
        out
    }
}

/// The change from a saved run to this one.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub file: String,
    /// `throughput` and each latency: before, now, and the change in percent.
    pub rows: Vec<Delta>,
}

#[derive(Debug, Serialize)]
pub struct Delta {
    pub metric: String,
    pub before: f64,
    pub now: f64,
    pub change_pct: Option<f64>,
}

impl Comparison {
    pub fn new(file: &str, before: &Report, now: &Report) -> Self {
        let mut rows = vec![delta("throughput", before.throughput, now.throughput)];
        for name in PERCENTILES.iter().map(|(n, _)| *n).chain(["max"]) {
            if let (Some(b), Some(n)) = (before.latency(name), now.latency(name)) {
                rows.push(delta(name, b, n));
            }
        }
        Comparison {
            file: file.to_owned(),
            rows,
        }
    }

    pub fn table(&self, style: Style) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} {}", style.bold("compared with"), self.file);
        let _ = writeln!(out, "  {:<12}{:>14}{:>14}{:>10}", "", "before", "now", "change");
        for row in &self.rows {
            let throughput = row.metric == "throughput";
            let show = |v: f64| {
                if throughput { thousands(v) } else { duration_us(v) }
            };
            let change = match row.change_pct {
                Some(pct) => {
                    let text = format!("{pct:+.1} %");
                    // More throughput is better, more latency is worse; small moves are noise.
                    let better = if throughput { pct > 0.0 } else { pct < 0.0 };
                    if pct.abs() < 2.0 {
                        text
                    } else if better {
                        style.green(&text)
                    } else {
                        style.red(&text)
                    }
                }
                None => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<12}{:>14}{:>14}{:>10}",
                row.metric,
                show(row.before),
                show(row.now),
                change
            );
        }
        out
    }
}

fn delta(metric: &str, before: f64, now: f64) -> Delta {
    Delta {
        metric: metric.to_owned(),
        before,
        now,
        change_pct: (before > 0.0).then(|| ((now - before) / before * 1000.0).round() / 10.0),
    }
}

/// Colours and bold for a terminal, plain text otherwise.
#[derive(Clone, Copy)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    /// Colours when stdout is a terminal and `NO_COLOR` is not set.
    pub fn detect() -> Self {
        Style {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn green(self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn red(self, text: &str) -> String {
        self.paint("31", text)
    }
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in µs, in the unit that suits it: `850ns`, `12.3µs`, `4.56ms`, `1.20s`.
pub fn duration_us(us: f64) -> String {
    if !us.is_finite() {
        "-".to_owned()
    } else if us < 1.0 {
        format!("{:.0}ns", us * 1e3)
    } else if us < 1e3 {
        format!("{us:.1}µs")
    } else if us < 1e6 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::tally::{Local, Shards};
    use super::*;

    fn report(latencies_us: &[u64]) -> Report {
        let shards = Shards::new(1);
        let mut local = Local::new(0, &shards);
        for &l in latencies_us {
            local.ok(Duration::from_micros(l), Instant::now(), &shards);
        }
        local.failed(Failed::Handler, Instant::now(), &shards);
        local.flush(&shards);
        let setup = Setup {
            url: "tcp://h:1",
            pattern: "p".into(),
            driver: "client",
            open: false,
            concurrency: 2,
            connections: 1,
            rate: None,
            warmup_s: 0.0,
            elapsed_s: 2.0,
        };
        Report::new(setup, &shards.merged())
    }

    #[test]
    fn the_json_is_stable_and_round_trips() {
        let r = report(&(1..=1000).collect::<Vec<_>>());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["calls"], 1001);
        assert_eq!(json["ok"], 1000);
        assert_eq!(json["errors"]["handler_error"], 1);
        assert_eq!(json["throughput"], 500.5);
        let p = |n: &str| json["latency_us"][n].as_f64().unwrap();
        assert!((p("p50") - 500.0).abs() < 1.0, "{json}");
        assert!(p("p50") <= p("p75") && p("p75") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("p99.9"));
        assert!(p("p99.9") <= p("max"));
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back.calls, 1001);
        assert!(r.table(Style { colour: false }).contains("handler error 1"));
    }

    #[test]
    fn comparisons_are_percent_changes() {
        let before = report(&[100; 10]);
        let now = report(&[150; 10]);
        let c = Comparison::new("before.json", &before, &now);
        let p50 = c.rows.iter().find(|r| r.metric == "p50").unwrap();
        assert_eq!(p50.change_pct, Some(50.0));
        assert_eq!(c.rows[0].change_pct, Some(0.0), "same throughput");
        assert!(c.table(Style { colour: false }).contains("+50.0 %"));
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(duration_us(0.85), "850ns");
        assert_eq!(duration_us(12.34), "12.3µs");
        assert_eq!(duration_us(4560.0), "4.56ms");
    }
}
