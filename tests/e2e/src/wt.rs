//! WebTransport clients for the gateway tests, as a browser page uses the endpoint: read
//! `GET /api/wt/cert-hash`, connect to `https://127.0.0.1:<port>/wt/...` accepting the
//! certificate by that hash (`serverCertificateHashes`), then read the rounds from the
//! datagrams and from the one unidirectional stream the gateway opens (newline-delimited JSON).
//!
//! The client is web-transport-quinn's, the crate the gateway serves with; headless Chromium
//! checks the endpoint against an independent implementation. Every wait takes a deadline.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use web_transport_quinn::quinn::rustls::pki_types::CertificateDer;
use web_transport_quinn::{
    proto, ClientBuilder, ClientError, ConnectError, RecvStream, Session, SessionError,
    WebTransportError,
};

use crate::clients::Gateway;

/// A UDP port on loopback that was free a moment ago (for `WT_ADDR`).
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A gateway with its WebTransport endpoint on a free loopback UDP port (`WT_ADDR`), ready.
pub async fn start_gateway(
    nats_url: &str,
    env: &[(&str, String)],
) -> anyhow::Result<(Gateway, u16)> {
    let port = free_udp_port()?;
    let mut all = vec![("WT_ADDR", format!("127.0.0.1:{port}"))];
    all.extend(env.iter().cloned());
    Ok((Gateway::start(nats_url, &all).await?, port))
}

/// What `GET /api/wt/cert-hash` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertHash {
    /// SHA-256 of the DER certificate, hex.
    pub value: String,
    /// The same 32 bytes.
    pub bytes: Vec<u8>,
    pub self_signed: bool,
    /// Unix milliseconds, for a self-signed certificate.
    pub expires_at: Option<u64>,
    pub port: u16,
}

impl CertHash {
    pub async fn fetch(gateway: &Gateway) -> anyhow::Result<CertHash> {
        let reply = gateway.get("/api/wt/cert-hash").await?;
        anyhow::ensure!(
            reply.status == 200,
            "/api/wt/cert-hash answered {}",
            reply.status
        );
        CertHash::from_json(&reply.json()?)
    }

    /// The same from the gateway at `addr`, for clients that outlive a [`Gateway`] borrow.
    pub async fn fetch_at(addr: SocketAddr) -> anyhow::Result<CertHash> {
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?
            .get(format!("http://{addr}/api/wt/cert-hash"))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "/api/wt/cert-hash answered {}",
            response.status()
        );
        CertHash::from_json(&serde_json::from_slice(&response.bytes().await?)?)
    }

    fn from_json(json: &Value) -> anyhow::Result<CertHash> {
        let bytes = json["bytes"]
            .as_array()
            .context("no bytes")?
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect::<Option<Vec<u8>>>()
            .context("bytes are not bytes")?;
        Ok(CertHash {
            value: json["value"].as_str().context("no value")?.to_owned(),
            bytes,
            self_signed: json["self_signed"].as_bool().context("no self_signed")?,
            expires_at: json["expires_at"].as_u64(),
            port: json["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .context("no port")?,
        })
    }
}

/// SHA-256 of `der`.
pub fn sha256(der: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .to_vec()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A session the gateway refused before accepting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
}

/// One WebTransport session to the gateway.
pub struct WtClient {
    session: Session,
    stream: Option<RecvStream>,
    buf: Vec<u8>,
    datagrams: mpsc::UnboundedReceiver<Bytes>,
    /// The DER certificate the gateway presented.
    pub certificate: Vec<u8>,
    /// The text of the last stream line read.
    pub last_line: String,
}

impl WtClient {
    /// Opens `path` (with its query) on `127.0.0.1:port`, accepting the certificate whose
    /// SHA-256 is `hash`; the session must be accepted.
    pub async fn connect(port: u16, path: &str, hash: &[u8]) -> anyhow::Result<WtClient> {
        WtClient::open(port, path, hash)
            .await?
            .map_err(|refused| anyhow!("{path} refused with {}", refused.status))
    }

    /// Like [`WtClient::connect`], but a refusal is an answer, not an error.
    pub async fn open(
        port: u16,
        path: &str,
        hash: &[u8],
    ) -> anyhow::Result<Result<WtClient, Refused>> {
        let client = ClientBuilder::new()
            .with_server_certificate_hashes(vec![hash.to_vec()])
            .context("building the WebTransport client")?;
        let url: url::Url = format!("https://127.0.0.1:{port}{path}").parse()?;
        let connected = tokio::time::timeout(Duration::from_secs(10), client.connect(url))
            .await
            .with_context(|| format!("WebTransport connect to {path} timed out"))?;
        let session = match connected {
            Ok(session) => session,
            // The status arrives one way or the other depending on where the client reads it.
            Err(ClientError::HttpError(
                ConnectError::ErrorStatus(status)
                | ConnectError::ProtoError(proto::ConnectError::WrongStatus(Some(status))),
            )) => {
                return Ok(Err(Refused {
                    status: status.as_u16(),
                }))
            }
            Err(err) => return Err(anyhow!(err).context(format!("WebTransport connect to {path}"))),
        };
        let certificate = session
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().map(|cert| cert.to_vec()))
            .context("the gateway presented no certificate")?;
        let (tx, datagrams) = mpsc::unbounded_channel();
        let reader = session.clone();
        tokio::spawn(async move {
            while let Ok(datagram) = reader.read_datagram().await {
                if tx.send(datagram).is_err() {
                    break;
                }
            }
        });
        Ok(Ok(WtClient {
            session,
            stream: None,
            buf: Vec::new(),
            datagrams,
            certificate,
            last_line: String::new(),
        }))
    }

    /// Accepts the stream the gateway opens.
    pub async fn accept_stream(&mut self, within: Duration) -> anyhow::Result<()> {
        if self.stream.is_none() {
            let stream = tokio::time::timeout(within, self.session.accept_uni())
                .await
                .map_err(|_| anyhow!("no stream from the gateway within {within:?}"))?
                .context("accepting the gateway's stream")?;
            self.stream = Some(stream);
        }
        Ok(())
    }

    /// Tells the gateway to stop sending on the stream (STOP_SENDING), as a datagram-only
    /// client does.
    pub async fn stop_stream(&mut self, within: Duration) -> anyhow::Result<()> {
        self.accept_stream(within).await?;
        if let Some(stream) = self.stream.as_mut() {
            stream.stop(0).context("stopping the stream")?;
        }
        Ok(())
    }

    /// The next line of the stream (without its line feed), or `None` when the stream ended.
    pub async fn line(&mut self, within: Duration) -> anyhow::Result<Option<String>> {
        let deadline = tokio::time::Instant::now() + within;
        self.accept_stream(within).await?;
        let stream = self.stream.as_mut().context("no stream")?;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let text = String::from_utf8(line[..end].to_vec())?;
                self.last_line.clone_from(&text);
                return Ok(Some(text));
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow!("no stream line within {within:?}"))?
                .context("reading the stream")?;
            match read {
                Some(n) => self.buf.extend_from_slice(&chunk[..n]),
                None if self.buf.is_empty() => return Ok(None),
                None => bail!("the stream ended inside a line"),
            }
        }
    }

    /// The next stream line, which must be a round.
    pub async fn round(&mut self, within: Duration) -> anyhow::Result<Value> {
        let line = self
            .line(within)
            .await?
            .context("the stream ended; expected a round")?;
        serde_json::from_str(&line).with_context(|| format!("stream line is not JSON: {line}"))
    }

    /// The next `n` stream lines, which must all be rounds.
    pub async fn rounds(&mut self, n: usize, within: Duration) -> anyhow::Result<Vec<Value>> {
        crate::collect_rounds(self, n, within).await
    }

    /// Every datagram received so far, as text, in arrival order.
    pub fn datagrams(&mut self) -> anyhow::Result<Vec<String>> {
        let mut all = Vec::new();
        while let Ok(datagram) = self.datagrams.try_recv() {
            all.push(String::from_utf8(datagram.to_vec())?);
        }
        Ok(all)
    }

    /// The next datagram, as text.
    pub async fn datagram(&mut self, within: Duration) -> anyhow::Result<String> {
        let datagram = tokio::time::timeout(within, self.datagrams.recv())
            .await
            .map_err(|_| anyhow!("no datagram within {within:?}"))?
            .context("the session ended")?;
        Ok(String::from_utf8(datagram.to_vec())?)
    }

    /// Waits for the gateway to close the session: its application code and reason.
    pub async fn closed(&self, within: Duration) -> anyhow::Result<(u32, String)> {
        let err = tokio::time::timeout(within, self.session.closed())
            .await
            .map_err(|_| anyhow!("the session is still open after {within:?}"))?;
        match err {
            SessionError::WebTransportError(WebTransportError::Closed(code, reason)) => {
                Ok((code, reason))
            }
            other => bail!("the session ended without a close code: {other}"),
        }
    }

    /// Closes the session from the client's side.
    pub fn close(&self) {
        self.session.close(0, b"bye");
    }
}

impl crate::RoundSource for WtClient {
    async fn next_round(&mut self, within: Duration) -> anyhow::Result<Value> {
        self.round(within).await
    }
}
