//! Server-Sent Events adapter: `GET /sse/{game}` and `/sse/type/{type}`.
//!
//! The stream is `retry: <ms>`, then `event: initial` with the latest round (or, when
//! resuming, the missed rounds as `event: message`), then `event: message` per round, each with
//! `id: <seq>`, and a `: heartbeat <unix seconds>` comment every `SSE_HEARTBEAT_INTERVAL`.
//! A cursor comes from `Last-Event-ID` (what `EventSource` sends when it reconnects) or, for a
//! first connection, `?last_event_id=`; the header wins when both are present. A cursor outside
//! the stream gets `event: reset` (with an empty `id:`, which clears the browser's cursor)
//! followed by the latest round and live events.
//!
//! Like the WebSocket adapter, the connection is the response body: the dispatcher polls
//! `SseConnection`, which hands it the hub's pre-built `event: message` blocks. A chunk is
//! written as soon as the body has nothing more ready, so each event leaves at once; nothing on
//! this path compresses or buffers, and `X-Accel-Buffering: no` asks proxies not to either.
//! When the subscription ends (slow client, shutdown) the stream ends; `EventSource` reconnects
//! by itself with its `Last-Event-ID`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{sleep, Instant, Sleep};

use super::{client_ip, cursor, query, resolve_topic, Refusal, TopicKind};
use crate::auth::{Admission, Credential};
use crate::hub::{Delivery, Next, Start, Subscription};
use crate::metrics::Protocol;
use crate::server::AppState;

#[derive(serde::Deserialize)]
struct SseQuery {
    last_event_id: Option<String>,
    /// For EventSource, which cannot set headers.
    api_key: Option<String>,
}

/// The stream of `/sse/{game}` and `/sse/type/{type}` ([`super::mount`]ed on both).
pub async fn subscribe(
    req: HttpRequest,
    kind: TopicKind,
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Refusal> {
    let topic = resolve_topic(&state.hub, kind, &name)?;
    // The header is what a reconnecting EventSource sends: it wins over the URL's cursor.
    let raw_cursor = match req.headers().get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Refusal::BadRequest("Last-Event-ID is not text".into()))?
                .to_owned(),
        ),
        None => None,
    };
    let params = query::<SseQuery>(&req)?;
    let raw_cursor = match raw_cursor.filter(|c| !c.trim().is_empty()) {
        Some(raw) => Some(raw),
        None => params.last_event_id,
    };
    let since = cursor(raw_cursor.as_deref())?;
    let header_key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    let credential = match header_key.or(params.api_key.as_deref()) {
        Some(key) => Credential::ApiKey(key),
        None => Credential::None,
    };
    let mut admission = state
        .auth
        .admit(credential, &state.hub, &topic, client_ip(&req))?;
    let sub = state.hub.subscribe(topic, since, Protocol::Sse).await?;
    admission.attach(&state.auth, sub.closer());
    let mut preamble = format!("retry: {}\n\n", state.settings.sse_retry.as_millis());
    if let Start::Reset { reason } = sub.start() {
        tracing::info!(conn_id = sub.id(), topic = %sub.topic(), %reason, "resume cursor outside the stream");
        let data = serde_json::json!({ "reason": reason.to_string() });
        preamble.push_str(&format!("id:\nevent: reset\ndata: {data}\n\n"));
    }
    let interval = state.settings.sse_heartbeat_interval;
    let connection = SseConnection {
        sub,
        preamble: Some(Bytes::from(preamble)),
        heartbeat: Box::pin(sleep(interval)),
        heartbeat_interval: interval,
        done: false,
        _admission: admission,
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(connection))
}

/// One SSE connection, as the response body.
struct SseConnection {
    sub: Subscription,
    preamble: Option<Bytes>,
    heartbeat: Pin<Box<Sleep>>,
    heartbeat_interval: Duration,
    done: bool,
    /// Held for the connection's life: its places under the caps, its revocation hook.
    _admission: Admission,
}

impl Stream for SseConnection {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(preamble) = this.preamble.take() {
            return Poll::Ready(Some(Ok(preamble)));
        }
        match this.sub.poll_next(cx) {
            Poll::Ready(Next::Deliver(Delivery::Initial(event))) => {
                return Poll::Ready(Some(Ok(event.sse_initial().clone())))
            }
            Poll::Ready(Next::Deliver(Delivery::Message(event))) => {
                return Poll::Ready(Some(Ok(event.sse_message().clone())))
            }
            Poll::Ready(Next::End(_)) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if this.heartbeat.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + this.heartbeat_interval;
            this.heartbeat.as_mut().reset(next);
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            return Poll::Ready(Some(Ok(Bytes::from(format!(": heartbeat {unix}\n\n")))));
        }
        Poll::Pending
    }
}
