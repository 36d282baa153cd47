//! Transport adapters: thin layers that turn a hub [`Subscription`] into bytes on one kind of
//! connection.
//!
//! What every adapter does before its first byte is shared here: mounting its handler on both
//! path families ([`mount`]), resolving the path to a topic (404 before any upgrade), reading
//! the cursor (400), subscribing (503 while starting or stopping), and the JSON error bodies. An
//! adapter (`ws`, `sse`, `wt`) only adds its handshake and its framing.
//!
//! [`Subscription`]: crate::hub::Subscription

pub mod sse;
pub mod upgrade;
pub mod ws;
pub mod wt;

use std::future::{ready, Ready};

use actix_web::dev::{Handler, Payload};
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, Responder, ResponseError};

use crate::auth::Denied;
use crate::hub::{parse_cursor, CursorError, Hub, SubscribeError, Topic};

/// Which kind of path a request came in on. A handler [`mount`]ed on both takes it as an
/// argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// `/<proto>/{game}`
    Game,
    /// `/<proto>/type/{type}`
    Type,
}

impl FromRequest for TopicKind {
    type Error = actix_web::Error;
    type Future = Ready<Result<TopicKind, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(req.app_data::<TopicKind>().copied().ok_or_else(|| {
            actix_web::error::ErrorInternalServerError("route mounted without a topic kind")
        }))
    }
}

/// Serves `handler` on `/<prefix>/type/{name}` and `/<prefix>/{name}`, telling it which of the
/// two matched through its [`TopicKind`] argument.
pub fn mount<F, Args>(cfg: &mut web::ServiceConfig, prefix: &str, handler: F)
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    for (kind, pattern) in [
        (TopicKind::Type, format!("/{prefix}/type/{{name}}")),
        (TopicKind::Game, format!("/{prefix}/{{name}}")),
    ] {
        cfg.service(
            web::resource(pattern)
                .app_data(kind)
                .route(web::get().to(handler.clone())),
        );
    }
}

/// Why a subscription request is answered with an error instead of a stream. Every variant is
/// decided before any upgrade, and answered with a JSON body `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// 404.
    #[error("unknown {what} {name:?}")]
    UnknownTopic { what: &'static str, name: String },
    /// 400.
    #[error(transparent)]
    Cursor(#[from] CursorError),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 403.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// 503, with `Retry-After: 1`.
    #[error(transparent)]
    Unavailable(#[from] SubscribeError),
    /// 401, 403 or 429 (with `Retry-After` when rate limited).
    #[error(transparent)]
    Denied(#[from] Denied),
}

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        match self {
            Refusal::UnknownTopic { .. } => StatusCode::NOT_FOUND,
            Refusal::Cursor(_) | Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::OriginNotAllowed => StatusCode::FORBIDDEN,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Denied(denied) => {
                StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::FORBIDDEN)
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = json_error(self.status_code(), self);
        let retry_after = match self {
            Refusal::Unavailable(_) => Some(1),
            Refusal::Denied(Denied::RateLimited { retry_after }) => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON error response: `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message.to_string() }))
}

/// The topic a path names, or a 404 naming what is unknown.
pub fn resolve_topic(hub: &Hub, kind: TopicKind, name: &str) -> Result<Topic, Refusal> {
    let topic = match kind {
        TopicKind::Game => hub.game_topic(name),
        TopicKind::Type => hub.type_topic(name),
    };
    topic.ok_or_else(|| Refusal::UnknownTopic {
        what: match kind {
            TopicKind::Game => "game",
            TopicKind::Type => "game type",
        },
        name: name.chars().take(64).collect(),
    })
}

/// Reads an optional cursor.
pub fn cursor(raw: Option<&str>) -> Result<Option<u64>, Refusal> {
    Ok(raw.map(parse_cursor).transpose()?.flatten())
}

/// The client's IP address, for the per-IP connection cap and rate limit.
pub fn client_ip(req: &HttpRequest) -> Option<std::net::IpAddr> {
    req.peer_addr().map(|addr| addr.ip())
}

/// Reads the query string into `T` (unknown parameters are ignored).
pub fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, Refusal> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|err| Refusal::BadRequest(err.to_string()))
}
