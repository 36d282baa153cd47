//! Crashes at the consumer's most delicate instants, through fail points compiled into the test
//! build (`--features cdc-consumer/failpoints`): the restarted consumer replays from the slot
//! and the stream ends up with every round exactly once, in commit order.

use std::time::Duration;

use e2e::pipeline::{assert_exactly_once_in_order, write_rounds, Pipeline};

/// Starts a consumer that crashes at the `hit`-th pass through fail point `point`, writes 200
/// rounds in transactions of 25, lets it crash, restarts it, and checks the stream. With
/// `partial`, the crash must come before all 200 were in the stream (otherwise it may come after:
/// acknowledged but not confirmed to PostgreSQL is the case the replay must skip entirely).
async fn crash_at(point: &str, hit: u32, partial: bool) {
    let p = Pipeline::start().await.unwrap();
    let failpoints = format!("{point}={}*off->panic", hit - 1);
    let mut consumer = p
        .start_streaming_consumer_with_failpoints(&failpoints)
        .await
        .unwrap();
    write_rounds(p.pg.url(), vec![25; 8]).await.unwrap();
    let status = consumer.wait_exit(Duration::from_secs(60)).await.unwrap();
    assert!(!status.success(), "the fail point did not fire");
    let log = consumer.log();
    assert!(
        log.contains("crashing:") && log.contains(&format!("failpoint {point} panic")),
        "{}",
        consumer.log_tail()
    );
    let published_before_the_crash = p.stream_rounds().await.unwrap().len();
    assert!(
        !partial || published_before_the_crash < 200,
        "crashed after everything was published"
    );

    // The consumer that takes over is the one the other tests run (the release build in CI).
    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let stored = assert_exactly_once_in_order(&p).await;
    assert_eq!(stored.len(), 200);
}

/// The round may be in the stream; its acknowledgement was never seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_publish_before_ack() {
    crash_at("publish-before-ack", 90, true).await;
}

/// The transaction is acknowledged, but PostgreSQL was not told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_ack_before_status() {
    crash_at("ack-before-status", 3, false).await;
}

/// Part of a transaction's rounds are published, the rest are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_the_middle_of_a_transaction() {
    crash_at("mid-transaction", 60, true).await;
}
