//! The catalog edge pods need without PostgreSQL: games and API keys, kept in NATS KV.
//!
//! At the start of every session the buckets are rewritten from the tables (so a lost or stale
//! bucket heals itself), then the replication stream keeps them current change by change.

use std::collections::HashSet;

use async_nats::jetstream::{self, kv};
use futures_util::TryStreamExt;
use shared::subject::{API_KEYS_BUCKET, GAMES_BUCKET};
use shared::{ApiKeyRecord, Game};

use crate::events::CatalogChange;
use crate::replication::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the catalog from PostgreSQL: {0}")]
    Read(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Bucket(#[from] shared::nats::NatsError),
    #[error("writing KV bucket {bucket}: {source}")]
    Write {
        bucket: &'static str,
        source: async_nats::Error,
    },
}

/// The tables as of one moment, and an LSN no later than that moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Catalog changes committed before this LSN are in the snapshot.
    pub guard: Lsn,
    pub games: Vec<Game>,
    pub keys: Vec<ApiKeyRecord>,
}

/// Reads games and API keys. The guard LSN is read first, so a change it lets through as "newer"
/// may already be in the snapshot (applied twice, harmless) but never the other way round.
pub async fn load(client: &tokio_postgres::Client) -> Result<Snapshot, CatalogError> {
    let guard: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let games = client
        .query("SELECT id, slug, name, type FROM games ORDER BY id", &[])
        .await?
        .iter()
        .map(|row| Game {
            id: row.get(0),
            slug: row.get(1),
            name: row.get(2),
            game_type: row.get(3),
        })
        .collect();
    let keys = client
        .query(
            "SELECT id, name, key_hash, scopes, revoked_at IS NOT NULL, max_connections
               FROM api_keys ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|row| ApiKeyRecord {
            id: row.get(0),
            name: row.get(1),
            key_hash: row.get(2),
            scopes: row.get(3),
            revoked: row.get(4),
            max_connections: row
                .get::<_, Option<i32>>(5)
                .and_then(|n| u32::try_from(n).ok()),
        })
        .collect();
    Ok(Snapshot {
        guard: guard.parse().unwrap_or(Lsn::ZERO),
        games,
        keys,
    })
}

/// The two KV buckets.
#[derive(Clone)]
pub struct Catalog {
    games: kv::Store,
    keys: kv::Store,
}

impl Catalog {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Catalog, CatalogError> {
        Ok(Catalog {
            games: shared::nats::ensure_kv_bucket(js, GAMES_BUCKET, replicas).await?,
            keys: shared::nats::ensure_kv_bucket(js, API_KEYS_BUCKET, replicas).await?,
        })
    }

    /// Makes the buckets hold exactly the snapshot.
    pub async fn sync(&self, snapshot: &Snapshot) -> Result<(), CatalogError> {
        for game in &snapshot.games {
            self.put_game(game).await?;
        }
        let slugs: HashSet<&str> = snapshot.games.iter().map(|g| g.slug.as_str()).collect();
        for stale in keys_of(&self.games, GAMES_BUCKET).await? {
            if !slugs.contains(stale.as_str()) {
                delete(&self.games, GAMES_BUCKET, &stale).await?;
            }
        }
        for key in &snapshot.keys {
            self.put_key(key).await?;
        }
        let ids: HashSet<String> = snapshot.keys.iter().map(|k| k.id.to_string()).collect();
        for stale in keys_of(&self.keys, API_KEYS_BUCKET).await? {
            if !ids.contains(&stale) {
                delete(&self.keys, API_KEYS_BUCKET, &stale).await?;
            }
        }
        Ok(())
    }

    /// Carries out one change from the replication stream.
    pub async fn apply(&self, change: &CatalogChange) -> Result<(), CatalogError> {
        match change {
            CatalogChange::GameUpsert(game) => self.put_game(game).await,
            CatalogChange::GameRemoved { slug } => delete(&self.games, GAMES_BUCKET, slug).await,
            CatalogChange::GamesCleared => {
                for slug in keys_of(&self.games, GAMES_BUCKET).await? {
                    delete(&self.games, GAMES_BUCKET, &slug).await?;
                }
                Ok(())
            }
            CatalogChange::KeyUpsert(key) => self.put_key(key).await,
            CatalogChange::KeyRemoved { id } => {
                delete(&self.keys, API_KEYS_BUCKET, &id.to_string()).await
            }
            CatalogChange::KeysCleared => {
                for id in keys_of(&self.keys, API_KEYS_BUCKET).await? {
                    delete(&self.keys, API_KEYS_BUCKET, &id).await?;
                }
                Ok(())
            }
        }
    }

    async fn put_game(&self, game: &Game) -> Result<(), CatalogError> {
        put(&self.games, GAMES_BUCKET, &game.slug, game).await
    }

    async fn put_key(&self, key: &ApiKeyRecord) -> Result<(), CatalogError> {
        put(&self.keys, API_KEYS_BUCKET, &key.id.to_string(), key).await
    }
}

async fn put(
    store: &kv::Store,
    bucket: &'static str,
    key: &str,
    value: &impl serde::Serialize,
) -> Result<(), CatalogError> {
    let write = |source: async_nats::Error| CatalogError::Write { bucket, source };
    let json = serde_json::to_vec(value).map_err(|e| write(e.into()))?;
    store
        .put(key, json.into())
        .await
        .map_err(|e| write(e.into()))?;
    Ok(())
}

async fn delete(store: &kv::Store, bucket: &'static str, key: &str) -> Result<(), CatalogError> {
    store.delete(key).await.map_err(|e| CatalogError::Write {
        bucket,
        source: e.into(),
    })
}

async fn keys_of(store: &kv::Store, bucket: &'static str) -> Result<Vec<String>, CatalogError> {
    let write = |source: async_nats::Error| CatalogError::Write { bucket, source };
    store
        .keys()
        .await
        .map_err(|e| write(e.into()))?
        .try_collect()
        .await
        .map_err(|e| write(e.into()))
}
