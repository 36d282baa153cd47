//! Real infrastructure for tests: a throwaway PostgreSQL 15, a throwaway `nats-server -js`, and
//! Datastream's own binaries as child processes, all on loopback and free ports; and the games
//! the migrations seed, for tests and benchmarks that feed NATS themselves.
//!
//! Nothing here touches the machine's shared PostgreSQL (5432) or NATS (4222). Every child is
//! started through `setpriv --pdeathsig SIGKILL`, so it dies with the test process even when the
//! test is killed; directories left behind by such a test are swept on the next use.
//!
//! Start children from the test's own thread (or a runtime worker that outlives them): Linux
//! delivers the parent-death signal when the *thread* that spawned the child exits.

mod dirs;
pub mod games;
pub mod nats;
pub mod pg;
pub mod service;
pub mod wait;

pub use games::seeded_games;
pub use nats::Nats;
pub use pg::Postgres;
pub use service::{bin_path, Service};
pub use wait::wait_until;

/// A TCP port that was free a moment ago (PostgreSQL cannot pick its own).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
