//! NATS names: subjects, message ids, headers and KV buckets.
//!
//! A round of game `crash` (type `multiplier`) travels on `rounds.multiplier.crash`, so a gateway
//! can subscribe to one game, one type, or everything with plain subject wildcards.

/// Default name of the stream that holds every round event.
pub const DEFAULT_STREAM: &str = "ROUNDS";
/// Filter that matches every round subject.
pub const ROUNDS_FILTER: &str = "rounds.>";
/// KV bucket holding the game catalog, key = slug, value = JSON [`crate::Game`].
pub const GAMES_BUCKET: &str = "games";
/// KV bucket holding API key hashes and scopes, key = key id, value = JSON [`crate::ApiKeyRecord`].
pub const API_KEYS_BUCKET: &str = "api-keys";

/// JetStream de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Where in the WAL an event came from: `<commit LSN>.<index of the event in its transaction>`.
/// The consumer reads it back from the stream's last message to know what the stream holds.
pub const POSITION_HEADER: &str = "Datastream-Position";

/// Subject of a round event: `rounds.<type>.<slug>`.
pub fn round_subject(game_type: &str, game_slug: &str) -> String {
    format!("rounds.{game_type}.{game_slug}")
}

/// Filter matching every round of one game type.
pub fn type_filter(game_type: &str) -> String {
    format!("rounds.{game_type}.*")
}

/// `Nats-Msg-Id` of a round: a republished round is dropped by the stream's duplicate window.
pub fn round_msg_id(round_id: i64) -> String {
    format!("round-{round_id}")
}

/// The `(type, slug)` of a round subject, or `None` when the subject is not one.
pub fn parse_round_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("rounds.")?;
    let (game_type, slug) = rest.split_once('.')?;
    (is_valid_token(game_type) && is_valid_token(slug)).then_some((game_type, slug))
}

/// Whether `s` can be one token of a subject (a slug or a type): lowercase letters, digits, `-`
/// and `_`, starting with a letter or digit, at most 64 bytes. The same rule is a CHECK
/// constraint on `games`, so a game that exists can always be published.
pub fn is_valid_token(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_ids() {
        assert_eq!(
            round_subject("multiplier", "crash"),
            "rounds.multiplier.crash"
        );
        assert_eq!(type_filter("color"), "rounds.color.*");
        assert_eq!(round_msg_id(512), "round-512");
        assert_eq!(
            parse_round_subject("rounds.multiplier.aviator-wars"),
            Some(("multiplier", "aviator-wars"))
        );
    }

    #[test]
    fn rejects_what_is_not_a_round_subject() {
        for s in [
            "rounds.x",
            "round.a.b",
            "rounds.a.b.c",
            "rounds..b",
            "rounds.A.b",
            "rounds.a.*",
        ] {
            assert_eq!(parse_round_subject(s), None, "{s}");
        }
    }

    #[test]
    fn tokens() {
        for ok in ["crash", "motograu-v2", "free_style", "7up"] {
            assert!(is_valid_token(ok), "{ok}");
        }
        for bad in ["", "-x", "a.b", "a b", "Crash", "a*", ">", &"x".repeat(65)] {
            assert!(!is_valid_token(bad), "{bad}");
        }
    }
}
