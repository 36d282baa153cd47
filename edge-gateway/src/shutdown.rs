//! SIGTERM (and SIGINT): stop serving within the grace period, in an order clients cope with.
//!
//! 1. `/ready` turns false at once and the hub refuses new subscriptions (503);
//! 2. every subscription ends: WebSocket clients get close 1001, SSE streams end, so clients
//!    reconnect (with their cursor) to another pod;
//! 3. the listener closes (new connections are refused) and actix-web waits for the open ones
//!    to finish, up to `SHUTDOWN_GRACE`, after which it drops them;
//! 4. a watchdog ends the process if anything still hangs a moment after the grace period.

use std::time::Duration;

use actix_web::dev::ServerHandle;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::hub::Hub;

/// The signals that stop the gateway.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers (inside a Tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Waits for a signal, then drains the gateway.
pub async fn drain_on_signal(
    mut signals: Signals,
    hub: Hub,
    server: ServerHandle,
    grace: Duration,
) {
    let signal = signals.recv().await;
    tracing::info!(signal, grace_ms = grace.as_millis() as u64, "shutting down");
    hub.shutdown();
    start_watchdog(grace + Duration::from_millis(500));
    server.stop(true).await;
}

fn start_watchdog(limit: Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            tracing::warn!("connections still open after the grace period; exiting");
            std::process::exit(0);
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the shutdown watchdog");
    }
}
