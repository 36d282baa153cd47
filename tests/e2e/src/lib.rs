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
