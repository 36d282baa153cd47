//! Helpers shared by the end-to-end tests in `tests/`: each starts real processes (PostgreSQL,
//! nats-server, Datastream's binaries) through `testkit` and talks to them as a user would.

pub mod browser;
pub mod clients;
pub mod feed;
pub mod ledger;
pub mod pipeline;
pub mod raw;
pub mod wt;

/// A numeric setting of a test profile from the environment (`CHAOS_SECONDS`,
/// `RESOURCE_NATS_DOWN_SECONDS`, ...), or `default` when unset or not a number.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A client that yields rounds one at a time ([`clients::WsClient`], [`wt::WtClient`]).
pub trait RoundSource: Send {
    /// The next round, within `within`.
    fn next_round(
        &mut self,
        within: std::time::Duration,
    ) -> impl std::future::Future<Output = anyhow::Result<serde_json::Value>> + Send;
}

/// The next `n` rounds from `source`, all within `within`; an error names how many had arrived.
pub async fn collect_rounds(
    source: &mut impl RoundSource,
    n: usize,
    within: std::time::Duration,
) -> anyhow::Result<Vec<serde_json::Value>> {
    use anyhow::Context as _;
    let deadline = tokio::time::Instant::now() + within;
    let mut rounds = Vec::with_capacity(n);
    while rounds.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let round = source
            .next_round(left)
            .await
            .with_context(|| format!("after {} of {n} rounds", rounds.len()))?;
        rounds.push(round);
    }
    Ok(rounds)
}
