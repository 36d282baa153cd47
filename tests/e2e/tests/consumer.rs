//! cdc-consumer end to end: real PostgreSQL, real nats-server, the real binary, killed and
//! restarted the hard way. Every test checks the stream against the database: the same rounds,
//! in commit order, each exactly once.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::pipeline::{
    assert_exactly_once_in_order, peak_rss_kib, round_ids, scrape, write_rounds, Pipeline,
};
use testkit::{wait_until, Service};

const DEADLINE: Duration = Duration::from_secs(60);

/// A small deterministic generator; the seed is printed so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("TEST_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Sizes adding up to `total`, each in 1..=max.
fn batch_sizes(rng: &mut Rng, total: usize, max: u64) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = total;
    while left > 0 {
        let size = (1 + rng.below(max) as usize).min(left);
        sizes.push(size);
        left -= size;
    }
    sizes
}

fn metrics_addr() -> String {
    format!("127.0.0.1:{}", testkit::free_port().unwrap())
}

/// 1. Rounds across games in mixed transaction sizes, some finished by a later update: the stream
///    holds exactly those events, in commit order, with the spec's fields and values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_every_finished_round_in_commit_order_with_the_spec_fields() {
    let p = Pipeline::start().await.unwrap();
    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let mut client = p.pg.client().await.unwrap();
    let mut expected = Vec::new();
    let mut running = Vec::new();
    let sizes = [1usize, 3, 50, 7, 200, 1, 120, 18, 300, 100, 40, 60, 100];
    for (t, size) in sizes.iter().enumerate() {
        let tx = client.transaction().await.unwrap();
        // Finish some rounds that earlier transactions left running: their event belongs here.
        for id in running.drain(..).take(5).collect::<Vec<i64>>() {
            tx.execute(
                "UPDATE rounds SET finished_at = now() WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
            expected.push(id);
        }
        for i in 0..*size {
            let game = 1 + ((t * 31 + i) % 15) as i64;
            let finished = (t + i) % 9 != 0;
            let row = tx
                .query_one(
                    "INSERT INTO rounds (game_id, finished_at, extras)
                     VALUES ($1, CASE WHEN $2 THEN now() END, (SELECT CASE type
                         WHEN 'color' THEN '{\"color\": \"red\", \"number\": 5}'
                         WHEN 'trend' THEN '{\"trending\": \"up\"}'
                         ELSE '{\"point\": \"11.72\"}' END FROM games WHERE id = $1)::jsonb)
                     RETURNING id",
                    &[&game, &finished],
                )
                .await
                .unwrap();
            let id: i64 = row.get(0);
            if finished {
                expected.push(id);
            } else {
                running.push(id);
            }
        }
        tx.commit().await.unwrap();
    }
    let stored = p.wait_for_rounds(expected.len(), DEADLINE).await.unwrap();
    assert_eq!(round_ids(&stored), expected);
    assert!(expected.len() >= 900, "only {} events", expected.len());

    let rows = client
        .query(
            "SELECT r.id, r.game_id, g.slug, g.type, to_json(r.finished_at) #>> '{}', r.extras::text,
                    floor(extract(epoch FROM pg_xact_commit_timestamp(r.xmin)) * 1000)::bigint
               FROM rounds r JOIN games g ON g.id = r.game_id
              WHERE r.finished_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    let by_id: std::collections::HashMap<i64, _> =
        rows.iter().map(|r| (r.get::<_, i64>(0), r)).collect();
    for s in &stored {
        let row = by_id[&s.round.round_id];
        let expected_json = serde_json::json!({
            "round_id": row.get::<_, i64>(0),
            "game_id": row.get::<_, i64>(1),
            "game_slug": row.get::<_, String>(2),
            "game_type": row.get::<_, String>(3),
            "finished_at": row.get::<_, String>(4),
            "extras": row.get::<_, String>(5),
            "timestamp": row.get::<_, i64>(6),
            "seq": s.seq,
        });
        let json: serde_json::Value = serde_json::from_slice(&s.round.to_json().unwrap()).unwrap();
        assert_eq!(json, expected_json);
        assert_eq!(
            s.subject,
            format!("rounds.{}.{}", s.round.game_type, s.round.game_slug)
        );
        assert_eq!(
            s.msg_id.as_deref(),
            Some(format!("round-{}", s.round.round_id).as_str())
        );
    }
    let kinds: HashSet<&str> = stored.iter().map(|s| s.round.game_type.as_str()).collect();
    assert_eq!(kinds.len(), 5, "all five game types: {kinds:?}");
}

/// 2. kill -9 at random instants while 5,000 rounds are written: exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_9_at_random_instants() {
    let mut rng = Rng::seeded();
    let p = Pipeline::start().await.unwrap();
    let mut consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let writer = tokio::spawn(write_rounds(p.pg.url(), batch_sizes(&mut rng, 5_000, 40)));
    let mut kills = 0;
    while kills < 6 {
        tokio::time::sleep(Duration::from_millis(150 + rng.below(500))).await;
        consumer.kill().unwrap();
        kills += 1;
        if rng.below(2) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        }
        consumer = p.start_consumer(&[]).unwrap();
    }
    writer.await.unwrap().unwrap();
    let stored = assert_exactly_once_in_order(&p).await;
    assert_eq!(stored.len(), 5_000);
}

/// 3. Down for longer than the duplicate window, with published events left unconfirmed: the
///    replay skips what the stream holds (the window alone would have let it through twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_after_the_duplicate_window_without_duplicates() {
    let p = Pipeline::start().await.unwrap();
    // Confirmation every 10 s: when killed, everything published is still unconfirmed.
    let slow_confirm = [
        ("DUPLICATE_WINDOW", "2s"),
        ("STATUS_INTERVAL", "10s"),
        ("HEARTBEAT_INTERVAL", "1h"),
    ];
    let mut consumer = p.start_streaming_consumer(&slow_confirm).await.unwrap();
    write_rounds(p.pg.url(), vec![10; 20]).await.unwrap();
    p.wait_for_rounds(200, DEADLINE).await.unwrap();
    consumer.kill().unwrap();
    write_rounds(p.pg.url(), vec![10; 10]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // the point of this test: outlive the window
    let metrics = metrics_addr();
    let _consumer = p
        .start_streaming_consumer(&[("DUPLICATE_WINDOW", "2s"), ("METRICS_ADDR", &metrics)])
        .await
        .unwrap();
    let stored = assert_exactly_once_in_order(&p).await;
    assert_eq!(stored.len(), 300);
    let skipped = scrape(&metrics, "datastream_consumer_replayed_skipped_total")
        .await
        .unwrap();
    assert_eq!(
        skipped,
        Some(200.0),
        "the replay should have re-read the 200 published rounds"
    );
}

/// 4. NATS killed and restarted under load: nothing lost, nothing duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_nats_restart_under_load() {
    let mut rng = Rng::seeded();
    let mut p = Pipeline::start().await.unwrap();
    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let sizes = batch_sizes(&mut rng, 3_000, 20);
    let writer = tokio::spawn(write_rounds(p.pg.url(), sizes));
    p.wait_for_rounds(300, DEADLINE).await.unwrap();
    p.nats.kill().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // NATS stays away while rounds commit
    p.nats.start_again().await.unwrap();
    writer.await.unwrap().unwrap();
    let stored = assert_exactly_once_in_order(&p).await;
    assert_eq!(stored.len(), 3_000);
}

/// 5. PostgreSQL restarted under load: nothing lost, nothing duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_postgres_restart_under_load() {
    let mut rng = Rng::seeded();
    let mut p = Pipeline::start().await.unwrap();
    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let writer = tokio::spawn(write_rounds(p.pg.url(), batch_sizes(&mut rng, 3_000, 20)));
    p.wait_for_rounds(300, DEADLINE).await.unwrap();
    p.pg.stop().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.pg.start_again().await.unwrap();
    writer.await.unwrap().unwrap();
    let stored = assert_exactly_once_in_order(&p).await;
    assert!(stored.len() >= 3_000);
}

/// 6. A database busy only with a table outside the publication: the slot still advances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_slot_advances_past_unpublished_writes() {
    let p = Pipeline::start().await.unwrap();
    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let client = p.pg.client().await.unwrap();
    client
        .batch_execute("CREATE TABLE noise (id serial, body text)")
        .await
        .unwrap();
    let before: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..100 {
        client
            .execute(
                "INSERT INTO noise (body) SELECT md5(g::text) FROM generate_series(1, 100) g",
                &[],
            )
            .await
            .unwrap();
    }
    let after: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let moved: bool = client
        .query_one(
            "SELECT $1::text::pg_lsn - $2::text::pg_lsn > 100000",
            &[&after, &before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(moved, "10,000 writes should move WAL ({before} → {after})");
    p.wait_until_caught_up(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(p.stream_rounds().await.unwrap().is_empty());
}

/// 7. A column added to rounds mid-stream: events continue, the session does not restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_mid_stream_needs_no_restart() {
    let p = Pipeline::start().await.unwrap();
    let metrics = metrics_addr();
    let consumer = p
        .start_streaming_consumer(&[("METRICS_ADDR", &metrics)])
        .await
        .unwrap();
    write_rounds(p.pg.url(), vec![5, 5]).await.unwrap();
    p.wait_for_rounds(10, DEADLINE).await.unwrap();
    p.pg.execute("ALTER TABLE rounds ADD COLUMN note text DEFAULT 'late'")
        .await
        .unwrap();
    p.pg.execute(
        "INSERT INTO rounds (game_id, finished_at, extras, note)
         SELECT 1, now(), '{}', 'n' || g FROM generate_series(1, 10) g",
    )
    .await
    .unwrap();
    let stored = assert_exactly_once_in_order(&p).await;
    assert_eq!(stored.len(), 20);
    assert_eq!(
        scrape(&metrics, "datastream_consumer_reconnects_total")
            .await
            .unwrap(),
        Some(0.0)
    );
    assert!(
        !consumer.log().contains("replication session ended"),
        "{}",
        consumer.log_tail()
    );
}

/// 8. One transaction of 100,000 rounds: all published, in order, with memory bounded by the
///    in-flight window rather than by the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_transaction_is_published_with_bounded_memory() {
    let p = Pipeline::start().await.unwrap();
    let consumer = p.start_streaming_consumer(&[]).await.unwrap();
    p.pg.execute(
        "INSERT INTO rounds (game_id, finished_at, extras)
         SELECT 1 + g % 15, now(), '{\"point\": \"2.00\"}' FROM generate_series(1, 100000) g",
    )
    .await
    .unwrap();
    let stored = p
        .wait_for_rounds(100_000, Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(round_ids(&stored), (1..=100_000).collect::<Vec<i64>>());
    let peak = peak_rss_kib(consumer.pid().unwrap()).unwrap();
    println!("consumer peak RSS after a 100,000-round transaction: {peak} KiB");
    assert!(
        peak < 128 * 1024,
        "peak RSS {peak} KiB: the transaction is being buffered"
    );
}

/// 9. Two consumers: the standby takes over within 2 s of the active one dying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_within_two_seconds() {
    let p = Pipeline::start().await.unwrap();
    let mut active = p.start_streaming_consumer(&[]).await.unwrap();
    let standby = p.start_consumer(&[]).unwrap();
    standby
        .wait_for_log("another consumer holds the slot", DEADLINE)
        .await
        .unwrap();
    write_rounds(p.pg.url(), vec![1]).await.unwrap();
    p.wait_for_rounds(1, DEADLINE).await.unwrap();
    assert!(
        !standby.log().contains("\"streaming\""),
        "both consumers stream"
    );

    active.kill().unwrap();
    let killed = Instant::now();
    write_rounds(p.pg.url(), vec![1]).await.unwrap();
    let stored = p.wait_for_rounds(2, Duration::from_secs(2)).await.unwrap();
    println!(
        "standby published the next round {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(round_ids(&stored), vec![1, 2]);
    assert!(
        standby.log().contains("this consumer takes over"),
        "{}",
        standby.log_tail()
    );
}

/// 10. A round whose game is renamed earlier in the same transaction carries the new slug, and
///     the games bucket follows the rename.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_in_the_same_transaction_reaches_the_round_and_the_catalog() {
    let p = Pipeline::start().await.unwrap();
    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    p.pg.execute(
        "BEGIN;
         UPDATE games SET slug = 'crash-royale', name = 'Crash Royale' WHERE id = 1;
         INSERT INTO rounds (game_id, finished_at, extras) VALUES (1, now(), '{\"point\": \"3.10\"}');
         COMMIT;",
    )
    .await
    .unwrap();
    let stored = p.wait_for_rounds(1, DEADLINE).await.unwrap();
    assert_eq!(stored[0].round.game_slug, "crash-royale");
    assert_eq!(stored[0].subject, "rounds.multiplier.crash-royale");

    let js = p.jetstream().await.unwrap();
    let kv = shared::nats::open_kv_bucket(&js, shared::subject::GAMES_BUCKET)
        .await
        .unwrap();
    let renamed = wait_until(DEADLINE, "renamed game in the games bucket", || {
        let kv = kv.clone();
        async move {
            let value = kv.get("crash-royale").await.ok()??;
            serde_json::from_slice::<shared::Game>(&value).ok()
        }
    })
    .await
    .unwrap();
    assert_eq!(renamed.name, "Crash Royale");
    assert_eq!(kv.get("crash").await.unwrap(), None);
    assert!(
        kv.get("double").await.unwrap().is_some(),
        "the other games are in the bucket"
    );
}

/// A lost stream is rebuilt by `backfill`, exactly once, and the consumer carries on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_rebuilds_a_lost_stream_exactly_once() {
    let p = Pipeline::start().await.unwrap();
    let mut consumer = p.start_streaming_consumer(&[]).await.unwrap();
    write_rounds(p.pg.url(), vec![20; 5]).await.unwrap();
    p.wait_for_rounds(100, DEADLINE).await.unwrap();
    p.wait_until_caught_up(DEADLINE).await.unwrap();
    consumer.kill().unwrap();
    let js = p.jetstream().await.unwrap();
    js.delete_stream(e2e::pipeline::STREAM).await.unwrap();

    // Part of the history comes back first, then all of it: the second run adds only the rest.
    for from in ["51", "1"] {
        let mut backfill = Service::start(
            "cdc-consumer",
            &["backfill", "--from-round-id", from],
            &p.consumer_env(&[]),
        )
        .unwrap();
        assert!(
            backfill.wait_exit(DEADLINE).await.unwrap().success(),
            "{}",
            backfill.log_tail()
        );
    }
    let stored = p.stream_rounds().await.unwrap();
    let mut ids = round_ids(&stored);
    assert_eq!(
        ids.len(),
        100,
        "backfill published a round twice or missed one"
    );
    assert_eq!(&ids[..50], (51..=100).collect::<Vec<i64>>());
    ids.sort_unstable();
    assert_eq!(ids, (1..=100).collect::<Vec<i64>>());

    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    write_rounds(p.pg.url(), vec![3]).await.unwrap();
    let stored = p.wait_for_rounds(103, DEADLINE).await.unwrap();
    assert_eq!(round_ids(&stored)[100..], [101, 102, 103]);
    p.wait_until_caught_up(DEADLINE).await.unwrap();
    assert_eq!(p.stream_rounds().await.unwrap().len(), 103);
}

/// SIGTERM: in-flight publishes finish, the final position is confirmed, exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_confirms_what_was_published_and_exits_zero() {
    let p = Pipeline::start().await.unwrap();
    let mut consumer = p
        .start_streaming_consumer(&[("STATUS_INTERVAL", "10s"), ("HEARTBEAT_INTERVAL", "1h")])
        .await
        .unwrap();
    write_rounds(p.pg.url(), vec![50, 50]).await.unwrap();
    p.wait_for_rounds(100, DEADLINE).await.unwrap();
    let written: String =
        p.pg.client()
            .await
            .unwrap()
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
    consumer.terminate().unwrap();
    let status = consumer.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "exit {status:?}\n{}", consumer.log_tail());
    let confirmed_past_writes: bool = p
        .pg
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'datastream'",
            &[&written],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        confirmed_past_writes,
        "final status not sent\n{}",
        consumer.log_tail()
    );
}

/// `status` shows the slot and the stream; `migrate` twice is harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_slot_and_stream_and_migrate_is_idempotent() {
    let p = Pipeline::start().await.unwrap();
    p.migrate().await.unwrap();
    let versions: i64 =
        p.pg.client()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM datastream_migrations", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(versions, 2);
    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    write_rounds(p.pg.url(), vec![7]).await.unwrap();
    p.wait_for_rounds(7, DEADLINE).await.unwrap();
    p.wait_until_caught_up(DEADLINE).await.unwrap();
    let mut status = Service::start("cdc-consumer", &["status"], &p.consumer_env(&[])).unwrap();
    assert!(status.wait_exit(DEADLINE).await.unwrap().success());
    let out = status.log();
    assert!(
        out.contains("slot        datastream (active, walsender pid"),
        "{out}"
    );
    assert!(out.contains("wal_status  reserved"), "{out}");
    assert!(
        out.contains("stream      ROUNDS: 7 messages, first seq 1, last seq 7"),
        "{out}"
    );
}

/// A bad setting stops start-up with one line naming it.
#[tokio::test]
async fn a_bad_setting_stops_start_up_with_one_line() {
    for (key, value, name) in [
        ("METRICS_ADDR", "not-an-address", "METRICS_ADDR"),
        ("STATUS_INTERVAL", "30s", "STATUS_INTERVAL"),
        ("SLOT_NAME", "Bad-Slot", "SLOT_NAME"),
        (
            "DATABASE_URL",
            "postgres://u:secret@host:notaport/db",
            "DATABASE_URL",
        ),
    ] {
        let mut consumer =
            Service::start("cdc-consumer", &["run"], &[(key, value.to_owned())]).unwrap();
        let out = consumer
            .refusal_line(Duration::from_secs(10))
            .await
            .unwrap();
        assert!(out.contains(name), "{key}: {out}");
        assert!(!out.contains("secret"), "the password leaked: {out}");
    }
}
