//! The chaos test with a ledger: rounds are committed continuously while the consumer is killed
//! at random instants, PostgreSQL and NATS restart and a gateway is killed and restarted;
//! clients of every protocol on several gateways record what they receive, reconnecting and
//! resuming by cursor. At the end the database, the stream and every client's ledger agree:
//! nothing lost, nothing duplicated, commit order kept.
//!
//! The clients: WebSocket (`?since=`), SSE (`Last-Event-ID`) and WebTransport (the session's
//! stream, `?since=`, the certificate hash fetched again after the restart) on each gateway.
//!
//! Quick profile by default (CI); `CHAOS_SECONDS=600 CHAOS_KILLS=200` is the soak profile
//! (docs/testing.md). `TEST_SEED` replays a run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::ledger::LedgerClient;
use e2e::pipeline::{assert_exactly_once_in_order, write_paced, Pipeline};
use e2e::setting;
use e2e::wt::{self, CertHash};

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
    let (gw0, wt_port0) = wt::start_gateway(&p.nats.url(), &[]).await.unwrap();
    let (gw1, wt_port1) = wt::start_gateway(&p.nats.url(), &[]).await.unwrap();
    let mut gateways = [gw0, gw1];
    let cert_before = CertHash::fetch(&gateways[1]).await.unwrap();
    assert_eq!(cert_before.port, wt_port1);
    let stop = Arc::new(AtomicBool::new(false));
    // Single-round transactions of game 1 (crash), about 100 a second.
    let writing = tokio::spawn(write_paced(
        p.pg.url(),
        1,
        1,
        Duration::from_millis(10),
        Arc::clone(&stop),
    ));
    p.wait_for_rounds(1, Duration::from_secs(30)).await.unwrap();
    // Every protocol on both gateways; gateway 1 (the one restarted) has the last three.
    let clients: Vec<LedgerClient> = gateways
        .iter()
        .flat_map(|gw| {
            [
                LedgerClient::websocket(gw.addr, "/ws/crash"),
                LedgerClient::sse(gw.addr, "/sse/crash"),
                LedgerClient::webtransport(gw.addr, "/wt/crash"),
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
    // The restarted gateway kept its WebTransport port and made a new certificate, which the
    // WebTransport clients had to fetch again.
    let cert_after = CertHash::fetch(&gateways[1]).await.unwrap();
    assert_eq!(
        cert_after.port, wt_port1,
        "the WebTransport port after the restart"
    );
    assert_ne!(
        cert_after.value, cert_before.value,
        "a new self-signed certificate"
    );
    assert_eq!(CertHash::fetch(&gateways[0]).await.unwrap().port, wt_port0);

    let stored = assert_exactly_once_in_order(&p).await;
    println!(
        "{committed} rounds committed, {} in the stream",
        stored.len()
    );
    assert!(
        stored.len() as u64 >= committed,
        "a committed round is missing"
    );
    for client in &clients {
        let recorded = client
            .check_against(&stored, Duration::from_secs(60))
            .await
            .unwrap();
        println!(
            "{}: {recorded} rounds over {} connections",
            client.name,
            client.connections()
        );
    }
    for client in &clients[3..] {
        assert!(
            client.connections() > 1,
            "{}: the restarted gateway's clients reconnected",
            client.name
        );
    }
}
