//! `keys create|list|revoke`: API keys for the gateways, managed where they live (PostgreSQL).
//!
//! A key is `sk_live_` and 40 hex digits from the operating system's CSPRNG. Only its SHA-256
//! is stored; the key is printed once, at creation. Changes reach every gateway through the
//! replication stream and the `api-keys` KV bucket, like any other row change.

use shared::{hash_api_key, Scope};

const PREFIX: &str = "sk_live_";

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("invalid scope {0:?}: use game:<slug> or type:<type>")]
    Scope(String),
    #[error("--max-connections must be above 0")]
    MaxConnections,
    #[error("the operating system's random source failed: {0}")]
    Random(#[from] getrandom::Error),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    #[error("no key with id {0}")]
    NoSuchKey(i64),
}

/// A key just created: the only moment its secret exists outside the client.
#[derive(Debug)]
pub struct Created {
    pub id: i64,
    pub key: String,
}

/// A stored key, without its secret.
#[derive(Debug)]
pub struct Listed {
    pub id: i64,
    pub name: String,
    pub scopes: Vec<String>,
    pub max_connections: Option<i32>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

pub async fn create(
    client: &tokio_postgres::Client,
    name: &str,
    scopes: &[String],
    max_connections: Option<i32>,
) -> Result<Created, KeysError> {
    if let Some(bad) = scopes.iter().find(|s| Scope::parse(s).is_none()) {
        return Err(KeysError::Scope(bad.clone()));
    }
    if max_connections.is_some_and(|n| n <= 0) {
        return Err(KeysError::MaxConnections);
    }
    let mut secret = [0u8; 20];
    getrandom::fill(&mut secret)?;
    let key = format!(
        "{PREFIX}{}",
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let row = client
        .query_one(
            "INSERT INTO api_keys (name, key_hash, scopes, max_connections) VALUES ($1, $2, $3, $4) RETURNING id",
            &[&name, &hash_api_key(&key), &scopes, &max_connections],
        )
        .await?;
    Ok(Created {
        id: row.get(0),
        key,
    })
}

pub async fn list(client: &tokio_postgres::Client) -> Result<Vec<Listed>, KeysError> {
    let rows = client
        .query(
            "SELECT id, name, scopes, max_connections, to_json(created_at) #>> '{}', to_json(revoked_at) #>> '{}'
               FROM api_keys ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Listed {
            id: r.get(0),
            name: r.get(1),
            scopes: r.get(2),
            max_connections: r.get(3),
            created_at: r.get(4),
            revoked_at: r.get(5),
        })
        .collect())
}

/// Revokes a key (a second revocation keeps the first time). Every gateway stops accepting it
/// and closes its connections once the change arrives.
pub async fn revoke(client: &tokio_postgres::Client, id: i64) -> Result<(), KeysError> {
    let updated = client
        .execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
            &[&id],
        )
        .await?;
    if updated == 0 {
        return Err(KeysError::NoSuchKey(id));
    }
    Ok(())
}
