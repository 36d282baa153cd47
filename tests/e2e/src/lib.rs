//! Helpers shared by the end-to-end tests in `tests/`: each starts real processes (PostgreSQL,
//! nats-server, Datastream's binaries) through `testkit` and talks to them as a user would.

pub mod browser;
pub mod clients;
pub mod feed;
pub mod ledger;
pub mod pipeline;
pub mod wt;
