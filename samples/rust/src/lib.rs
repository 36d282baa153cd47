//! What the two samples share: command-line options, the token request, and printing a round.

use std::error::Error;
use std::time::{SystemTime, UNIX_EPOCH};

pub type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The command line: `--host URL`, `--game SLUG` or `--type TYPE`, `--api-key KEY`, `--count N`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The gateway's base URL, e.g. `http://localhost:3000`.
    pub host: String,
    /// `crash` or `type/multiplier`: what follows `/ws/` or `/sse/`.
    pub topic: String,
    pub api_key: Option<String>,
    /// Stop after this many rounds (0: run until interrupted).
    pub count: u64,
}

impl Options {
    pub fn from_args() -> Result<Options> {
        let mut options = Options {
            host: std::env::var("DATASTREAM_HOST")
                .unwrap_or_else(|_| "http://localhost:3000".into()),
            topic: "crash".into(),
            api_key: std::env::var("DATASTREAM_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            count: 0,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--host" => options.host = value()?,
                "--game" => options.topic = value()?,
                "--type" => options.topic = format!("type/{}", value()?),
                "--api-key" => options.api_key = Some(value()?),
                "--count" => options.count = value()?.parse()?,
                "-h" | "--help" => {
                    println!(
                        "--host URL (default http://localhost:3000)  --game SLUG | --type TYPE  \
                         --api-key KEY  --count N"
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown option {other} (try --help)").into()),
            }
        }
        options.host = options.host.trim_end_matches('/').to_owned();
        Ok(options)
    }
}

/// A 30-second token for WebSocket clients: `POST /api/auth/token` with the key.
pub async fn fetch_token(options: &Options, api_key: &str) -> Result<String> {
    let response = reqwest::Client::new()
        .post(format!("{}/api/auth/token", options.host))
        .header("X-API-Key", api_key)
        .send()
        .await?;
    if response.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Err("the gateway rejected the API key (401)".into());
    }
    let body: serde_json::Value =
        serde_json::from_slice(&response.error_for_status()?.bytes().await?)?;
    body["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the token endpoint answered without a token".into())
}

/// Prints one round; returns its `seq` (the resume cursor).
pub fn show(text: &str) -> Result<u64> {
    let round: serde_json::Value = serde_json::from_str(text)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let latency = now - round["timestamp"].as_i64().unwrap_or(now);
    println!(
        "[{}] round {}  seq {}  {}  latency {latency} ms",
        round["game_slug"].as_str().unwrap_or("?"),
        round["round_id"],
        round["seq"],
        round["extras"].as_str().unwrap_or(""),
    );
    round["seq"]
        .as_u64()
        .ok_or_else(|| "a round without seq".into())
}
