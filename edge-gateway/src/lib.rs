//! edge-gateway: the stateless edge pods between NATS JetStream and the clients.
//!
//! One round's way through this crate: NATS → `hub::feed` (the one ordered consumer, decode
//! once, encode once) → [`hub`] (latest, history, per-connection queues) → [`transport`]
//! (`ws`, `sse`, `wt`: framing only) → socket. [`tls`] holds WebTransport's certificate,
//! [`api`] serves the REST and probe endpoints,
//! [`server`] wires routes, limits and runtimes, [`shutdown`] drains on SIGTERM, [`metrics`]
//! counts it all, [`config`] reads the settings. docs/gateway.md explains the decisions.

pub mod api;
pub mod auth;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod page;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod transport;

pub use config::Config;
pub use server::run;
