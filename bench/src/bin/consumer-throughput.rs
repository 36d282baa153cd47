//! Sustained commit → JetStream-acknowledged rate of cdc-consumer, beside the rate at which
//! `pg_recvlogical` merely reads the same WAL (the decoding ceiling of this machine).
//!
//! The rounds are committed first, in 10,000-row transactions, while the consumer is stopped
//! (its slot exists), so the figure is the consumer's own capacity, not the writer's.

use std::time::{Duration, Instant};

use bench::{consumer_env, cpu_seconds, infrastructure, rss_kib, streaming_consumer};
use clap::Parser;
use testkit::Service;

#[derive(Parser)]
struct Args {
    /// Rounds to publish.
    #[arg(long, default_value_t = 500_000)]
    rounds: u64,
    /// Rounds per transaction.
    #[arg(long, default_value_t = 10_000)]
    txn_size: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (pg, nats) = infrastructure().await?;

    // Create the consumer's slot (and the stream), then stop it.
    drop(streaming_consumer(&pg, &nats, "info").await?);
    let client = pg.client().await?;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot('ceiling', 'pgoutput')",
            &[],
        )
        .await?;

    let written = Instant::now();
    for _ in 0..args.rounds / args.txn_size {
        client
            .execute(
                "INSERT INTO rounds (game_id, finished_at, extras)
                 SELECT 1 + g % 15, now(), '{\"point\": \"11.72\"}' FROM generate_series(1, $1::bigint) g",
                &[&(args.txn_size as i64)],
            )
            .await?;
    }
    let write_secs = written.elapsed().as_secs_f64();
    let end: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let rounds = args.rounds / args.txn_size * args.txn_size;

    // The ceiling: pg_recvlogical reading the same changes through pgoutput, to /dev/null.
    let started = Instant::now();
    let status = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_recvlogical")
        .args([
            "-d",
            &pg.url(),
            "-S",
            "ceiling",
            "--start",
            "-E",
            &end,
            "-f",
            "/dev/null",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=datastream",
            "--no-loop",
        ])
        .status()?;
    anyhow::ensure!(status.success(), "pg_recvlogical failed");
    let ceiling = rounds as f64 / started.elapsed().as_secs_f64();

    // The consumer, from its slot to acknowledged messages.
    let consumer = Service::start("cdc-consumer", &["run"], &consumer_env(&pg, &nats))?;
    let pid = consumer.pid().unwrap_or_default();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let cpu_before = cpu_seconds(pid)?;
    let nats_pid = nats.pid().unwrap_or_default();
    let nats_before = cpu_seconds(nats_pid)?;
    let walsender = loop {
        let row = client
            .query_opt("SELECT pid FROM pg_stat_replication WHERE application_name = 'datastream-cdc-consumer'", &[])
            .await?;
        if let Some(row) = row {
            break u32::try_from(row.get::<_, i32>(0))?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let walsender_before = cpu_seconds(walsender)?;
    let mut first: Option<(Instant, u64)> = None;
    let last = loop {
        let messages = match js.get_stream("ROUNDS").await {
            Ok(mut stream) => stream.info().await?.state.messages,
            Err(_) => 0,
        };
        if messages > 0 && first.is_none() {
            first = Some((Instant::now(), messages));
        }
        if messages >= rounds {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu = cpu_seconds(pid)? - cpu_before;
    let nats_cpu = cpu_seconds(nats_pid)? - nats_before;
    let walsender_cpu = cpu_seconds(walsender)? - walsender_before;
    let (_, peak_rss) = rss_kib(pid)?;
    let (first_at, first_count) = first.unwrap_or((last, 0));
    let rate = (rounds - first_count) as f64 / (last - first_at).as_secs_f64();

    println!(
        "rounds                      {rounds} in {} transactions",
        rounds / args.txn_size
    );
    println!(
        "insert rate                 {:.0} rounds/s",
        rounds as f64 / write_secs
    );
    println!("pg_recvlogical ceiling      {ceiling:.0} rounds/s");
    println!(
        "cdc-consumer commit→ack     {rate:.0} rounds/s ({:.0}% of the ceiling)",
        100.0 * rate / ceiling
    );
    println!(
        "cdc-consumer CPU            {:.2} s ({:.1} µs per round)",
        cpu,
        cpu * 1e6 / rounds as f64
    );
    println!("cdc-consumer peak RSS       {} MiB", peak_rss / 1024);
    println!(
        "nats-server CPU             {nats_cpu:.2} s ({:.1} µs per round)",
        nats_cpu * 1e6 / rounds as f64
    );
    println!(
        "walsender CPU               {walsender_cpu:.2} s ({:.1} µs per round)",
        walsender_cpu * 1e6 / rounds as f64
    );
    Ok(())
}
