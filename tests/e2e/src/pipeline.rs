//! The data path up to NATS: a throwaway PostgreSQL (migrated by the real `cdc-consumer
//! migrate`) and nats-server, `cdc-consumer` processes reading the slot, and ways to look at what
//! reached the stream.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures_util::StreamExt;
use shared::Round;
use testkit::{wait_until, Nats, Postgres, Service};

/// Stream name the tests use (the default).
pub const STREAM: &str = shared::subject::DEFAULT_STREAM;

/// A round as the stream holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub msg_id: Option<String>,
    pub position: Option<String>,
    pub round: Round,
}

/// PostgreSQL + NATS, migrated; consumers are started by the test.
pub struct Pipeline {
    pub pg: Postgres,
    pub nats: Nats,
}

impl Pipeline {
    pub async fn start() -> anyhow::Result<Pipeline> {
        let (pg, nats) = tokio::try_join!(Postgres::start(), Nats::start())?;
        let pipeline = Pipeline { pg, nats };
        pipeline.migrate().await?;
        Ok(pipeline)
    }

    /// Runs `cdc-consumer migrate` to completion.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut migrate = Service::start("cdc-consumer", &["migrate"], &self.consumer_env(&[]))?;
        let status = migrate.wait_exit(Duration::from_secs(30)).await?;
        if !status.success() {
            bail!("cdc-consumer migrate failed: {}", migrate.log_tail());
        }
        Ok(())
    }

    /// Environment of a consumer on this pipeline; `extra` overrides.
    /// Intervals are short so that tests see confirmations within a second; the duplicate window
    /// is short so that no test passes thanks to it.
    pub fn consumer_env(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = vec![
            ("DATABASE_URL", self.pg.url()),
            ("NATS_URL", self.nats.url()),
            ("HEARTBEAT_INTERVAL", "1s".into()),
            ("STATUS_INTERVAL", "200ms".into()),
            ("DUPLICATE_WINDOW", "1s".into()),
            ("SHUTDOWN_GRACE", "5s".into()),
            ("RUST_LOG", "info,cdc_consumer=debug".into()),
        ];
        let port = testkit::free_port().unwrap_or(0);
        env.push(("METRICS_ADDR", format!("127.0.0.1:{port}")));
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push((key, (*value).to_owned()));
        }
        env
    }

    /// Starts `cdc-consumer run`.
    pub fn start_consumer(&self, extra: &[(&'static str, &str)]) -> anyhow::Result<Service> {
        Service::start("cdc-consumer", &["run"], &self.consumer_env(extra))
    }

    /// Starts a consumer and waits until it streams from the slot.
    pub async fn start_streaming_consumer(
        &self,
        extra: &[(&'static str, &str)],
    ) -> anyhow::Result<Service> {
        streaming(self.start_consumer(extra)?).await
    }

    /// Starts the test build's consumer, the only one with fail points, with
    /// `FAILPOINTS=failpoints`, and waits until it streams from the slot.
    pub async fn start_streaming_consumer_with_failpoints(
        &self,
        failpoints: &str,
    ) -> anyhow::Result<Service> {
        let env = self.consumer_env(&[("FAILPOINTS", failpoints)]);
        streaming(Service::start_own_build("cdc-consumer", &["run"], &env)?).await
    }

    pub async fn jetstream(&self) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::connect(self.nats.url()).await?;
        Ok(jetstream::new(client))
    }

    /// Every message of the stream, in stream order.
    pub async fn stream_rounds(&self) -> anyhow::Result<Vec<Stored>> {
        read_stream(&self.jetstream().await?).await
    }

    /// Waits until the stream holds at least `count` messages, then returns them all.
    pub async fn wait_for_rounds(
        &self,
        count: usize,
        deadline: Duration,
    ) -> anyhow::Result<Vec<Stored>> {
        let js = self.jetstream().await?;
        wait_until(deadline, &format!("{count} rounds in the stream"), || {
            let js = js.clone();
            async move {
                let mut stream = js.get_stream(STREAM).await.ok()?;
                let messages = stream.info().await.ok()?.state.messages;
                (messages >= count as u64).then_some(())
            }
        })
        .await?;
        read_stream(&js).await
    }

    /// The slot's confirmed_flush_lsn, as text.
    pub async fn confirmed_flush_lsn(&self) -> anyhow::Result<Option<String>> {
        let row = self
            .pg
            .client()
            .await?
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'datastream'",
                &[],
            )
            .await?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// Waits until the slot confirmed everything written so far: after this, the consumer has
    /// published all it ever will of what was committed before the call.
    pub async fn wait_until_caught_up(&self, deadline: Duration) -> anyhow::Result<()> {
        let client = self.pg.client().await?;
        // The insert position: every commit that returned is before it, flushed or not.
        let target: String = client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0);
        wait_until(deadline, &format!("slot confirmed up to {target}"), || {
            let client = &client;
            let target = &target;
            async move {
                let row = client
                    .query_one(
                        "SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false)
                           FROM pg_replication_slots WHERE slot_name = 'datastream'",
                        &[target],
                    )
                    .await
                    .ok()?;
                row.get::<_, bool>(0).then_some(())
            }
        })
        .await
    }
}

/// Waits until `consumer` streams from the slot.
async fn streaming(consumer: Service) -> anyhow::Result<Service> {
    consumer
        .wait_for_log("\"streaming\"", Duration::from_secs(30))
        .await?;
    Ok(consumer)
}

async fn read_stream(js: &jetstream::Context) -> anyhow::Result<Vec<Stored>> {
    let mut stream = js.get_stream(STREAM).await.context("ROUNDS stream")?;
    let state = stream.info().await?.state.clone();
    let mut out = Vec::with_capacity(state.messages as usize);
    if state.messages == 0 {
        return Ok(out);
    }
    let consumer = stream.create_consumer(OrderedConfig::default()).await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("message info: {e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let mut round = Round::from_msgpack(&message.payload)?;
        round.seq = seq;
        out.push(Stored {
            seq,
            subject: message.subject.to_string(),
            msg_id: header(shared::subject::MSG_ID_HEADER),
            position: header(shared::subject::POSITION_HEADER),
            round,
        });
        if pending == 0 || seq >= state.last_sequence {
            break;
        }
    }
    Ok(out)
}

/// The round ids of `stored`, in stream order.
pub fn round_ids(stored: &[Stored]) -> Vec<i64> {
    stored.iter().map(|s| s.round.round_id).collect()
}

/// The value of a Prometheus sample `name` (exact series, labels included) served at
/// `http://addr/metrics`, or `None` when absent.
pub async fn scrape(addr: &str, name: &str) -> anyhow::Result<Option<f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    socket.read_to_string(&mut body).await?;
    Ok(body.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok()).flatten()
    }))
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// Resident memory of a process now, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    proc_status_kib(pid, "VmRSS")
}

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// Inserts finished rounds the way a game server would: one transaction per batch, `sizes`
/// giving each batch's size, cycling through the seeded games. Survives PostgreSQL restarts
/// (reconnects and retries the batch), so what committed is decided by the database, not by
/// this writer; read the expectation back with [`finished_round_ids`].
pub async fn write_rounds(url: String, sizes: Vec<usize>) -> anyhow::Result<()> {
    let mut client = None;
    let mut game = 0i64;
    for size in sizes {
        loop {
            let c = match client.take() {
                Some(c) => c,
                None => match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        c
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let games: Vec<i64> = (0..size as i64).map(|i| 1 + (game + i) % 15).collect();
            let result = c
                .execute(
                    "INSERT INTO rounds (game_id, finished_at, extras)
                     SELECT g, now(), jsonb_build_object('point', (1 + g)::text || '.00')
                       FROM unnest($1::bigint[]) WITH ORDINALITY AS t(g, n) ORDER BY n",
                    &[&games],
                )
                .await;
            if result.is_ok() {
                client = Some(c);
                game += size as i64;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Commits `per_tick` finished rounds of game `game_id` in one transaction every `tick` until
/// `stop`, as a game server at a steady rate would; survives PostgreSQL restarts (reconnects;
/// a failed transaction is not retried, the database decides what committed). Returns the
/// number of rounds whose commit was acknowledged.
pub async fn write_paced(
    url: String,
    game_id: i64,
    per_tick: usize,
    tick: Duration,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut committed = 0;
    let mut client = None;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let games = vec![game_id; per_tick];
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        if client.is_none() {
            if let Ok((c, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            {
                tokio::spawn(connection);
                client = Some(c);
            }
        }
        if let Some(c) = &client {
            let result = c
                .execute(
                    "INSERT INTO rounds (game_id, finished_at, extras)
                     SELECT g, now(), '{\"point\": \"1.50\"}'::jsonb
                       FROM unnest($1::bigint[]) WITH ORDINALITY AS t(g, n) ORDER BY n",
                    &[&games],
                )
                .await;
            match result {
                Ok(n) => committed += n,
                Err(_) => client = None,
            }
        }
    }
    committed
}

/// Ids of the finished rounds, in id order: the commit order when one writer inserts them.
pub async fn finished_round_ids(pg: &Postgres) -> anyhow::Result<Vec<i64>> {
    Ok(pg
        .client()
        .await?
        .query(
            "SELECT id FROM rounds WHERE finished_at IS NOT NULL ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The stream holds exactly the database's finished rounds, in id order, each once.
pub async fn assert_exactly_once_in_order(p: &Pipeline) -> Vec<Stored> {
    let expected = finished_round_ids(&p.pg).await.unwrap();
    p.wait_until_caught_up(Duration::from_secs(60))
        .await
        .unwrap();
    let stored = p.stream_rounds().await.unwrap();
    let ids = round_ids(&stored);
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates in the stream");
    assert_eq!(
        ids.len(),
        expected.len(),
        "stream has {} rounds, database {}",
        ids.len(),
        expected.len()
    );
    assert_eq!(ids, expected, "stream order differs from commit order");
    for (i, s) in stored.iter().enumerate() {
        assert_eq!(s.seq, i as u64 + 1);
    }
    stored
}
