//! Commit → client latency through the full pipeline (`gateway-latency`, `wt-latency`): the
//! pipeline's processes, the writer that inserts finished rounds at a steady rate, the NATS
//! subscriber that times the consumer's half, the matching of arrivals with INSERTs by round id,
//! and the report's table and CPU figures.
//!
//! Every path is measured twice:
//! - **INSERT sent → read**: from the writer sending the INSERT to the client's read returning,
//!   on this process's monotonic clock. An upper bound: it includes the statement's execution
//!   and the load generator's own wait for a core.
//! - **commit → received**: from the round's commit timestamp (PostgreSQL's, microseconds, read
//!   back with `pg_xact_commit_timestamp` after the run; the test kit's clusters set
//!   `track_commit_timestamp`) to the wall-clock time the client received it (the kernel's
//!   receive timestamp for load generator clients, see [`crate::loadgen::Stamp`]). This is the
//!   latency the goals name: commit → client.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use shared::Game;
use testkit::{Nats, Postgres, Service};

use crate::gateway::{machine_load, Gateway};
use crate::loadgen::Stamp;
use crate::{cpu_seconds, infrastructure, percentiles, streaming_consumer};

/// PostgreSQL → release cdc-consumer → NATS (ROUNDS) → release edge-gateway, running.
pub struct Pipeline {
    pub gateway: Gateway,
    pub consumer: Service,
    pub pg: Postgres,
    pub nats: Nats,
}

impl Pipeline {
    /// Starts the infrastructure, a consumer logging its pipeline (once it is streaming), and a
    /// gateway with `HTTP_WORKERS=http_workers` and `gateway_env`.
    pub async fn start(
        http_workers: usize,
        gateway_env: &[(String, String)],
    ) -> anyhow::Result<Pipeline> {
        let (pg, nats) = infrastructure().await?;
        let consumer = streaming_consumer(&pg, &nats, "warn,cdc_consumer::pipeline=info").await?;
        let gateway = Gateway::start(&nats.url(), http_workers, gateway_env).await?;
        Ok(Pipeline {
            gateway,
            consumer,
            pg,
            nats,
        })
    }

    /// Prints `{clients}, {pace}; {machine load}`, then inserts finished rounds at `pace` (see
    /// [`write_rounds`]), reading the gateway's and the consumer's CPU (in that order).
    pub async fn write_rounds(
        &self,
        games: &[Game],
        pace: Pace,
        clients: &str,
    ) -> anyhow::Result<Written> {
        println!("{clients}, {pace}; {}", machine_load());
        let pids = [self.gateway.pid(), self.consumer.pid().unwrap_or_default()];
        write_rounds(&self.pg, games, pace, &pids).await
    }
}

/// When each round reached a core NATS subscriber on `rounds.>`: the consumer's half.
pub struct NatsArrivals {
    at: Arc<Mutex<HashMap<i64, Stamp>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NatsArrivals {
    /// Subscribes on `nats_url` and records every round from now on.
    pub async fn start(nats_url: &str) -> anyhow::Result<NatsArrivals> {
        let client = async_nats::connect(nats_url).await?;
        let mut subscription = client.subscribe("rounds.>").await?;
        let at: Arc<Mutex<HashMap<i64, Stamp>>> = Arc::default();
        let task = {
            let at = Arc::clone(&at);
            tokio::spawn(async move {
                while let Some(message) = subscription.next().await {
                    let arrived = Stamp::now();
                    if let Ok(round) = shared::Round::from_msgpack(&message.payload) {
                        at.lock().unwrap().insert(round.round_id, arrived);
                    }
                }
            })
        };
        Ok(NatsArrivals { at, task })
    }

    /// Stops recording; round id → arrival.
    pub fn stop(self) -> HashMap<i64, Stamp> {
        self.task.abort();
        std::mem::take(&mut *self.at.lock().unwrap())
    }
}

/// The writer's pace: `rate` rounds per second for `warmup_secs` not counted, then `seconds`
/// measured. Options `--rate`, `--seconds` (30 unless the harness sets another default) and
/// `--warmup-secs`.
#[derive(Debug, Clone, Copy, clap::Args)]
#[command(about = None, long_about = None)]
pub struct Pace {
    /// Rounds inserted per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Seconds written before measuring.
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
}

/// `200 rounds/s for 30 s (+3 s warm-up)`.
impl std::fmt::Display for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rounds/s for {} s (+{} s warm-up)",
            self.rate, self.seconds, self.warmup_secs
        )
    }
}

/// One INSERT of the run.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// When the INSERT was sent.
    pub at: Instant,
    pub game_id: i64,
    /// Sent after the warm-up.
    pub measured: bool,
}

/// What the writer did.
pub struct Written {
    /// Round id → its INSERT.
    pub sent: HashMap<i64, Sent>,
    /// Round id → its commit timestamp.
    pub committed: HashMap<i64, SystemTime>,
    /// Seconds from the end of the warm-up to the last INSERT.
    pub window: f64,
    /// CPU seconds each process of `pids` used over the window, in order.
    pub cpu: Vec<f64>,
}

/// Inserts finished rounds at `pace`, one single-row transaction each, cycling through `games`,
/// and reads the CPU `pids` use over the measured part.
pub async fn write_rounds(
    pg: &Postgres,
    games: &[Game],
    pace: Pace,
    pids: &[u32],
) -> anyhow::Result<Written> {
    let client = pg.client().await?;
    let insert = client
        .prepare("INSERT INTO rounds (game_id, finished_at, extras) VALUES ($1, now(), '{\"point\": \"2.00\"}') RETURNING id")
        .await?;
    let warmup = pace.rate * pace.warmup_secs;
    let total = warmup + pace.rate * pace.seconds;
    let cpu_all =
        || -> anyhow::Result<Vec<f64>> { pids.iter().map(|&pid| cpu_seconds(pid)).collect() };
    let mut cpu0 = vec![0.0; pids.len()];
    let mut measured_from = Instant::now();
    let mut sent = HashMap::with_capacity(total as usize);
    let t0 = tokio::time::Instant::now();
    for k in 0..total {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(k as f64 / pace.rate as f64)).await;
        if k == warmup {
            cpu0 = cpu_all()?;
            measured_from = Instant::now();
        }
        let game_id = games[k as usize % games.len()].id;
        let at = Instant::now();
        let id: i64 = client.query_one(&insert, &[&game_id]).await?.get(0);
        let measured = k >= warmup;
        sent.insert(
            id,
            Sent {
                at,
                game_id,
                measured,
            },
        );
    }
    let window = measured_from.elapsed().as_secs_f64();
    let cpu = cpu_all()?
        .iter()
        .zip(&cpu0)
        .map(|(end, start)| end - start)
        .collect();
    let ids: Vec<i64> = sent.keys().copied().collect();
    let committed = client
        .query(
            "SELECT id, pg_xact_commit_timestamp(xmin) FROM rounds WHERE id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(Written {
        sent,
        committed,
        window,
        cpu,
    })
}

/// Per path: deliveries of this run's rounds, and latencies of the measured ones.
pub struct Tally<K> {
    pub got: HashMap<K, u64>,
    pub latency: HashMap<K, Latencies>,
}

/// The two measurements of one path (see the module's documentation).
#[derive(Default)]
pub struct Latencies {
    pub from_send: Vec<Duration>,
    pub from_commit: Vec<Duration>,
}

impl Latencies {
    fn push(&mut self, sent: &Sent, committed: Option<&SystemTime>, at: Stamp) {
        self.from_send
            .push(at.read.saturating_duration_since(sent.at));
        if let Some(committed) = committed {
            let latency = at.received.duration_since(*committed).unwrap_or_default();
            self.from_commit.push(latency);
        }
    }
}

impl Written {
    /// Deliveries of every round written, `followers(game id)` each.
    pub fn deliveries_due(&self, followers: impl Fn(i64) -> u64) -> u64 {
        self.sent.values().map(|sent| followers(sent.game_id)).sum()
    }

    /// Percent of a core that process `pids[i]` used over the window.
    pub fn cpu_percent(&self, i: usize) -> f64 {
        100.0 * self.cpu[i] / self.window
    }

    /// `edge-gateway CPU 12.3 % of a core, cdc-consumer CPU 4.5 %`, from the CPU
    /// [`Pipeline::write_rounds`] read.
    pub fn pipeline_cpu(&self) -> String {
        format!(
            "edge-gateway CPU {:.1} % of a core, cdc-consumer CPU {:.1} %",
            self.cpu_percent(0),
            self.cpu_percent(1)
        )
    }

    /// Matches arrivals `(path, round id, when)` with the INSERTs; arrivals of rounds from before
    /// the run (a game's latest on connect) are left out.
    pub fn tally<K: Copy + Eq + Hash>(
        &self,
        arrivals: impl IntoIterator<Item = (K, i64, Stamp)>,
    ) -> Tally<K> {
        let mut tally = Tally {
            got: HashMap::new(),
            latency: HashMap::new(),
        };
        for (path, id, at) in arrivals {
            let Some(sent) = self.sent.get(&id) else {
                continue;
            };
            *tally.got.entry(path).or_default() += 1;
            if sent.measured {
                tally
                    .latency
                    .entry(path)
                    .or_default()
                    .push(sent, self.committed.get(&id), at);
            }
        }
        tally
    }

    /// Prints the table's last rows: the NATS subscriber, for the measured rounds.
    pub fn print_nats_rows(&self, at_nats: &HashMap<i64, Stamp>) {
        let mut to_nats = Latencies::default();
        for (id, sent) in self.sent.iter().filter(|(_, sent)| sent.measured) {
            if let Some(at) = at_nats.get(id) {
                to_nats.push(sent, self.committed.get(id), *at);
            }
        }
        let count = format!("{} rounds", to_nats.from_send.len());
        print_rows("NATS subscriber (the consumer's half)", &count, to_nats);
    }
}

impl<K: Copy + Eq + Hash> Tally<K> {
    /// Prints the row of `path`, named `name`, out of `due` deliveries.
    pub fn print_row(&mut self, name: &str, path: K, due: u64) {
        let deliveries = format!("{} of {due}", self.got.get(&path).unwrap_or(&0));
        print_rows(
            name,
            &deliveries,
            self.latency.remove(&path).unwrap_or_default(),
        );
    }
}

/// Prints the table's header.
pub fn print_header() {
    println!("\n| path | deliveries (all rounds) | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
}

/// The path's two rows: commit → received, then INSERT sent → read.
fn print_rows(name: &str, deliveries: &str, latencies: Latencies) {
    let row = |from: &str, to: &str, sample: Vec<Duration>| {
        let [p50, p90, p99, max] = percentiles(sample).unwrap_or_default();
        println!(
            "| {from} → {name}, {to} | {deliveries} | {p50:.2} | {p90:.2} | {p99:.2} | {max:.2} |"
        );
    };
    row("commit", "received", latencies.from_commit);
    row("INSERT sent", "read", latencies.from_send);
}
