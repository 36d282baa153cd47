//! Who may subscribe: API keys, short-lived tokens, scopes, connection caps and rate limits.
//!
//! Every transport asks one question before any upgrade, [`Auth::admit`], with whatever the
//! client presented ([`Credential`]): a token (WebSocket's `Sec-WebSocket-Protocol`,
//! WebTransport's `?token=`) or an API key (SSE's `X-API-Key` / `?api_key=`). The answer is an
//! [`Admission`] that holds the connection's places under the caps and, once attached to the
//! subscription, lets a revocation close it; or a [`Denied`] that becomes 401, 403 or 429.
//!
//! Keys come from the `api-keys` KV bucket ([`keys::KeySet`]); no gateway touches PostgreSQL.
//! Neither keys nor tokens are ever logged: only key ids are.

pub mod keys;
pub mod limits;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::hub::{Closer, Hub, Topic};
use crate::metrics::EndReason;
use keys::{Key, KeySet};
use limits::{Counter, RateKey, RateLimiter, Slot};
use token::{Signer, TokenError};

/// `AUTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every subscription needs a valid key or token (the default).
    Required,
    /// Anyone may subscribe: for local demos only.
    Off,
}

/// The settings of [`Auth`].
#[derive(Clone)]
pub struct AuthSettings {
    pub mode: Mode,
    pub secret: Vec<u8>,
    /// Connections per key when the key sets no cap of its own (0: no cap).
    pub max_connections_per_key: u32,
    /// Connections per client IP address (0: no cap).
    pub max_connections_per_ip: u32,
    /// Tokens per second a key may obtain (bursts of four seconds' worth).
    pub token_rate_per_key: f64,
    /// Token requests per second from one IP address, valid key or not.
    pub token_rate_per_ip: f64,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("max_connections_per_key", &self.max_connections_per_key)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .finish_non_exhaustive()
    }
}

/// What a client presented.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    Token(&'a str),
    ApiKey(&'a str),
    None,
}

/// Why a client is turned away. The messages go to the client and never contain a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("credentials required")]
    Missing,
    #[error("invalid API key")]
    UnknownKey,
    #[error("{0}")]
    Token(TokenError),
    #[error("API key revoked")]
    Revoked,
    #[error("this key may not subscribe to {0}")]
    OutOfScope(String),
    #[error("too many connections for this key")]
    KeyConnections,
    #[error("too many connections from this address")]
    IpConnections,
    #[error("too many token requests")]
    RateLimited { retry_after: Duration },
}

impl Denied {
    /// The HTTP status this denial is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Denied::Missing | Denied::UnknownKey | Denied::Token(_) | Denied::Revoked => 401,
            Denied::OutOfScope(_) => 403,
            Denied::KeyConnections | Denied::IpConnections | Denied::RateLimited { .. } => 429,
        }
    }
}

/// Authentication and limits of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AuthSettings,
    signer: Signer,
    keys: KeySet,
    per_key: Arc<Counter<i64>>,
    per_ip: Arc<Counter<IpAddr>>,
    key_rate: RateLimiter,
    ip_rate: RateLimiter,
    connections: Mutex<HashMap<i64, HashMap<u64, Closer>>>,
    next_attachment: AtomicU64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(settings: AuthSettings) -> Auth {
        Auth {
            inner: Arc::new(Inner {
                signer: Signer::new(&settings.secret),
                keys: KeySet::default(),
                per_key: Counter::new(),
                per_ip: Counter::new(),
                key_rate: RateLimiter::new(settings.token_rate_per_key),
                ip_rate: RateLimiter::new(settings.token_rate_per_ip),
                connections: Mutex::new(HashMap::new()),
                next_attachment: AtomicU64::new(1),
                settings,
            }),
        }
    }

    pub fn mode(&self) -> Mode {
        self.inner.settings.mode
    }

    /// Whether keys can be checked: always with `AUTH=off`, else once the key set is loaded.
    pub fn is_ready(&self) -> bool {
        self.mode() == Mode::Off || self.inner.keys.is_loaded()
    }

    /// Follows the `api-keys` bucket forever, closing the connections of revoked keys.
    pub async fn follow_keys(&self, js: async_nats::jetstream::Context) {
        let auth = self.clone();
        self.inner
            .keys
            .follow(js, move |id| auth.close_connections_of(id))
            .await;
    }

    /// `POST /api/auth/token`: a token for a valid API key, and its lifetime in seconds.
    pub fn issue_token(
        &self,
        api_key: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(String, u64), Denied> {
        let now = Instant::now();
        if let Some(ip) = ip {
            self.inner
                .ip_rate
                .take(RateKey::Ip(ip), now)
                .map_err(|retry_after| Denied::RateLimited { retry_after })?;
        }
        let (kid, scopes) = match (self.mode(), api_key) {
            // Tokens are not needed, but clients written for a secured gateway still ask.
            (Mode::Off, _) => (0, Vec::new()),
            (Mode::Required, None) => return Err(Denied::Missing),
            (Mode::Required, Some(raw)) => {
                let key = self.key(raw)?;
                (key.id, key.scopes.clone())
            }
        };
        if self.mode() == Mode::Required {
            self.inner
                .key_rate
                .take(RateKey::Key(kid), now)
                .map_err(|retry_after| Denied::RateLimited { retry_after })?;
        }
        Ok((
            self.inner.signer.issue(kid, &scopes, unix_now()),
            token::TTL_SECONDS,
        ))
    }

    /// Decides whether a client may subscribe to `topic` (whose games are of `game_type`).
    pub fn admit(
        &self,
        credential: Credential<'_>,
        hub: &Hub,
        topic: &Topic,
        ip: Option<IpAddr>,
    ) -> Result<Admission, Denied> {
        let ip_slot = match ip {
            Some(ip) => Some(
                self.inner
                    .per_ip
                    .acquire(ip, self.inner.settings.max_connections_per_ip)
                    .ok_or(Denied::IpConnections)?,
            ),
            None => None,
        };
        if self.mode() == Mode::Off {
            return Ok(Admission::open(ip_slot));
        }
        let (kid, scopes, cap) = match credential {
            Credential::None => return Err(Denied::Missing),
            Credential::ApiKey(raw) => {
                let key = self.key(raw)?;
                (key.id, key.scopes.clone(), key.max_connections)
            }
            Credential::Token(raw) => {
                let claims = self
                    .inner
                    .signer
                    .verify(raw, unix_now())
                    .map_err(Denied::Token)?;
                let cap = self
                    .inner
                    .keys
                    .max_connections(claims.kid)
                    .ok_or(Denied::Revoked)?;
                (claims.kid, claims.scp, cap)
            }
        };
        let (slug, game_type) = match topic {
            Topic::Game(slug) => (Some(slug.as_str()), hub.game_type(slug).unwrap_or_default()),
            Topic::Type(game_type) => (None, game_type.clone()),
        };
        if !Key::allows(&scopes, slug, &game_type) {
            return Err(Denied::OutOfScope(topic.to_string()));
        }
        let cap = cap.unwrap_or(self.inner.settings.max_connections_per_key);
        let key_slot = self
            .inner
            .per_key
            .acquire(kid, cap)
            .ok_or(Denied::KeyConnections)?;
        Ok(Admission {
            key: Some((kid, key_slot)),
            _ip_slot: ip_slot,
            attachment: None,
        })
    }

    fn key(&self, raw: &str) -> Result<Arc<Key>, Denied> {
        self.inner
            .keys
            .by_hash(&shared::hash_api_key(raw))
            .ok_or(Denied::UnknownKey)
    }

    fn close_connections_of(&self, kid: i64) {
        let closers = self
            .inner
            .connections
            .lock()
            .remove(&kid)
            .unwrap_or_default();
        if !closers.is_empty() {
            tracing::info!(
                key_id = kid,
                connections = closers.len(),
                "key revoked: closing its connections"
            );
        }
        for closer in closers.into_values() {
            closer.close(EndReason::Revoked);
        }
    }
}

/// A connection's permission to exist: its places under the caps, and (once attached) its
/// registration for revocation. Keep it as long as the connection; dropping it gives all back.
#[derive(Debug)]
pub struct Admission {
    key: Option<(i64, Slot<i64>)>,
    _ip_slot: Option<Slot<IpAddr>>,
    attachment: Option<(Auth, u64)>,
}

impl Admission {
    fn open(ip_slot: Option<Slot<IpAddr>>) -> Admission {
        Admission {
            key: None,
            _ip_slot: ip_slot,
            attachment: None,
        }
    }

    /// Makes a revocation of this connection's key close the subscription.
    pub fn attach(&mut self, auth: &Auth, closer: Closer) {
        let Some((kid, _)) = self.key else {
            return;
        };
        let id = auth.inner.next_attachment.fetch_add(1, Ordering::Relaxed);
        auth.inner
            .connections
            .lock()
            .entry(kid)
            .or_default()
            .insert(id, closer.clone());
        self.attachment = Some((auth.clone(), id));
        // A revocation that landed between admission and now found nothing to close.
        if !auth.inner.keys.is_active(kid) {
            closer.close(EndReason::Revoked);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let (Some((auth, id)), Some((kid, _))) = (self.attachment.take(), &self.key) {
            let mut connections = auth.inner.connections.lock();
            if let Some(of_key) = connections.get_mut(kid) {
                of_key.remove(&id);
                if of_key.is_empty() {
                    connections.remove(kid);
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
