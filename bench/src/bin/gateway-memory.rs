//! Resident memory per idle connection: edge-gateway WebSocket, edge-gateway SSE, and
//! nats-server's own WebSocket listener as the peer.
//!
//! For each target a fresh server is started (the gateway on a NATS fed with the seeded games
//! and one round each, so every client gets its latest round on connect), its `VmRSS` is read
//! once it is ready and idle, `--connections` clients are opened (spread over the 15 games;
//! NATS clients `SUB rounds.<type>.<game>`), and after `--settle-secs` the `VmRSS` is read
//! again: (after − before) ÷ connections is the figure. The clients stay connected and answer
//! pings, so nothing but the idle connections is on the server's books. Then they disconnect,
//! and once the server's open files are back to where they were the `VmRSS` is read a third
//! time: what the process keeps after its clients left (allocator caches, buffers kept for
//! reuse). The server's open files before and with the clients are reported too.
//!
//! The load generator runs in this process and needs one file per connection: stay within the
//! machine's 20,000 open files (the server has its own 20,000).

use std::time::{Duration, Instant};

use bench::gateway::{machine_load, nats_websocket, LoadOptions};
use bench::loadgen::{Clients, Protocol, Sink, Spec, Stamp};
use bench::rss_kib;
use clap::{Parser, ValueEnum};
use testkit::seeded_games;

#[derive(Parser)]
struct Args {
    /// Idle connections per target.
    #[arg(long, default_value_t = 15_000)]
    connections: usize,
    /// What to measure, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "gateway-ws,gateway-sse,nats-ws"
    )]
    targets: Vec<Target>,
    /// Seconds between the last connection and the reading.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    #[command(flatten)]
    load: LoadOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    GatewayWs,
    GatewaySse,
    NatsWs,
}

/// Counts the rounds the idle clients got (their latest round on connect).
struct Count(u64);

impl Sink for Count {
    fn delivered(&mut self, _: Protocol, _: i64, _: Stamp) {
        self.0 += 1;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "| target | connections | server's open files | RSS before | RSS with clients | per connection | RSS after they left | peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for &target in &args.targets {
        measure(&args, target).await?;
    }
    println!("{}", machine_load());
    Ok(())
}

async fn measure(args: &Args, target: Target) -> anyhow::Result<()> {
    let games = seeded_games();
    // The servers live until the end of this function; the clients are dropped first.
    let (_nats, gateway, addr, pid) = match target {
        Target::NatsWs => {
            let (nats, addr, pid) = nats_websocket().await?;
            (nats, None, addr, pid)
        }
        Target::GatewayWs | Target::GatewaySse => {
            let (nats, _, gateway) = args.load.fed_gateway().await?;
            let (addr, pid) = (gateway.addr, gateway.pid());
            (nats, Some(gateway), addr, pid)
        }
    };
    let specs: Vec<Spec> = (0..args.connections)
        .map(|i| {
            let game = &games[i % games.len()];
            let (protocol, path) = match target {
                Target::GatewayWs => (Protocol::GatewayWs, format!("/ws/{}", game.slug)),
                Target::GatewaySse => (Protocol::Sse, format!("/sse/{}", game.slug)),
                Target::NatsWs => (
                    Protocol::NatsWs,
                    shared::subject::round_subject(&game.game_type, &game.slug),
                ),
            };
            Spec {
                protocol,
                addr,
                target: path,
                source: args.load.source(i),
            }
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, _) = rss_kib(pid)?;
    let fds_before = open_files(pid);
    let mut clients = Clients::start(specs, args.load.threads, || Count(0));
    clients.wait_connected(Duration::from_secs(600)).await?;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let (with, _) = rss_kib(pid)?;
    let latest: u64 = clients.sinks.iter().map(|s| s.lock().unwrap().0).sum();
    let closed = clients.closed();
    if target != Target::NatsWs && latest < args.connections as u64 {
        println!(
            "warning: only {latest} of {} clients got their latest round",
            args.connections
        );
    }
    anyhow::ensure!(
        closed == 0,
        "{closed} connections were closed by the server"
    );
    let fds_with = open_files(pid);
    clients.stop()?;
    // Until the server has closed its side of every connection.
    let left = Instant::now();
    while open_files(pid) > fds_before + 5 && left.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, peak) = rss_kib(pid)?;
    let per = (with.saturating_sub(before)) as f64 / args.connections as f64;
    println!(
        "| {target:?} | {} | {} → {fds_with} | {:.1} MiB | {:.1} MiB | **{per:.2} KiB** | {:.1} MiB | {:.1} MiB |",
        args.connections,
        fds_before,
        before as f64 / 1024.0,
        with as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0,
    );
    drop(gateway);
    Ok(())
}

/// Files the process has open (its sockets included).
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}
