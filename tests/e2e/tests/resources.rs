//! Resource bounds (issue 8): the resident memory (`VmRSS`) of cdc-consumer and edge-gateway
//! stays bounded
//!
//! - while NATS is down under load: rounds keep committing to PostgreSQL at 200 a second and
//!   clients stay connected; once NATS is back every round reaches the stream exactly once, in
//!   commit order, and every client on its original connection;
//! - while 1,000 WebSocket clients stop reading under load: each is closed with 1008
//!   `slow consumer` (its queue bounded by `CLIENT_QUEUE_BYTES`), a reading client misses
//!   nothing.
//!
//! RSS is sampled every 500 ms. "Bounded" means: the largest sample of the second half of the
//! phase exceeds the largest of the first half by less than [`GROWTH_CEILING_MIB`] (memory that
//! grows with time or with data held back shows up there), and no sample exceeds
//! [`PEAK_CEILING_MIB`]. The figures are printed (docs/testing.md keeps a record).
//!
//! Quick profile by default: `RESOURCE_NATS_DOWN_SECONDS=10`, `RESOURCE_STALL_SECONDS=10`; the
//! soak profile of the issue is `RESOURCE_NATS_DOWN_SECONDS=60` (docs/testing.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::clients::{metric_value, seq_of, Gateway, WsClient, WsOptions};
use e2e::feed::nats_and_feed;
use e2e::ledger::LedgerClient;
use e2e::pipeline::{assert_exactly_once_in_order, rss_kib, write_paced, Pipeline};
use e2e::{setting, wt};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// Largest allowed growth between the two halves of a phase.
const GROWTH_CEILING_MIB: f64 = 8.0;
/// Largest allowed RSS at any time (debug builds).
const PEAK_CEILING_MIB: f64 = 200.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// RSS samples of processes, taken in the background until [`Sampler::finish`].
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<Vec<u64>>>>,
    names: Vec<String>,
}

impl Sampler {
    /// Samples `processes` (name, pid) every [`SAMPLE_EVERY`]; a process that exits is an
    /// error.
    fn start(processes: &[(&str, u32)]) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let pids: Vec<u32> = processes.iter().map(|(_, pid)| *pid).collect();
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut samples = vec![Vec::new(); pids.len()];
            let mut ticker = tokio::time::interval(SAMPLE_EVERY);
            while !flag.load(Ordering::Relaxed) {
                ticker.tick().await;
                for (pid, series) in pids.iter().zip(samples.iter_mut()) {
                    series.push(rss_kib(*pid)?);
                }
            }
            Ok(samples)
        });
        Sampler {
            stop,
            task,
            names: processes.iter().map(|(n, _)| (*n).to_owned()).collect(),
        }
    }

    /// Stops sampling; checks and prints every process's figures.
    async fn finish(self, phase: &str) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.task.await??;
        let mut failures = Vec::new();
        for (name, series) in self.names.iter().zip(samples) {
            if let Err(err) = check_bounded(&format!("{name}, {phase}"), &series) {
                failures.push(format!("{err:#}"));
            }
        }
        anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The bound on one process's samples (see the module documentation).
fn check_bounded(what: &str, kib: &[u64]) -> anyhow::Result<()> {
    anyhow::ensure!(kib.len() >= 4, "{what}: only {} RSS samples", kib.len());
    let (first, second) = kib.split_at(kib.len() / 2);
    let first_max = first.iter().copied().max().unwrap_or_default();
    let second_max = second.iter().copied().max().unwrap_or_default();
    let peak = first_max.max(second_max);
    let growth = mib(second_max) - mib(first_max);
    println!(
        "RSS {what}: {} samples, first half max {:.1} MiB, second half max {:.1} MiB \
         (growth {growth:+.1} MiB, ceiling {GROWTH_CEILING_MIB} MiB), min {:.1} MiB, peak {:.1} MiB \
         (ceiling {PEAK_CEILING_MIB} MiB)",
        kib.len(),
        mib(first_max),
        mib(second_max),
        mib(kib.iter().copied().min().unwrap_or_default()),
        mib(peak),
    );
    anyhow::ensure!(
        growth < GROWTH_CEILING_MIB,
        "{what}: RSS grew by {growth:.1} MiB from the first half to the second: {kib:?}"
    );
    anyhow::ensure!(
        mib(peak) < PEAK_CEILING_MIB,
        "{what}: RSS peaked at {:.1} MiB",
        mib(peak)
    );
    Ok(())
}

/// NATS killed for `RESOURCE_NATS_DOWN_SECONDS` while rounds keep committing at 200/s: the
/// consumer (holding its LSN, retrying) and the gateway (reconnecting, its clients connected)
/// stay bounded; afterwards the stream holds every round once, in order, and every client got
/// all of them on its first connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_bounded_while_nats_is_down_under_load() {
    let seconds = setting("RESOURCE_NATS_DOWN_SECONDS", 10);
    let mut p = Pipeline::start().await.unwrap();
    let mut consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let (gw, _) = wt::start_gateway(&p.nats.url(), &[]).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // 200 rounds a second: ten single-game rounds per transaction every 50 ms.
    let writing = tokio::spawn(write_paced(
        p.pg.url(),
        1,
        10,
        Duration::from_millis(50),
        Arc::clone(&stop),
    ));
    p.wait_for_rounds(200, Duration::from_secs(30))
        .await
        .unwrap();
    let clients: Vec<LedgerClient> = (0..2)
        .flat_map(|_| {
            [
                LedgerClient::websocket(gw.addr, "/ws/crash"),
                LedgerClient::sse(gw.addr, "/sse/crash"),
                LedgerClient::webtransport(gw.addr, "/wt/crash"),
            ]
        })
        .collect();
    for client in &clients {
        testkit::wait_until(
            Duration::from_secs(20),
            &format!("{} to receive", client.name),
            || async { client.last_seq().map(|_| ()) },
        )
        .await
        .unwrap();
    }
    let consumer_pid = consumer.pid().unwrap();
    let gateway_pid = gw.service.pid().unwrap();
    println!(
        "before the outage: consumer {:.1} MiB, gateway {:.1} MiB",
        mib(rss_kib(consumer_pid).unwrap()),
        mib(rss_kib(gateway_pid).unwrap())
    );

    let in_stream = p.stream_rounds().await.unwrap().len();
    p.nats.kill().unwrap();
    let down = Instant::now();
    let committed_before = count_rounds(&p).await.unwrap();
    let sampler = Sampler::start(&[("consumer", consumer_pid), ("gateway", gateway_pid)]);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let outage = down.elapsed();
    let committed_during = count_rounds(&p).await.unwrap() - committed_before;
    sampler
        .finish(&format!("NATS down {seconds} s under load"))
        .await
        .unwrap();
    println!(
        "{committed_during} rounds committed during the {:.1} s outage ({:.0}/s); {in_stream} \
         were in the stream before it",
        outage.as_secs_f64(),
        committed_during as f64 / outage.as_secs_f64()
    );
    // The load went on: at least a quarter of the nominal 200 a second.
    assert!(
        committed_during as f64 >= 50.0 * seconds as f64,
        "only {committed_during} rounds committed while NATS was down"
    );
    assert!(consumer.is_running(), "the consumer survived the outage");

    p.nats.start_again().await.unwrap();
    // The backlog drains while the writer keeps going, then the writer stops.
    let target = (committed_before + committed_during) as usize;
    p.wait_for_rounds(target, Duration::from_secs(60))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    writing.await.unwrap();
    let stored = assert_exactly_once_in_order(&p).await;
    println!(
        "after NATS returned: {} rounds in the stream, each once, in commit order",
        stored.len()
    );
    assert_eq!(consumer.pid(), Some(consumer_pid), "the same consumer");
    for client in &clients {
        let recorded = client
            .check_against(&stored, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            client.connections(),
            1,
            "{} stayed on its first connection",
            client.name
        );
        println!("{}: {recorded} rounds on one connection", client.name);
    }
}

/// Finished rounds in the database.
async fn count_rounds(p: &Pipeline) -> anyhow::Result<u64> {
    let row =
        p.pg.client()
            .await?
            .query_one(
                "SELECT count(*) FROM rounds WHERE finished_at IS NOT NULL",
                &[],
            )
            .await?;
    Ok(u64::try_from(row.get::<_, i64>(0))?)
}

/// 1,000 WebSocket clients that stop reading while 200 rounds of 2 KiB a second are published:
/// every one is closed with 1008 `slow consumer` after a gap-free prefix of its rounds, the
/// gateway's RSS stays bounded, and a client that reads gets every round once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_bounded_while_1000_clients_stop_reading() {
    const STALLED: usize = 1000;
    let seconds = setting("RESOURCE_STALL_SECONDS", 10);
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let crash = games.iter().find(|g| g.slug == "crash").unwrap().clone();
    let first = feed.publish(&feed.round(&crash, "{}")).await.unwrap();
    // A short history, so that it is full (and the gateway's memory at its steady state) within
    // the first half of the phase; the default (10,000 events) takes longer to fill.
    let gw = Gateway::start(&nats.url(), &[("HISTORY_SIZE", "1000".into())])
        .await
        .unwrap();
    let pid = gw.service.pid().unwrap();
    let reader = LedgerClient::websocket(gw.addr, "/ws/crash");
    let idle = rss_kib(pid).unwrap();

    // Small receive buffers and segments: each client's backlog soon reaches the gateway, and
    // the kernel holds little for each (see `WsOptions::max_segment`).
    let options = WsOptions {
        recv_buffer: Some(4096),
        max_segment: Some(536),
        ..WsOptions::default()
    };
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        stalled.push(
            WsClient::connect_with(gw.addr, "/ws/crash", &options)
                .await
                .unwrap(),
        );
    }
    testkit::wait_until(
        Duration::from_secs(20),
        "every client to be connected",
        || async {
            let open = gw
                .metric("datastream_gateway_connections", &[("protocol", "ws")])
                .await
                .ok()?;
            (open == (STALLED + 1) as f64).then_some(())
        },
    )
    .await
    .unwrap();
    let connected = rss_kib(pid).unwrap();

    // Once the gateway has dropped every one of them, the stalled clients read what they were
    // sent, while the load goes on: a client that never reads again gets its close frame only
    // as long as the kernel keeps trying to deliver it (the gateway closes its side a second
    // after the close frame; the orphaned socket is reset within a minute or so).
    let metrics_url = gw.url("/metrics");
    let drained = tokio::spawn(async move {
        testkit::wait_until(
            Duration::from_secs(60),
            "every stalled client to be dropped as slow",
            || async {
                let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
                let slow = metric_value(
                    &text,
                    "datastream_gateway_disconnects_total",
                    &[("protocol", "ws"), ("reason", "slow")],
                );
                (slow == STALLED as f64).then_some(())
            },
        )
        .await?;
        let tasks: Vec<_> = stalled
            .into_iter()
            .map(|ws| tokio::spawn(drain_to_close(ws)))
            .collect();
        let mut all = Vec::with_capacity(STALLED);
        for task in tasks {
            all.push(task.await??);
        }
        anyhow::Ok(all)
    });

    let extras = format!(r#"{{"pad": "{}"}}"#, "x".repeat(2000));
    let sampler = Sampler::start(&[("gateway", pid)]);
    let started = Instant::now();
    let mut published = vec![first];
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    // For the phase's length, and at any rate until every stalled client has been dropped and
    // drained (on a busy machine publishing is slower than 200 a second).
    while started.elapsed() < Duration::from_secs(seconds) || !drained.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(seconds + 90),
            "the stalled clients were not dropped and drained within 90 s"
        );
        ticker.tick().await;
        let rounds: Vec<_> = (0..10).map(|_| feed.round(&crash, &extras)).collect();
        published.extend(feed.publish_all(&rounds).await.unwrap());
    }
    let phase = started.elapsed();
    sampler
        .finish(&format!(
            "{STALLED} clients not reading, {:.1} s",
            phase.as_secs_f64()
        ))
        .await
        .unwrap();
    let drained = drained.await.unwrap().unwrap();
    let dropped = gw
        .metric("datastream_gateway_dropped_events_total", &[])
        .await
        .unwrap();
    println!(
        "gateway RSS: {:.1} MiB idle, {:.1} MiB with {STALLED} more clients; {} rounds published, \
         all {STALLED} clients dropped as slow, {dropped} queued events discarded with them",
        mib(idle),
        mib(connected),
        published.len(),
    );
    assert!(dropped > 0.0, "the slow clients' queues were discarded");

    // The reading client: every round, once, in order, on one connection.
    testkit::wait_until(
        Duration::from_secs(30),
        "the reading client to get the last round",
        || async { (reader.last_seq() == published.last().copied()).then_some(()) },
    )
    .await
    .unwrap();
    let got: Vec<u64> = reader.entries().iter().map(|(seq, _)| *seq).collect();
    assert_eq!(got, published, "the reading client's rounds");
    assert_eq!(reader.connections(), 1);

    // Each stalled client got a gap-free run of the rounds, starting with the latest when it
    // connected (the first round), far from all of them, then 1008.
    let mut received = Vec::with_capacity(STALLED);
    for seqs in &drained {
        assert_eq!(
            seqs[..],
            published[..seqs.len()],
            "a stalled client's rounds are a prefix of the stream"
        );
        assert!(
            seqs.len() < published.len(),
            "a stalled client got everything"
        );
        received.push(seqs.len());
    }
    received.sort_unstable();
    println!(
        "stalled clients had received {}..{} rounds (median {}) of {} when closed with 1008",
        received[0],
        received[STALLED - 1],
        received[STALLED / 2],
        published.len()
    );
}

/// Reads a stalled client to its end, which must be close 1008 `slow consumer`: the seqs of
/// the rounds it got.
async fn drain_to_close(mut ws: WsClient) -> anyhow::Result<Vec<u64>> {
    let deadline = Duration::from_secs(60);
    let mut seqs = Vec::new();
    loop {
        let message = tokio::time::timeout(deadline, ws.ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("no close within {deadline:?}"))?;
        match message {
            Some(Ok(Message::Text(text))) => {
                seqs.push(seq_of(&serde_json::from_str(text.as_str())?));
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or_default();
                anyhow::ensure!(
                    (code, reason.as_str()) == (1008, "slow consumer"),
                    "closed with {code} {reason:?} after {} rounds",
                    seqs.len()
                );
                return Ok(seqs);
            }
            Some(Ok(_)) => {}
            other => anyhow::bail!(
                "ended without a close frame after {} rounds: {other:?}",
                seqs.len()
            ),
        }
    }
}
