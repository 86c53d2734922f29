//! The recorder [`install`](super::install) sets up: the Prometheus exporter's for counters
//! and gauges; histograms in fixed [`BUCKETS`](super::BUCKETS) of our own ([`Series`]),
//! rendered in the exporter's text format. The exporter's histograms queue every sample
//! until a scrape or an upkeep sorts them into buckets; ours are counted in place.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, PoisonError, RwLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;
use metrics_exporter_prometheus::formatting::{
    sanitize_description, sanitize_label_key, sanitize_label_value, sanitize_metric_name,
};

use super::BUCKETS;
use super::series::Series;

/// Every histogram registered with the recorder, in registration order.
#[derive(Default)]
pub(crate) struct Histograms(RwLock<Table>);

#[derive(Default)]
struct Table {
    index: HashMap<Key, usize>,
    series: Vec<(Key, Arc<Series>)>,
    /// Descriptions by sanitised name, for `# HELP`.
    help: HashMap<String, SharedString>,
}

impl Histograms {
    /// The series of `key`, made on first use.
    pub(crate) fn series(&self, key: &Key) -> Arc<Series> {
        {
            let table = self.0.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(&i) = table.index.get(key) {
                return table.series[i].1.clone();
            }
        }
        let mut table = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let Table { index, series, .. } = &mut *table;
        let i = *index.entry(key.clone()).or_insert_with(|| {
            series.push((key.clone(), Arc::default()));
            series.len() - 1
        });
        series[i].1.clone()
    }

    fn describe(&self, name: &KeyName, description: SharedString) {
        let mut table = self.0.write().unwrap_or_else(PoisonError::into_inner);
        table
            .help
            .entry(sanitize_metric_name(name.as_str()))
            .or_insert(description);
    }

    /// Appends every histogram to `out` as the exporter writes one: cumulative `_bucket`
    /// lines with `le`, then `_sum` and `_count`, one family per name.
    pub(crate) fn render(&self, out: &mut String) {
        let table = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let mut families: Vec<(String, Vec<usize>)> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (i, (key, _)) in table.series.iter().enumerate() {
            let name = sanitize_metric_name(key.name());
            let at = *by_name.entry(name.clone()).or_insert_with(|| {
                families.push((name, Vec::new()));
                families.len() - 1
            });
            families[at].1.push(i);
        }
        for (name, members) in families {
            if let Some(help) = table.help.get(&name) {
                let _ = writeln!(out, "# HELP {name} {}", sanitize_description(help));
            }
            let _ = writeln!(out, "# TYPE {name} histogram");
            for i in members {
                let (key, series) = &table.series[i];
                let labels = key
                    .labels()
                    .map(|l| {
                        format!(
                            "{}=\"{}\",",
                            sanitize_label_key(l.key()),
                            sanitize_label_value(l.value())
                        )
                    })
                    .collect::<String>();
                let (counts, sum) = series.buckets();
                let mut below = 0;
                for (bound, n) in BUCKETS.iter().zip(counts) {
                    below += n;
                    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {below}");
                }
                let count = below + counts[BUCKETS.len()];
                let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
                let labels = labels.trim_end_matches(',');
                let braced = |s: &str| {
                    if labels.is_empty() {
                        String::new()
                    } else {
                        format!("{{{s}}}")
                    }
                };
                let _ = writeln!(out, "{name}_sum{} {sum}", braced(labels));
                let _ = writeln!(out, "{name}_count{} {count}", braced(labels));
            }
            out.push('\n');
        }
    }
}

/// The exporter's recorder, its histograms replaced by [`Histograms`].
pub(crate) struct Recorder {
    pub(crate) prometheus: PrometheusRecorder,
    pub(crate) histograms: &'static Histograms,
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.histograms.describe(&key, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.prometheus.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.histograms.series(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::Label;

    #[test]
    fn histograms_render_as_the_exporter_writes_them() {
        let histograms = Histograms::default();
        let key = Key::from_parts("took_seconds", vec![Label::new("route", "a\"b")]);
        let series = histograms.series(&key);
        assert!(Arc::ptr_eq(&series, &histograms.series(&key)), "one series per key");
        series.record(0.0003);
        series.record(20.0);
        histograms.series(&Key::from_name("bare"));
        histograms.describe(&KeyName::from("bare"), "no labels".into());
        let mut text = String::new();
        histograms.render(&mut text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# TYPE took_seconds histogram");
        assert_eq!(lines[1], r#"took_seconds_bucket{route="a\"b",le="0.0001"} 0"#);
        assert_eq!(lines[3], r#"took_seconds_bucket{route="a\"b",le="0.0005"} 1"#);
        assert_eq!(lines[19], r#"took_seconds_bucket{route="a\"b",le="10"} 1"#);
        assert_eq!(lines[20], r#"took_seconds_bucket{route="a\"b",le="+Inf"} 2"#);
        assert_eq!(lines[21], r#"took_seconds_sum{route="a\"b"} 20.0003"#);
        assert_eq!(lines[22], r#"took_seconds_count{route="a\"b"} 2"#);
        assert_eq!(lines[23], "");
        assert_eq!(lines[24], "# HELP bare no labels");
        assert_eq!(lines[25], "# TYPE bare histogram");
        assert_eq!(lines[26], r#"bare_bucket{le="0.0001"} 0"#);
        assert_eq!(lines[46], "bare_sum 0");
        assert_eq!(lines[47], "bare_count 0");
    }
}
