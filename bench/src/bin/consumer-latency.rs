//! Commit → delivery latency through cdc-consumer at a steady rate: a writer commits single-round
//! transactions at `--rate`, a NATS subscriber on `rounds.>` receives them. Latency runs from the
//! instant the INSERT was sent (so it includes the statement and its commit: an upper bound) to
//! the instant the message arrived; one clock, one process. The delivery often arrives before the
//! writer sees its INSERT return, so sends and arrivals are matched by round id at the end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bench::{cpu_seconds, infrastructure, percentiles, rss_kib, streaming_consumer};
use clap::Parser;
use futures_util::StreamExt;

#[derive(Parser)]
struct Args {
    /// Rounds per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to write.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args { rate, seconds } = Args::parse();
    let (pg, nats) = infrastructure().await?;
    let consumer = streaming_consumer(&pg, &nats, "info").await?;
    let pid = consumer.pid().unwrap_or_default();

    let total = rate * seconds;
    let nats_client = async_nats::connect(nats.url()).await?;
    let mut subscription = nats_client.subscribe("rounds.>").await?;
    let receiver = tokio::spawn(async move {
        let mut arrived = HashMap::with_capacity(total as usize);
        while let Some(message) = subscription.next().await {
            let at = Instant::now();
            if let Ok(round) = shared::Round::from_msgpack(&message.payload) {
                arrived.insert(round.round_id, at);
            }
            if arrived.len() as u64 >= total {
                break;
            }
        }
        arrived
    });

    let client = pg.client().await?;
    let insert = client
        .prepare("INSERT INTO rounds (game_id, finished_at, extras) VALUES (1, now(), '{\"point\": \"2.00\"}') RETURNING id")
        .await?;
    let cpu_before = cpu_seconds(pid)?;
    let mut sent = HashMap::with_capacity(total as usize);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let started = Instant::now();
    for _ in 0..total {
        tick.tick().await;
        let at = Instant::now();
        let id: i64 = client.query_one(&insert, &[]).await?.get(0);
        sent.insert(id, at);
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    let arrived = tokio::time::timeout(Duration::from_secs(30), receiver).await??;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let (rss, _) = rss_kib(pid)?;
    let latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| {
            arrived
                .get(id)
                .map(|got| got.saturating_duration_since(*at))
        })
        .collect();
    anyhow::ensure!(
        latencies.len() as u64 == total,
        "{} of {total} rounds delivered",
        latencies.len()
    );
    let [p50, p90, p99, max] = percentiles(latencies).unwrap_or_default();
    println!("rate                        {achieved:.0} rounds/s (single-round transactions)");
    println!("INSERT sent → delivered     p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
    println!(
        "cdc-consumer CPU            {:.1}% of a core",
        100.0 * cpu / seconds as f64
    );
    println!("cdc-consumer RSS            {} MiB", rss / 1024);
    Ok(())
}
