//! Commit → client latency through the full pipeline, WebSocket and SSE side by side:
//! PostgreSQL → release cdc-consumer → NATS (ROUNDS) → release edge-gateway → clients.
//!
//! `--ws` WebSocket and `--sse` SSE clients (the `loadgen` threads of this process) follow the
//! 15 seeded games, spread evenly (`/ws/<game>`, `/sse/<game>`); a writer inserts finished rounds
//! at `--rate` per second, one single-row transaction each, cycling through the games. Latency
//! runs from the instant the INSERT was sent (so it includes the statement and its commit) to the
//! instant a client's read returned, one process and one clock. The delivery often arrives
//! before the writer sees its INSERT return, so sends and arrivals are matched by round id at the
//! end. The first `--warmup-secs` are not counted. Each path is also measured from the round's
//! commit timestamp to the kernel's receive timestamp of the client's socket (see
//! `bench::commit_latency`): commit → client, without the load generator's own scheduling.
//!
//! In the same run a plain NATS subscriber on `rounds.>` times the consumer's half (INSERT sent →
//! published to NATS), so the gateway's own share can be told apart. Also reported: the CPU the
//! gateway and the consumer used, and whether every client got every round of its game.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bench::commit_latency::{print_header, NatsArrivals, Pace, Pipeline};
use bench::gateway::machine_load;
use bench::loadgen::{Clients, Protocol, Sink, Spec, Stamp};
use clap::Parser;
use testkit::seeded_games;

#[derive(Parser)]
struct Args {
    /// WebSocket clients.
    #[arg(long, default_value_t = 1000)]
    ws: usize,
    /// SSE clients.
    #[arg(long, default_value_t = 1000)]
    sse: usize,
    #[command(flatten)]
    pace: Pace,
    /// Load generator threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The gateway's HTTP_WORKERS.
    #[arg(long, default_value_t = 2)]
    http_workers: usize,
}

/// Every arrival, matched with the sends at the end.
#[derive(Default)]
struct Arrivals(Vec<(Protocol, i64, Stamp)>);

impl Sink for Arrivals {
    fn delivered(&mut self, protocol: Protocol, round_id: i64, at: Stamp) {
        self.0.push((protocol, round_id, at));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let games = seeded_games();
    let pipeline = Pipeline::start(args.http_workers, &[]).await?;

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
                addr: pipeline.gateway.addr,
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
    let who = format!(
        "{} WebSocket + {} SSE clients on {} games",
        args.ws,
        args.sse,
        games.len()
    );
    let mut clients = Clients::start(specs, args.threads, Arrivals::default);
    clients.wait_connected(Duration::from_secs(120)).await?;

    let at_nats = NatsArrivals::start(&pipeline.nats.url()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = pipeline.write_rounds(&games, args.pace, &who).await?;
    let due = |protocol: Protocol| {
        written.deliveries_due(|game| *per_game.get(&(protocol, game)).unwrap_or(&0))
    };
    let expected = due(Protocol::GatewayWs) + due(Protocol::Sse);
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
    let at_nats = at_nats.stop();

    let mut tally = written.tally(
        sinks
            .iter()
            .flat_map(|sink| std::mem::take(&mut sink.lock().unwrap().0)),
    );
    print_header();
    for (name, protocol) in [("WebSocket", Protocol::GatewayWs), ("SSE", Protocol::Sse)] {
        tally.print_row(&format!("{name} client"), protocol, due(protocol));
    }
    written.print_nats_rows(&at_nats);
    println!(
        "\n{}; connections closed by the gateway: {closed}; {}",
        written.pipeline_cpu(),
        machine_load()
    );
    Ok(())
}
