//! Commit → client latency over WebTransport datagrams, beside WebSocket in the same run, through
//! the full pipeline: PostgreSQL → release cdc-consumer → NATS (ROUNDS) → release edge-gateway →
//! clients.
//!
//! `--wt` WebTransport sessions (web-transport-quinn's client, accepting the gateway's
//! self-signed certificate by the hash `/api/wt/cert-hash` gives) and `--ws` WebSocket clients
//! (tokio-tungstenite), all tasks of this process on one Tokio runtime, follow the 15 seeded
//! games spread evenly (`/wt/<game>`, `/ws/<game>`), or all one game with `--game`. A writer
//! inserts finished rounds at `--rate` per second, one single-row transaction each, cycling
//! through the games. Latency runs from the round's commit (and, as an upper bound, from the
//! instant the INSERT was sent) to the instant a client task got the round (these clients have
//! no kernel receive timestamps: their figures include this process's own scheduling).
//! A delivery often arrives before the writer sees its INSERT return, so sends and arrivals are
//! matched by round id at the end. The first `--warmup-secs` are not counted.
//!
//! Reported per path (datagram, the session's stream, WebSocket): deliveries, p50/p90/p99/max;
//! the datagram row also tells how many datagrams were lost. A NATS subscriber on `rounds.>`
//! times the consumer's half, so the gateway's share can be told apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::commit_latency::{print_header, NatsArrivals, Pace, Pipeline};
use bench::gateway::machine_load;
use bench::loadgen::Stamp;
use clap::Parser;
use futures_util::StreamExt;
use testkit::seeded_games;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(mut_arg("seconds", |seconds| seconds.default_value("20")))]
struct Args {
    /// WebTransport sessions.
    #[arg(long, default_value_t = 100)]
    wt: usize,
    /// WebSocket clients.
    #[arg(long, default_value_t = 100)]
    ws: usize,
    #[command(flatten)]
    pace: Pace,
    /// Every client on this game, every round for it (the largest fan-out per round).
    #[arg(long)]
    game: Option<String>,
    /// The gateway's HTTP_WORKERS.
    #[arg(long, default_value_t = 2)]
    http_workers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Path {
    Datagram,
    Stream,
    WebSocket,
}

/// One client's arrivals: (path, round id, when).
type Arrivals = Arc<Mutex<Vec<(Path, i64, Stamp)>>>;

#[derive(serde::Deserialize)]
struct RoundId {
    round_id: i64,
}

fn round_id(json: &[u8]) -> Option<i64> {
    serde_json::from_slice::<RoundId>(json)
        .ok()
        .map(|r| r.round_id)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let games: Vec<shared::Game> = match &args.game {
        Some(slug) => seeded_games()
            .into_iter()
            .filter(|g| &g.slug == slug)
            .collect(),
        None => seeded_games(),
    };
    anyhow::ensure!(!games.is_empty(), "no seeded game {:?}", args.game);
    let wt_port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let wt_addr = ("WT_ADDR".to_owned(), format!("127.0.0.1:{wt_port}"));
    let pipeline = Pipeline::start(args.http_workers, &[wt_addr]).await?;
    let gateway = &pipeline.gateway;
    let hash = cert_hash(gateway.addr).await?;

    // Clients, spread evenly over the games.
    let client =
        web_transport_quinn::ClientBuilder::new().with_server_certificate_hashes(vec![hash])?;
    let mut arrivals: Vec<Arrivals> = Vec::new();
    let mut followers: HashMap<(bool, i64), u64> = HashMap::new();
    let mut tasks = Vec::new();
    for i in 0..args.wt {
        let game = &games[i % games.len()];
        let url: url::Url = format!("https://127.0.0.1:{wt_port}/wt/{}", game.slug).parse()?;
        let session = client.connect(url).await?;
        let sink = Arrivals::default();
        tasks.push(tokio::spawn(read_datagrams(
            session.clone(),
            Arc::clone(&sink),
        )));
        tasks.push(tokio::spawn(read_stream(session, Arc::clone(&sink))));
        arrivals.push(sink);
        *followers.entry((true, game.id)).or_default() += 1;
    }
    for i in 0..args.ws {
        let game = &games[i % games.len()];
        let url = format!("ws://{}/ws/{}", gateway.addr, game.slug);
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        let sink = Arrivals::default();
        tasks.push(tokio::spawn(read_ws(socket, Arc::clone(&sink))));
        arrivals.push(sink);
        *followers.entry((false, game.id)).or_default() += 1;
    }

    let at_nats = NatsArrivals::start(&pipeline.nats.url()).await?;
    let who = format!(
        "{} WebTransport sessions + {} WebSocket clients on {} game(s)",
        args.wt,
        args.ws,
        games.len()
    );
    let written = pipeline.write_rounds(&games, args.pace, &who).await?;

    // Every stream and WebSocket delivery is reliable: wait for all of them (datagrams may be
    // lost), up to 10 s.
    let want = |wt: bool| written.deliveries_due(|game| *followers.get(&(wt, game)).unwrap_or(&0));
    let (want_wt, want_ws) = (want(true), want(false));
    let reliable = || -> u64 {
        arrivals
            .iter()
            .map(|a| {
                a.lock()
                    .unwrap()
                    .iter()
                    .filter(|(path, id, _)| {
                        *path != Path::Datagram && written.sent.contains_key(id)
                    })
                    .count() as u64
            })
            .sum()
    };
    let drain = Instant::now();
    while reliable() < want_wt + want_ws && drain.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in &tasks {
        task.abort();
    }
    let at_nats = at_nats.stop();

    let mut tally = written.tally(
        arrivals
            .iter()
            .flat_map(|sink| std::mem::take(&mut *sink.lock().unwrap())),
    );
    print_header();
    for (name, path, want) in [
        ("WebTransport datagram", Path::Datagram, want_wt),
        ("WebTransport stream", Path::Stream, want_wt),
        ("WebSocket", Path::WebSocket, want_ws),
    ] {
        tally.print_row(name, path, want);
    }
    written.print_nats_rows(&at_nats);
    let metrics = http_get(gateway.addr, "/metrics").await.unwrap_or_default();
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    println!(
        "\ngateway: datagrams sent {}, dropped {}; {}; {}",
        metric("datastream_gateway_wt_datagrams_sent_total"),
        metric("datastream_gateway_wt_datagrams_dropped_total"),
        written.pipeline_cpu(),
        machine_load()
    );
    Ok(())
}

async fn read_datagrams(session: web_transport_quinn::Session, sink: Arrivals) {
    while let Ok(datagram) = session.read_datagram().await {
        let at = Stamp::now();
        if let Some(id) = round_id(&datagram) {
            sink.lock().unwrap().push((Path::Datagram, id, at));
        }
    }
}

async fn read_stream(session: web_transport_quinn::Session, sink: Arrivals) {
    let Ok(mut stream) = session.accept_uni().await else {
        return;
    };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while let Ok(Some(n)) = stream.read(&mut chunk).await {
        let at = Stamp::now();
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            if let Some(id) = round_id(&buf[..end]) {
                sink.lock().unwrap().push((Path::Stream, id, at));
            }
            buf.drain(..=end);
        }
    }
}

async fn read_ws(
    mut socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    sink: Arrivals,
) {
    while let Some(Ok(message)) = socket.next().await {
        let at = Stamp::now();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            if let Some(id) = round_id(text.as_bytes()) {
                sink.lock().unwrap().push((Path::WebSocket, id, at));
            }
        }
    }
}

/// The certificate hash a browser would pass as `serverCertificateHashes`.
async fn cert_hash(addr: std::net::SocketAddr) -> anyhow::Result<Vec<u8>> {
    let body = http_get(addr, "/api/wt/cert-hash").await?;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    json["bytes"]
        .as_array()
        .and_then(|bytes| {
            bytes
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect()
        })
        .ok_or_else(|| anyhow::anyhow!("no hash in {body}"))
}

/// The body of `GET path` (HTTP/1.0, so the server closes after it).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    socket.read_to_end(&mut reply).await?;
    let reply = String::from_utf8(reply)?;
    let (_, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP body for {path}"))?;
    Ok(body.to_owned())
}
