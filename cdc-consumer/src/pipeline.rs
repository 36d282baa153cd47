//! The replication session and its restarts: source (slot) → events → sinks (stream, KV).
//!
//! A session takes the slot (or waits as the standby while another consumer holds it), rewrites
//! the KV catalog from the tables, reads the stream's head, then streams: each WAL message is
//! decoded, turned into changes and carried out; acknowledged transactions become the LSN
//! confirmed to PostgreSQL. Any error ends the session, and the next one replays from the slot's
//! confirmed position: nothing is skipped, and what the stream already holds is not published
//! twice (see [`crate::publish`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::catalog::{self, Catalog, CatalogError};
use crate::cli::Settings;
use crate::events::{Change, EventBuilder, EventError, Position};
use crate::metrics::Metrics;
use crate::publish::{unix_millis_now, Sink, SinkError};
use crate::replication::conn::{ReplicationClient, ReplicationError, ReplicationStream};
use crate::replication::pgoutput::{self, DecodeError};
use crate::replication::protocol::ReplicationMessage;
use crate::replication::slot::{self, SlotError};
use crate::replication::Lsn;
use crate::shutdown::Shutdown;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a standby asks for the slot; bounds the takeover time after the holder dies.
const STANDBY_POLL: Duration = Duration::from_millis(250);
/// PostgreSQL drops a walsender silent for `wal_sender_timeout` (60 s by default).
const MAX_STATUS_SILENCE: Duration = Duration::from_secs(10);
/// How long a JetStream acknowledgement may take before the session gives up on it.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What every session needs.
pub struct Context {
    pub settings: Settings,
    pub pg: tokio_postgres::Config,
    pub nats: async_nats::Client,
    pub metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("undecodable pgoutput message at {lsn}: {source}")]
    Decode { lsn: Lsn, source: DecodeError },
    #[error("unexpected change at {lsn}: {source}")]
    Event { lsn: Lsn, source: EventError },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("table rounds is missing: run `cdc-consumer migrate`")]
    NoRoundsTable,
    #[error("rounds has REPLICA IDENTITY {0:?}, FULL is required: ALTER TABLE rounds REPLICA IDENTITY FULL")]
    ReplicaIdentity(char),
}

impl SessionError {
    /// WAL position of the message that ended the session, when one did.
    fn lsn(&self) -> Option<Lsn> {
        match self {
            SessionError::Decode { lsn, .. } | SessionError::Event { lsn, .. } => Some(*lsn),
            _ => None,
        }
    }
}

/// Runs sessions until a stop is requested.
pub async fn run(ctx: &Context, mut shutdown: Shutdown) {
    // Positions the stream reported as already stored (by a writer other than us, within its
    // duplicate window): skipped when the slot replays them, so the replay makes progress.
    let mut stored_elsewhere = BTreeSet::new();
    let mut backoff = FIRST_BACKOFF;
    while !shutdown.is_requested() {
        let started = Instant::now();
        let Err(err) = session(ctx, &mut shutdown, &mut stored_elsewhere).await else {
            return;
        };
        ctx.metrics.slot_held.set(0);
        ctx.metrics.reconnects.inc();
        if let SessionError::Sink(SinkError::Duplicate { position, round_id }) = &err {
            tracing::info!(round_id, %position, "round already in the stream; replaying past it");
            stored_elsewhere.insert(*position);
            continue;
        }
        if started.elapsed() > MAX_BACKOFF * 2 {
            backoff = FIRST_BACKOFF;
        }
        match err.lsn() {
            Some(lsn) => {
                tracing::error!(%lsn, error = %err, retry_in = ?backoff, "replication session ended")
            }
            None => tracing::error!(error = %err, retry_in = ?backoff, "replication session ended"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.requested() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(
    ctx: &Context,
    shutdown: &mut Shutdown,
    stored_elsewhere: &mut BTreeSet<Position>,
) -> Result<(), SessionError> {
    let s = &ctx.settings;
    let js = jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(ctx.nats.clone());
    // NATS first: holding the slot without NATS would only keep the standby out.
    let catalog = Catalog::open(&js, s.stream_replicas).await?;
    let client = Arc::new(connect(&ctx.pg).await?);
    slot::ensure_publication(&client, &s.publication).await?;
    slot::ensure_slot(&client, &s.slot_name).await?;
    match slot::replica_identity(&client, "rounds").await? {
        Some('f') => {}
        Some(other) => return Err(SessionError::ReplicaIdentity(other)),
        None => return Err(SessionError::NoRoundsTable),
    }
    let Some(mut stream) = acquire_slot(ctx, shutdown).await? else {
        return Ok(());
    };
    ctx.metrics.slot_held.set(1);
    let mut confirmed = slot::slot_status(&client, &s.slot_name)
        .await?
        .and_then(|status| status.confirmed_flush_lsn)
        .unwrap_or(Lsn::ZERO);
    stored_elsewhere.retain(|p| p.commit_lsn >= confirmed);

    let snapshot = catalog::load(&client).await?;
    catalog.sync(&snapshot).await?;
    let mut events = EventBuilder::new(snapshot.games, snapshot.guard);
    let mut sink = Sink::open(js, &s.rounds_stream(), s.max_in_flight, ctx.metrics.clone()).await?;
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(
        client.clone(),
        s.heartbeat_interval,
    )));
    tracing::info!(slot = %s.slot_name, lsn = %confirmed, "streaming");

    let mut changes = Vec::new();
    let mut server_wal_end = confirmed;
    let mut reported = confirmed;
    let mut reported_at = Instant::now();
    let mut status_tick = tokio::time::interval(s.status_interval);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.requested() => {
                if let Some(lsn) = sink.drain(s.shutdown_grace).await? {
                    confirmed = confirmed.max(lsn);
                }
                report(&mut stream, confirmed, &ctx.metrics).await?;
                stream.close().await;
                tracing::info!(lsn = %confirmed, "stopped; confirmed position reported");
                return Ok(());
            }
            ack = sink.next_ack(), if sink.has_in_flight() => {
                if let Some(lsn) = ack? {
                    confirmed = confirmed.max(lsn);
                    // Crash test: acknowledged, not yet reported to PostgreSQL.
                    fail::fail_point!("ack-before-status");
                }
            }
            message = stream.next(), if sink.has_room() => match message? {
                ReplicationMessage::XLogData { wal_start, wal_end, data, .. } => {
                    server_wal_end = server_wal_end.max(wal_end);
                    let decoded = pgoutput::decode(data)
                        .map_err(|source| SessionError::Decode { lsn: wal_start, source })?;
                    events
                        .apply(decoded, &mut changes)
                        .map_err(|source| SessionError::Event { lsn: wal_start, source })?;
                    for change in changes.drain(..) {
                        match change {
                            Change::Round(pending) => {
                                if pending.position.index > 0 {
                                    // Crash test: part of a transaction's events published.
                                    fail::fail_point!("mid-transaction");
                                }
                                if sink.already_stored(pending.position)
                                    || stored_elsewhere.contains(&pending.position)
                                {
                                    ctx.metrics.skipped.inc();
                                    continue;
                                }
                                sink.publish(&pending).await?;
                            }
                            Change::Catalog(change) => catalog.apply(&change).await?,
                            Change::Commit { end_lsn } => {
                                if let Some(lsn) = sink.commit(end_lsn) {
                                    confirmed = confirmed.max(lsn);
                                }
                            }
                        }
                    }
                }
                ReplicationMessage::Keepalive { wal_end, reply_requested, .. } => {
                    server_wal_end = server_wal_end.max(wal_end);
                    // Nothing of ours is pending before wal_end: let the slot move on, or WAL
                    // piles up on a database busy only with unpublished tables.
                    if sink.is_idle() && !events.in_transaction() {
                        confirmed = confirmed.max(wal_end);
                    }
                    if reply_requested {
                        report(&mut stream, confirmed, &ctx.metrics).await?;
                        (reported, reported_at) = (confirmed, Instant::now());
                    }
                }
            },
            _ = status_tick.tick() => {
                if confirmed != reported || reported_at.elapsed() >= MAX_STATUS_SILENCE {
                    report(&mut stream, confirmed, &ctx.metrics).await?;
                    (reported, reported_at) = (confirmed, Instant::now());
                }
                let lag = server_wal_end.0.saturating_sub(confirmed.0);
                ctx.metrics.lag_bytes.set(i64::try_from(lag).unwrap_or(i64::MAX));
                let lag_ms = sink
                    .oldest_pending_commit_ms()
                    .map_or(0, |committed| unix_millis_now().saturating_sub(committed).max(0));
                ctx.metrics.lag_seconds.set(lag_ms as f64 / 1000.0);
            }
        }
    }
}

/// Starts streaming from the slot, or waits as the standby while another consumer holds it.
/// `None` when a stop was requested while waiting.
async fn acquire_slot(
    ctx: &Context,
    shutdown: &mut Shutdown,
) -> Result<Option<ReplicationStream>, SessionError> {
    let s = &ctx.settings;
    let mut waiting = false;
    loop {
        let client = ReplicationClient::connect(&ctx.pg).await?;
        match client
            .start_logical_replication(&s.slot_name, Lsn::ZERO, &s.publication)
            .await
        {
            Ok(stream) => {
                if waiting {
                    tracing::info!(slot = %s.slot_name, "slot released; this consumer takes over");
                }
                return Ok(Some(stream));
            }
            Err(err) if err.is_slot_in_use() => {
                if !waiting {
                    tracing::info!(slot = %s.slot_name, "standby: another consumer holds the slot");
                    waiting = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(STANDBY_POLL) => {}
                    _ = shutdown.requested() => return Ok(None),
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
}

async fn report(
    stream: &mut ReplicationStream,
    confirmed: Lsn,
    metrics: &Metrics,
) -> Result<(), SessionError> {
    stream.send_status(confirmed, confirmed, false).await?;
    metrics
        .confirmed_lsn
        .set(i64::try_from(confirmed.0).unwrap_or(i64::MAX));
    Ok(())
}

async fn connect(
    pg: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "PostgreSQL query connection ended");
        }
    });
    Ok(client)
}

/// Writes a logical message through the slot on a timer, so that a database busy only with
/// tables outside the publication still gives the slot something to confirm.
async fn heartbeat(client: Arc<tokio_postgres::Client>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = slot::emit_heartbeat(&client, "datastream-heartbeat").await {
            tracing::warn!(error = %err, "heartbeat failed");
        }
    }
}

/// Aborts the task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
