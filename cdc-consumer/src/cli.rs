//! Command line and environment: every setting is an environment variable with a flag of the
//! same meaning; a bad value stops start-up with one line naming it.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shared::config::{invalid, parse_duration, LogFormat};
use shared::nats::RoundsStream;

#[derive(Debug, Parser)]
#[command(
    name = "cdc-consumer",
    version,
    about = "PostgreSQL pgoutput → NATS JetStream, exactly once and in commit order"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream rounds to NATS (the default).
    Run,
    /// Apply the SQL migrations and create the publication.
    Migrate,
    /// Print the slot's state, replication lag and the stream's last sequence.
    Status,
    /// Re-publish stored finished rounds from a round id on (the stream drops those it has).
    Backfill {
        #[arg(long)]
        from_round_id: i64,
    },
    /// Manage the API keys clients use (changes reach every gateway within seconds).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        #[arg(long)]
        name: String,
        /// `game:<slug>` or `type:<type>`; repeat for several; none allows everything.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Cap on this key's concurrent connections per gateway (default: the gateway's).
        #[arg(long)]
        max_connections: Option<i32>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key: new tokens and connections are refused, open connections closed.
    Revoke { id: i64 },
}

#[derive(Debug, clap::Args)]
pub struct Settings {
    /// PostgreSQL connection URL (the role needs REPLICATION).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/datastream",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// Logical replication slot the consumer reads (created when missing).
    #[arg(long, env = "SLOT_NAME", default_value = "datastream", global = true)]
    pub slot_name: String,
    /// Publication covering games, rounds and api_keys (created when missing).
    #[arg(long, env = "PUBLICATION", default_value = "datastream", global = true)]
    pub publication: String,
    /// JetStream stream holding the round events.
    #[arg(long, env = "STREAM", default_value = shared::subject::DEFAULT_STREAM, global = true)]
    pub stream: String,
    /// Replicas of the stream and KV buckets when created (3 on a NATS cluster).
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1, global = true)]
    pub stream_replicas: usize,
    /// How long events stay in the stream: the window clients can resume in.
    #[arg(long, env = "STREAM_MAX_AGE", default_value = "24h", value_parser = parse_duration, global = true)]
    pub stream_max_age: Duration,
    /// The stream's de-duplication window by message id.
    #[arg(long, env = "DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration, global = true)]
    pub duplicate_window: Duration,
    /// Where `/metrics` and `/health` are served.
    #[arg(
        long,
        env = "METRICS_ADDR",
        default_value = "0.0.0.0:9090",
        global = true
    )]
    pub metrics_addr: SocketAddr,
    /// How often a logical message is written so that an idle slot still advances.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration, global = true)]
    pub heartbeat_interval: Duration,
    /// How often the confirmed position is reported to PostgreSQL when it moved.
    #[arg(long, env = "STATUS_INTERVAL", default_value = "1s", value_parser = parse_duration, global = true)]
    pub status_interval: Duration,
    /// Publishes awaiting acknowledgement before reading from PostgreSQL pauses.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 4096, global = true)]
    pub max_in_flight: usize,
    /// How long SIGTERM waits for outstanding acknowledgements.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration, global = true)]
    pub shutdown_grace: Duration,
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,
}

impl Settings {
    /// Checks what clap cannot; exits with one line on the first bad value.
    pub fn validate(&self) -> tokio_postgres::Config {
        let mut pg: tokio_postgres::Config = self
            .database_url
            .parse()
            .unwrap_or_else(|e| invalid("DATABASE_URL", format!("not a PostgreSQL URL ({e})")));
        if pg.get_application_name().is_none() {
            // Names our sessions in pg_stat_replication and pg_stat_activity.
            pg.application_name("datastream-cdc-consumer");
        }
        for (setting, value) in [
            ("SLOT_NAME", &self.slot_name),
            ("PUBLICATION", &self.publication),
        ] {
            let ok = !value.is_empty()
                && value.len() <= 63
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                invalid(setting, format!("{value:?} must be 1-63 of a-z, 0-9, _"));
            }
        }
        let stream_ok = !self.stream.is_empty()
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !stream_ok {
            invalid(
                "STREAM",
                format!("{:?} must be letters, digits, _ or -", self.stream),
            );
        }
        if !(1..=5).contains(&self.stream_replicas) {
            invalid("STREAM_REPLICAS", "must be 1 to 5");
        }
        if self.status_interval.is_zero() || self.status_interval > Duration::from_secs(10) {
            invalid(
                "STATUS_INTERVAL",
                "must be above 0 and at most 10s (wal_sender_timeout is 60s)",
            );
        }
        if self.heartbeat_interval.is_zero() {
            invalid("HEARTBEAT_INTERVAL", "must be above 0");
        }
        if self.max_in_flight == 0 {
            invalid("MAX_IN_FLIGHT", "must be above 0");
        }
        pg
    }

    pub fn rounds_stream(&self) -> RoundsStream {
        RoundsStream {
            name: self.stream.clone(),
            max_age: self.stream_max_age,
            duplicate_window: self.duplicate_window,
            replicas: self.stream_replicas,
        }
    }
}
