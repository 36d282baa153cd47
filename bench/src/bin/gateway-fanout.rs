//! Fan-out capacity of one edge-gateway against nats-server's own WebSocket listener, in the
//! same run, with the same load generator and the same ramp.
//!
//! Each side gets `--clients` WebSocket clients (spread over `--games` games; with the default
//! of one game every event goes to every client) opened by the `loadgen` threads of this
//! process, then a ramp of publish rates, `--step-secs` each, until a step fails:
//!
//! - **gateway**: a nats-server with the ROUNDS stream and the `games` bucket; rounds (the
//!   MessagePack cdc-consumer writes) are published to the stream with their message id; the
//!   gateway's clients are on `/ws/<game>` and receive its JSON text frames.
//! - **nats**: a second nats-server with its WebSocket listener (`Nats::start_with_websocket`);
//!   its clients speak the NATS protocol over WebSocket (`SUB rounds.<type>.<game>`); the same
//!   MessagePack rounds are published as core messages on those subjects (no stream: storing
//!   them would charge the peer for work the gateway's side does in another process). The
//!   peer's clients get the raw MessagePack payload in a `MSG`, the gateway's get JSON: each
//!   client only finds the round id in what it gets.
//!
//! Latency runs from the instant just before the publish call to the kernel's receive timestamp of
//! the client's socket (one clock, the wall clock; see `loadgen::Stamp`), matched by round id. A
//! step passes when its p99 is at most `--p99-ms`, at least 99 % of its deliveries arrived (within
//! 5 s after the step) and no connection was closed. For each step: offered and delivered
//! deliveries/s, latency p50/p99/max, and the server's CPU seconds (user + system,
//! `/proc/PID/stat`) per delivery over the step, next to the server's and the load generator's
//! share of the 2 cores.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bench::gateway::{machine_load, nats_websocket, publish, round, LoadOptions};
use bench::loadgen::{Clients, Histogram, Protocol, Sink, Spec, Stamp};
use bench::{cpu_seconds, cpu_user_system};
use clap::{Parser, ValueEnum};
use shared::Game;
use testkit::seeded_games;

#[derive(Parser)]
struct Args {
    /// WebSocket clients on each side.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Games the clients subscribe to and the events cycle through (1: every event reaches every
    /// client).
    #[arg(long, default_value_t = 1)]
    games: usize,
    /// Publish rates to step through, in events per second.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5,10,15,20,25,30,35,40,45,50,60,70,80,100"
    )]
    rates: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 10)]
    step_secs: u64,
    /// Latency bound a step must meet, p99 in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    p99_ms: f64,
    /// Which side(s) to run.
    #[arg(long, value_enum, default_value = "both")]
    side: Which,
    #[command(flatten)]
    load: LoadOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Gateway,
    Nats,
    Both,
}

/// When each event was published (wall clock, to compare with the kernel's receive timestamps),
/// and in which step: `(step + 1) << 48 | ns since origin`, indexed by round id − 1; 0 until
/// published.
struct Published {
    origin: SystemTime,
    slots: Vec<AtomicU64>,
}

impl Published {
    fn new(events: usize) -> Published {
        Published {
            origin: SystemTime::now(),
            slots: (0..events).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn mark(&self, index: usize, step: usize) {
        let since = SystemTime::now().duration_since(self.origin);
        let ns = since.unwrap_or_default().as_nanos() as u64;
        self.slots[index].store(((step as u64 + 1) << 48) | ns, Ordering::Release);
    }

    fn lookup(&self, round_id: i64) -> Option<(usize, SystemTime)> {
        let index = usize::try_from(round_id).ok()?.checked_sub(1)?;
        let slot = self.slots.get(index)?.load(Ordering::Acquire);
        (slot != 0).then(|| {
            let ns = slot & ((1 << 48) - 1);
            (
                (slot >> 48) as usize - 1,
                self.origin + Duration::from_nanos(ns),
            )
        })
    }
}

/// One load generator thread's tally.
struct Recorder {
    published: Arc<Published>,
    steps: Vec<(Histogram, u64)>,
    total: u64,
}

impl Sink for Recorder {
    fn delivered(&mut self, _: Protocol, round_id: i64, at: Stamp) {
        self.total += 1;
        if let Some((step, sent)) = self.published.lookup(round_id) {
            let (histogram, count) = &mut self.steps[step];
            *count += 1;
            let latency = at.received.duration_since(sent).unwrap_or_default();
            histogram.record(latency.as_micros() as u64);
        }
    }
}

/// Where events go for one side.
enum Publisher {
    Stream(async_nats::jetstream::Context, Arc<AtomicUsize>),
    Core(async_nats::Client),
}

impl Publisher {
    async fn send(&self, round: &shared::Round) -> anyhow::Result<()> {
        match self {
            Publisher::Stream(js, failed) => {
                let ack = publish(js, round).await?;
                let failed = Arc::clone(failed);
                tokio::spawn(async move {
                    if ack.await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Publisher::Core(client) => {
                let subject = shared::subject::round_subject(&round.game_type, &round.game_slug);
                client.publish(subject, round.to_msgpack()?.into()).await?;
            }
        }
        Ok(())
    }
}

struct Step {
    rate: f64,
    offered: f64,
    delivered: f64,
    complete: f64,
    p50: f64,
    p99: f64,
    max: f64,
    cpu_us: f64,
    /// The kernel's part of `cpu_us` (system time: socket writes, loopback delivery).
    sys_us: f64,
    server_cpu: f64,
    loadgen_cpu: f64,
    closed: usize,
    pass: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=15).contains(&args.games),
        "--games is 1..=15 (the seeded games)"
    );
    let mut results = Vec::new();
    if args.side != Which::Nats {
        results.push(("edge-gateway", run_side(&args, false).await?));
    }
    if args.side != Which::Gateway {
        results.push(("nats-server", run_side(&args, true).await?));
    }
    println!();
    let sustained: Vec<(&str, Option<&Step>)> = results
        .iter()
        .map(|(name, steps)| {
            let best = steps
                .iter()
                .filter(|s| s.pass)
                .max_by(|a, b| a.delivered.total_cmp(&b.delivered));
            (*name, best)
        })
        .collect();
    for (name, best) in &sustained {
        match best {
            Some(s) => println!(
                "{name}: sustained {:.0} deliveries/s at p99 {:.1} ms ({} events/s), {:.2} µs server CPU per delivery",
                s.delivered, s.p99, s.rate, s.cpu_us
            ),
            None => println!("{name}: no step passed"),
        }
    }
    if let [(_, Some(gateway)), (_, Some(nats))] = sustained.as_slice() {
        println!(
            "gateway / nats-server sustained deliveries: {:.2}×",
            gateway.delivered / nats.delivered
        );
    }
    Ok(())
}

async fn run_side(args: &Args, nats_side: bool) -> anyhow::Result<Vec<Step>> {
    let name = if nats_side {
        "nats-server (WebSocket listener)"
    } else {
        "edge-gateway"
    };
    let games: Vec<Game> = seeded_games().into_iter().take(args.games).collect();
    let events: usize = args
        .rates
        .iter()
        .map(|r| (r * args.step_secs as f64).round() as usize)
        .sum();
    let published = Arc::new(Published::new(events));

    // The servers live until the end of this function; the clients are dropped first.
    let (_nats, gateway, publisher, addr, server_pid) = if nats_side {
        let (nats, addr, pid) = nats_websocket().await?;
        let client = async_nats::connect(nats.url()).await?;
        (nats, None, Publisher::Core(client), addr, pid)
    } else {
        let (nats, js, gateway) = args.load.fed_gateway().await?;
        let (addr, pid) = (gateway.addr, gateway.pid());
        let publisher = Publisher::Stream(js, Arc::default());
        (nats, Some(gateway), publisher, addr, pid)
    };
    let specs: Vec<Spec> = (0..args.clients)
        .map(|i| {
            let game = &games[i % games.len()];
            let (protocol, target) = if nats_side {
                (
                    Protocol::NatsWs,
                    shared::subject::round_subject(&game.game_type, &game.slug),
                )
            } else {
                (Protocol::GatewayWs, format!("/ws/{}", game.slug))
            };
            Spec {
                protocol,
                addr,
                target,
                source: args.load.source(i),
            }
        })
        .collect();
    let per_game: Vec<u64> = (0..games.len())
        .map(|g| (0..args.clients).filter(|i| i % games.len() == g).count() as u64)
        .collect();

    println!(
        "\n## {name}: {} clients, {} game(s)",
        args.clients,
        games.len()
    );
    let connecting = Instant::now();
    let rates = args.rates.len();
    let mut clients = Clients::start(specs, args.load.threads, || Recorder {
        published: Arc::clone(&published),
        steps: vec![(Histogram::default(), 0); rates],
        total: 0,
    });
    clients.wait_connected(Duration::from_secs(300)).await?;
    println!(
        "connected in {:.1} s; {}",
        connecting.elapsed().as_secs_f64(),
        machine_load()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!(
        "\n| events/s | offered deliveries/s | delivered/s | complete | p50 ms | p99 ms | max ms | server CPU µs/delivery (kernel) | server CPU | load generator CPU | closed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let received = |clients: &Clients<Recorder>| -> u64 {
        clients.sinks.iter().map(|s| s.lock().unwrap().total).sum()
    };
    let step_tally = |clients: &Clients<Recorder>, step: usize| -> (Histogram, u64) {
        let mut merged = Histogram::default();
        let mut count = 0;
        for sink in &clients.sinks {
            let sink = sink.lock().unwrap();
            merged.merge(&sink.steps[step].0);
            count += sink.steps[step].1;
        }
        (merged, count)
    };
    let me = std::process::id();
    let mut index = 0;
    let mut steps = Vec::new();
    for (step, &rate) in args.rates.iter().enumerate() {
        let n = (rate * args.step_secs as f64).round() as usize;
        let expected: u64 = (index..index + n).map(|i| per_game[i % games.len()]).sum();
        let (cpu0, gen0, recv0, closed0) = (
            cpu_user_system(server_pid)?,
            cpu_seconds(me)?,
            received(&clients),
            clients.closed(),
        );
        let t0 = tokio::time::Instant::now();
        for k in 0..n {
            tokio::time::sleep_until(t0 + Duration::from_secs_f64(k as f64 / rate)).await;
            let round = round(index as i64 + 1, &games[index % games.len()]);
            published.mark(index, step);
            publisher.send(&round).await?;
            index += 1;
        }
        tokio::time::sleep_until(t0 + Duration::from_secs(args.step_secs)).await;
        let window = t0.elapsed().as_secs_f64();
        let (cpu1, gen1, recv1) = (
            cpu_user_system(server_pid)?,
            cpu_seconds(me)?,
            received(&clients),
        );
        let drain = Instant::now();
        while step_tally(&clients, step).1 < expected && drain.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (histogram, count) = step_tally(&clients, step);
        let deliveries = (recv1 - recv0).max(1) as f64;
        let server_cpu = (cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1);
        let closed = clients.closed() - closed0;
        let complete = count as f64 / expected.max(1) as f64;
        let p99 = histogram.quantile_ms(0.99);
        let result = Step {
            rate,
            offered: expected as f64 / args.step_secs as f64,
            delivered: deliveries / window,
            complete,
            p50: histogram.quantile_ms(0.50),
            p99,
            max: histogram.max_ms(),
            cpu_us: server_cpu * 1e6 / deliveries,
            sys_us: (cpu1.1 - cpu0.1) * 1e6 / deliveries,
            server_cpu: server_cpu / window,
            loadgen_cpu: (gen1 - gen0) / window,
            closed,
            pass: p99 <= args.p99_ms && complete >= 0.99 && closed == 0,
        };
        println!(
            "| {:.0} | {:.0} | {:.0} | {:.1} % | {:.2} | {:.2} | {:.1} | {:.2} ({:.2}) | {:.0} % | {:.0} % | {}{} |",
            result.rate,
            result.offered,
            result.delivered,
            100.0 * result.complete,
            result.p50,
            result.p99,
            result.max,
            result.cpu_us,
            result.sys_us,
            100.0 * result.server_cpu,
            100.0 * result.loadgen_cpu,
            result.closed,
            if result.pass { "" } else { " ✗" }
        );
        let pass = result.pass;
        steps.push(result);
        if !pass {
            break;
        }
    }
    if let Publisher::Stream(_, failed) = &publisher {
        let failed = failed.load(Ordering::Relaxed);
        anyhow::ensure!(failed == 0, "{failed} stream publishes failed");
    }
    println!("after the ramp: {}", machine_load());
    clients.stop()?;
    drop(gateway);
    Ok(steps)
}
