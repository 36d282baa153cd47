//! The contract the two Datastream services share, and nothing else.
//!
//! `cdc-consumer` writes and `edge-gateway` reads the same NATS subjects, headers, message
//! encodings and KV records. Keeping all of them in this one crate means a change to the wire
//! format is a change in one place, checked by both services' compilers.

pub mod catalog;
pub mod config;
pub mod nats;
pub mod round;
pub mod subject;

pub use catalog::{hash_api_key, ApiKeyRecord, Game, Scope};
pub use round::{CodecError, Round};
