//! The chaos test with a ledger: rounds are committed continuously while the consumer is killed
//! at random instants, PostgreSQL and NATS restart and a gateway is killed and restarted;
//! clients of every protocol on several gateways record what they receive, reconnecting and
//! resuming by cursor. At the end the database, the stream and every client's ledger agree:
//! nothing lost, nothing duplicated, commit order kept.
//!
//! Quick profile by default (CI); `CHAOS_SECONDS=600 CHAOS_KILLS=200` is the soak profile
//! (docs/fuzzing.md). `TEST_SEED` replays a run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::clients::Gateway;
use e2e::ledger::LedgerClient;
use e2e::pipeline::{assert_exactly_once_in_order, Pipeline};
use testkit::wait_until;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Single-round transactions of game 1 (crash) until `stop`, surviving PostgreSQL restarts.
async fn writer(url: String, stop: Arc<AtomicBool>) -> u64 {
    let mut committed = 0;
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
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
                    "INSERT INTO rounds (game_id, finished_at, extras) VALUES (1, now(), '{\"point\": \"1.50\"}')",
                    &[],
                )
                .await;
            match result {
                Ok(_) => committed += 1,
                Err(_) => client = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_nothing_duplicated_under_chaos() {
    let seconds = setting("CHAOS_SECONDS", 30);
    let kills = setting("CHAOS_KILLS", 20);
    let seed = setting(
        "TEST_SEED",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    println!("TEST_SEED={seed} CHAOS_SECONDS={seconds} CHAOS_KILLS={kills}");
    let mut rng = seed | 1;
    let mut below = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    };

    let mut p = Pipeline::start().await.unwrap();
    let mut consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let mut gateways = [
        Gateway::start(&p.nats.url(), &[]).await.unwrap(),
        Gateway::start(&p.nats.url(), &[]).await.unwrap(),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(p.pg.url(), Arc::clone(&stop)));
    p.wait_for_rounds(1, Duration::from_secs(30)).await.unwrap();
    let clients: Vec<LedgerClient> = gateways
        .iter()
        .flat_map(|gw| {
            [
                LedgerClient::websocket(gw.addr, "/ws/crash"),
                LedgerClient::sse(gw.addr, "/sse/crash"),
            ]
        })
        .collect();

    // The schedule: consumer kills spread over the run, and one restart each of PostgreSQL,
    // NATS and a gateway at a quarter, half and three quarters of it.
    let started = Instant::now();
    let step = Duration::from_secs(seconds) / (kills as u32 + 1);
    let mut events: Vec<(Duration, &str)> = (1..=kills)
        .map(|i| {
            (
                step * i as u32 + Duration::from_millis(below(step.as_millis() as u64 / 2)),
                "consumer",
            )
        })
        .collect();
    events.extend([
        (Duration::from_secs(seconds) / 4, "postgres"),
        (Duration::from_secs(seconds) / 2, "nats"),
        (Duration::from_secs(seconds) * 3 / 4, "gateway"),
    ]);
    events.sort();
    for (at, what) in events {
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        match what {
            "consumer" => {
                consumer.kill().unwrap();
                tokio::time::sleep(Duration::from_millis(below(300))).await;
                consumer = p.start_consumer(&[]).unwrap();
            }
            "postgres" => {
                p.pg.crash().unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
                p.pg.start_again().await.unwrap();
            }
            "nats" => {
                p.nats.kill().unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
                p.nats.start_again().await.unwrap();
            }
            _ => gateways[1].restart().await.unwrap(),
        }
        println!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
    }
    stop.store(true, Ordering::Relaxed);
    let committed = writing.await.unwrap();

    let stored = assert_exactly_once_in_order(&p).await;
    println!(
        "{committed} rounds committed, {} in the stream",
        stored.len()
    );
    assert!(
        stored.len() as u64 >= committed,
        "a committed round is missing"
    );
    let last = stored.last().unwrap().seq;
    for client in &clients {
        wait_until(
            Duration::from_secs(60),
            &format!("{} to reach seq {last}", client.name),
            || async { (client.last_seq() == Some(last)).then_some(()) },
        )
        .await
        .unwrap();
        let ledger = client.entries();
        let first = ledger[0].0;
        let expected: Vec<(u64, i64)> = stored
            .iter()
            .filter(|s| s.seq >= first)
            .map(|s| (s.seq, s.round.round_id))
            .collect();
        assert_eq!(
            ledger.len(),
            expected.len(),
            "{}: {} rounds recorded, {} expected",
            client.name,
            ledger.len(),
            expected.len()
        );
        assert_eq!(
            ledger, expected,
            "{}: lost, duplicated or reordered rounds",
            client.name
        );
        println!(
            "{}: {} rounds over {} connections",
            client.name,
            ledger.len(),
            client.connections()
        );
    }
    assert!(
        clients[2].connections() > 1,
        "the restarted gateway's clients reconnected"
    );
}
