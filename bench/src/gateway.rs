//! The gateway harnesses' set-up: NATS fed the way cdc-consumer feeds it (the ROUNDS stream,
//! the `games` bucket with the seeded games, MessagePack rounds on `rounds.<type>.<slug>` with
//! `Nats-Msg-Id`), a release `edge-gateway` process or nats-server's WebSocket listener as the
//! peer, the options the load harnesses share, and the machine's state to report next to the
//! figures.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_nats::jetstream;
use shared::nats::RoundsStream;
use shared::subject::{DEFAULT_STREAM, GAMES_BUCKET};
use shared::{Game, Round};
use testkit::{seeded_games, Nats, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Creates the ROUNDS stream and the `games` bucket as cdc-consumer does, puts the seeded games
/// and one round of each (so every topic has a latest), and returns a JetStream context.
pub async fn feed_nats(nats_url: &str) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client);
    let stream = RoundsStream {
        name: DEFAULT_STREAM.to_owned(),
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(120),
        replicas: 1,
    };
    js.get_or_create_stream(stream.config()).await?;
    let kv = shared::nats::ensure_kv_bucket(&js, GAMES_BUCKET, 1).await?;
    for (i, game) in seeded_games().iter().enumerate() {
        kv.put(&game.slug, serde_json::to_vec(game)?.into()).await?;
        let seed = round(-(i as i64) - 1, game);
        publish(&js, &seed).await?.await?;
    }
    Ok(js)
}

/// A finished round of `game` as cdc-consumer publishes it (typical size: 190 bytes of JSON).
pub fn round(round_id: i64, game: &Game) -> Round {
    Round {
        round_id,
        game_id: game.id,
        game_slug: game.slug.clone(),
        game_type: game.game_type.clone(),
        finished_at: "2026-01-17T00:45:42.735266-03:00".to_owned(),
        extras: r#"{"point": "11.72"}"#.to_owned(),
        timestamp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        seq: 0,
    }
}

/// Publishes `round` to the stream with its message id; returns the ack to await.
pub async fn publish(
    js: &jetstream::Context,
    round: &Round,
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        shared::subject::MSG_ID_HEADER,
        shared::subject::round_msg_id(round.round_id).as_str(),
    );
    let subject = shared::subject::round_subject(&round.game_type, &round.game_slug);
    Ok(js
        .publish_with_headers(subject, headers, round.to_msgpack()?.into())
        .await?)
}

/// A release `edge-gateway` on a free loopback port.
pub struct Gateway {
    pub service: Service,
    pub addr: SocketAddr,
}

impl Gateway {
    /// Starts the gateway on `nats_url` with `HTTP_WORKERS=workers`, logging at `warn`, with
    /// `AUTH=off` (a token costs the handshake only, not the fan-out) and no per-IP connection
    /// cap (every client is 127.0.0.x), plus `env`; waits until `/ready` answers 200.
    pub async fn start(
        nats_url: &str,
        workers: usize,
        env: &[(String, String)],
    ) -> anyhow::Result<Gateway> {
        let addr: SocketAddr = format!("127.0.0.1:{}", testkit::free_port()?).parse()?;
        let mut all: Vec<(&str, String)> = vec![
            ("HTTP_ADDR", addr.to_string()),
            ("NATS_URL", nats_url.to_owned()),
            ("HTTP_WORKERS", workers.to_string()),
            ("RUST_LOG", "warn".to_owned()),
            ("AUTH", "off".to_owned()),
            ("MAX_CONNECTIONS_PER_IP", "0".to_owned()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let service = Service::start("edge-gateway", &[], &all)?;
        testkit::wait_until(Duration::from_secs(30), "the gateway to be ready", || {
            http_status(addr, "/ready")
        })
        .await
        .with_context(|| service.log_tail())?;
        Ok(Gateway { service, addr })
    }

    pub fn pid(&self) -> u32 {
        self.service.pid().unwrap_or_default()
    }
}

/// The options of the harnesses that load one server with idle or fanned-out clients
/// (`gateway-fanout`, `gateway-memory`): the load generator's and the gateway's.
#[derive(Debug, clap::Args)]
#[command(about = None, long_about = None)]
pub struct LoadOptions {
    /// Load generator threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The gateway's HTTP_WORKERS.
    #[arg(long, default_value_t = 2)]
    pub http_workers: usize,
    /// Local addresses 127.0.0.1..=127.0.0.N to spread the clients over (for more connections
    /// than one address has ephemeral ports).
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Extra environment for the gateway, `KEY=VALUE` (repeatable), e.g. `MALLOC_ARENA_MAX=2`.
    #[arg(long = "gateway-env", value_parser = key_value)]
    pub gateway_env: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl LoadOptions {
    /// The local address client `i` connects from: the default with one source address, else
    /// 127.0.0.1..=127.0.0.N in turn.
    pub fn source(&self, i: usize) -> Option<IpAddr> {
        (self.source_ips > 1).then(|| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % self.source_ips as usize) as u8,
            ))
        })
    }

    /// A fresh nats-server fed by [`feed_nats`], and a gateway on it with these options.
    pub async fn fed_gateway(&self) -> anyhow::Result<(Nats, jetstream::Context, Gateway)> {
        let nats = Nats::start().await?;
        let js = feed_nats(&nats.url()).await?;
        let gateway = Gateway::start(&nats.url(), self.http_workers, &self.gateway_env).await?;
        Ok((nats, js, gateway))
    }
}

/// The peer: a fresh nats-server with its WebSocket listener; also the listener's address and
/// the server's pid.
pub async fn nats_websocket() -> anyhow::Result<(Nats, SocketAddr, u32)> {
    let nats = Nats::start_with_websocket().await?;
    let url = nats.websocket_url().context("no WebSocket listener")?;
    let addr: SocketAddr = url.trim_start_matches("ws://").parse()?;
    let pid = nats.pid().context("nats-server pid")?;
    Ok((nats, addr, pid))
}

/// `Some(())` when `GET path` answers 200.
async fn http_status(addr: SocketAddr, path: &str) -> Option<()> {
    let mut socket = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut reply = Vec::new();
    socket.read_to_end(&mut reply).await.ok()?;
    reply.starts_with(b"HTTP/1.1 200").then_some(())
}

/// `load average 1.23 0.98 0.80, 2 compilers running`: the machine's state, for the report
/// (numbers on a shared 2-core machine are noisy while others build).
pub fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let compilers = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|entry| std::fs::read_to_string(entry.path().join("comm")).ok())
                .filter(|comm| matches!(comm.trim(), "rustc" | "cc1" | "ld" | "cc" | "rust-lld"))
                .count()
        })
        .unwrap_or(0);
    format!(
        "load average {}, {compilers} compilers running",
        load.join(" ")
    )
}
