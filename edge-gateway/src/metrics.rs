//! Prometheus metrics, served as text at `/metrics`.
//!
//! Handles for every label value are created once at start-up and kept in plain structs, so the
//! hot paths (one delivery, one event in) touch an atomic and never a label map or a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// The client protocols, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Ws,
    Sse,
    Wt,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Ws, Protocol::Sse, Protocol::Wt];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Ws => "ws",
            Protocol::Sse => "sse",
            Protocol::Wt => "wt",
        }
    }
}

/// Why a connection ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The client's queue overflowed: it could not keep up.
    Slow,
    /// The gateway is shutting down.
    Shutdown,
    /// The client closed or the connection broke.
    ClientGone,
    /// A WebSocket peer did not answer a ping in time.
    PingTimeout,
    /// The client broke the protocol (bad frames, frames it must not send).
    ProtocolError,
    /// The resume cursor was outside the stream (WebSocket close 4010).
    CursorReset,
    /// Fetching missed events from the stream failed.
    ReplayFailed,
    /// The connection's API key was revoked.
    Revoked,
}

impl EndReason {
    pub const ALL: [EndReason; 8] = [
        EndReason::Slow,
        EndReason::Shutdown,
        EndReason::ClientGone,
        EndReason::PingTimeout,
        EndReason::ProtocolError,
        EndReason::CursorReset,
        EndReason::ReplayFailed,
        EndReason::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Slow => "slow",
            EndReason::Shutdown => "shutdown",
            EndReason::ClientGone => "client_gone",
            EndReason::PingTimeout => "ping_timeout",
            EndReason::ProtocolError => "protocol_error",
            EndReason::CursorReset => "cursor_reset",
            EndReason::ReplayFailed => "replay_failed",
            EndReason::Revoked => "revoked",
        }
    }
}

macro_rules! label_value {
    ($($ty:ty),*) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}

/// Where a resume's missed events came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResumeSource {
    /// The pod's recent history.
    History,
    /// An ordered consumer on the stream.
    Stream,
    /// The cursor was outside the stream: the client was told to reset.
    Reset,
}

impl ResumeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeSource::History => "history",
            ResumeSource::Stream => "stream",
            ResumeSource::Reset => "reset",
        }
    }
}

label_value!(Protocol, EndReason, ResumeSource);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndLabels {
    protocol: Protocol,
    reason: EndReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResumeLabels {
    source: ResumeSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

/// What only WebTransport has: datagrams beside the stream, and sessions refused with an HTTP
/// status. Its sessions, deliveries and disconnects are the `protocol="wt"` series above.
#[derive(Debug)]
pub struct WebTransportMetrics {
    pub datagrams_sent: Counter,
    /// The connection's datagram send buffer (its budget) had no room: the datagram was dropped
    /// (the stream still carries the event).
    pub datagrams_dropped_budget: Counter,
    /// Larger than a datagram may be on this path: only the stream carries it.
    pub datagrams_dropped_too_large: Counter,
    /// Events written to a session's stream (handed to QUIC).
    pub stream_deliveries: Counter,
    refused: Family<StatusLabels, Counter>,
}

impl WebTransportMetrics {
    /// A session refused with `status` (rare: the label is looked up here).
    pub fn refused(&self, status: u16) {
        self.refused.get_or_create(&StatusLabels { status }).inc();
    }
}

/// Upper bounds of the latency buckets, in microseconds (0.5 ms .. 5 s).
const LATENCY_BOUNDS_US: [u64; 13] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000,
];

/// A histogram of latencies that costs three relaxed atomic adds per observation.
/// (prometheus-client's `Histogram` takes a lock per observation, and this one is observed once
/// per delivery, from every worker thread.)
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    inner: Arc<LatencyInner>,
}

#[derive(Debug, Default)]
struct LatencyInner {
    /// One per bound, then +Inf.
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe_us(&self, micros: u64) {
        let bucket = LATENCY_BOUNDS_US.partition_point(|&bound| bound < micros);
        self.inner.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        self.inner.sum_us.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain(std::iter::once(f64::MAX))
            .zip(&self.inner.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.inner.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Per-protocol handles, created once.
#[derive(Debug)]
pub struct ProtocolMetrics {
    pub connections: Gauge,
    pub connections_opened: Counter,
    pub deliveries: Counter,
    pub latency: LatencyHistogram,
    ends: Vec<(EndReason, Counter)>,
}

impl ProtocolMetrics {
    pub fn ended(&self, reason: EndReason) {
        if let Some((_, counter)) = self.ends.iter().find(|(r, _)| *r == reason) {
            counter.inc();
        }
    }
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ws: ProtocolMetrics,
    sse: ProtocolMetrics,
    wt: ProtocolMetrics,
    pub events_in: Counter,
    pub events_invalid: Counter,
    /// Events thrown away from the queue of a client that was disconnected as slow.
    pub dropped_slow: Counter,
    pub hub_seq: Gauge<u64, AtomicU64>,
    pub hub_lag: Gauge<u64, AtomicU64>,
    pub hub_subscribers: Gauge,
    resumes: Vec<(ResumeSource, Counter)>,
    pub webtransport: WebTransportMetrics,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("datastream_gateway");

        let connections = Family::<ProtocolLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open client connections, by protocol",
            connections.clone(),
        );
        let opened = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "connections_opened",
            "Client connections accepted, by protocol",
            opened.clone(),
        );
        let deliveries = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Events handed to client connections, by protocol",
            deliveries.clone(),
        );
        let latency = Family::<ProtocolLabels, LatencyHistogram>::default();
        registry.register(
            "commit_to_send_seconds",
            "From the round's commit timestamp to the gateway handing it to the socket",
            latency.clone(),
        );
        let ends = Family::<EndLabels, Counter>::default();
        registry.register(
            "disconnects",
            "Client connections ended, by protocol and reason",
            ends.clone(),
        );
        let resumes_family = Family::<ResumeLabels, Counter>::default();
        registry.register(
            "resumes",
            "Subscriptions with a cursor, by where the missed events came from",
            resumes_family.clone(),
        );

        let per_protocol = |protocol: Protocol| {
            let labels = ProtocolLabels { protocol };
            ProtocolMetrics {
                connections: connections.get_or_create(&labels).clone(),
                connections_opened: opened.get_or_create(&labels).clone(),
                deliveries: deliveries.get_or_create(&labels).clone(),
                latency: latency.get_or_create(&labels).clone(),
                ends: EndReason::ALL
                    .iter()
                    .map(|&reason| {
                        let counter = ends.get_or_create(&EndLabels { protocol, reason }).clone();
                        (reason, counter)
                    })
                    .collect(),
            }
        };
        let ws = per_protocol(Protocol::Ws);
        let sse = per_protocol(Protocol::Sse);
        let wt = per_protocol(Protocol::Wt);
        let resumes = [
            ResumeSource::History,
            ResumeSource::Stream,
            ResumeSource::Reset,
        ]
        .into_iter()
        .map(|source| {
            (
                source,
                resumes_family
                    .get_or_create(&ResumeLabels { source })
                    .clone(),
            )
        })
        .collect();

        let events_in = Counter::default();
        registry.register(
            "events_in",
            "Round events read from the stream",
            events_in.clone(),
        );
        let events_invalid = Counter::default();
        registry.register(
            "events_invalid",
            "Stream messages that are not round events (skipped)",
            events_invalid.clone(),
        );
        let dropped_slow = Counter::default();
        registry.register(
            "dropped_events",
            "Queued events discarded because their client was disconnected as slow",
            dropped_slow.clone(),
        );
        let hub_seq = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "hub_sequence",
            "Stream sequence of the last event the hub dispatched",
            hub_seq.clone(),
        );
        let hub_lag = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "hub_lag",
            "Stream's last sequence minus the hub's (events not yet dispatched)",
            hub_lag.clone(),
        );
        let hub_subscribers = Gauge::default();
        registry.register(
            "hub_subscribers",
            "Subscriptions registered in the hub",
            hub_subscribers.clone(),
        );

        let webtransport = {
            let datagrams_sent = Counter::default();
            registry.register(
                "wt_datagrams_sent",
                "WebTransport datagrams handed to QUIC (one per event per session)",
                datagrams_sent.clone(),
            );
            let dropped = Family::<DropLabels, Counter>::default();
            registry.register(
                "wt_datagrams_dropped",
                "WebTransport datagrams not sent: budget (the session's datagram send buffer was full) or too_large (the stream still carries the event)",
                dropped.clone(),
            );
            let stream_deliveries = Counter::default();
            registry.register(
                "wt_stream_deliveries",
                "Events written to WebTransport sessions' streams",
                stream_deliveries.clone(),
            );
            let refused = Family::<StatusLabels, Counter>::default();
            registry.register(
                "wt_sessions_refused",
                "WebTransport sessions refused before accepting, by HTTP status",
                refused.clone(),
            );
            let budget = dropped
                .get_or_create(&DropLabels { reason: "budget" })
                .clone();
            let too_large = dropped
                .get_or_create(&DropLabels {
                    reason: "too_large",
                })
                .clone();
            WebTransportMetrics {
                datagrams_sent,
                datagrams_dropped_budget: budget,
                datagrams_dropped_too_large: too_large,
                stream_deliveries,
                refused,
            }
        };

        Arc::new(Metrics {
            registry,
            ws,
            sse,
            wt,
            events_in,
            events_invalid,
            dropped_slow,
            hub_seq,
            hub_lag,
            hub_subscribers,
            resumes,
            webtransport,
        })
    }

    pub fn protocol(&self, protocol: Protocol) -> &ProtocolMetrics {
        match protocol {
            Protocol::Ws => &self.ws,
            Protocol::Sse => &self.sse,
            Protocol::Wt => &self.wt,
        }
    }

    pub fn resumed(&self, source: ResumeSource) {
        if let Some((_, counter)) = self.resumes.iter().find(|(s, _)| *s == source) {
            counter.inc();
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_is_exposed_cumulatively_in_seconds() {
        let metrics = Metrics::new();
        let latency = &metrics.protocol(Protocol::Sse).latency;
        latency.observe_us(300);
        latency.observe_us(1_500);
        latency.observe_us(9_000_000);
        let text = metrics.encode().unwrap();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle) && l.contains("protocol=\"sse\""))
                .unwrap_or_else(|| panic!("{needle} missing:\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(line("le=\"0.0005\""), "1");
        assert_eq!(line("le=\"0.002\""), "2");
        assert_eq!(line("le=\"+Inf\""), "3");
        assert_eq!(line("gateway_commit_to_send_seconds_count"), "3");
    }
}
