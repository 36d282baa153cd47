//! The HTTP server: routes, request limits, CORS, and the process's runtimes.
//!
//! `run` starts the hub's thread (its own single-threaded Tokio runtime: the NATS feed and the
//! dispatch, see [`crate::hub`]), the WebTransport endpoint (its own runtime, see
//! [`crate::transport::wt`]) and then actix-web on the main thread (the system arbiter
//! handles signals; `HTTP_WORKERS` worker threads serve the sockets). The HTTP listener is up
//! before NATS is reached, so `/health` answers at once and `/ready` tells when the hub is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_http::HttpService;
use actix_service::{map_config, IntoServiceFactory};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};

use crate::auth::{Auth, Mode};
use crate::config::{Config, Origins};
use crate::hub::{feed, Hub, HubSettings};
use crate::metrics::Metrics;
use crate::tls::Certificates;
use crate::transport::wt::{WtEndpoint, WtError, WtServer};
use crate::transport::{self, json_error, sse, upgrade, ws};
use crate::{api, shutdown};

/// Longest request target (path and query) accepted; longer gets 414.
pub const MAX_URI_BYTES: usize = 2048;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub hub: Hub,
    pub auth: Auth,
    pub settings: HttpSettings,
    /// The WebTransport endpoint's port and certificate, for `/api/wt/cert-hash`.
    pub wt: WtEndpoint,
}

/// The HTTP-side settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub ws_ping_interval: Duration,
    pub sse_heartbeat_interval: Duration,
    pub sse_retry: Duration,
    pub ws_allowed_origins: Origins,
    pub cors_allowed_origins: Origins,
    pub max_header_bytes: usize,
}

impl HttpSettings {
    pub fn from_config(config: &Config) -> HttpSettings {
        HttpSettings {
            ws_ping_interval: config.ws_ping_interval,
            sse_heartbeat_interval: config.sse_heartbeat_interval,
            sse_retry: config.sse_retry,
            ws_allowed_origins: config.ws_allowed_origins.clone(),
            cors_allowed_origins: config.cors_allowed_origins.clone(),
            max_header_bytes: config.max_header_bytes,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot start the hub thread: {0}")]
    HubThread(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    WebTransport(#[from] WtError),
}

/// Runs the gateway until SIGTERM/SIGINT and the drain that follows.
pub fn run(config: Config) -> Result<(), ServerError> {
    // A bad TLS_CERT/TLS_KEY stops start-up before anything else is logged.
    let certs = Certificates::load(config.tls_cert.as_deref(), config.tls_key.as_deref())
        .unwrap_or_else(|err| shared::config::invalid(err.setting(), err));
    let metrics = Metrics::new();
    let hub = Hub::new(
        HubSettings {
            stream: config.stream.clone(),
            history_size: config.history_size,
            history_bytes: config.history_bytes,
            queue_bytes: config.client_queue_bytes,
        },
        Arc::clone(&metrics),
    );
    let auth = Auth::new(config.auth_settings());
    if auth.mode() == Mode::Off {
        tracing::warn!("AUTH=off: anyone can subscribe; use this for local demos only");
    }
    spawn_hub_thread(hub.clone(), auth.clone(), config.nats_url.clone())?;
    let wt = WtServer::start(hub.clone(), auth.clone(), certs, config.wt_addr)?;
    let grace = config.shutdown_grace;
    let served =
        actix_web::rt::System::new().block_on(serve(hub, auth, wt.endpoint().clone(), config));
    // The hub's shutdown has ended every session already; this closes the endpoint.
    wt.stop(std::time::Instant::now() + grace);
    served
}

/// The hub's thread also follows the API keys: both are NATS readers that must never wait on
/// a client.
fn spawn_hub_thread(hub: Hub, auth: Auth, nats_url: String) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::HubThread)?;
    std::thread::Builder::new()
        .name("hub".into())
        .spawn(move || {
            runtime.block_on(async move {
                let keys = async {
                    if auth.mode() == Mode::Off {
                        return;
                    }
                    match shared::nats::connect(&nats_url, "edge-gateway keys").await {
                        Ok(client) => auth.follow_keys(async_nats::jetstream::new(client)).await,
                        Err(err) => tracing::error!(error = %err, "cannot follow API keys"),
                    }
                };
                tokio::join!(feed::run(hub, nats_url.clone()), keys);
            })
        })
        .map_err(ServerError::HubThread)?;
    Ok(())
}

async fn serve(hub: Hub, auth: Auth, wt: WtEndpoint, config: Config) -> Result<(), ServerError> {
    // Installed before binding, so a SIGTERM during start-up is a clean stop too.
    let signals = shutdown::Signals::install().map_err(ServerError::Signals)?;
    let state = web::Data::new(AppState {
        hub: hub.clone(),
        auth,
        settings: HttpSettings::from_config(&config),
        wt,
    });
    let workers = config.http_workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let grace = config.shutdown_grace;
    let metrics_server = match config.metrics_addr {
        Some(addr) => Some(metrics_server(state.clone(), addr)?),
        None => None,
    };
    let metrics_on_main = metrics_server.is_none();
    let addr = config.http_addr;
    // actix-web's HttpServer, assembled by hand for the one thing it cannot do: hand WebSocket
    // sockets over after their handshake (transport::upgrade).
    let builder = actix_server::Server::build();
    // Tells idle keep-alive connections to close when the drain starts.
    let drain_started = builder.graceful_shutdown_signal();
    let server = builder
        .workers(workers)
        .backlog(4096)
        .shutdown_timeout(grace.as_secs_f64().ceil() as u64)
        .disable_signals()
        .bind("edge-gateway", addr, move || {
            let make_app = {
                let state = state.clone();
                move || app(state.clone(), metrics_on_main).into_factory()
            };
            let drain_started = drain_started.clone();
            HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = drain_started.clone();
                    async move { signal.notified().await }
                })
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .local_addr(addr)
                .upgrade(upgrade::factory(make_app.clone()))
                .finish(map_config(make_app(), |()| AppConfig::default()))
                .tcp()
        })
        .map_err(|source| ServerError::Bind { addr, source })?
        .run();
    tracing::info!(addr = %config.http_addr, workers, nats = %config.nats_url, stream = %config.stream, "edge-gateway listening");
    actix_web::rt::spawn(shutdown::drain_on_signal(
        signals,
        hub,
        server.handle(),
        grace,
    ));
    let metrics_handle = metrics_server.map(|metrics| {
        let handle = metrics.handle();
        actix_web::rt::spawn(metrics);
        handle
    });
    server.await.map_err(ServerError::Serve)?;
    if let Some(metrics) = metrics_handle {
        metrics.stop(false).await;
    }
    tracing::info!("edge-gateway stopped");
    Ok(())
}

/// The app on the public port: every route behind the request limits and CORS.
fn app(
    state: web::Data<AppState>,
    metrics_on_main: bool,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .wrap(from_fn(edge))
        .configure(|cfg| {
            routes(cfg);
            if metrics_on_main {
                cfg.route("/metrics", web::get().to(api::metrics));
            }
        })
}

/// The `METRICS_ADDR` listener: `/metrics` and `/health` only, one worker.
fn metrics_server(
    state: web::Data<AppState>,
    addr: SocketAddr,
) -> Result<actix_web::dev::Server, ServerError> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", web::get().to(api::metrics))
            .route("/health", web::get().to(api::health))
            .default_service(web::to(api::not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)
    .map_err(|source| ServerError::Bind { addr, source })?
    .run();
    tracing::info!(%addr, "metrics listening");
    Ok(server)
}

/// The routes (spec §4), but for `/metrics`, which goes where `METRICS_ADDR` says.
pub fn routes(cfg: &mut web::ServiceConfig) {
    transport::mount(cfg, "ws", ws::subscribe);
    transport::mount(cfg, "sse", sse::subscribe);
    cfg.route("/api/auth/token", web::post().to(api::token))
        .route("/api/games", web::get().to(api::games))
        .route("/api/wt/cert-hash", web::get().to(api::wt_cert_hash))
        .route("/api/games/{game}/latest", web::get().to(api::latest))
        .route("/health", web::get().to(api::health))
        .route("/ready", web::get().to(api::ready))
        .configure(crate::page::routes)
        .default_service(web::to(api::not_found));
}

/// Request limits and CORS, in front of every route.
///
/// actix-http accepts request heads up to 128 KiB; anything over `MAX_HEADER_BYTES` gets 431
/// here, and a request target over [`MAX_URI_BYTES`] gets 414, before any handler runs.
/// CORS: an allowed `Origin` is answered with `Access-Control-Allow-Origin`, preflights with
/// 204. WebSocket upgrades are checked separately against `WS_ALLOWED_ORIGINS` (in `ws`).
async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let settings = &state.settings;
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_URI_BYTES {
        let response = json_error(StatusCode::URI_TOO_LONG, "request target too long");
        return Ok(req.into_response(response).map_into_right_body());
    }
    let head_len = target_len
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head_len > settings.max_header_bytes {
        let response = json_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large",
        );
        return Ok(req.into_response(response).map_into_right_body());
    }
    let allowed_origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|origin| {
            origin
                .to_str()
                .is_ok_and(|o| settings.cors_allowed_origins.allows(o))
        })
        .cloned();
    let allow_value = |origin: HeaderValue| match settings.cors_allowed_origins {
        Origins::Any => HeaderValue::from_static("*"),
        Origins::List(_) => origin,
    };
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut response = actix_web::HttpResponse::NoContent();
        if let Some(origin) = allowed_origin {
            response
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_value(origin)))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                .insert_header((header::VARY, "Origin"));
            if let Some(requested) = req
                .headers()
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
            {
                response.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, requested));
            }
        }
        let response = response.finish();
        return Ok(req.into_response(response).map_into_right_body());
    }
    let mut response = next.call(req).await?;
    if let Some(origin) = allowed_origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_value(origin));
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    Ok(response.map_into_left_body())
}
