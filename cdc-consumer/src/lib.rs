//! cdc-consumer: PostgreSQL pgoutput → NATS JetStream.
//!
//! One round's way through this crate: WAL → [`replication::conn`] (the socket) →
//! [`replication::pgoutput`] (bytes to messages) → [`events`] (messages to rounds) → [`publish`]
//! (JetStream, acks to a confirmable LSN) → back to [`replication::conn`] as a standby status.
//! Each step knows only the one before and after it; [`pipeline`] wires them into a session and
//! restarts the session from the slot whenever any step fails.

pub mod backfill;
pub mod catalog;
pub mod cli;
pub mod events;
pub mod keys;
pub mod metrics;
pub mod migrate;
pub mod pgtext;
pub mod pipeline;
pub mod publish;
pub mod replication;
pub mod shutdown;
