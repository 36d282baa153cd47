//! WebSocket adapter: `GET /ws/{game}` and `/ws/type/{type}`, one text frame per event.
//!
//! The connection is the HTTP response body itself: after the 101, actix-web's dispatcher polls
//! `WsConnection`, which reads the client's frames from the request payload, sends pings, and
//! hands the dispatcher the next frames. The frames are the hub's pre-built, shared
//! [`Event::ws_frame`](crate::hub::Event::ws_frame) bytes, so a delivery costs no encoding, and
//! everything queued is written in one go. There is no task or channel per connection, and a
//! connection whose peer stops answering is ended right here (no writer task to get stuck).
//! (This uses actix-http's WebSocket primitives directly rather than actix-ws, whose
//! session channel and writer task this design does not need; see docs/gateway.md.)
//!
//! Protocol rules:
//! - `?since=<seq>` resumes after `seq`; a cursor outside the stream closes with 4010 and a
//!   reason right after the handshake.
//! - Clients send nothing but control frames: a text, binary or continuation frame closes the
//!   connection with 1003; a malformed or oversized frame with 1002.
//! - A ping every `WS_PING_INTERVAL`; a peer that has not answered it by the next one is
//!   dropped without further ado. Client pings are answered.
//! - Slow consumer: 1008 `slow consumer`. Shutdown: 1001. Failed resume: 1011. Key revoked: 4001.
//! - Authentication (`AUTH=required`): the token from `POST /api/auth/token` as the offered
//!   subprotocol (or `?token=`), checked before the upgrade (401/403/429).
//! - A `Sec-WebSocket-Protocol` offered by the client is echoed (its first value), so browsers
//!   accept the handshake when a token travels in it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::body::{BodyStream, MessageBody};
use actix_http::ws::{self as proto, CloseCode, CloseReason, OpCode, Parser};
use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{sleep, Instant, Sleep};

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

#[derive(serde::Deserialize)]
struct WsQuery {
    since: Option<String>,
    /// For clients that cannot set `Sec-WebSocket-Protocol`.
    token: Option<String>,
}

pub async fn by_game(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    serve(req, payload, &state, TopicKind::Game, &path).await
}

pub async fn by_type(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    serve(req, payload, &state, TopicKind::Type, &path).await
}

async fn serve(
    req: HttpRequest,
    payload: web::Payload,
    state: &AppState,
    kind: TopicKind,
    name: &str,
) -> Result<HttpResponse, Refusal> {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| state.settings.ws_allowed_origins.allows(origin));
        if !allowed {
            return Err(Refusal::OriginNotAllowed);
        }
    }
    let topic = resolve_topic(&state.hub, kind, name)?;
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
    let mut sub = state.hub.subscribe(topic, since, Protocol::Ws).await?;
    admission.attach(&state.auth, sub.closer());
    let mut response = proto::handshake_response(req.head());
    if let Some(protocol) = offered {
        response.insert_header((header::SEC_WEBSOCKET_PROTOCOL, protocol));
    }
    let opening = match sub.start() {
        Start::Reset { reason } => {
            tracing::info!(conn_id = sub.id(), topic = %sub.topic(), %reason, "resume cursor outside the stream");
            let frame = close_frame(CloseCode::Other(CLOSE_CURSOR_RESET), &reason.to_string());
            sub.finish(EndReason::CursorReset);
            Phase::Closing(frame)
        }
        _ => Phase::Open,
    };
    let interval = state.settings.ws_ping_interval;
    let connection = WsConnection {
        sub,
        payload: payload.into_inner(),
        read_buf: BytesMut::new(),
        ping: Box::pin(sleep(interval)),
        ping_interval: interval,
        awaiting_pong: false,
        pong: None,
        phase: opening,
        _admission: admission,
    };
    let body = BodyStream::new(connection).boxed();
    Ok(response
        .message_body(body)
        .map_or_else(HttpResponse::from_error, HttpResponse::from))
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

enum Phase {
    Open,
    /// Send this close frame, then end.
    Closing(Bytes),
    Done,
}

/// One WebSocket connection, as the response body.
struct WsConnection {
    sub: Subscription,
    payload: Payload,
    read_buf: BytesMut,
    ping: Pin<Box<Sleep>>,
    ping_interval: Duration,
    awaiting_pong: bool,
    /// A pong owed to the client (only the latest ping is answered).
    pong: Option<Bytes>,
    phase: Phase,
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
    fn read_client(&mut self, cx: &mut Context<'_>) -> Read {
        loop {
            match self.parse_frame() {
                Ok(Some(())) => continue,
                Ok(None) => {}
                Err(read) => return read,
            }
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.read_buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                    self.sub.finish(EndReason::ClientGone);
                    return Read::Gone;
                }
                Poll::Pending => return Read::Idle,
            }
        }
    }

    /// Handles one complete frame from the read buffer: `Ok(Some)` if one was handled, `Ok(None)`
    /// if more bytes are needed, `Err` to stop reading.
    fn parse_frame(&mut self) -> Result<Option<()>, Read> {
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

impl Stream for WsConnection {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.phase, Phase::Done) {
                Phase::Done => return Poll::Ready(None),
                Phase::Closing(frame) => return Poll::Ready(Some(Ok(frame))),
                Phase::Open => this.phase = Phase::Open,
            }
            match this.read_client(cx) {
                Read::Idle => {}
                Read::Close(frame) => {
                    this.phase = Phase::Closing(frame);
                    continue;
                }
                Read::Gone => {
                    this.phase = Phase::Done;
                    continue;
                }
            }
            if let Some(pong) = this.pong.take() {
                return Poll::Ready(Some(Ok(pong)));
            }
            if this.ping.as_mut().poll(cx).is_ready() {
                if this.awaiting_pong {
                    tracing::debug!(
                        conn_id = this.sub.id(),
                        "WebSocket peer did not answer the ping; dropping it"
                    );
                    this.sub.finish(EndReason::PingTimeout);
                    this.phase = Phase::Done;
                    continue;
                }
                this.awaiting_pong = true;
                let next = Instant::now() + this.ping_interval;
                this.ping.as_mut().reset(next);
                return Poll::Ready(Some(Ok(Bytes::from_static(PING))));
            }
            return match this.sub.poll_next(cx) {
                Poll::Ready(Next::Deliver(delivery)) => {
                    Poll::Ready(Some(Ok(delivery.event().ws_frame().clone())))
                }
                Poll::Ready(Next::End(reason)) => {
                    this.phase = Phase::Closing(end_frame(reason));
                    continue;
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
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
