//! Talking to a real `edge-gateway` process as its clients do: the process itself, WebSocket
//! clients (tokio-tungstenite, with small buffers so hundreds fit in one test), SSE clients
//! (reqwest streaming and a small parser that follows the SSE specification's field rules), and
//! plain HTTP for the REST endpoints and metrics.
//!
//! Every wait takes a deadline and fails with what it was waiting for.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use testkit::Service;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// A running gateway on a free loopback port, killed on drop.
pub struct Gateway {
    pub service: Service,
    pub addr: SocketAddr,
    http: reqwest::Client,
    /// Everything the process was started with, to restart it the same way.
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Starts `edge-gateway` against `nats_url` with `env` added (HTTP_ADDR is chosen here), and
    /// waits until `/ready` says yes.
    pub async fn start(nats_url: &str, env: &[(&str, String)]) -> anyhow::Result<Gateway> {
        let gateway = Gateway::spawn(nats_url, env)?;
        gateway.wait_ready(Duration::from_secs(20)).await?;
        Ok(gateway)
    }

    /// Starts the process without waiting for it. Authentication is off and connections per
    /// address are not capped (every test client comes from 127.0.0.1) unless `env` says
    /// otherwise.
    pub fn spawn(nats_url: &str, env: &[(&str, String)]) -> anyhow::Result<Gateway> {
        let addr: SocketAddr = format!("127.0.0.1:{}", testkit::free_port()?).parse()?;
        let mut all = vec![
            ("HTTP_ADDR", addr.to_string()),
            ("NATS_URL", nats_url.to_owned()),
            ("HTTP_WORKERS", "2".to_owned()),
            // Gateways of parallel tests must not share the default UDP 4433.
            (
                "WT_ADDR",
                format!("127.0.0.1:{}", crate::wt::free_udp_port()?),
            ),
            ("AUTH", "off".to_owned()),
            ("MAX_CONNECTIONS_PER_IP", "0".to_owned()),
        ];
        all.extend(env.iter().map(|(k, v)| (*k, v.clone())));
        let service = Service::start("edge-gateway", &[], &all)?;
        Ok(Gateway {
            service,
            addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            env: all
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        })
    }

    /// Kills the process (SIGKILL) and starts it again on the same address and settings.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.service.kill()?;
        let env: Vec<(&str, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        self.service = Service::start("edge-gateway", &[], &env)?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    pub async fn wait_ready(&self, deadline: Duration) -> anyhow::Result<()> {
        testkit::wait_until(deadline, "the gateway to be ready", || async {
            let response = self.http.get(self.url("/ready")).send().await.ok()?;
            (response.status() == reqwest::StatusCode::OK).then_some(())
        })
        .await
        .with_context(|| self.service.log_tail())
    }

    /// Waits until the gateway's hub has dispatched stream sequence `seq` (the publisher's ack
    /// comes before the gateway's delivery).
    pub async fn wait_for_hub(&self, seq: u64) -> anyhow::Result<()> {
        testkit::wait_until(
            Duration::from_secs(10),
            &format!("the hub to reach sequence {seq}"),
            || async {
                let at = self
                    .metric("datastream_gateway_hub_sequence", &[])
                    .await
                    .ok()?;
                (at >= seq as f64).then_some(())
            },
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path`: status, headers and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpReply> {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<HttpReply> {
        let mut request = self.http.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok(HttpReply {
            status,
            headers,
            body,
        })
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        let reply = self.get("/metrics").await?;
        anyhow::ensure!(reply.status == 200, "/metrics answered {}", reply.status);
        Ok(String::from_utf8(reply.body)?)
    }

    /// The value of metric `name` (as exposed, e.g. `datastream_gateway_disconnects_total`) with at least
    /// `labels`; 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        Ok(metric_value(&self.metrics().await?, name, labels))
    }

    /// Connections the gateway ended, `datastream_gateway_disconnects_total`, with at least
    /// `labels` (`reason`, `protocol`).
    pub async fn disconnects(&self, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        self.metric("datastream_gateway_disconnects_total", labels)
            .await
    }
}

/// Reads one sample from Prometheus/OpenMetrics text.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "body is not JSON: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// How to open a WebSocket.
#[derive(Debug, Default, Clone)]
pub struct WsOptions {
    /// `Sec-WebSocket-Protocol` to offer.
    pub protocol: Option<String>,
    /// `Origin` to send.
    pub origin: Option<String>,
    /// `SO_RCVBUF` of the client socket (a small one makes a client that stops reading back up
    /// into the server quickly).
    pub recv_buffer: Option<u32>,
    /// `TCP_MAXSEG`: the segment size the client announces. The server sizes its send buffer
    /// for the connection from it (ten segments, doubled, at first), so a small one keeps what
    /// the kernel holds for a client that stops reading small: about 40 KiB at 536 bytes
    /// instead of several MiB at loopback's 64 KiB.
    pub max_segment: Option<u32>,
}

/// Something read from a WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// A text frame, parsed as JSON.
    Round(Value),
    /// A close frame: code and reason.
    Close(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

/// A WebSocket client.
pub struct WsClient {
    pub ws: WebSocketStream<TcpStream>,
    /// The last text frame read, as sent.
    pub last_text: String,
    /// Headers of the 101 response.
    pub response_headers: tungstenite::http::HeaderMap,
}

/// A refused handshake: HTTP status and body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl Refused {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("body is not JSON: {:?}", self.body))
    }
}

fn small_buffers() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

impl WsClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> anyhow::Result<WsClient> {
        Self::connect_with(addr, path, &WsOptions::default()).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        path: &str,
        options: &WsOptions,
    ) -> anyhow::Result<WsClient> {
        match Self::try_connect(addr, path, options).await? {
            Ok(client) => Ok(client),
            Err(refused) => bail!(
                "WebSocket {path} refused with {}: {}",
                refused.status,
                refused.body
            ),
        }
    }

    /// Connects expecting a refusal (an HTTP error instead of 101).
    pub async fn refused(addr: SocketAddr, path: &str) -> anyhow::Result<Refused> {
        Self::refused_with(addr, path, &WsOptions::default()).await
    }

    pub async fn refused_with(
        addr: SocketAddr,
        path: &str,
        options: &WsOptions,
    ) -> anyhow::Result<Refused> {
        match Self::try_connect(addr, path, options).await? {
            Ok(_) => bail!("WebSocket {path} was accepted, expected a refusal"),
            Err(refused) => Ok(refused),
        }
    }

    async fn try_connect(
        addr: SocketAddr,
        path: &str,
        options: &WsOptions,
    ) -> anyhow::Result<Result<WsClient, Refused>> {
        let mut request = format!("ws://{addr}{path}").into_client_request()?;
        if let Some(protocol) = &options.protocol {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", protocol.parse()?);
        }
        if let Some(origin) = &options.origin {
            request.headers_mut().insert("origin", origin.parse()?);
        }
        let socket = TcpSocket::new_v4()?;
        if let Some(size) = options.recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        if let Some(mss) = options.max_segment {
            socket2::SockRef::from(&socket).set_tcp_mss(mss)?;
        }
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let connected = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async_with_config(request, stream, Some(small_buffers())),
        )
        .await
        .with_context(|| format!("WebSocket handshake for {path} timed out"))?;
        match connected {
            Ok((ws, response)) => Ok(Ok(WsClient {
                ws,
                last_text: String::new(),
                response_headers: response.headers().clone(),
            })),
            Err(tungstenite::Error::Http(response)) => Ok(Err(Refused {
                status: response.status().as_u16(),
                body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .into_owned(),
            })),
            Err(err) => Err(anyhow!(err).context(format!("WebSocket handshake for {path}"))),
        }
    }

    /// The next text frame, close frame or end, within `within`. Pings and pongs are skipped
    /// (tungstenite answers pings by itself).
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<WsEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no WebSocket frame within {within:?}"))?;
            match message {
                None => return Ok(WsEvent::Ended),
                Some(Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                )) => return Ok(WsEvent::Ended),
                Some(Err(err)) => return Err(anyhow!(err).context("reading the WebSocket")),
                Some(Ok(Message::Text(text))) => {
                    let value = serde_json::from_str(text.as_str())
                        .with_context(|| format!("text frame is not JSON: {text}"))?;
                    self.last_text = text.as_str().to_owned();
                    return Ok(WsEvent::Round(value));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ok(match frame {
                        Some(frame) => {
                            WsEvent::Close(u16::from(frame.code), frame.reason.to_string())
                        }
                        None => WsEvent::Close(u16::from(CloseCode::Status), String::new()),
                    })
                }
                Some(Ok(Message::Binary(_))) => bail!("unexpected binary frame"),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame, which must be a round.
    pub async fn round(&mut self, within: Duration) -> anyhow::Result<Value> {
        match self.next(within).await? {
            WsEvent::Round(value) => Ok(value),
            other => bail!("expected a round, got {other:?}"),
        }
    }

    /// The next `n` frames, which must all be rounds.
    pub async fn rounds(&mut self, n: usize, within: Duration) -> anyhow::Result<Vec<Value>> {
        crate::collect_rounds(self, n, within).await
    }

    /// The next frame, which must be a close frame: its code and reason.
    pub async fn close_frame(&mut self, within: Duration) -> anyhow::Result<(u16, String)> {
        match self.next(within).await? {
            WsEvent::Close(code, reason) => Ok((code, reason)),
            other => bail!("expected a close frame, got {other:?}"),
        }
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }
}

/// One item of an SSE stream, as the SSE specification's parser sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event. `id` is `None` when the block had no `id:` field, `Some("")` when it
    /// had an empty one (which resets the client's last event id).
    Event {
        id: Option<String>,
        event: String,
        data: String,
    },
    /// A `retry:` field alone in its block.
    Retry(u64),
    /// A block of comment lines only (`: heartbeat 1768621542`).
    Comment(String),
    /// The response body ended.
    End,
}

/// A dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.data).with_context(|| format!("data is not JSON: {}", self.data))
    }
}

/// An SSE client over reqwest.
pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buf: Vec<u8>,
    ended: bool,
}

impl SseClient {
    /// GET `path` on the gateway with `Accept: text/event-stream` (and `Last-Event-ID` when
    /// given); the response must be 200.
    pub async fn connect(
        gateway: &Gateway,
        path: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<SseClient> {
        let client = Self::open(gateway, path, last_event_id).await?;
        anyhow::ensure!(
            client.status == 200,
            "SSE {path} answered {}",
            client.status
        );
        Ok(client)
    }

    /// Like [`SseClient::connect`] but any status is returned.
    pub async fn open(
        gateway: &Gateway,
        path: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<SseClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()?;
        let mut request = http
            .get(gateway.url(path))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = tokio::time::timeout(Duration::from_secs(10), request.send())
            .await
            .with_context(|| format!("SSE {path}: no response headers"))??;
        Ok(SseClient {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes_stream().boxed(),
            buf: Vec::new(),
            ended: false,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The rest of the body as text (for error responses).
    pub async fn text(mut self) -> anyhow::Result<String> {
        let mut all = std::mem::take(&mut self.buf);
        while let Some(chunk) = self.body.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(String::from_utf8(all)?)
    }

    /// The next item within `within`.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<SseItem> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(item) = self.parse_block() {
                return Ok(item);
            }
            if self.ended {
                return Ok(SseItem::End);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => bail!("no SSE item within {within:?}"),
                Ok(None) => self.ended = true,
                Ok(Some(Err(err))) => return Err(anyhow!(err).context("reading the SSE stream")),
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }

    /// The next dispatched event, skipping comments and `retry:`.
    pub async fn event(&mut self, within: Duration) -> anyhow::Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                SseItem::Event { id, event, data } => return Ok(SseEvent { id, event, data }),
                SseItem::End => bail!("the SSE stream ended"),
                SseItem::Retry(_) | SseItem::Comment(_) => continue,
            }
        }
    }

    /// The next `n` events.
    pub async fn events(&mut self, n: usize, within: Duration) -> anyhow::Result<Vec<SseEvent>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self
                .event(left)
                .await
                .with_context(|| format!("after {} of {n} events", events.len()))?;
            events.push(event);
        }
        Ok(events)
    }

    /// Skips comments and events until the stream ends; returns the events seen.
    pub async fn until_end(&mut self, within: Duration) -> anyhow::Result<Vec<SseEvent>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                SseItem::End => return Ok(events),
                SseItem::Event { id, event, data } => events.push(SseEvent { id, event, data }),
                SseItem::Retry(_) | SseItem::Comment(_) => {}
            }
        }
    }

    /// Takes one complete block (up to a blank line) from the buffer.
    fn parse_block(&mut self) -> Option<SseItem> {
        loop {
            let end = find_blank_line(&self.buf)?;
            let block: Vec<u8> = self.buf.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&block[..end.0]).into_owned();
            if let Some(item) = parse_sse_block(&text) {
                return Some(item);
            }
        }
    }
}

/// Where the first blank line ends a block: (end of the block's text, end of the separator).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some((line_start, i + 1));
            }
            line_start = i + 1;
        }
    }
    None
}

/// Parses one block by the SSE specification's field rules.
pub fn parse_sse_block(text: &str) -> Option<SseItem> {
    let mut id = None;
    let mut event = None;
    let mut data: Option<String> = None;
    let mut retry = None;
    let mut comments = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            comments.push(comment.trim_start().to_owned());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => {
                let data = data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            "retry" => retry = value.parse().ok(),
            _ => {}
        }
    }
    if let Some(data) = data {
        return Some(SseItem::Event {
            id,
            event: event.unwrap_or_else(|| "message".to_owned()),
            data,
        });
    }
    if let Some(retry) = retry {
        return Some(SseItem::Retry(retry));
    }
    if !comments.is_empty() {
        return Some(SseItem::Comment(comments.join("\n")));
    }
    None
}

/// The `seq` of a round as delivered (JSON).
pub fn seq_of(round: &Value) -> u64 {
    round["seq"].as_u64().unwrap_or_default()
}

impl crate::RoundSource for WsClient {
    async fn next_round(&mut self, within: Duration) -> anyhow::Result<Value> {
        self.round(within).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks() {
        assert_eq!(parse_sse_block("retry: 2000"), Some(SseItem::Retry(2000)));
        assert_eq!(
            parse_sse_block("id: 7\nevent: initial\ndata: {\"a\":1}"),
            Some(SseItem::Event {
                id: Some("7".into()),
                event: "initial".into(),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(
            parse_sse_block(": heartbeat 1768621542"),
            Some(SseItem::Comment("heartbeat 1768621542".into()))
        );
        assert_eq!(
            parse_sse_block("id:\nevent: reset\ndata: x"),
            Some(SseItem::Event {
                id: Some(String::new()),
                event: "reset".into(),
                data: "x".into()
            })
        );
        assert_eq!(find_blank_line(b"a\n\nb"), Some((2, 3)));
        assert_eq!(find_blank_line(b"a\nb\n"), None);
    }

    #[test]
    fn metric_lines() {
        let text = "# HELP x\ndatastream_gateway_disconnects_total{protocol=\"ws\",reason=\"slow\"} 2\ndatastream_gateway_disconnects_total{protocol=\"sse\",reason=\"slow\"} 1\ndatastream_gateway_hub_lag 3\n";
        assert_eq!(
            metric_value(
                text,
                "datastream_gateway_disconnects_total",
                &[("reason", "slow")]
            ),
            3.0
        );
        assert_eq!(
            metric_value(
                text,
                "datastream_gateway_disconnects_total",
                &[("protocol", "ws")]
            ),
            2.0
        );
        assert_eq!(metric_value(text, "datastream_gateway_hub_lag", &[]), 3.0);
        assert_eq!(metric_value(text, "datastream_gateway_hub", &[]), 0.0);
    }
}
