//! Authentication end to end: keys made with `cdc-consumer keys`, carried by the pipeline to
//! every gateway, used the way the published client samples use them; refusals before any
//! upgrade; revocation reaching open connections on three gateways; limits; and no secret in
//! any log.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use e2e::clients::{Gateway, SseClient, WsClient, WsEvent, WsOptions};
use e2e::pipeline::{write_rounds, Pipeline};
use e2e::wt::{self, CertHash, WtClient};
use hmac::{Hmac, Mac};
use testkit::{wait_until, Service};

const SECRET: &str = "test-token-secret-of-at-least-32-bytes";
const DEADLINE: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(10);

fn auth_env() -> Vec<(&'static str, String)> {
    vec![
        ("AUTH", "required".into()),
        ("TOKEN_SECRET", SECRET.into()),
        ("RUST_LOG", "debug".into()),
    ]
}

/// Runs `cdc-consumer keys <args>` and returns its output.
async fn keys(p: &Pipeline, args: &[&str]) -> String {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    let mut cli = Service::start("cdc-consumer", &all, &p.consumer_env(&[])).unwrap();
    let status = cli.wait_exit(DEADLINE).await.unwrap();
    assert!(status.success(), "keys {args:?}: {}", cli.log());
    cli.log()
}

/// Creates a key and returns `(id, key)`.
async fn create_key(p: &Pipeline, args: &[&str]) -> (i64, String) {
    let out = keys(p, &[&["create", "--name", "partner"], args].concat()).await;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name:?} in {out}"))
    };
    (field("id ").parse().unwrap(), field("key "))
}

/// POST /api/auth/token with `X-API-Key`, as the samples do: `(status, body)`.
async fn token_request(
    gw: &Gateway,
    key: Option<&str>,
) -> (u16, serde_json::Value, Option<String>) {
    let mut request = reqwest::Client::new().post(gw.url("/api/auth/token"));
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(serde_json::Value::Null);
    (status, body, retry_after)
}

/// A token for `key`, once the gateway knows the key (it arrives through the pipeline).
async fn token(gw: &Gateway, key: &str) -> String {
    wait_until(DEADLINE, "the gateway to know the key", || async {
        let (status, body, _) = token_request(gw, Some(key)).await;
        if status != 200 {
            return None;
        }
        assert_eq!(body["expires_in"], 30);
        body["token"].as_str().map(str::to_owned)
    })
    .await
    .unwrap()
}

fn with_token(token: &str) -> WsOptions {
    WsOptions {
        protocol: Some(token.to_owned()),
        ..WsOptions::default()
    }
}

/// A token signed with the gateways' secret, as an attacker who knew it could: to make
/// tokens that are valid but expired.
fn signed(claims: serde_json::Value) -> String {
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    format!(
        "{payload}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The published flows, through the whole pipeline: rounds committed to PostgreSQL reach a
/// WebSocket client holding a token and SSE clients holding the key (header and query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_flows_work_with_a_key_and_nothing_leaks_into_logs() {
    let p = Pipeline::start().await.unwrap();
    let mut consumer = p
        .start_streaming_consumer(&[("RUST_LOG", "debug")])
        .await
        .unwrap();
    let (gw, wt_port) = wt::start_gateway(&p.nats.url(), &auth_env()).await.unwrap();
    let (_, key) = create_key(&p, &[]).await;
    write_rounds(p.pg.url(), vec![1]).await.unwrap();

    let token = token(&gw, &key).await;
    let hash = CertHash::fetch(&gw).await.unwrap();
    let mut session = WtClient::connect(wt_port, &format!("/wt/crash?token={token}"), &hash.bytes)
        .await
        .unwrap();
    let mut ws = WsClient::connect_with(gw.addr, "/ws/crash", &with_token(&token))
        .await
        .unwrap();
    let echoed = ws
        .response_headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    assert_eq!(echoed, Some(token.as_str()), "the token is echoed");
    let mut by_query =
        SseClient::connect(&gw, &format!("/sse/type/multiplier?api_key={key}"), None)
            .await
            .unwrap();
    let by_header = reqwest::Client::new()
        .get(gw.url("/sse/crash"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status().as_u16(), 200);
    assert_eq!(by_header.headers()["content-type"], "text/event-stream");

    let latest = ws.round(STEP).await.unwrap();
    assert_eq!(latest["round_id"], 1);
    assert_eq!(session.round(STEP).await.unwrap()["round_id"], 1);
    assert_eq!(by_query.event(STEP).await.unwrap().event, "initial");
    // Games cycle from crash (game 1): rounds 2 and 17 of this batch are crash rounds.
    write_rounds(p.pg.url(), vec![16]).await.unwrap();
    let live: Vec<_> = ws
        .rounds(2, STEP)
        .await
        .unwrap()
        .iter()
        .map(|r| r["round_id"].as_i64())
        .collect();
    assert_eq!(live, [Some(2), Some(17)]);
    let live: Vec<_> = session
        .rounds(2, STEP)
        .await
        .unwrap()
        .iter()
        .map(|r| r["round_id"].as_i64())
        .collect();
    assert_eq!(live, [Some(2), Some(17)], "WebTransport with ?token=");
    let message = by_query.event(STEP).await.unwrap();
    assert_eq!(message.event, "message");
    assert_eq!(message.json().unwrap()["round_id"], 2);

    // No key and no token in any log line, even at debug level.
    drop(ws);
    session.close();
    consumer.kill().unwrap();
    for (who, log) in [("gateway", gw.service.log()), ("consumer", consumer.log())] {
        assert!(!log.is_empty());
        assert!(!log.contains(&key), "the API key is in the {who} log");
        assert!(!log.contains(&token), "the token is in the {who} log");
        assert!(
            !log.contains(token.split('.').nth(1).unwrap()),
            "a token signature is in the {who} log"
        );
        assert!(
            !log.contains(SECRET),
            "the token secret is in the {who} log"
        );
    }
}

/// Missing, unknown, forged and expired credentials get 401, a key out of its scope 403, all
/// before any upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_before_the_upgrade() {
    let p = Pipeline::start().await.unwrap();
    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let (gw, wt_port) = wt::start_gateway(&p.nats.url(), &auth_env()).await.unwrap();
    let (scoped_id, scoped) =
        create_key(&p, &["--scope", "game:crash", "--scope", "type:color"]).await;
    let scoped_token = token(&gw, &scoped).await;

    let (status, body, _) = token_request(&gw, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("credentials required"))
    );
    let (status, _, _) = token_request(
        &gw,
        Some("sk_live_0000000000000000000000000000000000000000"),
    )
    .await;
    assert_eq!(status, 401);

    let forged = {
        let (payload, signature) = scoped_token.split_once('.').unwrap();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["scp"] = serde_json::json!([]);
        format!("{}.{signature}", URL_SAFE_NO_PAD.encode(claims.to_string()))
    };
    let expired = signed(serde_json::json!({"kid": scoped_id, "exp": unix_now() - 1, "scp": []}));
    let unknown_key = signed(serde_json::json!({"kid": 999, "exp": unix_now() + 30, "scp": []}));
    for (what, options, expected) in [
        ("no token", WsOptions::default(), "credentials required"),
        ("garbage", with_token("not-a-token"), "malformed token"),
        ("forged", with_token(&forged), "invalid token signature"),
        ("expired", with_token(&expired), "token expired"),
        ("unknown key", with_token(&unknown_key), "API key revoked"),
    ] {
        let refused = WsClient::refused_with(gw.addr, "/ws/crash", &options)
            .await
            .unwrap();
        assert_eq!(refused.status, 401, "{what}");
        assert_eq!(refused.json().unwrap()["error"], expected, "{what}");
    }
    let hash = CertHash::fetch(&gw).await.unwrap().bytes;
    let wt_status = |path: String| {
        let hash = hash.clone();
        async move {
            match WtClient::open(wt_port, &path, &hash).await.unwrap() {
                Ok(session) => {
                    session.close();
                    200
                }
                Err(refused) => refused.status,
            }
        }
    };
    for (what, query, status) in [
        ("no token", String::new(), 401),
        ("garbage", "?token=not-a-token".to_owned(), 401),
        ("forged", format!("?token={forged}"), 401),
        ("expired", format!("?token={expired}"), 401),
        ("unknown key", format!("?token={unknown_key}"), 401),
        ("in scope", format!("?token={scoped_token}"), 200),
    ] {
        assert_eq!(
            wt_status(format!("/wt/crash{query}")).await,
            status,
            "WebTransport, {what}"
        );
    }
    assert_eq!(
        wt_status(format!("/wt/slot?token={scoped_token}")).await,
        403,
        "WebTransport, a game outside the scopes"
    );
    let ws = WsClient::refused_with(gw.addr, "/ws/slot", &with_token(&scoped_token))
        .await
        .unwrap();
    assert_eq!(ws.status, 403, "a game outside the scopes");
    let ws = WsClient::refused_with(gw.addr, "/ws/type/multiplier", &with_token(&scoped_token))
        .await
        .unwrap();
    assert_eq!(ws.status, 403, "the type of a game scope is not in scope");
    assert!(
        WsClient::connect_with(gw.addr, "/ws/double", &with_token(&scoped_token))
            .await
            .is_ok(),
        "type:color opens double"
    );

    for (path, status) in [
        ("/sse/crash".to_owned(), 401),
        ("/sse/crash?api_key=sk_live_nope".to_owned(), 401),
        (format!("/sse/dice?api_key={scoped}"), 403),
        (format!("/sse/crash?api_key={scoped}"), 200),
    ] {
        let sse = SseClient::open(&gw, &path, None).await.unwrap();
        assert_eq!(sse.status, status, "{path}");
    }
    // Unknown games stay 404 whoever asks.
    assert_eq!(
        WsClient::refused_with(gw.addr, "/ws/nope", &with_token(&scoped_token))
            .await
            .unwrap()
            .status,
        404
    );
}

/// A revoked key stops working on three gateways within 2 s: new tokens, new connections, and
/// its open connections (WebSocket and WebTransport close 4001, SSE stream end). Other keys are
/// untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_open_connections_on_three_gateways_within_two_seconds() {
    let p = Pipeline::start().await.unwrap();
    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let mut gateways = Vec::new();
    let mut wt_ports = Vec::new();
    for _ in 0..3 {
        let (gw, port) = wt::start_gateway(&p.nats.url(), &auth_env()).await.unwrap();
        gateways.push(gw);
        wt_ports.push(port);
    }
    let (id, key) = create_key(&p, &[]).await;
    let (_, other) = create_key(&p, &[]).await;
    write_rounds(p.pg.url(), vec![1]).await.unwrap();
    let mut sockets = Vec::new();
    let mut streams = Vec::new();
    let mut sessions = Vec::new();
    let mut bystanders = Vec::new();
    for (gw, port) in gateways.iter().zip(&wt_ports) {
        let hash = CertHash::fetch(gw).await.unwrap().bytes;
        let path = format!("/wt/crash?token={}", token(gw, &key).await);
        let mut session = WtClient::connect(*port, &path, &hash).await.unwrap();
        assert_eq!(session.round(STEP).await.unwrap()["round_id"], 1);
        sessions.push(session);
        let mut ws =
            WsClient::connect_with(gw.addr, "/ws/crash", &with_token(&token(gw, &key).await))
                .await
                .unwrap();
        assert_eq!(ws.round(STEP).await.unwrap()["round_id"], 1);
        sockets.push(ws);
        let mut sse = SseClient::connect(gw, &format!("/sse/crash?api_key={key}"), None)
            .await
            .unwrap();
        assert_eq!(sse.event(STEP).await.unwrap().event, "initial");
        streams.push(sse);
        let mut bystander =
            WsClient::connect_with(gw.addr, "/ws/crash", &with_token(&token(gw, &other).await))
                .await
                .unwrap();
        bystander.round(STEP).await.unwrap();
        bystanders.push(bystander);
    }

    // From before the command runs: its commit, the consumer, KV and the gateways all count.
    let revoked = Instant::now();
    keys(&p, &["revoke", &id.to_string()]).await;
    for (gw, ws) in gateways.iter().zip(&mut sockets) {
        let left = Duration::from_secs(2).saturating_sub(revoked.elapsed());
        assert_eq!(
            ws.next(left).await.unwrap(),
            WsEvent::Close(4001, "API key revoked".into()),
            "gateway {}",
            gw.addr
        );
    }
    for sse in &mut streams {
        let left = Duration::from_secs(2).saturating_sub(revoked.elapsed());
        assert!(
            sse.until_end(left).await.unwrap().is_empty(),
            "SSE stream should end without events"
        );
    }
    for session in &sessions {
        let left = Duration::from_secs(2).saturating_sub(revoked.elapsed());
        assert_eq!(
            session.closed(left).await.unwrap(),
            (4001, "API key revoked".to_owned()),
            "WebTransport session"
        );
    }
    println!(
        "three gateways closed the revoked key's connections {:?} after the revocation",
        revoked.elapsed()
    );
    for gw in &gateways {
        assert_eq!(token_request(gw, Some(&key)).await.0, 401);
        assert_eq!(
            SseClient::open(gw, &format!("/sse/crash?api_key={key}"), None)
                .await
                .unwrap()
                .status,
            401
        );
    }
    write_rounds(p.pg.url(), vec![15]).await.unwrap();
    for bystander in &mut bystanders {
        assert_eq!(
            bystander.round(STEP).await.unwrap()["round_id"],
            2,
            "another key's connection keeps its rounds"
        );
    }
}

/// Token issuing is rate limited (429 with Retry-After); connections are capped per key (the
/// key's own cap) and per address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_429() {
    let p = Pipeline::start().await.unwrap();
    let _consumer = p.start_streaming_consumer(&[]).await.unwrap();
    let mut env = auth_env();
    env.extend([
        ("TOKEN_RATE_PER_KEY", "1".to_owned()),
        ("MAX_CONNECTIONS_PER_IP", "3".to_owned()),
    ]);
    let gw = Gateway::start(&p.nats.url(), &env).await.unwrap();
    let (_, capped) = create_key(&p, &["--max-connections", "2"]).await;
    let (_, other) = create_key(&p, &[]).await;

    // A burst of four seconds' worth (4 tokens at 1/s), then 429.
    let first = token(&gw, &capped).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(token_request(&gw, Some(&capped)).await);
    }
    let (status, body, retry_after) = statuses.pop().unwrap();
    assert_eq!(
        statuses.iter().map(|s| s.0).collect::<Vec<_>>(),
        [200, 200, 200]
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too many token requests"))
    );
    assert_eq!(retry_after.as_deref(), Some("1"));

    let _a = WsClient::connect_with(gw.addr, "/ws/crash", &with_token(&first))
        .await
        .unwrap();
    let _b = WsClient::connect_with(gw.addr, "/ws/dice", &with_token(&first))
        .await
        .unwrap();
    let third = WsClient::refused_with(gw.addr, "/ws/crash", &with_token(&first))
        .await
        .unwrap();
    assert_eq!(
        (third.status, third.json().unwrap()["error"].as_str()),
        (429, Some("too many connections for this key"))
    );
    let other_token = token(&gw, &other).await;
    let _c = WsClient::connect_with(gw.addr, "/ws/crash", &with_token(&other_token))
        .await
        .unwrap();
    let fourth = WsClient::refused_with(gw.addr, "/ws/crash", &with_token(&other_token))
        .await
        .unwrap();
    assert_eq!(
        (fourth.status, fourth.json().unwrap()["error"].as_str()),
        (429, Some("too many connections from this address"))
    );
    drop(_a);
    wait_until(
        DEADLINE,
        "the closed connection's place to be free",
        || async {
            WsClient::connect_with(gw.addr, "/ws/crash", &with_token(&other_token))
                .await
                .ok()
        },
    )
    .await
    .unwrap();
}

/// `AUTH=required` (the default) needs TOKEN_SECRET; `AUTH=off` says loudly that it is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_settings_are_checked_at_start() {
    for (env, needle) in [
        (vec![], "TOKEN_SECRET"),
        (vec![("TOKEN_SECRET", "short".to_owned())], "TOKEN_SECRET"),
    ] {
        let mut gw = Service::start("edge-gateway", &[], &env).unwrap();
        let out = gw.refusal_line(Duration::from_secs(10)).await.unwrap();
        assert!(out.contains(needle) && !out.contains("short"), "{out}");
    }
    let nats = testkit::Nats::start().await.unwrap();
    let gw = Gateway::spawn(&nats.url(), &[("AUTH", "off".to_owned())]).unwrap();
    gw.service
        .wait_for_log("AUTH=off: anyone can subscribe", STEP)
        .await
        .unwrap();
}
