//! WebSocket adapter: `GET /ws/{game}` and `/ws/type/{type}`, one text frame per event.
//!
//! The handshake is an ordinary request through the app (routes, limits, origin and auth
//! checks); its 101 response carries the prepared [`Accepted`] connection, and
//! [`super::upgrade`] then gives that connection the socket itself, free of actix-http's
//! per-connection buffers. From there `WsConnection` alone drives the socket: it reads the
//! client's frames into a buffer that exists only while a frame is incomplete, sends pings, and
//! writes the hub's pre-built, shared [`Event::ws_frame`](crate::hub::Event::ws_frame) bytes
//! with vectored writes, so a delivery costs no encoding and no copy, and an idle connection
//! holds no buffer at all. There is no task or channel per connection, and a connection whose
//! peer stops answering is ended right here. (This uses actix-http's WebSocket primitives
//! directly rather than actix-ws; see docs/gateway.md.)
//!
//! Protocol rules:
//! - `?since=<seq>` resumes after `seq`; a cursor outside the stream closes with 4010 and a
//!   reason right after the handshake.
//! - Clients send nothing but control frames: a text, binary or continuation frame closes the
//!   connection with 1003; a malformed or oversized frame with 1002.
//! - A ping every `WS_PING_INTERVAL`; a peer that has not answered it by the next one is
//!   dropped without further ado. Client pings are answered.
//! - Slow consumer: 1008 `slow consumer`, after the frame being written (the client resumes
//!   gap-free from the last one it got). Shutdown: 1001. Failed resume: 1011. Key revoked: 4001.
//! - A close frame waits at most two ping intervals for the peer to take it; after it, the
//!   server closes its side and gives the peer a second to close its own (RFC 6455 §7.1.1).
//! - Authentication (`AUTH=required`): the token from `POST /api/auth/token` as the offered
//!   subprotocol (or `?token=`), checked before the upgrade (401/403/429).
//! - A `Sec-WebSocket-Protocol` offered by the client is echoed (its first value), so browsers
//!   accept the handshake when a token travels in it.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::ws::{self as proto, CloseCode, CloseReason, OpCode, Parser};
use actix_web::http::header::{self, HeaderValue};
use actix_web::rt::net::TcpStream;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{sleep, timeout, Instant, Sleep};

use super::{client_ip, cursor, query, resolve_topic, Refusal, TopicKind};
use crate::auth::{Admission, Credential};
use crate::hub::{Next, Start, Subscription};
use crate::metrics::{EndReason, Protocol};
use crate::server::AppState;

/// Close code for a connection whose API key was revoked.
pub const CLOSE_REVOKED: u16 = 4001;
/// Close code for a resume cursor outside the stream.
pub const CLOSE_CURSOR_RESET: u16 = 4010;
/// Largest control frame payload a client may send (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// An unmasked ping with no payload.
const PING: &[u8] = &[0x89, 0x00];
/// Frames taken from the subscription ahead of the socket, at most: one vectored write's worth.
const WRITE_BATCH: usize = 64;
/// After the server's side is closed, how long the peer has to close its own.
const LINGER: Duration = Duration::from_secs(1);

#[derive(serde::Deserialize)]
struct WsQuery {
    since: Option<String>,
    /// For clients that cannot set `Sec-WebSocket-Protocol`.
    token: Option<String>,
}

/// The handshake of `/ws/{game}` and `/ws/type/{type}` ([`super::mount`]ed on both).
pub async fn subscribe(
    req: HttpRequest,
    kind: TopicKind,
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| state.settings.ws_allowed_origins.allows(origin));
        if !allowed {
            return Err(Refusal::OriginNotAllowed);
        }
    }
    let topic = resolve_topic(&state.hub, kind, &name)?;
    let params = query::<WsQuery>(&req)?;
    let since = cursor(params.since.as_deref())?;
    proto::verify_handshake(req.head())
        .map_err(|err| Refusal::BadRequest(format!("not a WebSocket handshake: {err}")))?;
    let offered = offered_protocol(&req);
    // The published clients pass their token as the (first) offered subprotocol.
    let credential = match (
        offered.as_ref().and_then(|p| p.to_str().ok()),
        params.token.as_deref(),
    ) {
        (Some(token), _) | (None, Some(token)) => Credential::Token(token),
        (None, None) => Credential::None,
    };
    let mut admission = state
        .auth
        .admit(credential, &state.hub, &topic, client_ip(&req))?;
    let sub = state.hub.subscribe(topic, since, Protocol::Ws).await?;
    admission.attach(&state.auth, sub.closer());
    let mut response = proto::handshake_response(req.head());
    if let Some(protocol) = offered {
        response.insert_header((header::SEC_WEBSOCKET_PROTOCOL, protocol));
    }
    let interval = state.settings.ws_ping_interval;
    let mut connection = WsConnection {
        sub,
        read_buf: BytesMut::new(),
        out: VecDeque::new(),
        written: 0,
        ping: Box::pin(sleep(interval)),
        ping_interval: interval,
        awaiting_pong: false,
        pong: None,
        closing: false,
        _admission: admission,
    };
    let reset = match connection.sub.start() {
        Start::Reset { reason } => Some(reason.to_string()),
        _ => None,
    };
    if let Some(reason) = reset {
        tracing::info!(conn_id = connection.sub.id(), topic = %connection.sub.topic(), %reason, "resume cursor outside the stream");
        connection.sub.finish(EndReason::CursorReset);
        connection.close_with(close_frame(CloseCode::Other(CLOSE_CURSOR_RESET), &reason));
    }
    let mut response = HttpResponse::from(response.finish().map_into_boxed_body());
    response.extensions_mut().insert(Accepted(connection));
    Ok(response)
}

/// The first protocol the client offered, to echo. Browsers fail a handshake whose offered
/// protocol is not echoed, and the auth token will travel this way.
fn offered_protocol(req: &HttpRequest) -> Option<HeaderValue> {
    let offered = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?;
    let first = offered.split(',').map(str::trim).find(|p| !p.is_empty())?;
    HeaderValue::from_str(first).ok()
}

/// A WebSocket connection the handshake accepted, waiting for its socket: the extension on the
/// 101 response that [`super::upgrade`] looks for.
pub struct Accepted(WsConnection);

impl Accepted {
    /// Serves the connection on `io` until it ends. `early` holds what the client sent right
    /// after its handshake, already read off the socket.
    pub async fn run(self, mut io: TcpStream, early: BytesMut) {
        let mut connection = self.0;
        connection.read_buf = early;
        let end = poll_fn(|cx| connection.poll_serve(&mut io, cx)).await;
        drop(connection);
        if end == End::Linger {
            linger(io).await;
        }
    }
}

/// How a connection ends.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The close handshake is done on our side: close ours, let the peer close its own.
    Linger,
    /// The peer is gone or dead: just drop the socket.
    Drop,
}

/// One WebSocket connection.
struct WsConnection {
    sub: Subscription,
    /// The client's bytes not yet parsed; empty (unallocated) between frames.
    read_buf: BytesMut,
    /// Frames to write, in order; the first may be partly written already.
    out: VecDeque<Bytes>,
    /// Bytes of `out[0]` already written.
    written: usize,
    /// The next ping; once closing, the deadline for the close frame.
    ping: Pin<Box<Sleep>>,
    ping_interval: Duration,
    awaiting_pong: bool,
    /// A pong owed to the client: only the latest ping is answered, once the frames before it
    /// are written, so a client that floods pings and reads nothing cannot grow `out`.
    pong: Option<Bytes>,
    /// A close frame is the last in `out`: nothing more is queued after it.
    closing: bool,
    /// Held for the connection's life: its places under the caps, its revocation hook.
    _admission: Admission,
}

/// What reading the client's frames came to.
enum Read {
    /// Nothing more for now.
    Idle,
    /// Close with this frame.
    Close(Bytes),
    /// The peer is gone.
    Gone,
}

impl WsConnection {
    fn poll_serve(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            match self.read_client(io, cx) {
                Read::Idle => {}
                Read::Close(frame) => self.close_with(frame),
                Read::Gone => return Poll::Ready(End::Drop),
            }
            if self.ping.as_mut().poll(cx).is_ready() {
                if self.closing {
                    tracing::debug!(
                        conn_id = self.sub.id(),
                        "WebSocket peer did not take the close frame; dropping it"
                    );
                    return Poll::Ready(End::Drop);
                }
                if self.awaiting_pong {
                    tracing::debug!(
                        conn_id = self.sub.id(),
                        "WebSocket peer did not answer the ping; dropping it"
                    );
                    self.sub.finish(EndReason::PingTimeout);
                    return Poll::Ready(End::Drop);
                }
                self.awaiting_pong = true;
                self.out.push_back(Bytes::from_static(PING));
                let next = Instant::now() + self.ping_interval;
                self.ping.as_mut().reset(next);
            }
            if self.out.is_empty() && !self.closing {
                self.out.extend(self.pong.take());
            }
            self.take_deliveries(cx);
            if self.out.is_empty() {
                return if self.closing {
                    Poll::Ready(End::Linger)
                } else {
                    Poll::Pending
                };
            }
            match self.write(io, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => {
                    tracing::debug!(conn_id = self.sub.id(), error = %err, "WebSocket write failed");
                    self.sub.finish(EndReason::ClientGone);
                    return Poll::Ready(End::Drop);
                }
                Poll::Pending => {
                    // The peer is not reading: an end (slow consumer, shutdown, revocation)
                    // must still be noticed, to queue its close frame.
                    if !self.closing {
                        if let Poll::Ready(reason) = self.sub.poll_ended(cx) {
                            self.close_with(end_frame(reason));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Moves deliveries from the subscription to `out`, up to one write batch.
    fn take_deliveries(&mut self, cx: &mut Context<'_>) {
        while !self.closing && self.out.len() < WRITE_BATCH {
            match self.sub.poll_next(cx) {
                Poll::Ready(Next::Deliver(delivery)) => {
                    self.out.push_back(delivery.event().ws_frame().clone());
                }
                Poll::Ready(Next::End(reason)) => self.close_with(end_frame(reason)),
                Poll::Pending => break,
            }
        }
    }

    /// Writes from `out` until it is empty or the socket is full.
    fn write(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
            let mut count = 0;
            for (i, frame) in self.out.iter().take(WRITE_BATCH).enumerate() {
                let skip = if i == 0 { self.written } else { 0 };
                slices[i] = IoSlice::new(&frame[skip..]);
                count += 1;
            }
            let mut n = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            };
            while let Some(front) = self.out.front() {
                let left = front.len() - self.written;
                if n < left {
                    self.written += n;
                    break;
                }
                n -= left;
                self.written = 0;
                self.out.pop_front();
            }
        }
        // A long burst's queue is not kept for an idle connection.
        if self.out.capacity() > WRITE_BATCH {
            self.out = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Queues `frame`, a close frame, after the frame being written; what was queued behind
    /// that one is dropped (the client resumes from the last event it got).
    fn close_with(&mut self, frame: Bytes) {
        if self.closing {
            return;
        }
        self.out.truncate(usize::from(self.written > 0));
        self.out.push_back(frame);
        self.closing = true;
        let deadline = Instant::now() + 2 * self.ping_interval;
        self.ping.as_mut().reset(deadline);
    }

    fn read_client(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Read {
        loop {
            match self.parse_frame() {
                Ok(Some(())) => continue,
                Ok(None) => {}
                Err(read) => return read,
            }
            let mut chunk = [0u8; 512];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.read_buf.extend_from_slice(buf.filled());
                }
                Poll::Ready(_) => {
                    self.sub.finish(EndReason::ClientGone);
                    return Read::Gone;
                }
                Poll::Pending => {
                    if self.read_buf.is_empty() {
                        // Free what the last frame left behind: idle connections hold nothing.
                        self.read_buf = BytesMut::new();
                    }
                    return Read::Idle;
                }
            }
        }
    }

    /// Handles one complete frame from the read buffer: `Ok(Some)` if one was handled, `Ok(None)`
    /// if more bytes are needed, `Err` to stop reading.
    fn parse_frame(&mut self) -> Result<Option<()>, Read> {
        if self.closing {
            // The peer's answer to our close frame, or whatever it sent before seeing it.
            self.read_buf.clear();
        }
        let Some(&first) = self.read_buf.first() else {
            return Ok(None);
        };
        // Judge the frame by its first byte, before its payload arrives: a client that sends
        // data, or claims a huge frame, is refused without buffering it.
        match first & 0x0F {
            0x0..=0x2 => {
                return Err(self.protocol_close(CloseCode::Unsupported, "clients send no messages"))
            }
            0x8..=0xA => {}
            _ => return Err(self.protocol_close(CloseCode::Protocol, "unknown opcode")),
        }
        // A control frame is never fragmented and carries at most 125 bytes (RFC 6455 §5.5): say
        // so as soon as its header claims otherwise, rather than wait for a payload.
        if first & 0x80 == 0 {
            return Err(self.protocol_close(CloseCode::Protocol, "fragmented control frame"));
        }
        if let Some(&second) = self.read_buf.get(1) {
            if usize::from(second & 0x7F) > MAX_CONTROL_PAYLOAD {
                return Err(self.protocol_close(CloseCode::Protocol, "control frame too long"));
            }
        }
        let parsed = Parser::parse(&mut self.read_buf, true, MAX_CONTROL_PAYLOAD);
        let (_, opcode, data) = match parsed {
            Ok(Some(frame)) => frame,
            Ok(None) if self.read_buf.len() > MAX_CONTROL_PAYLOAD + 14 => {
                return Err(self.protocol_close(CloseCode::Protocol, "malformed frame"))
            }
            Ok(None) => return Ok(None),
            Err(_) => return Err(self.protocol_close(CloseCode::Protocol, "malformed frame")),
        };
        let data = data.map(BytesMut::freeze).unwrap_or_default();
        match opcode {
            OpCode::Ping => {
                let mut pong = BytesMut::with_capacity(data.len() + 2);
                Parser::write_message(&mut pong, &data[..], OpCode::Pong, true, false);
                self.pong = Some(pong.freeze());
            }
            OpCode::Pong => self.awaiting_pong = false,
            OpCode::Close => {
                self.sub.finish(EndReason::ClientGone);
                // Echo the client's code (RFC 6455 §5.5.1).
                let code = Parser::try_parse_close_payload(&data)
                    .ok()
                    .flatten()
                    .map(|reason| reason.code);
                let mut frame = BytesMut::with_capacity(4);
                Parser::write_close(
                    &mut frame,
                    code.map(|code| CloseReason {
                        code,
                        description: None,
                    }),
                    false,
                );
                return Err(Read::Close(frame.freeze()));
            }
            _ => return Err(self.protocol_close(CloseCode::Protocol, "unexpected frame")),
        }
        Ok(Some(()))
    }

    fn protocol_close(&mut self, code: CloseCode, reason: &str) -> Read {
        tracing::debug!(
            conn_id = self.sub.id(),
            reason,
            "closing a WebSocket that broke the protocol"
        );
        self.sub.finish(EndReason::ProtocolError);
        Read::Close(close_frame(code, reason))
    }
}

/// Closes our side and waits up to [`LINGER`] for the peer to close its own, reading away what
/// it still sends: closing at once with unread bytes would reset the connection and could
/// destroy the close frame before the peer reads it.
async fn linger(mut io: TcpStream) {
    let _ = io.shutdown().await;
    let _ = timeout(LINGER, async {
        let mut sink = [0u8; 256];
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The close frame for a subscription that ended on the gateway's side.
fn end_frame(reason: EndReason) -> Bytes {
    match reason {
        EndReason::Slow => close_frame(CloseCode::Policy, "slow consumer"),
        EndReason::Shutdown => close_frame(CloseCode::Away, "server shutting down"),
        EndReason::ReplayFailed => close_frame(CloseCode::Error, "resume failed; retry"),
        EndReason::CursorReset => close_frame(CloseCode::Other(CLOSE_CURSOR_RESET), "cursor reset"),
        EndReason::Revoked => close_frame(CloseCode::Other(CLOSE_REVOKED), "API key revoked"),
        EndReason::ClientGone | EndReason::PingTimeout | EndReason::ProtocolError => {
            close_frame(CloseCode::Normal, "")
        }
    }
}

fn close_frame(code: CloseCode, reason: &str) -> Bytes {
    let description: String = reason.chars().take(120).collect();
    let mut frame = BytesMut::with_capacity(description.len() + 4);
    Parser::write_close(
        &mut frame,
        Some(CloseReason {
            code,
            description: (!description.is_empty()).then_some(description),
        }),
        false,
    );
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames() {
        let frame = close_frame(CloseCode::Policy, "slow consumer");
        assert_eq!(frame[0], 0x88);
        assert_eq!(usize::from(frame[1]), 2 + "slow consumer".len());
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1008);
        assert_eq!(&frame[4..], b"slow consumer");
        let frame = close_frame(CloseCode::Other(CLOSE_CURSOR_RESET), &"x".repeat(300));
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 4010);
        assert!(
            frame.len() <= 2 + 125,
            "a control frame payload is at most 125 bytes"
        );
    }
}
