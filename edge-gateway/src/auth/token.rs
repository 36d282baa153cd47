//! Short-lived tokens: what `POST /api/auth/token` issues for an API key, and what WebSocket
//! (`Sec-WebSocket-Protocol`) and WebTransport (`?token=`) clients present.
//!
//! `<payload>.<signature>`, both base64url without padding, so a token is a valid WebSocket
//! subprotocol value. The payload is JSON `{"kid": <key id>, "exp": <unix seconds>, "scp":
//! [<scopes>]}`; the signature is HMAC-SHA256 of the encoded payload with `TOKEN_SECRET`, which
//! every gateway pod shares, so any pod verifies what any pod issued without a lookup beyond its
//! in-memory key set (for revocation). The signature check is constant-time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Lifetime of a token (the published contract: `"expires_in": 30`).
pub const TTL_SECONDS: u64 = 30;
/// Longer than any token we issue; longer input is refused before any decoding.
const MAX_TOKEN_LEN: usize = 2048;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub kid: i64,
    pub exp: u64,
    pub scp: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("invalid token signature")]
    Signature,
    #[error("token expired")]
    Expired,
}

/// Issues and verifies tokens with one secret.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { .. }")
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            // HMAC accepts keys of any length.
            mac: Hmac::new_from_slice(secret)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length")),
        }
    }

    /// A token for key `kid` with `scopes`, valid for [`TTL_SECONDS`] from `now` (Unix seconds).
    pub fn issue(&self, kid: i64, scopes: &[String], now: u64) -> String {
        let claims = Claims {
            kid,
            exp: now + TTL_SECONDS,
            scp: scopes.to_vec(),
        };
        // Serializing a struct of integers and strings cannot fail.
        let json = serde_json::to_vec(&claims).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    /// The claims of a token this secret signed and that has not expired at `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Signature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_768_621_542;

    #[test]
    fn round_trips_and_is_a_websocket_subprotocol_token() {
        let signer = Signer::new(b"a secret of at least thirty-two bytes!");
        let token = signer.issue(7, &["game:crash".into()], NOW);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{token}"
        );
        assert_eq!(
            signer.verify(&token, NOW + 29),
            Ok(Claims {
                kid: 7,
                exp: NOW + 30,
                scp: vec!["game:crash".into()]
            })
        );
    }

    #[test]
    fn refuses_expired_forged_and_garbage() {
        let signer = Signer::new(b"one secret");
        let token = signer.issue(7, &[], NOW);
        assert_eq!(signer.verify(&token, NOW + 30), Err(TokenError::Expired));
        assert_eq!(
            Signer::new(b"another secret").verify(&token, NOW),
            Err(TokenError::Signature)
        );
        // A payload swapped under a valid signature.
        let other = signer.issue(8, &[], NOW);
        let forged = format!(
            "{}.{}",
            other.split('.').next().unwrap(),
            token.split('.').nth(1).unwrap()
        );
        assert_eq!(signer.verify(&forged, NOW), Err(TokenError::Signature));
        for garbage in ["", ".", "abc", "a.b", "!!.!!", &"x".repeat(5000)] {
            assert!(signer.verify(garbage, NOW).is_err(), "{garbage}");
        }
    }
}
