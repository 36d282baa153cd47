//! edge-gateway fan-out across processes and across a NATS restart: every client on every pod
//! gets every event of its topic, in stream order, exactly once.

use std::time::Duration;

use e2e::clients::{seq_of, Gateway, SseClient, WsClient};
use e2e::feed::{nats_and_feed, Feed};
use shared::{Game, Round};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(20);

fn game<'a>(games: &'a [Game], slug: &str) -> &'a Game {
    games.iter().find(|g| g.slug == slug).unwrap()
}

/// A topic a test client subscribes to, and which rounds belong to it.
#[derive(Debug, Clone, Copy)]
enum Topic {
    Game(&'static str),
    Type(&'static str),
}

impl Topic {
    fn path(self, proto: &str) -> String {
        match self {
            Topic::Game(slug) => format!("/{proto}/{slug}"),
            Topic::Type(t) => format!("/{proto}/type/{t}"),
        }
    }

    fn matches(self, round: &Round) -> bool {
        match self {
            Topic::Game(slug) => round.game_slug == slug,
            Topic::Type(t) => round.game_type == t,
        }
    }
}

/// Opens a client, reads its first (latest) round, and returns a task that collects the next
/// `n` sequences.
async fn ws_collector(gw: &Gateway, topic: Topic, n: usize) -> JoinHandle<Vec<u64>> {
    let mut ws = WsClient::connect(gw.addr, &topic.path("ws")).await.unwrap();
    ws.round(T).await.unwrap();
    tokio::spawn(async move {
        ws.rounds(n, T)
            .await
            .unwrap_or_else(|err| panic!("{topic:?}: {err:#}"))
            .iter()
            .map(seq_of)
            .collect()
    })
}

async fn sse_collector(gw: &Gateway, topic: Topic, n: usize) -> JoinHandle<Vec<u64>> {
    let mut sse = SseClient::connect(gw, &topic.path("sse"), None)
        .await
        .unwrap();
    let initial = sse.event(T).await.unwrap();
    assert_eq!(initial.event, "initial");
    tokio::spawn(async move {
        sse.events(n, T)
            .await
            .unwrap_or_else(|err| panic!("{topic:?}: {err:#}"))
            .into_iter()
            .map(|e| {
                assert_eq!(e.event, "message");
                let seq: u64 = e.id.as_deref().unwrap().parse().unwrap();
                assert_eq!(seq_of(&e.json().unwrap()), seq);
                seq
            })
            .collect()
    })
}

/// Rounds of four games, mixed: crash, slot (multiplier), double (color), dice.
fn mixed_rounds(feed: &Feed, games: &[Game], n: usize, offset: usize) -> Vec<Round> {
    let cycle = ["crash", "slot", "double", "crash", "dice", "slot", "crash"];
    (0..n)
        .map(|i| {
            let g = game(games, cycle[(i + offset) % cycle.len()]);
            feed.round(g, &format!(r#"{{"i": {}}}"#, i + offset))
        })
        .collect()
}

fn expected(published: &[(Round, u64)], topic: Topic) -> Vec<u64> {
    published
        .iter()
        .filter(|(r, _)| topic.matches(r))
        .map(|(_, s)| *s)
        .collect()
}

const TOPICS: [(Topic, &str); 6] = [
    (Topic::Game("crash"), "ws"),
    (Topic::Type("multiplier"), "ws"),
    (Topic::Type("color"), "ws"),
    (Topic::Game("dice"), "ws"),
    (Topic::Game("crash"), "sse"),
    (Topic::Type("multiplier"), "sse"),
];

/// Test 3: three gateway processes on one NATS; clients on every pod, every protocol, game and
/// type subscriptions; all of them get every event of their topic, in order, once.
#[tokio::test]
async fn three_gateways_every_client_gets_every_event_in_order() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    // A latest round for every topic in use.
    let seed: Vec<Round> = ["crash", "double", "dice"]
        .iter()
        .map(|slug| feed.round(game(&games, slug), "{}"))
        .collect();
    feed.publish_all(&seed).await.unwrap();
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(Gateway::spawn(&nats.url(), &[]).unwrap());
    }
    for gw in &gateways {
        gw.wait_ready(T).await.unwrap();
    }

    let rounds = mixed_rounds(&feed, &games, 210, 0);
    let mut collectors = Vec::new();
    for gw in &gateways {
        for (topic, proto) in TOPICS {
            let n = rounds.iter().filter(|r| topic.matches(r)).count();
            for _ in 0..2 {
                let task = match proto {
                    "ws" => ws_collector(gw, topic, n).await,
                    _ => sse_collector(gw, topic, n).await,
                };
                collectors.push((topic, proto, task));
            }
        }
    }
    // In pipelined batches, as a busy consumer would publish.
    let mut published = Vec::new();
    for batch in rounds.chunks(30) {
        let seqs = feed.publish_all(batch).await.unwrap();
        published.extend(batch.iter().cloned().zip(seqs));
    }
    assert_eq!(collectors.len(), 36);
    for (topic, proto, task) in collectors {
        let got = task.await.unwrap();
        assert_eq!(got, expected(&published, topic), "{proto} {topic:?}");
    }
}

/// Test 4: NATS is killed and restarted (same port, same store) while clients are connected;
/// rounds published right after the restart, while the gateways are still reconnecting, are the
/// gap their ordered consumers refill. Every client gets every event, in order, once, on its
/// original connection.
#[tokio::test]
async fn nats_restart_gap_is_refilled_for_connected_clients() {
    let (mut nats, feed) = nats_and_feed().await.unwrap();
    let games = feed.put_seeded_games().await.unwrap();
    let seed: Vec<Round> = ["crash", "double", "dice"]
        .iter()
        .map(|slug| feed.round(game(&games, slug), "{}"))
        .collect();
    feed.publish_all(&seed).await.unwrap();
    let gateways = [
        Gateway::start(&nats.url(), &[]).await.unwrap(),
        Gateway::start(&nats.url(), &[]).await.unwrap(),
    ];

    let before = mixed_rounds(&feed, &games, 21, 0);
    let after = mixed_rounds(&feed, &games, 35, 21);
    let mut collectors = Vec::new();
    for gw in &gateways {
        for (topic, proto) in TOPICS {
            let n = before
                .iter()
                .chain(&after)
                .filter(|r| topic.matches(r))
                .count();
            let task = match proto {
                "ws" => ws_collector(gw, topic, n).await,
                _ => sse_collector(gw, topic, n).await,
            };
            collectors.push((topic, proto, task));
        }
    }
    let mut published: Vec<(Round, u64)> = Vec::new();
    let seqs = feed.publish_all(&before).await.unwrap();
    published.extend(before.iter().cloned().zip(seqs));

    nats.kill().unwrap();
    for gw in &gateways {
        testkit::wait_until(T, "/ready to turn false without NATS", || async {
            let reply = gw.get("/ready").await.ok()?;
            (reply.status == 503 && reply.json().ok()?["nats_connected"] == false).then_some(())
        })
        .await
        .unwrap();
    }
    // A long enough outage that the gateways' reconnect backoff has grown past a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.start_again().await.unwrap();
    // Published by a fresh connection the moment NATS is back, while the gateways are still
    // waiting to reconnect: these rounds are the gap their ordered consumers must refill.
    let fresh = Feed::start(&nats.url()).await.unwrap();
    let seqs = fresh.publish_all(&after).await.unwrap();
    published.extend(after.iter().cloned().zip(seqs));
    let mut away = 0;
    for gw in &gateways {
        let ready = gw.get("/ready").await.unwrap().json().unwrap();
        if ready["nats_connected"] == false {
            away += 1;
        }
    }
    assert!(
        away > 0,
        "the rounds should have been stored while a gateway was disconnected"
    );
    for (topic, proto, task) in collectors {
        let got = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap_or_else(|_| panic!("{proto} {topic:?} stalled"))
            .unwrap();
        assert_eq!(got, expected(&published, topic), "{proto} {topic:?}");
    }
    for gw in &gateways {
        gw.wait_ready(T).await.unwrap();
        assert_eq!(
            gw.metric("datastream_gateway_hub_lag", &[]).await.unwrap(),
            0.0
        );
        for reason in [
            "slow",
            "shutdown",
            "ping_timeout",
            "protocol_error",
            "replay_failed",
        ] {
            assert_eq!(
                gw.disconnects(&[("reason", reason)]).await.unwrap(),
                0.0,
                "no client was dropped ({reason})"
            );
        }
        assert_eq!(
            gw.metric("datastream_gateway_connections_opened_total", &[])
                .await
                .unwrap(),
            TOPICS.len() as f64,
            "no client had to reconnect"
        );
    }
}
