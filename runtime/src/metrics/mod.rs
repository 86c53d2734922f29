//! Metrics (feature `metrics`), through the [`metrics`](https://docs.rs/metrics) facade: per pattern and
//! transport, messages handled and calls made (by outcome), their latency as histograms,
//! messages in flight, reconnects, and the resilience layers' retries, sheds, fallbacks and
//! circuit states. [`install`] sets up the Prometheus recorder in one line; [`render`] is
//! what a `/metrics` endpoint answers.
//!
//! ```
//! # fn main() -> switchboard::Result<()> {
//! switchboard::metrics::install()?;
//! // … serve; every handled message and call is counted …
//! let text = switchboard::metrics::render().expect("installed");
//! assert!(text.is_empty() || text.contains("switchboard_"));
//! # Ok(()) }
//! ```
//!
//! A service exporting through another recorder (StatsD, OpenTelemetry) installs it with
//! `metrics::set_global_recorder` and calls [`enable`]. Install before the service starts.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::{Error, Result};

mod clock;
mod observe;
mod prometheus;
mod series;
#[cfg_attr(not(feature = "tcp"), allow(unused_imports))]
pub(crate) use observe::Together;
pub(crate) use observe::{Called, arrival_now, observe};

/// The metrics' names, as Prometheus shows them.
pub mod names {
    /// Counter of messages handled: labels `transport`, `route`, `kind` (`request`,
    /// `event`), `outcome` (`ok`, `rpc_error`, `unavailable`, `deadline_exceeded`,
    /// `no_handler`, `cancelled`).
    pub const HANDLED: &str = "switchboard_messages_handled_total";
    /// Histogram of the time to handle a message, in seconds: `transport`, `route`, `kind`.
    /// Over TCP it runs from the read that brought the message to its reply going out: a
    /// reply ready while that read's messages are handled goes out, and is timed, with theirs
    /// (so messages read together count each other's handling; two clock reads a read).
    pub const HANDLE_DURATION: &str = "switchboard_message_handle_duration_seconds";
    /// Gauge of messages being handled: `transport`, `route`.
    pub const IN_FLIGHT: &str = "switchboard_messages_in_flight";
    /// Counter of calls made by clients: `transport`, `route`, `kind`, `outcome` (`ok`, or
    /// the error's kind: `rpc_error`, `timeout`, `connect`, `rejected`, …).
    pub const CALLS: &str = "switchboard_calls_total";
    /// Histogram of a call's time to its first reply (an event's: to the transport taking
    /// it), in seconds: `transport`, `route`, `kind`.
    pub const CALL_DURATION: &str = "switchboard_call_duration_seconds";
    /// Counter of reconnections after a lost connection: `transport`.
    pub const RECONNECTS: &str = "switchboard_reconnects_total";
    /// Counter of messages dropped on arrival, never handled: `transport`, `reason`
    /// (`backlog`: an MQTT server's QoS 0 messages past its 64 MiB of waiting payloads;
    /// `slow_consumer`: async-nats's buffer of a NATS subscription was full, a server's or a
    /// client's reply inbox; counted as async-nats reports them, on a channel that holds 128
    /// reports, so a burst may count fewer than it dropped).
    pub const DROPPED: &str = "switchboard_messages_dropped_total";
    /// Counter of retried attempts: `route`.
    pub const RETRIES: &str = "switchboard_retries_total";
    /// Counter of calls refused by a resilience layer: `side` (`client`, `server`), `route`,
    /// `reason` (`circuit_open`, `overloaded`, `rate_limited`, `deadline_exceeded`).
    pub const SHED: &str = "switchboard_shed_total";
    /// Counter of calls answered by their fallback: `route`.
    pub const FALLBACKS: &str = "switchboard_fallbacks_total";
    /// Gauge of a circuit's state (0 closed, 1 half-open, 2 open, 3 isolated): `route`.
    pub const CIRCUIT_STATE: &str = "switchboard_circuit_state";
    /// Counter of circuit state changes: `route`, `to`.
    pub const CIRCUIT_TRANSITIONS: &str = "switchboard_circuit_transitions_total";
}

/// Histogram boundaries, in seconds: OpenTelemetry's recommended duration buckets
/// (5 ms … 10 s), below them five sub-millisecond ones for in-process and LAN calls.
pub const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0,
];

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROMETHEUS: OnceLock<Installed> = OnceLock::new();

/// What [`install`] set up: the exporter's handle (counters and gauges) and the histograms.
struct Installed {
    handle: PrometheusHandle,
    histograms: &'static prometheus::Histograms,
}

/// True once metrics are recorded ([`install`] or [`enable`]).
#[inline]
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The histograms of [`install`]'s recorder, if it is the one installed.
fn histograms() -> Option<&'static prometheus::Histograms> {
    PROMETHEUS.get().map(|p| p.histograms)
}

/// Records Switchboard's metrics with the process's global recorder, one of your own.
pub fn enable() {
    clock::warm_up();
    ENABLED.store(true, Ordering::Relaxed);
}

/// Installs a Prometheus recorder as the process's global one, with [`BUCKETS`] for every
/// histogram, and starts recording. Fails if another global recorder is installed.
///
/// Counters and gauges are the exporter's (`metrics-exporter-prometheus`); histograms are
/// counted into their buckets as they are recorded, per thread, and [`render`] writes them
/// as the exporter would.
pub fn install() -> Result<()> {
    if PROMETHEUS.get().is_some() {
        return Ok(());
    }
    let prometheus = PrometheusBuilder::new().build_recorder();
    let handle = prometheus.handle();
    let histograms: &'static prometheus::Histograms = Box::leak(Box::default());
    metrics::set_global_recorder(prometheus::Recorder { prometheus, histograms }).map_err(|e| config(e.to_string()))?;
    let _ = PROMETHEUS.set(Installed { handle, histograms });
    enable();
    Ok(())
}

/// The Prometheus text exposition of every metric, if [`install`] was called.
pub fn render() -> Option<String> {
    let installed = PROMETHEUS.get()?;
    observe::publish();
    let mut text = installed.handle.render();
    installed.histograms.render(&mut text);
    Some(text)
}

fn config(reason: String) -> Error {
    Error::InvalidConfig {
        what: "metrics",
        reason,
    }
}
