//! The key set every gateway holds in memory, kept current from the `api-keys` KV bucket that
//! the consumer writes from PostgreSQL's `api_keys`. No gateway touches PostgreSQL.
//!
//! A revoked or deleted key is dropped from the set and reported to the [`super::Connections`]
//! registry, which closes its open connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, Store};
use futures_util::StreamExt;
use parking_lot::RwLock;
use shared::subject::API_KEYS_BUCKET;
use shared::{ApiKeyRecord, Scope};

/// A usable key, as the gateway needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: i64,
    /// The stored scope strings (what a token carries).
    pub scopes: Vec<String>,
    pub max_connections: Option<u32>,
}

impl Key {
    /// Whether this key may subscribe to a game of `game_type` named `slug` (`slug` is `None`
    /// for a subscription to the whole type).
    pub fn allows(scopes: &[String], slug: Option<&str>, game_type: &str) -> bool {
        scopes.is_empty()
            || scopes
                .iter()
                .filter_map(|s| Scope::parse(s))
                .any(|scope| match scope {
                    Scope::Game(g) => slug == Some(g.as_str()),
                    Scope::Type(t) => t == game_type,
                })
    }
}

#[derive(Debug, Default)]
struct Table {
    by_hash: HashMap<String, Arc<Key>>,
    /// Hash of each key id, to find a key again when its record changes.
    hash_of: HashMap<i64, String>,
}

/// The active keys. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    table: Arc<RwLock<Table>>,
    loaded: Arc<AtomicBool>,
}

impl KeySet {
    /// The active key whose hash is `key_hash`.
    pub fn by_hash(&self, key_hash: &str) -> Option<Arc<Key>> {
        self.table.read().by_hash.get(key_hash).cloned()
    }

    /// Whether key `id` is active.
    pub fn is_active(&self, id: i64) -> bool {
        self.table.read().hash_of.contains_key(&id)
    }

    /// The key's cap on connections, if active.
    pub fn max_connections(&self, id: i64) -> Option<Option<u32>> {
        let table = self.table.read();
        let hash = table.hash_of.get(&id)?;
        table.by_hash.get(hash).map(|k| k.max_connections)
    }

    /// Whether the bucket's current content has been read once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Applies a record; returns true when it made a key unusable (revoked).
    fn upsert(&self, record: ApiKeyRecord) -> bool {
        let mut table = self.table.write();
        if let Some(old) = table.hash_of.remove(&record.id) {
            table.by_hash.remove(&old);
        }
        if record.revoked {
            return true;
        }
        table.hash_of.insert(record.id, record.key_hash.clone());
        table.by_hash.insert(
            record.key_hash,
            Arc::new(Key {
                id: record.id,
                scopes: record.scopes,
                max_connections: record.max_connections,
            }),
        );
        false
    }

    fn remove(&self, id: i64) {
        let mut table = self.table.write();
        if let Some(hash) = table.hash_of.remove(&id) {
            table.by_hash.remove(&hash);
        }
    }

    /// Follows the bucket forever (reconnecting as needed), calling `revoked` with the id of
    /// every key that stops working.
    pub async fn follow(&self, js: async_nats::jetstream::Context, revoked: impl Fn(i64)) {
        loop {
            match self.follow_once(&js, &revoked).await {
                Ok(()) => {
                    tracing::warn!(bucket = API_KEYS_BUCKET, "key watch ended; watching again")
                }
                Err(err) => {
                    tracing::warn!(bucket = API_KEYS_BUCKET, error = %err, "key watch failed; retrying")
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn follow_once(
        &self,
        js: &async_nats::jetstream::Context,
        revoked: &impl Fn(i64),
    ) -> Result<(), async_nats::Error> {
        let store: Store = shared::nats::open_kv_bucket(js, API_KEYS_BUCKET).await?;
        // `watch_with_history` delivers every current key, then changes; the initial values are
        // done when an entry reports no more pending (or at once for an empty bucket).
        let mut watch = store.watch_with_history(">").await?;
        if store.status().await?.values() == 0 {
            self.loaded.store(true, Ordering::Release);
        }
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            let Ok(id) = entry.key.parse::<i64>() else {
                continue;
            };
            match entry.operation {
                Operation::Put => match serde_json::from_slice::<ApiKeyRecord>(&entry.value) {
                    Ok(record) => {
                        if self.upsert(record) {
                            revoked(id);
                        }
                    }
                    Err(err) => tracing::warn!(key_id = id, error = %err, "unreadable key record"),
                },
                Operation::Delete | Operation::Purge => {
                    self.remove(id);
                    revoked(id);
                }
            }
            if entry.delta == 0 {
                self.loaded.store(true, Ordering::Release);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i64, hash: &str, revoked: bool) -> ApiKeyRecord {
        ApiKeyRecord {
            id,
            name: "k".into(),
            key_hash: hash.into(),
            scopes: vec![],
            revoked,
            max_connections: Some(3),
        }
    }

    #[test]
    fn keys_come_and_go_by_record() {
        let set = KeySet::default();
        assert!(!set.upsert(record(1, "aa", false)));
        assert_eq!(set.by_hash("aa").map(|k| k.id), Some(1));
        assert_eq!(set.max_connections(1), Some(Some(3)));
        // A changed hash replaces the old one.
        assert!(!set.upsert(record(1, "bb", false)));
        assert!(set.by_hash("aa").is_none());
        assert!(set.is_active(1));
        assert!(set.upsert(record(1, "bb", true)));
        assert!(set.by_hash("bb").is_none());
        assert!(!set.is_active(1));
        set.upsert(record(2, "cc", false));
        set.remove(2);
        assert!(set.by_hash("cc").is_none());
    }

    #[test]
    fn scopes_allow_games_and_types() {
        let crash = ["game:crash".to_owned()];
        let color = ["type:color".to_owned()];
        assert!(Key::allows(&[], Some("crash"), "multiplier"));
        assert!(Key::allows(&[], None, "color"));
        assert!(Key::allows(&crash, Some("crash"), "multiplier"));
        assert!(!Key::allows(&crash, Some("slot"), "multiplier"));
        assert!(
            !Key::allows(&crash, None, "multiplier"),
            "a game scope does not open its type"
        );
        assert!(
            Key::allows(&color, Some("double"), "color"),
            "a type scope opens its games"
        );
        assert!(Key::allows(&color, None, "color"));
        assert!(!Key::allows(&color, Some("crash"), "multiplier"));
    }
}
