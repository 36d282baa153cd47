//! edge-gateway against a real nats-server, with real WebSocket and SSE clients: format,
//! filtering, latest-first, order, resume, refusals, REST and limits (hostile input is in
//! `hostile.rs`).
//!
//! Each test starts its own nats-server and gateway process; rounds are published exactly as
//! cdc-consumer publishes them (`e2e::feed`). Every wait has a deadline.

use std::time::Duration;

use e2e::clients::{seq_of, Gateway, SseClient, SseItem, WsClient, WsEvent, WsOptions};
use e2e::feed::{nats_and_feed, Feed};
use e2e::raw::{self, FrameReader};
use serde_json::{json, Value};
use shared::{Game, Round};

const T: Duration = Duration::from_secs(10);

fn game<'a>(games: &'a [Game], slug: &str) -> &'a Game {
    games.iter().find(|g| g.slug == slug).unwrap()
}

/// What a client must receive for `round` stored at `seq`: the 8 published fields, exactly.
fn expected(round: &Round, seq: u64) -> Value {
    json!({
        "round_id": round.round_id,
        "game_id": round.game_id,
        "game_slug": round.game_slug,
        "game_type": round.game_type,
        "finished_at": round.finished_at,
        "extras": round.extras,
        "timestamp": round.timestamp,
        "seq": seq,
    })
}

/// The exact text a client must receive (field order as published).
fn expected_text(round: &Round, seq: u64) -> String {
    let mut round = round.clone();
    round.seq = seq;
    String::from_utf8(round.to_json().unwrap()).unwrap()
}

async fn publish(feed: &Feed, rounds: &[Round]) -> Vec<u64> {
    feed.publish_all(rounds).await.unwrap()
}

/// Test 1: WebSocket by game and by type: the exact format, latest first, filtering, order, and
/// nothing extra.
#[tokio::test]
async fn ws_by_game_and_by_type_latest_first_then_live_in_order() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let crash = game(&games, "crash");
    let slot = game(&games, "slot");
    let double = game(&games, "double");
    let wars = game(&games, "aviator-wars");
    let before = vec![
        feed.round(crash, r#"{"point": "1.50"}"#),
        feed.round(crash, r#"{"point": "11.72"}"#),
        feed.round(
            slot,
            r#"{"reels": ["cherry", "lemon", "orange"], "multiplier": "2.00"}"#,
        ),
        feed.round(double, r#"{"color": "red", "number": 5}"#),
    ];
    let before_seqs = publish(&feed, &before).await;
    let gw = Gateway::start(&nats.url(), &[]).await.unwrap();

    let mut by_game = WsClient::connect(gw.addr, "/ws/crash").await.unwrap();
    let mut by_type = WsClient::connect(gw.addr, "/ws/type/multiplier")
        .await
        .unwrap();
    let mut color = WsClient::connect(gw.addr, "/ws/type/color").await.unwrap();

    // Latest first: the last crash round; the last multiplier round (slot's); the last color one.
    let first = by_game.round(T).await.unwrap();
    assert_eq!(first, expected(&before[1], before_seqs[1]));
    assert_eq!(by_game.last_text, expected_text(&before[1], before_seqs[1]));
    let object = first.as_object().unwrap();
    assert_eq!(object.len(), 8, "exactly the 8 published fields");
    for (field, ok) in [
        ("round_id", first["round_id"].is_i64()),
        ("game_id", first["game_id"].is_i64()),
        ("game_slug", first["game_slug"].is_string()),
        ("game_type", first["game_type"].is_string()),
        ("finished_at", first["finished_at"].is_string()),
        ("extras", first["extras"].is_string()),
        ("timestamp", first["timestamp"].is_i64()),
        ("seq", first["seq"].is_u64()),
    ] {
        assert!(ok, "{field} has the wrong JSON type in {first}");
    }
    let extras: Value = serde_json::from_str(first["extras"].as_str().unwrap()).unwrap();
    assert_eq!(extras, json!({"point": "11.72"}));
    assert_eq!(
        by_type.round(T).await.unwrap(),
        expected(&before[2], before_seqs[2])
    );
    assert_eq!(
        color.round(T).await.unwrap(),
        expected(&before[3], before_seqs[3])
    );

    // Live, mixed games: each client gets exactly its topic's rounds, in stream order.
    let live = vec![
        feed.round(crash, r#"{"point": "2.00"}"#),
        feed.round(double, r#"{"color": "black", "number": 8}"#),
        feed.round(slot, r#"{"reels": ["lemon"], "multiplier": "0.00"}"#),
        feed.round(wars, r#"{"point": "3.10"}"#),
        feed.round(crash, r#"{"point": "1.01"}"#),
    ];
    let seqs = publish(&feed, &live).await;
    // A fence per client: the first frame after the expected ones must be the fence, so
    // nothing extra arrived in between.
    let fences = vec![
        feed.round(crash, r#"{"point": "9.99"}"#),
        feed.round(double, r#"{"color": "white", "number": 0}"#),
    ];
    let fence_seqs = publish(&feed, &fences).await;

    let want_game = [(0, seqs[0]), (4, seqs[4])];
    let want_type = [(0, seqs[0]), (2, seqs[2]), (3, seqs[3]), (4, seqs[4])];
    let got = by_game.rounds(3, T).await.unwrap();
    let mut expect: Vec<Value> = want_game
        .iter()
        .map(|&(i, s)| expected(&live[i], s))
        .collect();
    expect.push(expected(&fences[0], fence_seqs[0]));
    assert_eq!(got, expect, "game subscription");
    let got = by_type.rounds(5, T).await.unwrap();
    let mut expect: Vec<Value> = want_type
        .iter()
        .map(|&(i, s)| expected(&live[i], s))
        .collect();
    expect.push(expected(&fences[0], fence_seqs[0]));
    assert_eq!(
        got, expect,
        "type subscription sees crash, slot and aviator-wars, not double"
    );
    let got = color.rounds(2, T).await.unwrap();
    assert_eq!(
        got,
        vec![
            expected(&live[1], seqs[1]),
            expected(&fences[1], fence_seqs[1])
        ],
        "color subscription sees only double"
    );
}

/// Test 2: SSE with a real SSE client: headers, `retry:`, `event: initial`, messages with
/// `id: <seq>`, heartbeats, and resume by `Last-Event-ID` / `?last_event_id=` with no gap and no
/// duplicate, from the pod's history and, past it, from the stream; cursors outside the stream
/// get `event: reset`.
#[tokio::test]
async fn sse_initial_messages_heartbeat_and_resume_without_gap() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let crash = game(&games, "crash");
    let double = game(&games, "double");
    let r = |g: &Game, n: u32| feed.round(g, &format!(r#"{{"n": {n}}}"#));
    let before = vec![r(crash, 1), r(crash, 2), r(crash, 3)];
    let before_seqs = publish(&feed, &before).await;
    let gw = Gateway::start(
        &nats.url(),
        &[
            ("HISTORY_SIZE", "8".into()),
            ("SSE_HEARTBEAT_INTERVAL", "300ms".into()),
            ("SSE_RETRY", "1500ms".into()),
        ],
    )
    .await
    .unwrap();

    let mut sse = SseClient::connect(&gw, "/sse/crash", None).await.unwrap();
    assert!(sse
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    assert_eq!(sse.next(T).await.unwrap(), SseItem::Retry(1500));
    let initial = sse.event(T).await.unwrap();
    assert_eq!(initial.event, "initial");
    assert_eq!(initial.id, Some(before_seqs[2].to_string()));
    assert_eq!(initial.data, expected_text(&before[2], before_seqs[2]));
    // Nothing is published now: the next item is a heartbeat with the current Unix time.
    match sse.next(Duration::from_secs(3)).await.unwrap() {
        SseItem::Comment(comment) => {
            let unix: u64 = comment.strip_prefix("heartbeat ").unwrap().parse().unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert!(unix.abs_diff(now) <= 5, "heartbeat {unix} vs now {now}");
        }
        other => panic!("expected a heartbeat, got {other:?}"),
    }

    // Live: only crash, each with id = seq, in order; the fence proves nothing extra came.
    let live = vec![r(crash, 4), r(double, 5), r(crash, 6), r(crash, 7)];
    let live_seqs = publish(&feed, &live).await;
    let got = sse.events(3, T).await.unwrap();
    for (event, i) in got.iter().zip([0, 2, 3]) {
        assert_eq!(event.event, "message");
        assert_eq!(event.id, Some(live_seqs[i].to_string()));
        assert_eq!(event.data, expected_text(&live[i], live_seqs[i]));
        assert_eq!(seq_of(&event.json().unwrap()), live_seqs[i], "id = seq");
    }
    let cursor_g = live_seqs[3];
    drop(sse);

    // Missed while away; Last-Event-ID resumes right after the cursor (pod history).
    let away = vec![r(crash, 8), r(double, 9), r(crash, 10)];
    let away_seqs = publish(&feed, &away).await;
    let mut sse = SseClient::connect(&gw, "/sse/crash", Some(&cursor_g.to_string()))
        .await
        .unwrap();
    assert_eq!(sse.next(T).await.unwrap(), SseItem::Retry(1500));
    let k = r(crash, 11);
    let k_seq = feed.publish(&k).await.unwrap();
    let got = sse.events(3, T).await.unwrap();
    let want = [
        (away_seqs[0], &away[0]),
        (away_seqs[2], &away[2]),
        (k_seq, &k),
    ];
    for (event, (seq, round)) in got.iter().zip(want) {
        assert_eq!(
            event.event, "message",
            "a resume starts with the missed events, no initial"
        );
        assert_eq!(event.id, Some(seq.to_string()));
        assert_eq!(event.data, expected_text(round, seq));
    }
    drop(sse);

    // The same with the cursor in the URL (a first connection cannot set the header).
    let mut sse = SseClient::connect(
        &gw,
        &format!("/sse/crash?last_event_id={}", away_seqs[0]),
        None,
    )
    .await
    .unwrap();
    let fence = r(crash, 12);
    let fence_seq = feed.publish(&fence).await.unwrap();
    let ids: Vec<String> = sse
        .events(3, T)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(ids, [away_seqs[2], k_seq, fence_seq].map(|s| s.to_string()));
    drop(sse);
    assert_eq!(
        gw.metric("datastream_gateway_resumes_total", &[("source", "history")])
            .await
            .unwrap(),
        2.0
    );

    // Push the cursor out of the pod's history (8 events): the resume comes from the stream.
    let filler: Vec<Round> = (0..10).map(|n| r(double, 100 + n)).collect();
    let filler_seqs = publish(&feed, &filler).await;
    gw.wait_for_hub(filler_seqs[9]).await.unwrap();
    let mut sse = SseClient::connect(&gw, "/sse/crash", Some(&cursor_g.to_string()))
        .await
        .unwrap();
    let last = r(crash, 13);
    let last_seq = feed.publish(&last).await.unwrap();
    let ids: Vec<String> = sse
        .events(5, T)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            assert_eq!(e.event, "message");
            e.id.unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        [away_seqs[0], away_seqs[2], k_seq, fence_seq, last_seq].map(|s| s.to_string()),
        "from the stream, then live, no gap, no duplicate"
    );
    drop(sse);
    assert_eq!(
        gw.metric("datastream_gateway_resumes_total", &[("source", "stream")])
            .await
            .unwrap(),
        1.0
    );

    // The same for a type subscription, from the stream: every multiplier round after the
    // cursor (crash only here), none of double's.
    let mut sse = SseClient::connect(&gw, "/sse/type/multiplier", Some(&cursor_g.to_string()))
        .await
        .unwrap();
    let ids: Vec<String> = sse
        .events(5, T)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(
        ids,
        [away_seqs[0], away_seqs[2], k_seq, fence_seq, last_seq].map(|s| s.to_string())
    );
    drop(sse);

    // A cursor beyond the stream: reset (clearing the client's id), then latest, then live.
    let mut sse = SseClient::connect(&gw, "/sse/crash", Some("999999"))
        .await
        .unwrap();
    assert_eq!(sse.next(T).await.unwrap(), SseItem::Retry(1500));
    let reset = sse.event(T).await.unwrap();
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.id, Some(String::new()));
    assert!(reset.json().unwrap()["reason"]
        .as_str()
        .unwrap()
        .contains("999999"));
    let initial = sse.event(T).await.unwrap();
    assert_eq!(initial.event, "initial");
    assert_eq!(initial.id, Some(last_seq.to_string()));
    let after = r(crash, 14);
    let after_seq = feed.publish(&after).await.unwrap();
    let message = sse.event(T).await.unwrap();
    assert_eq!(
        (message.event.as_str(), message.id),
        ("message", Some(after_seq.to_string()))
    );
    drop(sse);

    // A cursor older than the stream (retention removed what follows it): reset as well.
    feed.purge_before(live_seqs[0]).await.unwrap();
    let mut sse = SseClient::connect(&gw, "/sse/crash", Some(&before_seqs[0].to_string()))
        .await
        .unwrap();
    let reset = sse.event(T).await.unwrap();
    assert_eq!(reset.event, "reset");
    let initial = sse.event(T).await.unwrap();
    assert_eq!(
        (initial.event.as_str(), initial.id),
        ("initial", Some(after_seq.to_string()))
    );
    drop(sse);

    // Malformed cursors and unknown names are refused with JSON before any stream starts.
    for (path, header) in [
        ("/sse/crash", Some("abc")),
        ("/sse/crash", Some("-1")),
        ("/sse/crash?last_event_id=1.5", None),
    ] {
        let refused = SseClient::open(&gw, path, header).await.unwrap();
        assert_eq!(refused.status, 400, "{path} {header:?}");
        let body: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
        assert!(body["error"].as_str().unwrap().contains("cursor"), "{body}");
    }
    for path in ["/sse/nope", "/sse/type/nope"] {
        let refused = SseClient::open(&gw, path, None).await.unwrap();
        assert_eq!(refused.status, 404, "{path}");
        let body: Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
        assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");
    }
}

/// WebSocket resume with `?since=`: missed events then live, no latest; a cursor outside the
/// stream closes with 4010 and a reason; a malformed one is a 400 before the upgrade.
#[tokio::test]
async fn ws_resume_since_and_reset_4010() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let crash = game(&games, "crash");
    let dice = game(&games, "dice");
    let rounds: Vec<Round> = (0..6)
        .map(|n| {
            feed.round(
                if n % 2 == 0 { crash } else { dice },
                &format!("{{\"n\": {n}}}"),
            )
        })
        .collect();
    let seqs = publish(&feed, &rounds).await;
    let gw = Gateway::start(&nats.url(), &[("HISTORY_SIZE", "3".into())])
        .await
        .unwrap();

    // From the pod's history (it holds the last 3: seqs[3..]).
    let mut ws = WsClient::connect(gw.addr, &format!("/ws/crash?since={}", seqs[2]))
        .await
        .unwrap();
    let next = feed.round(crash, "{}");
    let next_seq = feed.publish(&next).await.unwrap();
    let got: Vec<u64> = ws.rounds(2, T).await.unwrap().iter().map(seq_of).collect();
    assert_eq!(got, [seqs[4], next_seq]);

    // From the stream (older than the history).
    let mut ws = WsClient::connect(gw.addr, &format!("/ws/crash?since={}", seqs[0]))
        .await
        .unwrap();
    let got: Vec<u64> = ws.rounds(3, T).await.unwrap().iter().map(seq_of).collect();
    assert_eq!(got, [seqs[2], seqs[4], next_seq]);
    let mut ws_type = WsClient::connect(gw.addr, &format!("/ws/type/dice?since={}", seqs[0]))
        .await
        .unwrap();
    let got: Vec<u64> = ws_type
        .rounds(3, T)
        .await
        .unwrap()
        .iter()
        .map(seq_of)
        .collect();
    assert_eq!(got, [seqs[1], seqs[3], seqs[5]]);
    // Up to date: nothing replayed, the next live one arrives.
    let mut up_to_date = WsClient::connect(gw.addr, &format!("/ws/crash?since={next_seq}"))
        .await
        .unwrap();
    let live = feed.round(crash, "{}");
    let live_seq = feed.publish(&live).await.unwrap();
    assert_eq!(seq_of(&up_to_date.round(T).await.unwrap()), live_seq);
    assert_eq!(seq_of(&ws.round(T).await.unwrap()), live_seq);

    // Beyond the stream's last event.
    let mut ahead = WsClient::connect(gw.addr, "/ws/crash?since=999999")
        .await
        .unwrap();
    let (code, reason) = ahead.close_frame(T).await.unwrap();
    assert_eq!(code, 4010);
    assert!(reason.contains("999999"), "{reason}");
    // Older than the stream's first event.
    feed.purge_before(seqs[4]).await.unwrap();
    let mut old = WsClient::connect(gw.addr, &format!("/ws/crash?since={}", seqs[1]))
        .await
        .unwrap();
    let (code, reason) = old.close_frame(T).await.unwrap();
    assert_eq!(code, 4010);
    assert!(reason.contains(&seqs[4].to_string()), "{reason}");

    let refused = WsClient::refused(gw.addr, "/ws/crash?since=x1")
        .await
        .unwrap();
    assert_eq!(refused.status, 400);
    assert!(refused.json().unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("cursor"));
    assert_eq!(
        gw.disconnects(&[("protocol", "ws"), ("reason", "cursor_reset")])
            .await
            .unwrap(),
        2.0
    );
}

/// Refusals happen before the upgrade, with JSON (an upgrade asked of an SSE path too); the
/// offered sub-protocol is echoed; the Origin allow-list applies; a client that sends a message
/// is closed with 1003.
#[tokio::test]
async fn ws_handshake_rules() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    feed.put_seeded_games().await.unwrap();
    let gw = Gateway::start(
        &nats.url(),
        &[("WS_ALLOWED_ORIGINS", "https://play.example".into())],
    )
    .await
    .unwrap();

    for (path, status, needle) in [
        ("/ws/nope", 404, "unknown game"),
        ("/ws/type/nope", 404, "unknown game type"),
        ("/ws/crash?since=-3", 400, "cursor"),
        // An SSE path offered an upgrade: answered, not streamed over the upgraded socket.
        ("/sse/crash", 400, "this path does not upgrade"),
    ] {
        let refused = WsClient::refused(gw.addr, path).await.unwrap();
        assert_eq!(refused.status, status, "{path}");
        let body = refused.json().unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    let evil = WsOptions {
        origin: Some("https://evil.example".into()),
        ..Default::default()
    };
    assert_eq!(
        WsClient::refused_with(gw.addr, "/ws/crash", &evil)
            .await
            .unwrap()
            .status,
        403
    );
    // A plain GET on a WebSocket path is not an upgrade.
    assert_eq!(gw.get("/ws/crash").await.unwrap().status, 400);

    let options = WsOptions {
        protocol: Some("token-abc.123".into()),
        origin: Some("https://play.example".into()),
        ..Default::default()
    };
    let mut ws = WsClient::connect_with(gw.addr, "/ws/crash", &options)
        .await
        .unwrap();
    assert_eq!(
        ws.response_headers
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("token-abc.123")
    );
    // No rounds yet: nothing first. A message from the client is not part of the protocol.
    ws.send_text("hello").await.unwrap();
    let (code, _) = ws.close_frame(T).await.unwrap();
    assert_eq!(code, 1003);
    assert_eq!(ws.next(T).await.unwrap(), WsEvent::Ended);
}

/// WebSocket liveness: a peer that never answers pings is dropped after two intervals; one
/// that answers (tungstenite does) stays and keeps receiving.
#[tokio::test]
async fn ws_ping_drops_peers_that_do_not_answer() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let gw = Gateway::start(&nats.url(), &[("WS_PING_INTERVAL", "200ms".into())])
        .await
        .unwrap();
    let mut alive = WsClient::connect(gw.addr, "/ws/crash").await.unwrap();
    // A real client reads all the time (tungstenite answers pings while reading).
    let alive = tokio::spawn(async move { alive.round(T).await.map(|r| seq_of(&r)) });
    let mute = raw::ws_handshake(gw.addr, "/ws/crash").await.unwrap();
    let frames = FrameReader::new(mute)
        .until_eof(Duration::from_secs(5))
        .await
        .unwrap();
    let pings = frames.iter().filter(|(op, _)| *op == 0x9).count();
    assert_eq!(pings, 1, "one unanswered ping, then dropped: {frames:?}");
    // The answering client is still served after several more intervals (three pings).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let round = feed.round(game(&games, "crash"), "{}");
    let seq = feed.publish(&round).await.unwrap();
    assert_eq!(alive.await.unwrap().unwrap(), seq);
    assert_eq!(
        gw.disconnects(&[("reason", "ping_timeout")]).await.unwrap(),
        1.0
    );
}

/// A close frame waits at most two ping intervals for a peer that takes nothing: a client that
/// stopped reading in the middle of a large round is found slow, the close frame queued behind
/// that round cannot be written, and the gateway drops the connection after two intervals
/// instead of keeping its socket for as long as TCP keeps probing the closed window
/// (indefinitely, while the peer answers).
#[tokio::test]
async fn ws_close_frame_the_peer_never_takes_is_dropped_after_two_intervals() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let crash = game(&games, "crash");
    let gw = Gateway::start(
        &nats.url(),
        &[
            ("WS_PING_INTERVAL", "1s".into()),
            ("CLIENT_QUEUE_BYTES", "65536".into()),
        ],
    )
    .await
    .unwrap();
    // Small buffers: what the kernels hold for the client is a few dozen KiB (see `WsOptions`).
    let options = WsOptions {
        recv_buffer: Some(4096),
        max_segment: Some(536),
        ..WsOptions::default()
    };
    let stalled = WsClient::connect_with(gw.addr, "/ws/crash", &options)
        .await
        .unwrap();
    let ws_metric = |name: &'static str| gw.metric(name, &[("protocol", "ws")]);
    assert_eq!(
        ws_metric("datastream_gateway_connections").await.unwrap(),
        1.0
    );
    // A 512 KiB round (larger than the queue's bound, which an empty queue still takes): once
    // the connection has taken it, it is stuck in the middle of writing it.
    let large = json!({ "pad": "x".repeat(512 * 1024) }).to_string();
    feed.publish(&feed.round(crash, &large)).await.unwrap();
    testkit::wait_until(T, "the connection to take the large round", || async {
        (ws_metric("datastream_gateway_deliveries_total")
            .await
            .ok()?
            == 1.0)
            .then_some(())
    })
    .await
    .unwrap();
    // Then 600 KiB of small rounds: over the queue's bound, the client is found slow, and its
    // close frame waits behind the rest of the large round.
    let small = json!({ "pad": "x".repeat(2048) }).to_string();
    let rounds: Vec<Round> = (0..300).map(|_| feed.round(crash, &small)).collect();
    feed.publish_all(&rounds).await.unwrap();
    let slow = || gw.disconnects(&[("protocol", "ws"), ("reason", "slow")]);
    testkit::wait_until(T, "the stalled client to be found slow", || async {
        (slow().await.ok()? == 1.0).then_some(())
    })
    .await
    .unwrap();
    let found_slow = std::time::Instant::now();
    // Two intervals (2 s) after its close frame was queued, and not much later.
    testkit::wait_until(
        Duration::from_secs(5),
        "the connection to be dropped",
        || async { (ws_metric("datastream_gateway_connections").await.ok()? == 0.0).then_some(()) },
    )
    .await
    .unwrap();
    let dropped_after = found_slow.elapsed();
    assert!(
        dropped_after >= Duration::from_millis(1500),
        "dropped {dropped_after:?} after it was found slow: before its close frame's deadline"
    );
    assert_eq!(
        gw.disconnects(&[("reason", "ping_timeout")]).await.unwrap(),
        0.0,
        "ended by the close frame's deadline, not by the ping rule"
    );
    // The client never read a byte; its socket stayed open on its side all along.
    drop(stalled);
}

/// `METRICS_ADDR`: `/metrics` (and `/health`) on a listener of their own, and no longer on the
/// public one; nothing else is served there.
#[tokio::test]
async fn metrics_addr_moves_metrics_off_the_public_listener() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let seq = feed
        .publish(&feed.round(game(&games, "crash"), "{}"))
        .await
        .unwrap();
    let metrics_addr = format!("127.0.0.1:{}", testkit::free_port().unwrap());
    let gw = Gateway::start(&nats.url(), &[("METRICS_ADDR", metrics_addr.clone())])
        .await
        .unwrap();
    let get = |path: &str| {
        let url = format!("http://{metrics_addr}{path}");
        async move {
            let reply = reqwest::get(url).await.unwrap();
            (reply.status().as_u16(), reply.text().await.unwrap())
        }
    };
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(&format!("datastream_gateway_hub_sequence {seq}")),
        "{text}"
    );
    assert_eq!(get("/health").await.0, 200);
    for path in ["/ws/crash", "/api/games", "/ready", "/"] {
        assert_eq!(get(path).await.0, 404, "{path} on METRICS_ADDR");
    }
    assert_eq!(gw.get("/metrics").await.unwrap().status, 404);
    assert_eq!(gw.get("/health").await.unwrap().status, 200);
    assert_eq!(gw.get("/api/games").await.unwrap().status, 200);
}

/// REST and probes: games from the KV bucket, latest rounds, health, readiness, metrics, CORS,
/// and request limits.
#[tokio::test]
async fn rest_api_probes_cors_and_limits() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let crash = game(&games, "crash");
    let round = feed.round(crash, r#"{"point": "3.33"}"#);
    let seq = feed.publish(&round).await.unwrap();
    let gw = Gateway::start(
        &nats.url(),
        &[("CORS_ALLOWED_ORIGINS", "https://play.example".into())],
    )
    .await
    .unwrap();

    let reply = gw.get("/api/games").await.unwrap();
    assert_eq!(reply.status, 200);
    let listed: Vec<Game> = serde_json::from_slice(&reply.body).unwrap();
    let mut want = games.clone();
    want.sort_by(|a, b| a.slug.cmp(&b.slug));
    assert_eq!(listed, want);

    let reply = gw.get("/api/games/crash/latest").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        expected_text(&round, seq)
    );
    assert_eq!(gw.get("/api/games/dice/latest").await.unwrap().status, 404);
    let reply = gw.get("/api/games/nope/latest").await.unwrap();
    assert_eq!(reply.status, 404);
    assert!(reply.json().unwrap()["error"].is_string());

    assert_eq!(gw.get("/health").await.unwrap().status, 200);
    let ready = gw.get("/ready").await.unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json().unwrap()["ready"], true);
    let metrics = gw.metrics().await.unwrap();
    for name in [
        "datastream_gateway_connections",
        "datastream_gateway_deliveries_total",
        "datastream_gateway_disconnects_total",
        "datastream_gateway_commit_to_send_seconds_bucket",
        "datastream_gateway_events_in_total",
        "datastream_gateway_hub_lag",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(
        gw.metric("datastream_gateway_hub_sequence", &[])
            .await
            .unwrap(),
        seq as f64
    );

    // CORS: an allowed origin is named, others get nothing; preflights answer 204.
    let reply = gw
        .get_with("/api/games", &[("origin", "https://play.example")])
        .await
        .unwrap();
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://play.example")
    );
    let reply = gw
        .get_with(
            "/sse/crash?last_event_id=x",
            &[("origin", "https://play.example")],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://play.example")
    );
    let reply = gw
        .get_with("/api/games", &[("origin", "https://evil.example")])
        .await
        .unwrap();
    assert_eq!(reply.header("access-control-allow-origin"), None);
    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, gw.url("/sse/crash"))
        .header("origin", "https://play.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "last-event-id")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let allow = |name: &str| {
        preflight
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        allow("access-control-allow-origin").as_deref(),
        Some("https://play.example")
    );
    assert_eq!(
        allow("access-control-allow-headers").as_deref(),
        Some("last-event-id")
    );

    // Limits.
    let long = format!("/sse/{}", "a".repeat(3000));
    assert_eq!(gw.get(&long).await.unwrap().status, 414);
    let big = "b".repeat(20 * 1024);
    assert_eq!(
        gw.get_with("/health", &[("x-big", &big)])
            .await
            .unwrap()
            .status,
        431
    );
    assert_eq!(gw.get("/nowhere").await.unwrap().status, 404);
}

/// The catalog follows the `games` bucket without a restart: a new game can be subscribed to at
/// once, a deleted one is a 404.
#[tokio::test]
async fn games_added_and_removed_without_restart() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    feed.put_seeded_games().await.unwrap();
    let gw = Gateway::start(&nats.url(), &[]).await.unwrap();
    assert_eq!(
        WsClient::refused(gw.addr, "/ws/rocket")
            .await
            .unwrap()
            .status,
        404
    );
    let rocket = Game {
        id: 99,
        slug: "rocket".into(),
        name: "Rocket".into(),
        game_type: "launch".into(),
    };
    feed.put_game(&rocket).await.unwrap();
    let mut ws = testkit::wait_until(T, "the new game to be served", || async {
        WsClient::connect(gw.addr, "/ws/type/launch").await.ok()
    })
    .await
    .unwrap();
    let round = feed.round(&rocket, r#"{"height": 3}"#);
    let seq = feed.publish(&round).await.unwrap();
    assert_eq!(ws.round(T).await.unwrap(), expected(&round, seq));
    feed.delete_game("rocket").await.unwrap();
    testkit::wait_until(T, "the deleted game to be refused", || async {
        let refused = WsClient::refused(gw.addr, "/ws/rocket").await.ok()?;
        (refused.status == 404).then_some(())
    })
    .await
    .unwrap();
}

/// A setting that does not parse stops start-up with one line naming it, and status 2.
#[tokio::test]
async fn a_bad_setting_stops_startup_with_one_line() {
    for (name, value) in [
        ("CLIENT_QUEUE_BYTES", "lots"),
        ("WS_ALLOWED_ORIGINS", "example.com"),
        ("SHUTDOWN_GRACE", "soon"),
    ] {
        let mut gw = Gateway::spawn("nats://127.0.0.1:1", &[(name, value.into())]).unwrap();
        let log = gw.service.refusal_line(T).await.unwrap();
        assert!(log.contains(name) && log.contains(value), "{name}: {log}");
    }
}
