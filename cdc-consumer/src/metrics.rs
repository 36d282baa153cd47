//! Prometheus metrics of the consumer, served with `/health` on `METRICS_ADDR`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Handles to every metric; cheap to clone (each is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub published: Counter,
    pub duplicates: Counter,
    pub skipped: Counter,
    pub reconnects: Counter,
    pub publish_latency: Histogram,
    pub commit_to_ack: Histogram,
    pub lag_bytes: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub confirmed_lsn: Gauge,
    pub slot_held: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("datastream_consumer");
        let published = Counter::default();
        let duplicates = Counter::default();
        let skipped = Counter::default();
        let reconnects = Counter::default();
        // 100 µs .. ~3.3 s
        let publish_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let commit_to_ack = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let lag_bytes = Gauge::default();
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        let confirmed_lsn = Gauge::default();
        let slot_held = Gauge::default();
        registry.register(
            "events_published",
            "Round events acknowledged by JetStream",
            published.clone(),
        );
        registry.register(
            "duplicates",
            "Publishes the stream reported as duplicates (already stored)",
            duplicates.clone(),
        );
        registry.register(
            "replayed_skipped",
            "Replayed events skipped because the stream already held them",
            skipped.clone(),
        );
        registry.register(
            "reconnects",
            "Replication sessions restarted after an error",
            reconnects.clone(),
        );
        registry.register(
            "publish_latency_seconds",
            "From publish to JetStream acknowledgement",
            publish_latency.clone(),
        );
        registry.register(
            "commit_to_ack_seconds",
            "From the PostgreSQL commit to the JetStream acknowledgement",
            commit_to_ack.clone(),
        );
        registry.register(
            "replication_lag_bytes",
            "WAL written by PostgreSQL but not yet confirmed by this consumer",
            lag_bytes.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Age of the oldest unconfirmed transaction",
            lag_seconds.clone(),
        );
        registry.register(
            "confirmed_lsn",
            "Last LSN confirmed to PostgreSQL, as a number",
            confirmed_lsn.clone(),
        );
        registry.register(
            "slot_held",
            "1 while this process holds the replication slot",
            slot_held.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            published,
            duplicates,
            skipped,
            reconnects,
            publish_latency,
            commit_to_ack,
            lag_bytes,
            lag_seconds,
            confirmed_lsn,
            slot_held,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Serves `/metrics` and `/health` until the returned server is stopped.
pub fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<actix_web::dev::Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(metrics.clone()))
            .route(
                "/metrics",
                web::get().to(|m: web::Data<Metrics>| async move {
                    HttpResponse::Ok()
                        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
                        .body(m.render())
                }),
            )
            .route(
                "/health",
                web::get().to(|| async { HttpResponse::Ok().body("ok") }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?
    .run();
    Ok(server)
}
