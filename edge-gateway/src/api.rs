//! The small REST surface: the games and their latest rounds (from the hub, never PostgreSQL),
//! and the probes and metrics an orchestrator scrapes.
//!
//! - `GET /api/games`: the catalog as the `games` KV bucket has it, ordered by slug.
//! - `GET /api/games/{game}/latest`: the latest round of a game, exactly as clients receive it
//!   (with `seq`); 404 for an unknown game or one without rounds yet.
//! - `GET /api/wt/cert-hash`: what a browser needs to open a WebTransport session to this pod:
//!   the SHA-256 of the endpoint's certificate (for `serverCertificateHashes`) and its UDP port.
//! - `POST /api/auth/token`: a 30-second token for the API key in `X-API-Key` (401 without a
//!   valid one, 429 with `Retry-After` over the rate).
//! - `GET /health`: the process is alive (always 200 while it serves HTTP).
//! - `GET /ready`: 200 when NATS is connected, the hub has caught up with the stream and the
//!   catalog (and, with `AUTH=required`, the key set) is loaded, and the gateway is not shutting down; 503 otherwise. Both carry the
//!   parts as JSON.
//! - `GET /metrics`: Prometheus text.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::server::AppState;
use crate::transport::{client_ip, json_error, Refusal};

pub async fn games(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.hub.games())
}

pub async fn latest(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    let slug = path.into_inner();
    if state.hub.game_topic(&slug).is_none() {
        let shown: String = slug.chars().take(64).collect();
        return json_error(StatusCode::NOT_FOUND, format!("unknown game {shown:?}"));
    }
    match state.hub.latest_for_game(&slug) {
        Some(event) => HttpResponse::Ok()
            .content_type("application/json")
            .body(event.json().clone()),
        None => json_error(StatusCode::NOT_FOUND, format!("no round of {slug:?} yet")),
    }
}

/// `GET /api/wt/cert-hash`: `{"algorithm": "sha-256", "value": "<hex>", "bytes": [32 numbers],
/// "self_signed": true, "expires_at": <Unix ms or null>, "port": 4433}`. A page passes
/// `{algorithm, value: new Uint8Array(bytes)}` as `serverCertificateHashes` (only for a
/// self-signed certificate: a CA-signed one is trusted as it is). Never cached: a self-signed
/// certificate is renewed while the process runs.
pub async fn wt_cert_hash(state: web::Data<AppState>) -> HttpResponse {
    let cert = state.wt.certs.current();
    let expires_at = cert.not_after.and_then(|at| {
        at.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64)
    });
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({
            "algorithm": "sha-256",
            "value": cert.hex(),
            "bytes": cert.sha256,
            "self_signed": cert.self_signed,
            "expires_at": expires_at,
            "port": state.wt.port,
        }))
}

/// `POST /api/auth/token` with `X-API-Key`: `{"token": "...", "expires_in": 30}`.
pub async fn token(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Refusal> {
    let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    let (token, expires_in) = state.auth.issue_token(key, client_ip(&req))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "token": token, "expires_in": expires_in })))
}

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let readiness = state.hub.readiness();
    let keys_loaded = state.auth.is_ready();
    let ready = readiness.ready() && keys_loaded;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(serde_json::json!({
        "ready": ready,
        "keys_loaded": keys_loaded,
        "nats_connected": readiness.nats_connected,
        "caught_up": readiness.caught_up,
        "catalog_loaded": readiness.catalog_loaded,
        "shutting_down": readiness.shutting_down,
    }))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    match state.hub.metrics().encode() {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(err) => json_error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

pub async fn not_found() -> HttpResponse {
    json_error(StatusCode::NOT_FOUND, "no such endpoint")
}
