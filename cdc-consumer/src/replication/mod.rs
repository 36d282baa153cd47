//! The PostgreSQL side of the consumer; nothing in here knows about NATS.
//!
//! `pgoutput` and `protocol` are pure functions over bytes (no sockets), so they can be unit
//! tested with captured bytes and fuzzed; `conn` owns the replication socket; `slot` manages the
//! slot and publication over an ordinary tokio-postgres connection.

pub mod conn;
pub mod lsn;
pub mod pgoutput;
pub mod protocol;
pub mod slot;
pub mod time;

pub use conn::{ReplicationClient, ReplicationError, ReplicationStream, SystemIdentity};
pub use lsn::Lsn;
pub use protocol::{ProtocolError, ReplicationMessage};
pub use slot::{SlotError, SlotStatus};
