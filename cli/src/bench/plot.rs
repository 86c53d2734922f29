//! `--plot FILE.svg`: latency by percentile, HdrHistogram style (the x axis in "nines", so
//! the tail gets as much room as the median), with the compared run behind it.

use std::fmt::Write as _;

use super::report::{Report, duration_us};

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// The x axis ends at 99.999 %.
const NINES: f64 = 5.0;

/// The SVG of `now`'s latency curve, and `before`'s if given.
pub fn svg(now: &Report, before: Option<(&str, &Report)>) -> String {
    let curves: Vec<&[(f64, f64)]> = std::iter::once(now.curve.as_slice())
        .chain(before.map(|(_, b)| b.curve.as_slice()))
        .collect();
    let top = curves
        .iter()
        .flat_map(|c| c.iter().map(|&(_, us)| us))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let x = |p: f64| {
        let nines = (-(1.0 - p / 100.0).max(1e-9).log10()).clamp(0.0, NINES);
        LEFT + nines / NINES * (W - LEFT - RIGHT)
    };
    let y = |us: f64| TOP + (1.0 - us / top) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let title = format!(
        "{} {} — {} calls/s, {} driver",
        now.url,
        now.pattern,
        super::report::thousands(now.throughput),
        now.driver
    );
    let _ = writeln!(s, r#"<text x="{LEFT}" y="22" font-size="14">{}</text>"#, escape(&title));
    // Grid and labels: nines along x, five steps of latency up y.
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
        let gx = LEFT + i as f64 / NINES * (W - LEFT - RIGHT);
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    for i in 0..=5 {
        let us = top / 5.0 * f64::from(i);
        let gy = y(us);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            gy + 4.0,
            escape(&duration_us(us))
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (latency from each call's {})</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0,
        if now.latency_from == "intended" {
            "intended start"
        } else {
            "send"
        }
    );
    let line = |curve: &[(f64, f64)], colour: &str, dash: &str| {
        let points: Vec<String> = curve
            .iter()
            .map(|&(p, us)| format!("{:.1},{:.1}", x(p), y(us)))
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
            points.join(" ")
        )
    };
    if let Some((file, b)) = before {
        let _ = writeln!(s, "{}", line(&b.curve, "#999", r#" stroke-dasharray="6 4""#));
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#777">dashed: {}</text>"##,
            LEFT + 10.0,
            TOP + 16.0,
            escape(file)
        );
    }
    let _ = writeln!(s, "{}", line(&now.curve, "#1f6feb", ""));
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_it_writes() {
        assert_eq!(escape(r#"<a & "b">"#), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
