//! Every setting of the gateway: an environment variable with a command-line flag of the same
//! meaning (clap's `env`).
//!
//! A value that does not parse stops start-up with one line naming the setting and exit status 2
//! (`shared::config::parse_or_exit`), so a typo in a Kubernetes manifest fails the rollout at once
//! instead of serving with a surprising default. docs/gateway.md has the same table for operators.

use std::net::SocketAddr;
use std::time::Duration;

use shared::config::{parse_duration, LogFormat};

/// The gateway's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "edge-gateway",
    version,
    about = "Datastream edge gateway: rounds from NATS JetStream to WebSocket, SSE and WebTransport clients."
)]
pub struct Config {
    /// Address of the HTTP listener (WebSocket, SSE, REST, health; metrics unless METRICS_ADDR).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:3000")]
    pub http_addr: SocketAddr,

    /// Address of a separate listener for `/metrics` and `/health` (e.g. `0.0.0.0:9090`), so that
    /// scrapes need not go through the public port; `/metrics` then leaves HTTP_ADDR. Unset:
    /// `/metrics` is served on HTTP_ADDR.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// UDP address of the WebTransport (HTTP/3) endpoint.
    #[arg(long, env = "WT_ADDR", default_value = "0.0.0.0:4433")]
    pub wt_addr: SocketAddr,

    /// PEM certificate chain (leaf first) for WebTransport. Without TLS_CERT and TLS_KEY the
    /// gateway makes a self-signed certificate (served by its hash at `/api/wt/cert-hash`).
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of TLS_CERT.
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// NATS server(s) to read the rounds stream and the games bucket from.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Name of the JetStream stream holding the rounds.
    #[arg(long, env = "STREAM", default_value = shared::subject::DEFAULT_STREAM, value_parser = parse_stream_name)]
    pub stream: String,

    /// Log format: `json` for machines, `pretty` for a terminal.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// How many recent events (all games) each pod keeps to serve resumes without asking NATS.
    #[arg(long, env = "HISTORY_SIZE", default_value_t = 10_000, value_parser = parse_history_size)]
    pub history_size: usize,

    /// Bound of the same history in bytes of event JSON (whichever bound is hit first applies).
    #[arg(long, env = "HISTORY_BYTES", default_value = "64MiB", value_parser = parse_history_bytes)]
    pub history_bytes: usize,

    /// Bound of each connection's outgoing queue, in bytes of event JSON (`256KiB`, `1MiB`, or a
    /// plain number). A client further behind than this is disconnected as a slow consumer.
    #[arg(long, env = "CLIENT_QUEUE_BYTES", default_value = "256KiB", value_parser = parse_queue_bytes)]
    pub client_queue_bytes: usize,

    /// Interval of WebSocket pings; a peer that has not answered the previous ping by the next one
    /// is dropped.
    #[arg(long, env = "WS_PING_INTERVAL", default_value = "30s", value_parser = parse_interval)]
    pub ws_ping_interval: Duration,

    /// Interval of SSE `: heartbeat <unix seconds>` comments.
    #[arg(long, env = "SSE_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_interval)]
    pub sse_heartbeat_interval: Duration,

    /// Reconnection delay suggested to SSE clients (the `retry:` line).
    #[arg(long, env = "SSE_RETRY", default_value = "2s", value_parser = parse_interval)]
    pub sse_retry: Duration,

    /// On SIGTERM: how long open connections get to close before the process exits anyway.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Origins allowed by CORS on SSE and REST: `*` or a comma-separated list such as
    /// `https://a.example,http://localhost:5173`.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "*", value_parser = parse_origins)]
    pub cors_allowed_origins: Origins,

    /// Origins allowed to open WebSockets (the `Origin` header browsers send): `*` or a
    /// comma-separated list. Requests without an `Origin` (non-browser clients) are always allowed.
    #[arg(long, env = "WS_ALLOWED_ORIGINS", default_value = "*", value_parser = parse_origins)]
    pub ws_allowed_origins: Origins,

    /// Largest request head accepted (request line plus headers), in bytes; larger gets 431.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value = "16KiB", value_parser = parse_header_bytes)]
    pub max_header_bytes: usize,

    /// HTTP worker threads (each serves its share of the sockets); default: one per CPU.
    #[arg(long, env = "HTTP_WORKERS", value_parser = parse_workers)]
    pub http_workers: Option<usize>,

    /// `required`: every subscription needs an API key or a token; `off`: anyone may subscribe
    /// (local demos only; a warning is logged at start).
    #[arg(long, env = "AUTH", value_enum, default_value = "required")]
    pub auth: crate::auth::Mode,

    /// HMAC secret that signs tokens, the same on every pod (at least 32 bytes). Required when
    /// `AUTH=required`.
    #[arg(long, env = "TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<Secret>,

    /// Connections per API key on this pod, unless the key sets its own cap (0: no cap).
    #[arg(long, env = "MAX_CONNECTIONS_PER_KEY", default_value_t = 1000)]
    pub max_connections_per_key: u32,

    /// Connections per client IP address on this pod (0: no cap). Behind a proxy that hides
    /// client addresses, set 0 and rely on the per-key cap.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: u32,

    /// Tokens per second one API key may obtain (bursts of four seconds' worth).
    #[arg(long, env = "TOKEN_RATE_PER_KEY", default_value_t = 5.0, value_parser = parse_rate)]
    pub token_rate_per_key: f64,

    /// Token requests per second from one IP address, valid key or not.
    #[arg(long, env = "TOKEN_RATE_PER_IP", default_value_t = 20.0, value_parser = parse_rate)]
    pub token_rate_per_ip: f64,
}

/// A secret setting: shown as `<redacted>` wherever the configuration is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    /// Never fails, so a parse error never echoes the value; [`Config::auth_settings`] checks it.
    fn from_str(raw: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(raw.to_owned()))
    }
}

impl Config {
    /// The authentication settings, or start-up stops with one line naming the bad setting.
    pub fn auth_settings(&self) -> crate::auth::AuthSettings {
        use crate::auth::Mode;
        let secret = match (&self.token_secret, self.auth) {
            (Some(secret), _) if secret.0.len() >= 32 => secret.0.clone().into_bytes(),
            (Some(_), _) => shared::config::invalid("TOKEN_SECRET", "must be at least 32 bytes"),
            (None, Mode::Required) => shared::config::invalid(
                "TOKEN_SECRET",
                "required when AUTH=required (the same value on every gateway pod)",
            ),
            // Tokens issued with AUTH=off are never checked: any secret will do.
            (None, Mode::Off) => b"datastream-auth-off-tokens-are-not-checked".to_vec(),
        };
        crate::auth::AuthSettings {
            mode: self.auth,
            secret,
            max_connections_per_key: self.max_connections_per_key,
            max_connections_per_ip: self.max_connections_per_ip,
            token_rate_per_key: self.token_rate_per_key,
            token_rate_per_ip: self.token_rate_per_ip,
        }
    }
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!("{raw:?} is not a positive number per second")),
    }
}

/// An allowed-origins list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `*`: every origin.
    Any,
    /// Exact origins (`scheme://host[:port]`), compared case-insensitively.
    List(Vec<String>),
}

impl Origins {
    /// Whether `origin` (an `Origin` header value) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Origins::Any => true,
            Origins::List(list) => {
                let origin = origin.trim_end_matches('/');
                list.iter().any(|o| o.eq_ignore_ascii_case(origin))
            }
        }
    }
}

fn parse_origins(raw: &str) -> Result<Origins, String> {
    let raw = raw.trim();
    if raw == "*" {
        return Ok(Origins::Any);
    }
    let mut list = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let origin = origin.trim_end_matches('/');
        let rest = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .ok_or_else(|| {
                format!("{origin:?} is not an origin like https://host[:port] (or use *)")
            })?;
        if rest.is_empty() || rest.contains(['/', ' ', '*']) {
            return Err(format!(
                "{origin:?} is not an origin like https://host[:port] (or use *)"
            ));
        }
        list.push(origin.to_ascii_lowercase());
    }
    if list.is_empty() {
        return Err("empty list: give * or at least one origin".to_owned());
    }
    Ok(Origins::List(list))
}

/// Parses `256KiB`, `1MiB`, `64KB`, `4096`: binary units whatever the spelling.
pub fn parse_bytes(raw: &str) -> Result<usize, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{raw:?} is not a size like 256KiB, 1MiB or 4096"))?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("{raw:?} has an unknown unit (use KiB or MiB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{raw:?} is too large"))
}

fn parse_queue_bytes(raw: &str) -> Result<usize, String> {
    let n = parse_bytes(raw)?;
    if !(1024..=1024 * 1024 * 1024).contains(&n) {
        return Err(format!("{n} bytes is outside 1KiB..1GiB"));
    }
    Ok(n)
}

fn parse_history_bytes(raw: &str) -> Result<usize, String> {
    let n = parse_bytes(raw)?;
    if n > 16 * 1024 * 1024 * 1024 {
        return Err(format!("{n} bytes is more than 16GiB"));
    }
    Ok(n)
}

fn parse_header_bytes(raw: &str) -> Result<usize, String> {
    let n = parse_bytes(raw)?;
    // actix-http itself refuses request heads over 128 KiB.
    if !(1024..=128 * 1024).contains(&n) {
        return Err(format!("{n} bytes is outside 1KiB..128KiB"));
    }
    Ok(n)
}

fn parse_history_size(raw: &str) -> Result<usize, String> {
    let n: usize = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of events"))?;
    if n > 10_000_000 {
        return Err(format!("{n} events is more than 10,000,000"));
    }
    Ok(n)
}

fn parse_workers(raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err(format!("{raw:?} is not a number of threads in 1..256")),
    }
}

/// A duration of at least 10 ms (a zero interval would spin).
fn parse_interval(raw: &str) -> Result<Duration, String> {
    let d = parse_duration(raw)?;
    if d < Duration::from_millis(10) {
        return Err(format!("{raw:?} is shorter than 10ms"));
    }
    Ok(d)
}

fn parse_stream_name(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= 255
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "{raw:?} is not a stream name (letters, digits, - and _)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("256KiB"), Ok(256 * 1024));
        assert_eq!(parse_bytes("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_bytes("64kb"), Ok(64 * 1024));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5GiB").is_err());
        assert!(parse_queue_bytes("10").is_err());
    }

    #[test]
    fn origins() {
        assert_eq!(parse_origins("*"), Ok(Origins::Any));
        let list = parse_origins("https://a.example, http://localhost:5173/").unwrap();
        assert!(list.allows("https://A.example"));
        assert!(list.allows("http://localhost:5173"));
        assert!(!list.allows("https://evil.example"));
        assert!(parse_origins("a.example").is_err());
        assert!(parse_origins(" , ").is_err());
        assert!(parse_origins("https://*.example").is_err());
    }

    #[test]
    fn defaults_parse() {
        let config = Config::try_parse_from(["edge-gateway"]).unwrap();
        assert_eq!(config.http_addr.port(), 3000);
        assert_eq!(config.wt_addr.port(), 4433);
        assert_eq!((config.tls_cert, config.tls_key), (None, None));
        assert_eq!(config.stream, "ROUNDS");
        assert_eq!(config.client_queue_bytes, 256 * 1024);
        assert_eq!(config.ws_ping_interval, Duration::from_secs(30));
        assert_eq!(config.sse_heartbeat_interval, Duration::from_secs(15));
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.cors_allowed_origins, Origins::Any);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Config::try_parse_from(["edge-gateway", "--client-queue-bytes", "tiny"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--client-queue-bytes"), "{err}");
        let err = Config::try_parse_from(["edge-gateway", "--ws-ping-interval", "0s"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--ws-ping-interval"), "{err}");
    }
}
