//! Shared pieces of the benchmark harnesses: a migrated PostgreSQL + NATS pair and a consumer on
//! it, process CPU and memory readings from `/proc`, and percentile summaries.
//!
//! Run the harnesses with `--release`: they start the release builds of the services that sit
//! next to them in `target/release/`.

use std::time::Duration;

pub mod commit_latency;
pub mod gateway;
pub mod loadgen;

use anyhow::{bail, Context};
use testkit::{Nats, Postgres, Service};

/// Throwaway PostgreSQL and NATS with the schema applied by `cdc-consumer migrate`.
pub async fn infrastructure() -> anyhow::Result<(Postgres, Nats)> {
    let (pg, nats) = tokio::try_join!(Postgres::start(), Nats::start())?;
    let mut migrate = Service::start("cdc-consumer", &["migrate"], &consumer_env(&pg, &nats))?;
    if !migrate.wait_exit(Duration::from_secs(30)).await?.success() {
        bail!("migrate failed: {}", migrate.log_tail());
    }
    Ok((pg, nats))
}

/// A consumer's environment on this infrastructure, logging at `warn` so logging costs nothing.
pub fn consumer_env(pg: &Postgres, nats: &Nats) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", pg.url()),
        ("NATS_URL", nats.url()),
        (
            "METRICS_ADDR",
            format!("127.0.0.1:{}", testkit::free_port().unwrap_or(0)),
        ),
        ("RUST_LOG", "warn".into()),
    ]
}

/// A release `cdc-consumer run` on this infrastructure, logging at `rust_log` (it must let the
/// pipeline's `"streaming"` line through), once it is streaming.
pub async fn streaming_consumer(
    pg: &Postgres,
    nats: &Nats,
    rust_log: &str,
) -> anyhow::Result<Service> {
    let mut env = consumer_env(pg, nats);
    env.push(("RUST_LOG", rust_log.to_owned()));
    let consumer = Service::start("cdc-consumer", &["run"], &env)?;
    consumer
        .wait_for_log("\"streaming\"", Duration::from_secs(30))
        .await?;
    Ok(consumer)
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let (user, system) = cpu_user_system(pid)?;
    Ok(user + system)
}

/// CPU seconds a process has used so far in user mode and in the kernel (`utime`, `stime` of
/// `/proc/<pid>/stat`).
pub fn cpu_user_system(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat
        .rsplit_once(')')
        .context("malformed /proc/<pid>/stat")?
        .1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse::<f64>()?)
    };
    let ticks = clock_ticks_per_second();
    Ok((field(11)? / ticks, field(12)? / ticks))
}

fn clock_ticks_per_second() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on Linux x86_64.
    100.0
}

/// Current and peak resident memory of a process, in KiB (`VmRSS`, `VmHWM`).
pub fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{name} in /proc/<pid>/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// p50, p90, p99 and max of a sample, in milliseconds.
pub fn percentiles(mut sample: Vec<Duration>) -> Option<[f64; 4]> {
    if sample.is_empty() {
        return None;
    }
    sample.sort_unstable();
    let at = |q: f64| {
        let i = ((sample.len() as f64 * q).ceil() as usize).clamp(1, sample.len()) - 1;
        sample[i].as_secs_f64() * 1000.0
    };
    Some([at(0.50), at(0.90), at(0.99), at(1.0)])
}
