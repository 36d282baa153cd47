//! Connecting to NATS and opening the KV buckets, the same way in both services.
//!
//! async-nats 0.51's `create_key_value` asks for account info first, and cannot parse the reply
//! of nats-server 2.9 (Debian's). We create the bucket's backing stream ourselves, with the
//! layout KV clients expect, and open it with `get_key_value`, which needs only stream info.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot create the backing stream of KV bucket {bucket}: {source}")]
    CreateBucket {
        bucket: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot open KV bucket {bucket}: {source}")]
    OpenBucket {
        bucket: String,
        source: jetstream::context::KeyValueError,
    },
}

/// Connects the way a long-running service should: a name that shows in `nats-server`
/// monitoring, unlimited reconnects, and a first connection that waits for the server.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    connect_with(options(name).retry_on_initial_connect(), url).await
}

/// Connects the way a command-line tool should: fail at once when the server is not there.
pub async fn connect_now(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    connect_with(options(name), url).await
}

fn options(name: &str) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50 * 2u64.saturating_pow(attempts.min(6) as u32)).min(2_000))
        })
}

async fn connect_with(
    options: async_nats::ConnectOptions,
    url: &str,
) -> Result<async_nats::Client, NatsError> {
    options
        .connect(url)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// Opens a KV bucket (one value per key, file storage), creating it when missing.
pub async fn ensure_kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, NatsError> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|source| NatsError::CreateBucket {
        bucket: bucket.to_owned(),
        source,
    })?;
    open_kv_bucket(js, bucket).await
}

/// Opens an existing KV bucket.
pub async fn open_kv_bucket(js: &jetstream::Context, bucket: &str) -> Result<kv::Store, NatsError> {
    js.get_key_value(bucket)
        .await
        .map_err(|source| NatsError::OpenBucket {
            bucket: bucket.to_owned(),
            source,
        })
}

/// The ROUNDS stream's settings: the consumer creates the stream with them, tests reuse them.
#[derive(Debug, Clone)]
pub struct RoundsStream {
    pub name: String,
    /// How long events stay: the window in which clients can resume by cursor.
    pub max_age: Duration,
    /// How long the stream remembers message ids to drop a republished round.
    pub duplicate_window: Duration,
    pub replicas: usize,
}

impl RoundsStream {
    pub fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: vec![crate::subject::ROUNDS_FILTER.to_owned()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            // Lets any replica answer "last message of subject X" (a gateway's latest round).
            allow_direct: true,
            ..Default::default()
        }
    }
}
