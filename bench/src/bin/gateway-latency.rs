//! Commit → client latency through the full pipeline, WebSocket and SSE side by side:
//! PostgreSQL → release cdc-consumer → NATS (ROUNDS) → release edge-gateway → clients.
//!
//! `--ws` WebSocket and `--sse` SSE clients (the `loadgen` threads of this process) follow the
//! 15 seeded games, spread evenly (`/ws/<game>`, `/sse/<game>`); a writer inserts finished rounds
//! at `--rate` per second, one single-row transaction each, cycling through the games. Latency
//! runs from the instant the INSERT was sent (so it includes the statement and its commit) to the
//! instant a client's read returned, one process and one clock. The delivery often arrives
//! before the writer sees its INSERT return, so sends and arrivals are matched by round id at the
//! end. The first `--warmup-secs` are not counted.
//!
//! In the same run a plain NATS subscriber on `rounds.>` times the consumer's half (INSERT sent →
//! published to NATS), so the gateway's own share can be told apart. Also reported: the CPU the
//! gateway and the consumer used, and whether every client got every round of its game.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::gateway::{machine_load, seeded_games, Gateway};
use bench::loadgen::{msgpack_round_id, Clients, Protocol, Sink, Spec};
use bench::{consumer_env, cpu_seconds, infrastructure, percentiles};
use clap::Parser;
use futures_util::StreamExt;
use testkit::Service;

#[derive(Parser)]
struct Args {
    /// WebSocket clients.
    #[arg(long, default_value_t = 1000)]
    ws: usize,
    /// SSE clients.
    #[arg(long, default_value_t = 1000)]
    sse: usize,
    /// Rounds inserted per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds written before measuring.
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// Load generator threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The gateway's HTTP_WORKERS.
    #[arg(long, default_value_t = 2)]
    http_workers: usize,
}

/// Every arrival, matched with the sends at the end.
#[derive(Default)]
struct Arrivals(Vec<(Protocol, i64, Instant)>);

impl Sink for Arrivals {
    fn delivered(&mut self, protocol: Protocol, round_id: i64, at: Instant) {
        self.0.push((protocol, round_id, at));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let games = seeded_games();
    let (pg, nats) = infrastructure().await?;
    let consumer = Service::start("cdc-consumer", &["run"], &{
        let mut env = consumer_env(&pg, &nats);
        env.push(("RUST_LOG", "warn,cdc_consumer::pipeline=info".into()));
        env
    })?;
    consumer
        .wait_for_log("\"streaming\"", Duration::from_secs(30))
        .await?;
    let gateway = Gateway::start(&nats.url(), args.http_workers, &[]).await?;

    let specs: Vec<Spec> = (0..args.ws + args.sse)
        .map(|i| {
            let game = &games[i % games.len()];
            let (protocol, kind) = if i < args.ws {
                (Protocol::GatewayWs, "ws")
            } else {
                (Protocol::Sse, "sse")
            };
            Spec {
                protocol,
                addr: gateway.addr,
                target: format!("/{kind}/{}", game.slug),
                source: None,
            }
        })
        .collect();
    let mut per_game: HashMap<(Protocol, i64), u64> = HashMap::new();
    for (i, spec) in specs.iter().enumerate() {
        *per_game
            .entry((spec.protocol, games[i % games.len()].id))
            .or_default() += 1;
    }
    let mut clients = Clients::start(specs, args.threads, Arrivals::default);
    clients.wait_connected(Duration::from_secs(120)).await?;

    // The consumer's half: a core subscriber on every round subject.
    let nats_client = async_nats::connect(nats.url()).await?;
    let mut subscription = nats_client.subscribe("rounds.>").await?;
    let at_nats: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let recorder = {
        let at_nats = Arc::clone(&at_nats);
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let at = Instant::now();
                if let Some(id) = msgpack_round_id(&message.payload) {
                    at_nats.lock().unwrap().insert(id, at);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "{} WebSocket + {} SSE clients on {} games, {} rounds/s for {} s (+{} s warm-up); {}",
        args.ws,
        args.sse,
        games.len(),
        args.rate,
        args.seconds,
        args.warmup_secs,
        machine_load()
    );

    let client = pg.client().await?;
    let insert = client
        .prepare("INSERT INTO rounds (game_id, finished_at, extras) VALUES ($1, now(), '{\"point\": \"2.00\"}') RETURNING id")
        .await?;
    let warmup = args.rate * args.warmup_secs;
    let total = warmup + args.rate * args.seconds;
    let (gateway_pid, consumer_pid) = (gateway.pid(), consumer.pid().unwrap_or_default());
    let mut cpu0 = (0.0, 0.0);
    let mut measured_from = Instant::now();
    // round id → (INSERT sent, game id, measured)
    let mut sent: HashMap<i64, (Instant, i64, bool)> = HashMap::with_capacity(total as usize);
    let t0 = tokio::time::Instant::now();
    for k in 0..total {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(k as f64 / args.rate as f64)).await;
        if k == warmup {
            cpu0 = (cpu_seconds(gateway_pid)?, cpu_seconds(consumer_pid)?);
            measured_from = Instant::now();
        }
        let game = games[k as usize % games.len()].id;
        let at = Instant::now();
        let id: i64 = client.query_one(&insert, &[&game]).await?.get(0);
        sent.insert(id, (at, game, k >= warmup));
    }
    let window = measured_from.elapsed().as_secs_f64();
    let cpu = (
        cpu_seconds(gateway_pid)? - cpu0.0,
        cpu_seconds(consumer_pid)? - cpu0.1,
    );
    let expected: u64 = sent
        .values()
        .map(|(_, game, _)| {
            per_game.get(&(Protocol::GatewayWs, *game)).unwrap_or(&0)
                + per_game.get(&(Protocol::Sse, *game)).unwrap_or(&0)
        })
        .sum();
    let arrived = || -> usize {
        clients
            .sinks
            .iter()
            .map(|s| s.lock().unwrap().0.len())
            .sum()
    };
    let drain = Instant::now();
    while (arrived() as u64) < expected && drain.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = clients.closed();
    let sinks = clients.sinks.clone();
    clients.stop()?;
    recorder.abort();

    let mut latency: HashMap<Protocol, Vec<Duration>> = HashMap::new();
    let mut got: HashMap<Protocol, u64> = HashMap::new();
    for sink in &sinks {
        for (protocol, id, at) in &sink.lock().unwrap().0 {
            let Some((sent_at, _, measured)) = sent.get(id) else {
                continue; // a latest round from before the run
            };
            *got.entry(*protocol).or_default() += 1;
            if *measured {
                latency
                    .entry(*protocol)
                    .or_default()
                    .push(at.saturating_duration_since(*sent_at));
            }
        }
    }
    let to_nats: Vec<Duration> = {
        let at_nats = at_nats.lock().unwrap();
        sent.iter()
            .filter(|(_, (_, _, measured))| *measured)
            .filter_map(|(id, (sent_at, _, _))| {
                at_nats
                    .get(id)
                    .map(|at| at.saturating_duration_since(*sent_at))
            })
            .collect()
    };

    println!("\n| path | deliveries (all rounds) | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, protocol) in [("WebSocket", Protocol::GatewayWs), ("SSE", Protocol::Sse)] {
        let want: u64 = sent
            .values()
            .map(|(_, game, _)| per_game.get(&(protocol, *game)).unwrap_or(&0))
            .sum();
        let [p50, p90, p99, max] =
            percentiles(latency.remove(&protocol).unwrap_or_default()).unwrap_or_default();
        println!(
            "| INSERT sent → {name} client | {} of {want} | {p50:.2} | {p90:.2} | {p99:.2} | {max:.2} |",
            got.get(&protocol).unwrap_or(&0)
        );
    }
    let nats_count = to_nats.len();
    let [p50, p90, p99, max] = percentiles(to_nats).unwrap_or_default();
    println!(
        "| INSERT sent → NATS subscriber (the consumer's half) | {nats_count} rounds | {p50:.2} | {p90:.2} | {p99:.2} | {max:.2} |"
    );
    println!(
        "\nedge-gateway CPU {:.1} % of a core, cdc-consumer CPU {:.1} %; connections closed by the gateway: {closed}; {}",
        100.0 * cpu.0 / window,
        100.0 * cpu.1 / window,
        machine_load()
    );
    Ok(())
}
