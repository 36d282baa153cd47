//! edge-gateway's WebTransport endpoint against a real nats-server, with a real WebTransport
//! client: latest first then every round on the stream and as datagrams, resume with `?since=`,
//! refusals before accepting, the certificate (self-signed by hash, or the operator's files),
//! slow stream readers, datagram-only clients, and SIGTERM.
//!
//! Each test starts its own nats-server and gateway process; rounds are published exactly as
//! cdc-consumer publishes them (`e2e::feed`). Every wait has a deadline.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::clients::{seq_of, Gateway};
use e2e::feed::{nats_and_feed, Feed};
use e2e::wt::{hex, sha256, start_gateway, CertHash, Refused, WtClient};
use serde_json::Value;
use shared::{Game, Round};

const T: Duration = Duration::from_secs(10);

fn game<'a>(games: &'a [Game], slug: &str) -> &'a Game {
    games.iter().find(|g| g.slug == slug).unwrap()
}

/// The exact text a client must receive for `round` stored at `seq` (field order as published).
fn expected_text(round: &Round, seq: u64) -> String {
    let mut round = round.clone();
    round.seq = seq;
    String::from_utf8(round.to_json().unwrap()).unwrap()
}

async fn publish(feed: &Feed, rounds: &[Round]) -> Vec<u64> {
    feed.publish_all(rounds).await.unwrap()
}

fn ids(rounds: &[Value]) -> Vec<(i64, u64)> {
    rounds
        .iter()
        .map(|r| (r["round_id"].as_i64().unwrap(), seq_of(r)))
        .collect()
}

async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw.metric(name, labels).await.unwrap()
}

/// Waits until the datagrams received contain every text of `want`, or until the deadline (a
/// datagram may be lost); returns everything received, in arrival order.
async fn collect_datagrams(client: &mut WtClient, want: &[String]) -> Vec<String> {
    let mut got = Vec::new();
    let want: HashSet<&String> = want.iter().collect();
    let _complete = testkit::wait_until(T, "every datagram", || {
        got.extend(client.datagrams().unwrap());
        let seen: HashSet<&String> = got.iter().collect();
        let done = want.iter().all(|w| seen.contains(w));
        async move { done.then_some(()) }
    })
    .await;
    got
}

/// Issue 4, test 1: a session gets the latest round, then 100 new ones, on its stream in order
/// (ids, seq, exact text, no duplicate, nothing extra) and at least 95% of them as datagrams
/// (exact text, no duplicate); a type session gets its type only; an event too large for a
/// datagram still comes on the stream; the metrics count it all.
#[tokio::test]
async fn wt_latest_then_100_rounds_on_the_stream_and_as_datagrams() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let crash = game(&games, "crash");
    let slot = game(&games, "slot");
    let double = game(&games, "double");
    let before = vec![
        feed.round(crash, r#"{"point": "11.72"}"#),
        feed.round(
            slot,
            r#"{"reels": ["cherry", "lemon", "orange"], "multiplier": "2.00"}"#,
        ),
        feed.round(double, r#"{"color": "red", "number": 5}"#),
    ];
    let before_seqs = publish(&feed, &before).await;
    let (gw, port) = start_gateway(&nats.url(), &[]).await.unwrap();
    let hash = CertHash::fetch(&gw).await.unwrap();
    assert_eq!(hash.port, port);

    let mut by_game = WtClient::connect(port, "/wt/crash", &hash.bytes)
        .await
        .unwrap();
    let mut by_type = WtClient::connect(port, "/wt/type/multiplier", &hash.bytes)
        .await
        .unwrap();

    // Latest first, on the stream and as the first datagram.
    let latest = expected_text(&before[0], before_seqs[0]);
    by_game.round(T).await.unwrap();
    assert_eq!(by_game.last_line, latest);
    assert_eq!(by_game.datagram(T).await.unwrap(), latest);
    let latest_type = expected_text(&before[1], before_seqs[1]);
    by_type.round(T).await.unwrap();
    assert_eq!(by_type.last_line, latest_type);
    assert_eq!(by_type.datagram(T).await.unwrap(), latest_type);

    // 100 crash rounds, with double rounds in between that neither session may see.
    let mut published = Vec::new();
    for n in 0..100 {
        published.push(feed.round(crash, &format!(r#"{{"point": "{}.{:02}"}}"#, 1 + n / 10, n)));
        if n % 10 == 0 {
            published.push(feed.round(double, r#"{"color": "black", "number": 8}"#));
        }
    }
    let seqs = publish(&feed, &published).await;
    let live: Vec<(&Round, u64)> = published
        .iter()
        .zip(seqs.iter().copied())
        .filter(|(r, _)| r.game_slug == "crash")
        .collect();
    assert_eq!(live.len(), 100);
    // A fence: the first line after the 100 must be the fence, so nothing extra came between.
    let fence = feed.round(crash, r#"{"point": "9.99"}"#);
    let fence_seq = feed.publish(&fence).await.unwrap();

    let want: Vec<(i64, u64)> = live.iter().map(|(r, s)| (r.round_id, *s)).collect();
    let mut want_texts: Vec<String> = live.iter().map(|(r, s)| expected_text(r, *s)).collect();
    for client in [&mut by_game, &mut by_type] {
        let mut lines = Vec::new();
        for _ in 0..100 {
            client.round(T).await.unwrap();
            lines.push(client.last_line.clone());
        }
        assert_eq!(lines, want_texts, "the stream: exact text, in stream order");
        let parsed: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(ids(&parsed), want);
        let fenced = client.round(T).await.unwrap();
        assert_eq!(
            (fenced["round_id"].as_i64().unwrap(), seq_of(&fenced)),
            (fence.round_id, fence_seq)
        );
    }
    want_texts.push(expected_text(&fence, fence_seq));

    for client in [&mut by_game, &mut by_type] {
        let datagrams = collect_datagrams(client, &want_texts).await;
        let unique: HashSet<&String> = datagrams.iter().collect();
        assert_eq!(unique.len(), datagrams.len(), "a datagram arrived twice");
        let wanted: HashSet<&String> = want_texts.iter().collect();
        for datagram in &datagrams {
            assert!(wanted.contains(datagram), "unexpected datagram {datagram}");
        }
        assert!(
            datagrams.len() * 100 >= want_texts.len() * 95,
            "only {} of {} rounds came as datagrams",
            datagrams.len(),
            want_texts.len()
        );
    }

    // Every event was handed to QUIC on both sides: 1 latest + 100 + the fence, per session.
    let wt = [("protocol", "wt")];
    assert_eq!(
        metric(&gw, "datastream_gateway_connections", &wt).await,
        2.0
    );
    assert_eq!(
        metric(&gw, "datastream_gateway_connections_opened_total", &wt).await,
        2.0
    );
    assert_eq!(
        metric(&gw, "datastream_gateway_wt_stream_deliveries_total", &[]).await,
        204.0
    );
    assert_eq!(
        metric(&gw, "datastream_gateway_wt_datagrams_sent_total", &[]).await,
        204.0
    );
    assert_eq!(
        metric(&gw, "datastream_gateway_wt_datagrams_dropped_total", &[]).await,
        0.0
    );

    // Larger than a datagram may be: on the stream only, counted.
    let big = feed.round(crash, &format!(r#"{{"blob": "{}"}}"#, "x".repeat(3000)));
    let big_seq = feed.publish(&big).await.unwrap();
    for client in [&mut by_game, &mut by_type] {
        client.round(T).await.unwrap();
        assert_eq!(client.last_line, expected_text(&big, big_seq));
    }
    assert_eq!(
        metric(
            &gw,
            "datastream_gateway_wt_datagrams_dropped_total",
            &[("reason", "too_large")]
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(&gw, "datastream_gateway_wt_datagrams_sent_total", &[]).await,
        204.0
    );

    // A client that leaves is forgotten.
    by_type.close();
    testkit::wait_until(T, "the closed session to be counted", || async {
        let open = gw
            .metric("datastream_gateway_connections", &wt)
            .await
            .ok()?;
        (open == 1.0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        gw.disconnects(&[("protocol", "wt"), ("reason", "client_gone")])
            .await
            .unwrap(),
        1.0
    );
}

/// Issue 4, test 3: `?since=` gets exactly the missed events (from the pod's history or from
/// the stream), then live ones, with no latest; a cursor outside the stream closes the session
/// with 4010 and a reason.
#[tokio::test]
async fn wt_since_resumes_exactly_the_missed_events() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let crash = game(&games, "crash");
    let dice = game(&games, "dice");
    let first = feed.round(crash, r#"{"n": 0}"#);
    let first_seq = feed.publish(&first).await.unwrap();
    let (gw, port) = start_gateway(&nats.url(), &[("HISTORY_SIZE", "20".into())])
        .await
        .unwrap();
    let hash = CertHash::fetch(&gw).await.unwrap().bytes;

    // A client reads two rounds, then goes away while more are published.
    let mut client = WtClient::connect(port, "/wt/crash", &hash).await.unwrap();
    assert_eq!(seq_of(&client.round(T).await.unwrap()), first_seq);
    let seen = feed.round(crash, r#"{"n": 1}"#);
    let seen_seq = feed.publish(&seen).await.unwrap();
    assert_eq!(seq_of(&client.round(T).await.unwrap()), seen_seq);
    client.close();
    drop(client);
    let r = |g: &Game, n: u32| feed.round(g, &format!(r#"{{"n": {n}}}"#));
    let missed_all = vec![
        r(crash, 2),
        r(dice, 3),
        r(crash, 4),
        r(crash, 5),
        r(dice, 6),
        r(crash, 7),
    ];
    let missed_seqs = publish(&feed, &missed_all).await;
    gw.wait_for_hub(missed_seqs[5]).await.unwrap();
    let missed: Vec<(i64, u64)> = missed_all
        .iter()
        .zip(&missed_seqs)
        .filter(|(round, _)| round.game_slug == "crash")
        .map(|(round, seq)| (round.round_id, *seq))
        .collect();

    // Back with its cursor (and a token, which this build ignores): exactly the missed crash
    // rounds, then live ones.
    let mut back = WtClient::connect(
        port,
        &format!("/wt/crash?since={seen_seq}&token=abc"),
        &hash,
    )
    .await
    .unwrap();
    let replayed = back.rounds(missed.len(), T).await.unwrap();
    assert_eq!(ids(&replayed), missed);
    let texts: Vec<String> = missed_all
        .iter()
        .zip(&missed_seqs)
        .filter(|(round, _)| round.game_slug == "crash")
        .map(|(round, seq)| expected_text(round, *seq))
        .collect();
    assert_eq!(back.last_line, texts[texts.len() - 1]);
    let live = r(crash, 8);
    let live_seq = feed.publish(&live).await.unwrap();
    let next = back.round(T).await.unwrap();
    assert_eq!(
        (next["round_id"].as_i64().unwrap(), seq_of(&next)),
        (live.round_id, live_seq),
        "live follows the missed rounds with nothing in between"
    );
    // The missed rounds came as datagrams too, before the live one.
    let mut want = texts.clone();
    want.push(expected_text(&live, live_seq));
    let datagrams = collect_datagrams(&mut back, &want).await;
    assert!(datagrams.iter().all(|d| want.contains(d)), "{datagrams:?}");
    assert!(datagrams.len() * 100 >= want.len() * 95, "{datagrams:?}");

    // Resumes older than the history come from the stream; by type too.
    let (gw_small, port_small) = start_gateway(&nats.url(), &[("HISTORY_SIZE", "2".into())])
        .await
        .unwrap();
    let hash_small = CertHash::fetch(&gw_small).await.unwrap().bytes;
    let mut from_stream = WtClient::connect(
        port_small,
        &format!("/wt/type/dice?since={first_seq}"),
        &hash_small,
    )
    .await
    .unwrap();
    let got: Vec<u64> = from_stream
        .rounds(2, T)
        .await
        .unwrap()
        .iter()
        .map(seq_of)
        .collect();
    assert_eq!(got, [missed_seqs[1], missed_seqs[4]]);
    assert_eq!(
        metric(
            &gw_small,
            "datastream_gateway_resumes_total",
            &[("source", "stream")]
        )
        .await,
        1.0
    );

    // Up to date: nothing replayed.
    let mut current = WtClient::connect(port, &format!("/wt/crash?since={live_seq}"), &hash)
        .await
        .unwrap();
    let after = r(crash, 9);
    let after_seq = feed.publish(&after).await.unwrap();
    assert_eq!(seq_of(&current.round(T).await.unwrap()), after_seq);

    // Outside the stream: accepted, then closed with 4010 and a reason.
    let ahead = WtClient::connect(port, "/wt/crash?since=999999", &hash)
        .await
        .unwrap();
    let (code, reason) = ahead.closed(T).await.unwrap();
    assert_eq!(code, 4010);
    assert!(
        reason.contains("999999") && reason.contains("reconnect without it"),
        "{reason}"
    );
    // Older than the stream's first event (and than the small pod's history).
    feed.purge_before(missed_seqs[0]).await.unwrap();
    let old = WtClient::connect(
        port_small,
        &format!("/wt/crash?since={first_seq}"),
        &hash_small,
    )
    .await
    .unwrap();
    let (code, reason) = old.closed(T).await.unwrap();
    assert_eq!(code, 4010);
    assert!(
        reason.contains(&format!("first event {}", missed_seqs[0])),
        "{reason}"
    );
    for gateway in [&gw, &gw_small] {
        assert_eq!(
            gateway
                .disconnects(&[("protocol", "wt"), ("reason", "cursor_reset")])
                .await
                .unwrap(),
            1.0
        );
    }
}

/// Unknown paths, games and types are refused with 404 and a malformed cursor with 400, before
/// the session is accepted.
#[tokio::test]
async fn wt_refusals_before_accepting() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    feed.put_seeded_games().await.unwrap();
    let (gw, port) = start_gateway(&nats.url(), &[]).await.unwrap();
    let hash = CertHash::fetch(&gw).await.unwrap().bytes;
    for (path, status) in [
        ("/wt/no-such-game", 404),
        ("/wt/type/no-such-type", 404),
        ("/wt/", 404),
        ("/ws/crash", 404),
        ("/wt/crash/extra", 404),
        ("/wt/crash?since=x1", 400),
        ("/wt/crash?since=-1", 400),
    ] {
        let refused = WtClient::open(port, path, &hash).await.unwrap();
        assert_eq!(refused.err(), Some(Refused { status }), "{path}");
    }
    assert_eq!(
        metric(
            &gw,
            "datastream_gateway_wt_sessions_refused_total",
            &[("status", "404")]
        )
        .await,
        5.0
    );
    assert_eq!(
        metric(
            &gw,
            "datastream_gateway_wt_sessions_refused_total",
            &[("status", "400")]
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &gw,
            "datastream_gateway_connections_opened_total",
            &[("protocol", "wt")]
        )
        .await,
        0.0
    );
}

/// `GET /api/wt/cert-hash` tells the certificate the client is served: a self-signed ECDSA one
/// valid at most 14 days by default (accepted by its hash, a wrong hash is not), the operator's
/// own with TLS_CERT/TLS_KEY.
#[tokio::test]
async fn wt_cert_hash_is_the_served_certificate() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    feed.publish(&feed.round(game(&games, "crash"), "{}"))
        .await
        .unwrap();

    let (gw, port) = start_gateway(&nats.url(), &[]).await.unwrap();
    let reply = gw.get("/api/wt/cert-hash").await.unwrap();
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let hash = CertHash::fetch(&gw).await.unwrap();
    assert!(hash.self_signed);
    assert_eq!(hash.bytes.len(), 32);
    assert_eq!(hash.value, hex(&hash.bytes));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let expires_at = hash.expires_at.unwrap();
    assert!(
        expires_at > now_ms && expires_at <= now_ms + 14 * 86_400_000,
        "expires_at {expires_at}, now {now_ms}"
    );
    let client = WtClient::connect(port, "/wt/crash", &hash.bytes)
        .await
        .unwrap();
    assert_eq!(sha256(&client.certificate), hash.bytes);
    assert!(
        WtClient::open(port, "/wt/crash", &[0; 32]).await.is_err(),
        "a certificate with another hash must be rejected"
    );

    // The operator's certificate.
    let dir = tempfile::tempdir().unwrap();
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, issued.cert.pem()).unwrap();
    std::fs::write(&key_path, issued.signing_key.serialize_pem()).unwrap();
    let (gw, port) = start_gateway(
        &nats.url(),
        &[
            ("TLS_CERT", cert_path.display().to_string()),
            ("TLS_KEY", key_path.display().to_string()),
        ],
    )
    .await
    .unwrap();
    let der = issued.cert.der().to_vec();
    let hash = CertHash::fetch(&gw).await.unwrap();
    assert!(!hash.self_signed);
    assert_eq!(hash.expires_at, None);
    assert_eq!(hash.bytes, sha256(&der));
    let mut client = WtClient::connect(port, "/wt/crash", &sha256(&der))
        .await
        .unwrap();
    assert_eq!(client.certificate, der);
    client.round(T).await.unwrap();
}

/// A bad TLS_CERT/TLS_KEY stops start-up with one line naming the setting, and status 2.
#[tokio::test]
async fn wt_bad_tls_settings_stop_startup_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all").unwrap();
    let garbage = garbage.display().to_string();
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.path().join("tls.crt");
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    let cert = cert.display().to_string();
    let other_key = dir.path().join("other.key");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let other_key = other_key.display().to_string();

    // (environment, the setting the one-line error must name, a detail it must name)
    type Case<'a> = (Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (vec![("TLS_CERT", cert.clone())], "TLS_KEY", "not"),
        (vec![("TLS_KEY", other_key.clone())], "TLS_CERT", "not"),
        (
            vec![
                ("TLS_CERT", missing.clone()),
                ("TLS_KEY", other_key.clone()),
            ],
            "TLS_CERT",
            "missing.pem",
        ),
        (
            vec![
                ("TLS_CERT", garbage.clone()),
                ("TLS_KEY", other_key.clone()),
            ],
            "TLS_CERT",
            "garbage.pem",
        ),
        (
            vec![("TLS_CERT", cert.clone()), ("TLS_KEY", garbage.clone())],
            "TLS_KEY",
            "garbage.pem",
        ),
        (
            vec![("TLS_CERT", cert.clone()), ("TLS_KEY", other_key.clone())],
            "TLS_KEY",
            "other.key",
        ),
    ];
    for (env, setting, detail) in cases {
        let mut gw = Gateway::spawn("nats://127.0.0.1:1", &env).unwrap();
        let log = gw.service.refusal_line(T).await.unwrap();
        assert!(
            log.contains(setting) && log.contains(detail),
            "{env:?}: {log}"
        );
    }
}

/// A session that does not read its stream is closed with 1008 `slow consumer` once its backlog
/// passes CLIENT_QUEUE_BYTES (default 256 KiB), while a reader gets every round in order and a
/// client that stopped the stream keeps getting datagrams.
#[tokio::test]
async fn wt_slow_stream_reader_is_closed_1008_and_others_are_served() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let crash = game(&games, "crash");
    let latest = feed.round(crash, "{}");
    let latest_seq = feed.publish(&latest).await.unwrap();
    let (gw, port) = start_gateway(&nats.url(), &[]).await.unwrap();
    let hash = CertHash::fetch(&gw).await.unwrap().bytes;

    let mut reader = WtClient::connect(port, "/wt/crash", &hash).await.unwrap();
    assert_eq!(seq_of(&reader.round(T).await.unwrap()), latest_seq);
    let mut slow = WtClient::connect(port, "/wt/crash", &hash).await.unwrap();
    slow.accept_stream(T).await.unwrap();
    let mut datagrams_only = WtClient::connect(port, "/wt/crash", &hash).await.unwrap();
    assert_eq!(
        datagrams_only.datagram(T).await.unwrap(),
        expected_text(&latest, latest_seq)
    );
    datagrams_only.stop_stream(T).await.unwrap();

    // 2 MiB of rounds too large for datagrams, 200 KiB at a time (less than the bound), each
    // batch read by the reader before the next: the slow client ends up more than its QUIC
    // stream window (1.25 MB) plus 256 KiB behind, the reader never more than a batch.
    let blob = "x".repeat(10 * 1024);
    for batch in 0..10 {
        let big: Vec<Round> = (0..20)
            .map(|n| {
                feed.round(
                    crash,
                    &format!(r#"{{"n": {}, "blob": "{blob}"}}"#, batch * 20 + n),
                )
            })
            .collect();
        let big_seqs = publish(&feed, &big).await;
        let got = reader.rounds(20, T).await.unwrap();
        assert_eq!(
            ids(&got),
            big.iter()
                .map(|r| r.round_id)
                .zip(big_seqs.iter().copied())
                .collect::<Vec<_>>(),
            "batch {batch}"
        );
    }
    assert_eq!(
        slow.closed(T).await.unwrap(),
        (1008, "slow consumer".to_owned())
    );
    assert_eq!(
        gw.disconnects(&[("protocol", "wt"), ("reason", "slow")])
            .await
            .unwrap(),
        1.0
    );
    assert!(metric(&gw, "datastream_gateway_dropped_events_total", &[]).await >= 1.0);

    // The datagram-only client is still there and gets the next rounds as datagrams.
    let small: Vec<Round> = (0..5)
        .map(|n| feed.round(crash, &format!(r#"{{"m": {n}}}"#)))
        .collect();
    let small_seqs = publish(&feed, &small).await;
    let want: Vec<String> = small
        .iter()
        .zip(&small_seqs)
        .map(|(r, s)| expected_text(r, *s))
        .collect();
    let got = collect_datagrams(&mut datagrams_only, &want).await;
    assert!(want.iter().all(|w| got.contains(w)), "{got:?}");
    assert_eq!(
        metric(&gw, "datastream_gateway_connections", &[("protocol", "wt")]).await,
        2.0,
        "the reader and the datagram-only client"
    );
    let tail = reader.rounds(5, T).await.unwrap();
    assert_eq!(tail.iter().map(seq_of).collect::<Vec<_>>(), small_seqs);
}

/// SIGTERM: every session is closed with 1001 `server shutting down`, and the process exits
/// within the grace period.
#[tokio::test]
async fn wt_sigterm_closes_sessions_with_1001() {
    const SESSIONS: usize = 20;
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let latest = feed.round(game(&games, "crash"), "{}");
    let latest_seq = feed.publish(&latest).await.unwrap();
    let (mut gw, port) = start_gateway(&nats.url(), &[("SHUTDOWN_GRACE", "5s".into())])
        .await
        .unwrap();
    let hash = CertHash::fetch(&gw).await.unwrap().bytes;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let mut client = WtClient::connect(port, "/wt/crash", &hash).await.unwrap();
        assert_eq!(seq_of(&client.round(T).await.unwrap()), latest_seq);
        sessions.push(client);
    }
    gw.service.terminate().unwrap();
    for client in &sessions {
        assert_eq!(
            client.closed(T).await.unwrap(),
            (1001, "server shutting down".to_owned())
        );
    }
    let status = gw
        .service
        .wait_exit(Duration::from_secs(5) + Duration::from_secs(2))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", gw.service.log_tail());
}
