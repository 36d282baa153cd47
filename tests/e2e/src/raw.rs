//! Bytes on a socket, for the tests that must send what no well-behaved client library would:
//! request targets with `..` left in place (reqwest and url normalize them away), malformed
//! WebSocket frames, floods. Every read takes a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP answer read off a raw socket.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// The head, as text (status line and headers).
    pub head: String,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "body is not JSON: {:?} (head {:?})",
                String::from_utf8_lossy(&self.body),
                self.head
            )
        })
    }

    /// The `error` string of a JSON error body.
    pub fn error(&self) -> anyhow::Result<String> {
        let json = self.json()?;
        json["error"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no \"error\" string in {json}"))
    }
}

/// `GET <target>` exactly as given (no normalization), `Connection: close`, `headers` added;
/// reads the answer to the end.
pub async fn get(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<RawReply> {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request_bytes(addr, request.as_bytes()).await
}

/// Sends `request` as it is and reads the answer: its head, then `Content-Length` bytes of
/// body, or everything until the server closes when there is no length.
pub async fn request_bytes(addr: SocketAddr, request: &[u8]) -> anyhow::Result<RawReply> {
    let within = Duration::from_secs(10);
    let mut socket = TcpStream::connect(addr).await?;
    socket.write_all(request).await?;
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(reply) = parse_reply(&bytes, false)? {
                return Ok::<_, anyhow::Error>(Some(reply));
            }
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .map_err(|_| {
        anyhow!(
            "no complete answer within {within:?}: {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )
    })?;
    match read? {
        Some(reply) => Ok(reply),
        // Closed: whatever came is the answer (a body without a length).
        None => parse_reply(&bytes, true)?.with_context(|| {
            format!(
                "no complete HTTP head in {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            )
        }),
    }
}

/// The reply in `bytes` if its head is complete and its body is (or, after the connection
/// closed, `closed`, whatever is there).
fn parse_reply(bytes: &[u8], closed: bool) -> anyhow::Result<Option<RawReply>> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 status line: {head:?}"))?;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let body = &bytes[end + 4..];
    let body = match length {
        Some(length) if body.len() >= length => &body[..length],
        Some(_) => return Ok(None),
        None if closed => body,
        None => return Ok(None),
    };
    Ok(Some(RawReply {
        status,
        head,
        body: body.to_vec(),
    }))
}

/// Reads until the peer closes (or resets) the connection.
pub async fn read_to_eof(socket: &mut TcpStream, within: Duration) -> anyhow::Result<Vec<u8>> {
    let mut all = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 8192];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        bail!(
            "the server did not close the connection within {within:?}; got {:?}",
            String::from_utf8_lossy(&all[..all.len().min(300)])
        );
    }
    Ok(all)
}

/// A WebSocket handshake over a raw socket; returns the socket right after the 101's head.
pub async fn ws_handshake(addr: SocketAddr, path: &str) -> anyhow::Result<TcpStream> {
    let mut socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut byte))
            .await
            .map_err(|_| anyhow!("no 101 within 10 s"))??;
        anyhow::ensure!(n == 1, "connection closed during the handshake");
        head.push(byte[0]);
    }
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    Ok(socket)
}

/// A client frame (masked, as RFC 6455 requires of clients), FIN set.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x80 | opcode, true, payload.len() as u64, payload)
}

/// A frame from its first byte (FIN, RSV, opcode), whether it is masked, the length it claims
/// and the payload actually appended (which may be shorter than the claim, or absent).
pub fn frame(first: u8, masked: bool, claimed_len: u64, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match claimed_len {
        0..=125 => out.push(mask_bit | claimed_len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(claimed_len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&claimed_len.to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads the server's (unmasked) frames one at a time.
#[derive(Debug)]
pub struct FrameReader {
    pub socket: TcpStream,
    buf: Vec<u8>,
}

/// A server frame: opcode and payload.
pub type Frame = (u8, Vec<u8>);

impl FrameReader {
    pub fn new(socket: TcpStream) -> FrameReader {
        FrameReader {
            socket,
            buf: Vec::new(),
        }
    }

    /// The next frame, or `None` when the server closed the connection.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<Option<Frame>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout_at(deadline, self.socket.read(&mut chunk))
                .await
                .map_err(|_| anyhow!("no complete frame within {within:?}"))?
                .unwrap_or(0);
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Every frame up to and including the first close frame (or until the server closes the
    /// connection without one).
    pub async fn until_close(&mut self, within: Duration) -> anyhow::Result<Vec<Frame>> {
        self.collect(within, true).await
    }

    /// Every frame until the server closes the connection.
    pub async fn until_eof(&mut self, within: Duration) -> anyhow::Result<Vec<Frame>> {
        self.collect(within, false).await
    }

    /// Frames until the connection ends, or up to a close frame if `stop_at_close`.
    async fn collect(
        &mut self,
        within: Duration,
        stop_at_close: bool,
    ) -> anyhow::Result<Vec<Frame>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self
                .next(left)
                .await
                .with_context(|| format!("the server did not close; frames so far: {frames:?}"))?
            else {
                return Ok(frames);
            };
            let close = frame.0 == 0x8;
            frames.push(frame);
            if close && stop_at_close {
                return Ok(frames);
            }
        }
    }
}

/// One complete unmasked frame at the start of `buf`, and its length in bytes.
fn parse_server_frame(buf: &[u8]) -> anyhow::Result<Option<(Frame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    anyhow::ensure!(buf[1] & 0x80 == 0, "the server sent a masked frame");
    let (len, header) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&buf[2..10]);
            (usize::try_from(u64::from_be_bytes(len))?, 10)
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    if buf.len() < header + len {
        return Ok(None);
    }
    let frame = (buf[0] & 0x0F, buf[header..header + len].to_vec());
    Ok(Some((frame, header + len)))
}

/// The code of the first close frame among `frames`.
pub fn close_code(frames: &[Frame]) -> Option<u16> {
    frames
        .iter()
        .find(|(opcode, _)| *opcode == 0x8)
        .and_then(|(_, payload)| Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let masked = client_frame(0x9, b"abc");
        assert_eq!(&masked[..2], &[0x89, 0x83]);
        assert_eq!(masked.len(), 2 + 4 + 3);
        let big = frame(0x81, true, 1 << 40, &[]);
        assert_eq!(big[1], 0x80 | 127);
        assert_eq!(big.len(), 2 + 8 + 4);
        let server = frame(0x88, false, 2, &1003u16.to_be_bytes());
        let (parsed, used) = parse_server_frame(&server).unwrap().unwrap();
        assert_eq!(used, server.len());
        assert_eq!(close_code(&[parsed]), Some(1003));
        assert_eq!(parse_server_frame(&server[..3]).unwrap(), None);
    }
}
