//! Hostile input (issue 8): whatever a client sends, it gets a clear answer (a WebSocket close
//! code or a 4xx with a JSON error, asserted exactly) and the gateway keeps serving everyone
//! else. In every test one normal WebSocket client of `/ws/crash` (the bystander) must receive
//! every round published between the attacks, in order, by `seq`.
//!
//! Covered: garbage after the upgrade, non-HTTP bytes, a 64 KiB header; data frames from the
//! client (invalid UTF-8 text, binary, continuation, a 1 GiB frame header); malformed and
//! oversized control frames; a ping flood; 10,000 half-open sockets; path traversal (plain and
//! percent-encoded) on every route family; overlong paths; bogus cursors on WebSocket, SSE and
//! WebTransport; bogus tokens and keys with `AUTH=required`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use e2e::clients::{seq_of, Gateway, SseClient, WsClient, WsOptions};
use e2e::feed::{nats_and_feed, Feed};
use e2e::raw::{self, client_frame, close_code, frame, FrameReader};
use e2e::wt::{self, CertHash, WtClient};
use hmac::{Hmac, Mac};
use shared::{ApiKeyRecord, Game};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

/// A normal WebSocket client that must be served through everything.
struct Bystander<'a> {
    feed: &'a Feed,
    game: Game,
    ws: WsClient,
    /// The last seq received.
    last: u64,
}

impl<'a> Bystander<'a> {
    /// Publishes a first crash round, connects to `/ws/crash` and checks that round comes
    /// first (the latest).
    async fn connect(
        feed: &'a Feed,
        gw: &Gateway,
        options: &WsOptions,
    ) -> anyhow::Result<Bystander<'a>> {
        let game = e2e::feed::seeded_games()
            .into_iter()
            .find(|g| g.slug == "crash")
            .ok_or_else(|| anyhow::anyhow!("no crash game"))?;
        let seq = feed.publish(&feed.round(&game, "{}")).await?;
        gw.wait_for_hub(seq).await?;
        let mut ws = WsClient::connect_with(gw.addr, "/ws/crash", options).await?;
        let first = seq_of(&ws.round(T).await?);
        anyhow::ensure!(first == seq, "latest first: got {first}, expected {seq}");
        Ok(Bystander {
            feed,
            game,
            ws,
            last: seq,
        })
    }

    /// Publishes `n` crash rounds; the bystander must get exactly them next, in order.
    async fn still_served(&mut self, n: usize, after: &str) -> anyhow::Result<Vec<u64>> {
        let rounds: Vec<_> = (0..n).map(|_| self.feed.round(&self.game, "{}")).collect();
        let want = self.feed.publish_all(&rounds).await?;
        let got: Vec<u64> = self
            .ws
            .rounds(n, T)
            .await
            .map_err(|e| e.context(format!("the bystander after {after}")))?
            .iter()
            .map(seq_of)
            .collect();
        anyhow::ensure!(
            got == want,
            "after {after}: got {got:?}, published {want:?}"
        );
        self.last = want.last().copied().unwrap_or(self.last);
        Ok(want)
    }

    /// A new client of `/ws/crash` gets the latest round, then the next one published.
    async fn newcomer_served(&mut self, gw: &Gateway, after: &str) -> anyhow::Result<()> {
        let mut fresh = WsClient::connect(gw.addr, "/ws/crash").await?;
        let first = seq_of(&fresh.round(T).await?);
        anyhow::ensure!(
            first == self.last,
            "a new client after {after} got {first} first, not the latest {}",
            self.last
        );
        let next = self.still_served(1, after).await?[0];
        let got = seq_of(&fresh.round(T).await?);
        anyhow::ensure!(
            got == next,
            "a new client after {after} got {got}, not {next}"
        );
        Ok(())
    }
}

/// The close code a raw WebSocket of `/ws/crash` gets after sending `bytes` (the latest round
/// comes first).
async fn close_code_after(gw: &Gateway, bytes: &[u8]) -> anyhow::Result<Option<u16>> {
    let mut socket = raw::ws_handshake(gw.addr, "/ws/crash").await?;
    socket.write_all(bytes).await?;
    let frames = FrameReader::new(socket).until_close(T).await?;
    Ok(close_code(&frames))
}

/// Garbage after the upgrade, non-HTTP bytes, a 64 KiB header, and every kind of frame a
/// client must not send: each gets its documented close code (docs/gateway.md: data frames →
/// 1003, judged on the first byte so nothing is buffered; malformed, unmasked or oversized
/// control frames → 1002) or its 4xx, and the bystander misses nothing.
#[tokio::test]
async fn bad_bytes_and_bad_frames_get_their_close_codes() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    feed.put_seeded_games().await.unwrap();
    let gw = Gateway::start(&nats.url(), &[]).await.unwrap();
    let mut bystander = Bystander::connect(&feed, &gw, &WsOptions::default())
        .await
        .unwrap();

    // Non-HTTP bytes (a TLS ClientHello) on the HTTP port: 400.
    let reply = raw::request_bytes(
        gw.addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\xff\xfe\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 400, "{}", reply.head);
    // A 64 KiB header (over MAX_HEADER_BYTES, under actix-http's own limit): 431 JSON.
    let big = "a".repeat(64 * 1024);
    let reply = raw::get(gw.addr, "/health", &[("X-Big", &big)])
        .await
        .unwrap();
    assert_eq!(reply.status, 431, "{}", reply.head);
    assert_eq!(reply.error().unwrap(), "request headers too large");
    bystander.still_served(2, "non-HTTP bytes").await.unwrap();

    let gib = 1u64 << 30;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // 0xFF: FIN, every reserved bit and reserved opcode 0xF.
        ("4 KiB of 0xFF after the upgrade", vec![0xFF; 4096], 1002),
        (
            "a text frame of invalid UTF-8",
            client_frame(0x1, &[0xC3, 0x28, 0xA0, 0xA1, 0xF0, 0x28, 0x8C, 0xBC]),
            1003,
        ),
        (
            "a valid binary frame",
            client_frame(0x2, b"\x00\x01\x02"),
            1003,
        ),
        (
            "a continuation frame",
            client_frame(0x0, b"no message to continue"),
            1003,
        ),
        (
            "a text frame header claiming 1 GiB, no payload",
            frame(0x81, true, gib, &[]),
            1003,
        ),
        (
            "a ping with a 200-byte payload (control frames carry at most 125)",
            client_frame(0x9, &[b'p'; 200]),
            1002,
        ),
        (
            "a ping claiming 1 GiB, its payload streaming in",
            frame(0x89, true, gib, &[b'p'; 4096]),
            1002,
        ),
        ("an unmasked ping", frame(0x89, false, 4, b"ping"), 1002),
        (
            "a ping claiming 200 bytes, sending none of them",
            frame(0x89, true, 200, &[]),
            1002,
        ),
        (
            "a ping with FIN clear (control frames are never fragmented)",
            frame(0x09, true, 4, b"ping"),
            1002,
        ),
        (
            "a reserved opcode (0x3)",
            client_frame(0x3, b"what is this"),
            1002,
        ),
        (
            "a ping with the RSV1 bit set (no extension was negotiated)",
            client_frame(0x40 | 0x9, b"rsv"),
            1002,
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes, want) in &cases {
        let got = close_code_after(&gw, bytes).await.unwrap();
        if got != Some(*want) {
            failures.push(format!("{what}: close code {got:?}, expected {want}"));
        }
        bystander.still_served(1, what).await.unwrap();
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        gw.disconnects(&[("protocol", "ws"), ("reason", "protocol_error")])
            .await
            .unwrap(),
        cases.len() as f64,
        "every bad frame counted as a protocol error"
    );
    bystander
        .newcomer_served(&gw, "all the bad frames")
        .await
        .unwrap();
}

/// 20,000 pings in one burst on one connection: the gateway answers them (the latest one at
/// least: answers may be coalesced, in order, never one that was not asked), keeps that
/// connection subscribed, and serves the bystander throughout.
#[tokio::test]
async fn a_ping_flood_is_answered_and_everyone_stays_served() {
    const PINGS: u32 = 20_000;
    let (nats, feed) = nats_and_feed().await.unwrap();
    feed.put_seeded_games().await.unwrap();
    let gw = Gateway::start(&nats.url(), &[]).await.unwrap();
    let mut bystander = Bystander::connect(&feed, &gw, &WsOptions::default())
        .await
        .unwrap();
    let mut flooder = FrameReader::new(raw::ws_handshake(gw.addr, "/ws/crash").await.unwrap());
    let (opcode, _) = flooder.next(T).await.unwrap().unwrap();
    assert_eq!(opcode, 0x1, "the latest round first");

    let flood: Vec<u8> = (0..PINGS)
        .flat_map(|i| client_frame(0x9, &i.to_be_bytes()))
        .collect();
    let started = Instant::now();
    flooder.socket.write_all(&flood).await.unwrap();
    let mut answered = Vec::new();
    while answered.last() != Some(&(PINGS - 1)) {
        let (opcode, payload) = flooder
            .next(T)
            .await
            .unwrap()
            .expect("the flooder's connection was closed");
        assert_eq!(opcode, 0xA, "only pongs while nothing is published");
        answered.push(u32::from_be_bytes(payload.try_into().unwrap()));
    }
    println!(
        "{PINGS} pings answered with {} pongs in {:?}",
        answered.len(),
        started.elapsed()
    );
    assert!(
        answered.windows(2).all(|w| w[0] < w[1]),
        "pongs answer pings in order, each at most once"
    );
    // Both the flooder and the bystander get the next rounds.
    let seqs = bystander.still_served(3, "the ping flood").await.unwrap();
    let mut flooder_seqs = Vec::new();
    while flooder_seqs.len() < seqs.len() {
        let (opcode, payload) = flooder.next(T).await.unwrap().unwrap();
        assert_eq!(opcode, 0x1);
        flooder_seqs.push(seq_of(&serde_json::from_slice(&payload).unwrap()));
    }
    assert_eq!(flooder_seqs, seqs, "the flooder is still subscribed");
}

/// 10,000 half-open sockets (half sent nothing, half the start of a WebSocket request head)
/// while the bystander is served: a new client still connects, `/health` answers, and every
/// one of them is answered 408 and closed by the request-head timeout (5 s), after which the
/// gateway holds no more files than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_half_open_sockets_are_reaped_and_nobody_notices() {
    const SOCKETS: usize = 10_000;
    let (nats, feed) = nats_and_feed().await.unwrap();
    feed.put_seeded_games().await.unwrap();
    let gw = Gateway::start(&nats.url(), &[]).await.unwrap();
    let pid = gw.service.pid().unwrap();
    let mut bystander = Bystander::connect(&feed, &gw, &WsOptions::default())
        .await
        .unwrap();
    let baseline = open_files(pid).unwrap();

    let connected = Arc::new(AtomicUsize::new(0));
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let started = Instant::now();
    let sockets: Vec<_> = (0..SOCKETS)
        .map(|i| {
            let (connected, limit, addr) = (Arc::clone(&connected), Arc::clone(&limit), gw.addr);
            tokio::spawn(async move {
                let mut socket = {
                    let _permit = limit.acquire().await.expect("semaphore");
                    let socket = TcpStream::connect(addr).await;
                    connected.fetch_add(1, Ordering::Relaxed);
                    socket.map_err(|e| format!("socket {i}: {e}"))?
                };
                if i % 2 == 1 {
                    socket
                        .write_all(b"GET /ws/crash HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
                        .await
                        .map_err(|e| format!("socket {i}: {e}"))?;
                }
                // What the gateway answers before it closes the socket.
                let mut answer = Vec::new();
                let mut buf = [0u8; 256];
                let read = tokio::time::timeout(Duration::from_secs(90), async {
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => answer.extend_from_slice(&buf[..n]),
                        }
                    }
                })
                .await;
                read.map_err(|_| format!("socket {i} was never closed"))?;
                Ok::<_, String>(String::from_utf8_lossy(&answer).into_owned())
            })
        })
        .collect();

    // While they pile up: the bystander keeps getting every round.
    let mut peak = 0;
    while connected.load(Ordering::Relaxed) < SOCKETS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} sockets connected after 60 s",
            connected.load(Ordering::Relaxed)
        );
        bystander
            .still_served(1, "half-open sockets piling up")
            .await
            .unwrap();
        peak = peak.max(open_files(pid).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_open = started.elapsed();
    peak = peak.max(open_files(pid).unwrap());
    bystander
        .newcomer_served(&gw, "10,000 half-open sockets")
        .await
        .unwrap();
    assert_eq!(gw.get("/health").await.unwrap().status, 200);

    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for socket in sockets {
        let answer = socket.await.unwrap().unwrap();
        let status = answer.lines().next().unwrap_or("(nothing)").to_owned();
        *answers.entry(status).or_default() += 1;
    }
    let reaped = started.elapsed();
    testkit::wait_until(T, "the gateway to close its sockets", || async {
        (open_files(pid).ok()? <= baseline + 20).then_some(())
    })
    .await
    .unwrap();
    println!(
        "{SOCKETS} half-open sockets: all connected after {all_open:?}, gateway files {baseline} \
         → peak {peak}, all answered and closed after {reaped:?}: {answers:?}"
    );
    assert_eq!(
        answers,
        BTreeMap::from([("HTTP/1.1 408 Request Timeout".to_owned(), SOCKETS)]),
        "every half-open socket gets 408 and is closed"
    );
    assert!(
        peak >= baseline + SOCKETS / 2,
        "the sockets were held at once (peak {peak} files, baseline {baseline})"
    );
    bystander
        .still_served(2, "the sockets were reaped")
        .await
        .unwrap();
}

/// Open files of process `pid`.
fn open_files(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Request headers for a raw request.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Path traversal (plain and percent-encoded) on the WebSocket, SSE, REST and static-file
/// routes, overlong request targets, and malformed resume cursors on every protocol: each is
/// answered with its exact status and JSON error; nothing outside the embedded files is served.
#[tokio::test]
async fn traversal_long_paths_and_bogus_cursors_get_4xx_json() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    feed.put_seeded_games().await.unwrap();
    let (gw, wt_port) = wt::start_gateway(&nats.url(), &[]).await.unwrap();
    let mut bystander = Bystander::connect(&feed, &gw, &WsOptions::default())
        .await
        .unwrap();

    let upgrade: &[(&str, &str)] = &[
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let sse: &[(&str, &str)] = &[("Accept", "text/event-stream")];
    let unknown_game = r#"unknown game "../../etc/passwd""#;
    let no_route = "no such endpoint";
    let traversal: Vec<(&str, Headers, &str)> = vec![
        ("/ws/../../etc/passwd", upgrade, no_route),
        ("/ws/%2e%2e%2f%2e%2e%2fetc%2fpasswd", upgrade, unknown_game),
        ("/ws/..%2f..%2fetc%2fpasswd", upgrade, unknown_game),
        ("/ws/crash/../../../etc/passwd", upgrade, no_route),
        (
            "/ws/type/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            upgrade,
            r#"unknown game type "../../etc/passwd""#,
        ),
        ("/sse/../../etc/passwd", sse, no_route),
        ("/sse/%2e%2e%2f%2e%2e%2fetc%2fpasswd", sse, unknown_game),
        (
            "/sse/type/..%2f..%2fetc%2fpasswd",
            sse,
            r#"unknown game type "../../etc/passwd""#,
        ),
        ("/api/games/../../etc/passwd", &[], no_route),
        ("/api/games/../../etc/passwd/latest", &[], no_route),
        (
            "/api/games/%2e%2e%2f%2e%2e%2fetc%2fpasswd/latest",
            &[],
            unknown_game,
        ),
        (
            "/api/games/..%2f..%2fetc%2fpasswd/latest",
            &[],
            unknown_game,
        ),
        ("/../../etc/passwd", &[], no_route),
        ("/%2e%2e%2f%2e%2e%2fetc%2fpasswd", &[], no_route),
        ("/%2e%2e/%2e%2e/etc/passwd", &[], no_route),
        ("/app.js/../../../etc/passwd", &[], no_route),
        ("/style.css/..%2f..%2fCargo.toml", &[], no_route),
        ("/..%2f..%2fedge-gateway%2fsrc%2fmain.rs", &[], no_route),
        ("/datastream.js%00.html", &[], no_route),
    ];
    for (target, headers, error) in &traversal {
        let reply = raw::get(gw.addr, target, headers).await.unwrap();
        assert_eq!(reply.status, 404, "{target}: {}", reply.head);
        assert_eq!(reply.error().unwrap(), *error, "{target}");
    }
    bystander.still_served(2, "path traversal").await.unwrap();

    // Overlong request targets: up to 64 KiB the gateway answers 414 with JSON; over it the
    // HTTP parser cannot represent the target and answers 400 itself (no body).
    let long = "a".repeat(10 * 1024);
    for target in [
        format!("/ws/{long}"),
        format!("/sse/{long}"),
        format!("/api/games/{long}/latest"),
        format!("/{long}"),
        format!("/ws/crash?since={long}"),
    ] {
        let reply = raw::get(gw.addr, &target, &[]).await.unwrap();
        assert_eq!(reply.status, 414, "{}…", &target[..12]);
        assert_eq!(reply.error().unwrap(), "request target too long");
    }
    let huge = format!("/ws/{}", "a".repeat(100 * 1024));
    let reply = raw::get(gw.addr, &huge, upgrade).await.unwrap();
    assert_eq!(reply.status, 400, "{}", reply.head);
    assert!(reply.body.is_empty());
    bystander.still_served(2, "overlong paths").await.unwrap();

    // Malformed cursors: 400 with the same JSON error on every protocol, before any upgrade.
    let cursor_error = |raw: &str| {
        format!("invalid resume cursor {raw:?}: expected the decimal sequence of the last event received")
    };
    for (query, value) in [
        ("abc", "abc"),
        ("-1", "-1"),
        ("99999999999999999999999", "99999999999999999999999"),
        ("18446744073709551616", "18446744073709551616"),
        ("1.5", "1.5"),
        ("0x10", "0x10"),
        ("1e3", "1e3"),
        ("%2B1", "+1"),
        ("1%00", "1\0"),
    ] {
        for path in [
            format!("/ws/crash?since={query}"),
            format!("/ws/type/multiplier?since={query}"),
        ] {
            let refused = WsClient::refused(gw.addr, &path).await.unwrap();
            assert_eq!(refused.status, 400, "{path}");
            assert_eq!(
                refused.json().unwrap()["error"],
                cursor_error(value),
                "{path}"
            );
        }
        let path = format!("/sse/crash?last_event_id={query}");
        let refused = SseClient::open(&gw, &path, None).await.unwrap();
        assert_eq!(refused.status, 400, "{path}");
        let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], cursor_error(value), "{path}");
    }
    for header in ["x", "abc", "-1", "99999999999999999999999", "7 8"] {
        let refused = SseClient::open(&gw, "/sse/crash", Some(header))
            .await
            .unwrap();
        assert_eq!(refused.status, 400, "Last-Event-ID: {header}");
        let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
        assert_eq!(
            body["error"],
            cursor_error(header),
            "Last-Event-ID: {header}"
        );
    }
    bystander.still_served(2, "bogus cursors").await.unwrap();

    // WebTransport: the same cursor rules and no traversal (gateway_wt.rs has the simple
    // refusals). The url crate resolves `..` and `%2e%2e` segments before sending, as browsers
    // do, so only encoded slashes reach the gateway as they are.
    let hash = CertHash::fetch(&gw).await.unwrap().bytes;
    for (path, status) in [
        ("/wt/crash?since=99999999999999999999999", 400),
        ("/wt/crash?since=18446744073709551616", 400),
        ("/wt/crash?since=%2B1", 400),
        ("/wt/..%2f..%2fetc%2fpasswd", 404),
        ("/wt/type/..%2f..%2fetc%2fpasswd", 404),
        ("/wt/crash%2f..%2f..%2fetc%2fpasswd", 404),
    ] {
        match WtClient::open(wt_port, path, &hash).await.unwrap() {
            Ok(_) => panic!("{path} was accepted"),
            Err(refused) => assert_eq!(refused.status, status, "{path}"),
        }
    }
    bystander
        .still_served(2, "WebTransport refusals")
        .await
        .unwrap();
}

const SECRET: &str = "hostile-test-token-secret-of-32-bytes-or-more";
const KEY: &str = "sk_live_hostile_test_key_0123456789abcdef";

/// A token in the gateway's format signed with `secret`.
fn token_signed_with(secret: &str, claims: &serde_json::Value) -> String {
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key size");
    mac.update(payload.as_bytes());
    format!(
        "{payload}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// With `AUTH=required`, malformed, oversized, unsigned and wrongly signed tokens and keys are
/// refused with 401 and a JSON error before any upgrade, on WebSocket (sub-protocol and
/// `?token=`), WebTransport, SSE and the token endpoint; the bystander holds a real token.
/// (tests/auth.rs covers the ordinary cases: missing, forged, expired, revoked, out of scope.)
#[tokio::test]
async fn bogus_tokens_and_keys_get_401_json() {
    let (nats, feed) = nats_and_feed().await.unwrap();
    feed.put_seeded_games().await.unwrap();
    let keys = shared::nats::ensure_kv_bucket(&feed.js, shared::subject::API_KEYS_BUCKET, 1)
        .await
        .unwrap();
    let record = ApiKeyRecord {
        id: 1,
        name: "bystander".into(),
        key_hash: shared::hash_api_key(KEY),
        scopes: Vec::new(),
        revoked: false,
        max_connections: None,
    };
    keys.put("1", serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
    let (gw, wt_port) = wt::start_gateway(
        &nats.url(),
        &[("AUTH", "required".into()), ("TOKEN_SECRET", SECRET.into())],
    )
    .await
    .unwrap();
    let token = testkit::wait_until(T, "a token for the bystander's key", || async {
        let response = reqwest::Client::new()
            .post(gw.url("/api/auth/token"))
            .header("x-api-key", KEY)
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        body["token"].as_str().map(str::to_owned)
    })
    .await
    .unwrap();
    let with = |token: &str| WsOptions {
        protocol: Some(token.to_owned()),
        ..WsOptions::default()
    };
    let mut bystander = Bystander::connect(&feed, &gw, &with(&token)).await.unwrap();

    let far = 4_000_000_000u64;
    let claims = serde_json::json!({"kid": 1, "exp": far, "scp": []});
    let unsigned = format!("{}.", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let other_secret = token_signed_with("another-secret-that-is-32-bytes-long!!", &claims);
    let (payload, _) = token.split_once('.').unwrap();
    let spliced = format!("{payload}.{}", other_secret.split_once('.').unwrap().1);
    let huge = format!("{}.{}", "a".repeat(6000), "b".repeat(100));
    let header_tokens: Vec<(&str, String, &str)> = vec![
        ("a bare word", "token".into(), "malformed token"),
        ("a lone dot", ".".into(), "invalid token signature"),
        ("three parts", "a.b.c".into(), "malformed token"),
        ("6 KiB", huge.clone(), "malformed token"),
        (
            "unsigned claims",
            unsigned.clone(),
            "invalid token signature",
        ),
        (
            "another secret",
            other_secret.clone(),
            "invalid token signature",
        ),
        (
            "a spliced signature",
            spliced.clone(),
            "invalid token signature",
        ),
        (
            "a JWT with alg none",
            "eyJhbGciOiJub25lIn0.eyJraWQiOjF9.".into(),
            "malformed token",
        ),
    ];
    for (what, token, error) in &header_tokens {
        let refused = WsClient::refused_with(gw.addr, "/ws/crash", &with(token))
            .await
            .unwrap();
        assert_eq!(refused.status, 401, "sub-protocol, {what}");
        assert_eq!(
            refused.json().unwrap()["error"],
            *error,
            "sub-protocol, {what}"
        );
    }
    bystander
        .still_served(2, "bogus sub-protocol tokens")
        .await
        .unwrap();

    // In the query, where anything can be percent-encoded.
    let query_tokens: Vec<(&str, String, &str)> = vec![
        ("NUL bytes", "%00.%00".into(), "malformed token"),
        (
            "non-ASCII",
            "%C3%A9t%C3%A9.%C3%A9".into(),
            "malformed token",
        ),
        ("invalid UTF-8", "%FF%FE.%FF".into(), "malformed token"),
        (
            "unsigned claims",
            unsigned.clone(),
            "invalid token signature",
        ),
        (
            "another secret",
            other_secret.clone(),
            "invalid token signature",
        ),
    ];
    let hash = CertHash::fetch(&gw).await.unwrap().bytes;
    for (what, token, error) in &query_tokens {
        let path = format!("/ws/crash?token={token}");
        let refused = WsClient::refused(gw.addr, &path).await.unwrap();
        assert_eq!(refused.status, 401, "?token=, {what}");
        assert_eq!(refused.json().unwrap()["error"], *error, "?token=, {what}");
        let path = format!("/wt/crash?token={token}");
        match WtClient::open(wt_port, &path, &hash).await.unwrap() {
            Ok(_) => panic!("WebTransport with {what} was accepted"),
            Err(refused) => assert_eq!(refused.status, 401, "WebTransport ?token=, {what}"),
        }
    }
    bystander
        .still_served(2, "bogus query tokens")
        .await
        .unwrap();

    // Keys: SSE (query and header) and the token endpoint.
    let bad_keys = [
        "sk_live_nope".to_owned(),
        "k".repeat(1500),
        "%00".to_owned(),
        KEY.to_uppercase(),
    ];
    for key in &bad_keys {
        let reply = gw.get(&format!("/sse/crash?api_key={key}")).await.unwrap();
        assert_eq!(reply.status, 401, "?api_key={}", &key[..key.len().min(20)]);
        assert_eq!(reply.json().unwrap()["error"], "invalid API key");
        let response = reqwest::Client::new()
            .post(gw.url("/api/auth/token"))
            .header("x-api-key", key.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            401,
            "X-API-Key {}",
            &key[..key.len().min(20)]
        );
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"], "invalid API key");
    }
    bystander.still_served(2, "bogus API keys").await.unwrap();
}
