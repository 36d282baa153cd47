//! WebTransport adapter: HTTP/3 sessions at `https://host:4433/wt/{game}` and
//! `/wt/type/{type}` on UDP `WT_ADDR`, over web-transport-quinn (docs/gateway.md, "WebTransport",
//! says why that crate).
//!
//! Every event goes out twice, latest round first on both:
//! - as one **datagram** holding the event's JSON, for the lowest latency. A datagram that does
//!   not fit the session's datagram send buffer (its budget, `CLIENT_QUEUE_BYTES`) or the path's
//!   datagram size is dropped and counted; nothing waits for it;
//! - on one **unidirectional stream** the gateway opens, as newline-delimited JSON, for clients
//!   that need every event. Its backlog (what QUIC flow control has not taken yet) follows the
//!   WebSocket rule: bounded by `CLIENT_QUEUE_BYTES`, a push that does not fit a non-empty backlog
//!   closes the session with 1008 `slow consumer`. A client that only wants datagrams cancels the
//!   stream (STOP_SENDING) and keeps getting datagrams.
//!
//! The session is refused with an HTTP status before it is accepted, like the other adapters
//! (`admit`): unknown path, game or type 404, malformed `?since=` 400, a missing, bad or
//! out-of-scope `?token=` 401/403 (when `AUTH=required`), caps reached 429, hub not ready or
//! stopping 503. After it is accepted, the gateway ends it with a WebTransport application code
//! and a reason (what a browser's `transport.closed` resolves with), the WebSocket numbers:
//! 1001 shutting down, 1008 slow consumer, 1011 resume failed, 4010 resume cursor outside the
//! stream (reconnect without `since`), 4001 key revoked.
//!
//! # Runtime
//! quinn needs Tokio. The endpoint runs on its own multi-threaded runtime (threads `wt`, one
//! per CPU), not on actix-web's workers nor on the main thread's system arbiter: QUIC does its
//! encryption, pacing and retransmission in user space, a task per connection, so WebTransport
//! load spreads over every core without stalling WebSocket writes on the actix workers or the
//! signal handling on the main thread, and the hub's thread never does socket work. A session
//! is one task driving its [`Subscription`] (it is `Send`), plus quinn's connection driver.
//!
//! Shutdown: the hub's shutdown ends every subscription, so every session closes with 1001 at
//! once; new sessions are refused with 503 meanwhile; when the HTTP side has drained,
//! [`WtServer::stop`] refuses new connections, waits for the last sessions up to the deadline and
//! closes the endpoint.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::ResponseError as _;
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use web_transport_quinn::quinn;
use web_transport_quinn::{Request, SendStream, Session, WriteError};

use super::{cursor, resolve_topic, Refusal, TopicKind};
use crate::auth::{Admission, Auth, Credential};
use crate::hub::{Event, Hub, Next, Start, Subscription};
use crate::metrics::{EndReason, Protocol, WebTransportMetrics};
use crate::tls::Certificates;

/// Application code: the gateway is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 1001;
/// Application code: the client could not keep up (reason `slow consumer`).
pub const CLOSE_SLOW: u32 = 1008;
/// Application code: fetching missed events from the stream failed; retry.
pub const CLOSE_REPLAY_FAILED: u32 = 1011;
/// Application code: the session's API key was revoked.
pub const CLOSE_REVOKED: u32 = 4001;
/// Application code: the resume cursor is outside the stream; reconnect without `since`.
pub const CLOSE_CURSOR_RESET: u32 = 4010;

/// From the first packet to the CONNECT request: a client slower than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that has sent nothing (not even an acknowledgement) for this long, in
/// milliseconds, is gone.
const IDLE_TIMEOUT_MS: u32 = 30_000;
/// The gateway pings this often, so a live but idle client is never taken for a dead one.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Longest wait for the CONNECT response to leave before the first datagram.
const RESPONSE_SEND_WAIT: Duration = Duration::from_millis(100);
/// After closing: how long to wait for the close to reach the client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// What a client may have in flight towards the gateway. It sends nothing but its HTTP/3
/// control streams, the CONNECT request and acknowledgements.
const CLIENT_STREAM_WINDOW: u32 = 64 * 1024;
const CLIENT_CONNECTION_WINDOW: u32 = 256 * 1024;
const CLIENT_DATAGRAM_BUFFER: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WtError {
    #[error("cannot start the WebTransport runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot configure TLS for WebTransport: {0}")]
    Tls(String),
    #[error("cannot listen on UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the HTTP side tells browsers about the endpoint (`GET /api/wt/cert-hash`).
#[derive(Debug, Clone)]
pub struct WtEndpoint {
    pub certs: Certificates,
    /// The UDP port sessions connect to.
    pub port: u16,
}

/// The running WebTransport endpoint, on its own thread and runtime.
#[derive(Debug)]
pub struct WtServer {
    endpoint: WtEndpoint,
    stop: oneshot::Sender<Instant>,
    thread: std::thread::JoinHandle<()>,
}

impl WtServer {
    /// Binds `addr` and starts accepting sessions for `hub`'s topics.
    pub fn start(
        hub: Hub,
        auth: Auth,
        certs: Certificates,
        addr: SocketAddr,
    ) -> Result<WtServer, WtError> {
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wt")
            .enable_all()
            .build()
            .map_err(WtError::Runtime)?;
        let config = server_config(&certs, hub.settings().queue_bytes)?;
        let endpoint = {
            let _runtime = runtime.enter();
            quinn::Endpoint::server(config, addr)
                .map_err(|source| WtError::Bind { addr, source })?
        };
        let port = endpoint
            .local_addr()
            .map_err(|source| WtError::Bind { addr, source })?
            .port();
        tracing::info!(addr = %addr, port, sha256 = %certs.current().hex(), self_signed = certs.is_self_signed(), "WebTransport listening");
        let (stop, stopped) = oneshot::channel();
        let renew = certs.clone();
        let thread = std::thread::Builder::new()
            .name("wt".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::spawn(renew.renew_self_signed());
                    serve(endpoint, hub, auth, stopped).await;
                });
            })
            .map_err(WtError::Runtime)?;
        Ok(WtServer {
            endpoint: WtEndpoint { certs, port },
            stop,
            thread,
        })
    }

    pub fn endpoint(&self) -> &WtEndpoint {
        &self.endpoint
    }

    /// Refuses new connections, waits for open sessions to end (the hub's shutdown ends them)
    /// until `deadline`, then closes the endpoint and returns.
    pub fn stop(self, deadline: Instant) {
        // An error means the accept loop is already gone.
        let _ = self.stop.send(deadline);
        if self.thread.join().is_err() {
            tracing::error!("the WebTransport thread panicked");
        }
    }
}

/// quinn's settings for the endpoint.
fn server_config(certs: &Certificates, queue_bytes: usize) -> Result<quinn::ServerConfig, WtError> {
    let tls = certs
        .server_config()
        .map_err(|err| WtError::Tls(err.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|err| WtError::Tls(err.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            IDLE_TIMEOUT_MS,
        ))))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .datagram_send_buffer_size(queue_bytes)
        .datagram_receive_buffer_size(Some(CLIENT_DATAGRAM_BUFFER))
        .stream_receive_window(CLIENT_STREAM_WINDOW.into())
        .receive_window(CLIENT_CONNECTION_WINDOW.into());
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The accept loop: one task per incoming connection, until told to stop.
async fn serve(
    endpoint: quinn::Endpoint,
    hub: Hub,
    auth: Auth,
    mut stop: oneshot::Receiver<Instant>,
) {
    let mut sessions = JoinSet::new();
    let deadline = loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    sessions.spawn(session(incoming, hub.clone(), auth.clone()));
                }
                None => break None,
            },
            Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(err) = done {
                    tracing::error!(error = %err, "a WebTransport session task failed");
                }
            }
            deadline = &mut stop => break deadline.ok(),
        }
    };
    // No new connections; sessions still open end with the hub's shutdown (1001).
    endpoint.set_server_config(None);
    let deadline = deadline.unwrap_or_else(Instant::now);
    let left = deadline.saturating_duration_since(Instant::now());
    let drained = tokio::time::timeout(left, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "WebTransport sessions still open at the deadline; closing them"
        );
    }
    endpoint.close(
        quinn::VarInt::from_u32(CLOSE_SHUTDOWN),
        b"server shutting down",
    );
    let left = deadline.saturating_duration_since(Instant::now());
    let _ = tokio::time::timeout(left, endpoint.wait_idle()).await;
}

/// One connection: the HTTP/3 handshake and CONNECT request, admission, then the session.
async fn session(incoming: quinn::Incoming, hub: Hub, auth: Auth) {
    let remote = incoming.remote_address();
    let handshake = async { Request::accept(incoming.await?).await };
    let request = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(request)) => request,
        Ok(Err(err)) => {
            tracing::debug!(%remote, error = %err, "WebTransport handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "WebTransport handshake timed out");
            return;
        }
    };
    let wt = &hub.metrics().webtransport;
    let admitted = admit(&hub, &auth, request.url.path(), request.url.query(), remote).await;
    let (mut sub, _admission) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let status = refusal.status_code().as_u16();
            tracing::debug!(%remote, path = request.url.path(), status, reason = %refusal, "WebTransport session refused");
            wt.refused(status);
            let status = web_transport_quinn::http::StatusCode::from_u16(status)
                .unwrap_or(web_transport_quinn::http::StatusCode::NOT_FOUND);
            // The connection closes when its last handle goes, and with it anything not yet
            // sent: hold it until the client, which has its answer, closes it.
            let conn = request.conn().clone();
            if let Err(err) = request.reject(status).await {
                tracing::debug!(%remote, error = %err, "cannot send the refusal");
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.closed()).await;
            return;
        }
    };
    let response_frames = request.conn().stats().frame_tx.stream;
    let session = match request.ok().await {
        Ok(session) => session,
        Err(err) => {
            tracing::debug!(conn_id = sub.id(), %remote, error = %err, "WebTransport session lost while accepting it");
            sub.finish(EndReason::ClientGone);
            return;
        }
    };
    let conn_id = sub.id();
    tracing::debug!(conn_id, topic = %sub.topic(), %remote, "WebTransport session open");
    if let Start::Reset { reason } = sub.start() {
        tracing::info!(conn_id, topic = %sub.topic(), %reason, "resume cursor outside the stream");
        let reason = reason.to_string();
        sub.finish(EndReason::CursorReset);
        close(&session, CLOSE_CURSOR_RESET, &reason).await;
        return;
    }
    response_sent(&session, response_frames).await;
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, session.open_uni()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(conn_id, error = %err, "cannot open the WebTransport stream");
            sub.finish(EndReason::ClientGone);
            return;
        }
        Err(_) => {
            tracing::debug!(conn_id, "the client allows no stream; dropping it");
            sub.finish(EndReason::ProtocolError);
            close(&session, 0, "no stream allowed").await;
            return;
        }
    };
    let limit = hub.settings().queue_bytes;
    if let Some(reason) = pump(&mut sub, &session, stream, limit, &hub).await {
        let (code, text) = close_code(reason);
        close(&session, code, text).await;
    }
}

/// Waits (briefly) until the CONNECT response has gone out in a packet. quinn puts DATAGRAM
/// frames before STREAM frames in a packet, and Chromium drops a datagram that arrives before
/// the response that establishes its session: without this wait, the latest round's datagram
/// often shared the response's packet and was lost.
async fn response_sent(session: &Session, stream_frames_before: u64) {
    let give_up = tokio::time::Instant::now() + RESPONSE_SEND_WAIT;
    while quinn::Connection::stats(session).frame_tx.stream <= stream_frames_before
        && tokio::time::Instant::now() < give_up
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Everything decided before a session is accepted, in the order of the other adapters: the
/// path names a topic (404), the cursor parses (400), the `?token=` allows the topic (401, 403,
/// 429), the hub takes the subscriber (503). The [`Admission`] lives as long as the session: it
/// holds its places under the connection caps and closes it (4001) when its key is revoked.
async fn admit(
    hub: &Hub,
    auth: &Auth,
    path: &str,
    query: Option<&str>,
    remote: SocketAddr,
) -> Result<(Subscription, Admission), Refusal> {
    let (kind, name) = route(path).ok_or_else(|| Refusal::UnknownTopic {
        what: "WebTransport endpoint",
        name: path.chars().take(64).collect(),
    })?;
    let topic = resolve_topic(hub, kind, &name)?;
    let params = actix_web::web::Query::<WtQuery>::from_query(query.unwrap_or_default())
        .map_err(|err| Refusal::BadRequest(err.to_string()))?;
    let since = cursor(params.since.as_deref())?;
    let credential = params
        .token
        .as_deref()
        .map_or(Credential::None, Credential::Token);
    let mut admission = auth.admit(credential, hub, &topic, Some(remote.ip()))?;
    let sub = hub.subscribe(topic, since, Protocol::Wt).await?;
    admission.attach(auth, sub.closer());
    Ok((sub, admission))
}

#[derive(serde::Deserialize)]
struct WtQuery {
    since: Option<String>,
    token: Option<String>,
}

/// `/wt/{game}` or `/wt/type/{type}`, the name percent-decoded.
fn route(path: &str) -> Option<(TopicKind, String)> {
    let rest = path.strip_prefix("/wt/")?;
    let (kind, name) = match rest.strip_prefix("type/") {
        Some(game_type) => (TopicKind::Type, game_type),
        None => (TopicKind::Game, rest),
    };
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()?;
    Some((kind, name.into_owned()))
}

/// Sends every delivery as a datagram and as a stream line until the subscription ends or the
/// client leaves. Returns why the gateway ends the session, `None` when the client left. A
/// stream the gateway ends is reset with the session's close code (not finished), so a client
/// reading it never takes the end of the session for the end of the data.
async fn pump(
    sub: &mut Subscription,
    session: &Session,
    stream: SendStream,
    limit: usize,
    hub: &Hub,
) -> Option<EndReason> {
    let metrics = hub.metrics();
    let wt = &metrics.webtransport;
    let conn_id = sub.id();
    let mut stream = Some(stream);
    // Lines QUIC has not taken yet (flow control), and their bytes still to write.
    let mut backlog: VecDeque<Bytes> = VecDeque::new();
    let mut backlog_bytes = 0usize;
    let closed = session.closed();
    tokio::pin!(closed);
    loop {
        let writable = stream.is_some() && !backlog.is_empty();
        tokio::select! {
            biased;
            err = &mut closed => {
                tracing::debug!(conn_id, reason = %err, "WebTransport session closed by the client");
                sub.finish(EndReason::ClientGone);
                return None;
            }
            written = write(&mut stream, &mut backlog), if writable => match written {
                Ok(written) => {
                    backlog.drain(..written.chunks);
                    backlog_bytes -= written.bytes;
                    wt.stream_deliveries.inc_by(written.chunks as u64);
                }
                Err(WriteError::Stopped(_) | WriteError::InvalidStopped(_)) => {
                    tracing::debug!(conn_id, "the client stopped the stream; datagrams only from now on");
                    stream = None;
                    backlog.clear();
                    backlog_bytes = 0;
                }
                Err(err) => {
                    tracing::debug!(conn_id, error = %err, "WebTransport stream lost");
                    sub.finish(EndReason::ClientGone);
                    return None;
                }
            },
            next = sub.next() => match next {
                Next::Deliver(delivery) => {
                    let event = delivery.event();
                    send_datagram(session, event, wt, conn_id);
                    if stream.is_some() {
                        let line = event.wt_line();
                        if !backlog.is_empty() && backlog_bytes + line.len() > limit {
                            tracing::info!(conn_id, seq = event.seq, backlog = backlog.len(), "WebTransport client cannot keep up with the stream");
                            metrics.dropped_slow.inc_by(backlog.len() as u64 + 1);
                            sub.finish(EndReason::Slow);
                            return Some(reset(stream, EndReason::Slow));
                        }
                        backlog_bytes += line.len();
                        backlog.push_back(line.clone());
                    }
                }
                Next::End(reason) => return Some(reset(stream, reason)),
            },
        }
    }
}

/// Resets the stream with the code the session is about to close with.
fn reset(stream: Option<SendStream>, reason: EndReason) -> EndReason {
    if let Some(mut stream) = stream {
        // An error means the stream is gone already.
        let _ = stream.reset(close_code(reason).0);
    }
    reason
}

/// Hands QUIC as much of the backlog as flow control allows (cancel-safe: nothing is written
/// unless this completes).
async fn write(
    stream: &mut Option<SendStream>,
    backlog: &mut VecDeque<Bytes>,
) -> Result<quinn::Written, WriteError> {
    match stream {
        Some(stream) => stream.write_chunks(backlog.make_contiguous()).await,
        None => std::future::pending().await,
    }
}

/// One datagram with the event's JSON, unless it cannot go now: then it is dropped and counted.
fn send_datagram(session: &Session, event: &Event, wt: &WebTransportMetrics, conn_id: u64) {
    let json = event.json();
    if json.len() > session.max_datagram_size() {
        wt.datagrams_dropped_too_large.inc();
        return;
    }
    if json.len() > session.datagram_send_buffer_space() {
        wt.datagrams_dropped_budget.inc();
        return;
    }
    match session.send_datagram(json.clone()) {
        Ok(()) => {
            wt.datagrams_sent.inc();
        }
        // The session is closing: the pump sees it next.
        Err(err) => tracing::debug!(conn_id, seq = event.seq, error = %err, "datagram not sent"),
    }
}

/// The application code and reason a session ended by the gateway closes with.
fn close_code(reason: EndReason) -> (u32, &'static str) {
    match reason {
        EndReason::Slow => (CLOSE_SLOW, "slow consumer"),
        EndReason::Shutdown => (CLOSE_SHUTDOWN, "server shutting down"),
        EndReason::ReplayFailed => (CLOSE_REPLAY_FAILED, "resume failed; retry"),
        EndReason::CursorReset => (CLOSE_CURSOR_RESET, "cursor reset"),
        EndReason::Revoked => (CLOSE_REVOKED, "API key revoked"),
        EndReason::ClientGone | EndReason::PingTimeout | EndReason::ProtocolError => (0, ""),
    }
}

/// Closes the session with `code` and `reason` and waits (a little) for the close to go out.
async fn close(session: &Session, code: u32, reason: &str) {
    session.close(code, reason.as_bytes());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.closed()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/wt/crash"),
            Some((TopicKind::Game, "crash".to_owned()))
        );
        assert_eq!(
            route("/wt/type/multiplier"),
            Some((TopicKind::Type, "multiplier".to_owned()))
        );
        assert_eq!(
            route("/wt/aviator%2Dwars"),
            Some((TopicKind::Game, "aviator-wars".to_owned()))
        );
        assert_eq!(
            route("/wt/type"),
            Some((TopicKind::Game, "type".to_owned()))
        );
        for bad in [
            "/wt/",
            "/wt/type/",
            "/ws/crash",
            "/wt/crash/x",
            "/wt/type/a/b",
            "/",
            "/wt/%ff",
        ] {
            assert_eq!(route(bad), None, "{bad}");
        }
    }

    #[test]
    fn close_codes_match_the_websocket_ones() {
        assert_eq!(close_code(EndReason::Slow), (1008, "slow consumer"));
        assert_eq!(close_code(EndReason::Shutdown).0, 1001);
        assert_eq!(close_code(EndReason::ReplayFailed).0, 1011);
        assert_eq!(
            u32::from(crate::transport::ws::CLOSE_CURSOR_RESET),
            CLOSE_CURSOR_RESET
        );
    }
}
