//! Orderly stop on SIGTERM or SIGINT: the pipeline finishes in-flight publishes, confirms what
//! they acknowledged, and exits 0.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// A handle that resolves once a stop was requested; cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Listens for SIGTERM and SIGINT.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        let (tx, rx) = watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
            let _ = tx.send(true);
            // Keep the sender alive so receivers see `true`, not a closed channel.
            std::future::pending::<()>().await;
        });
        Ok(Shutdown(rx))
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when a stop is requested. Cancel-safe.
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
