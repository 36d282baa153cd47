//! Records the consumer keeps in NATS KV and every gateway reads: the game catalog and API keys.
//!
//! Edge pods never touch PostgreSQL; these records are all they know about games and keys.

use serde::{Deserialize, Serialize};

/// A row of `games`, as stored in the `games` bucket under its slug.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Game {
    pub id: i64,
    pub slug: String,
    pub name: String,
    #[serde(rename = "type")]
    pub game_type: String,
}

/// A row of `api_keys` without anything secret: the hash, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: i64,
    pub name: String,
    /// Hex SHA-256 of the key.
    pub key_hash: String,
    /// Raw scope strings as stored (`game:<slug>` or `type:<type>`); empty allows everything.
    pub scopes: Vec<String>,
    /// Set once `revoked_at` is: the key stops working on every gateway.
    pub revoked: bool,
    /// Cap on concurrent connections for this key; `None` uses the gateway's default.
    pub max_connections: Option<u32>,
}

/// The stored form of an API key: lowercase hex SHA-256 of its bytes. The key itself is shown
/// once, when created, and never stored or logged.
pub fn hash_api_key(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a key may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Game(String),
    Type(String),
}

impl Scope {
    /// Parses `game:<slug>` or `type:<type>`.
    pub fn parse(raw: &str) -> Option<Scope> {
        let (kind, value) = raw.split_once(':')?;
        if !crate::subject::is_valid_token(value) {
            return None;
        }
        match kind {
            "game" => Some(Scope::Game(value.to_owned())),
            "type" => Some(Scope::Type(value.to_owned())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn game_json_uses_type_as_the_field_name() {
        let game = Game {
            id: 1,
            slug: "crash".into(),
            name: "Crash".into(),
            game_type: "multiplier".into(),
        };
        let json = serde_json::to_string(&game).unwrap();
        assert_eq!(
            json,
            r#"{"id":1,"slug":"crash","name":"Crash","type":"multiplier"}"#
        );
        assert_eq!(serde_json::from_str::<Game>(&json).unwrap(), game);
    }

    #[test]
    fn key_hashes_are_hex_sha256() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn scopes() {
        assert_eq!(
            Scope::parse("game:crash"),
            Some(Scope::Game("crash".into()))
        );
        assert_eq!(
            Scope::parse("type:color"),
            Some(Scope::Type("color".into()))
        );
        assert_eq!(Scope::parse("crash"), None);
        assert_eq!(Scope::parse("user:crash"), None);
        assert_eq!(Scope::parse("game:Bad Slug"), None);
    }
}
