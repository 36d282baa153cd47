//! What a client can subscribe to, and how its resume cursor is read.
//!
//! Both are shared by every transport (WebSocket, SSE, and the WebTransport adapter to come), so
//! the rules (which names exist, what a valid cursor looks like) live here once.

use std::fmt;

use shared::subject;

use super::event::Event;

/// A subscription target: one game, or every game of one type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Game(String),
    Type(String),
}

impl Topic {
    /// Whether `event` belongs to this topic.
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Topic::Game(slug) => *event.game_slug == **slug,
            Topic::Type(game_type) => *event.game_type == **game_type,
        }
    }

    /// The subject filter selecting this topic's events in the stream. A game is matched under
    /// any type, so its events are found even if its type changed.
    pub fn subject_filter(&self) -> String {
        match self {
            Topic::Game(slug) => format!("rounds.*.{slug}"),
            Topic::Type(game_type) => subject::type_filter(game_type),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Game(slug) => write!(f, "game:{slug}"),
            Topic::Type(game_type) => write!(f, "type:{game_type}"),
        }
    }
}

/// A resume cursor that is not a stream sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid resume cursor {0:?}: expected the decimal sequence of the last event received")]
pub struct CursorError(pub String);

/// Parses a resume cursor: the `seq` (SSE `id`) of the last event the client has, in plain
/// decimal digits. An empty value means "no cursor" (the SSE specification lets a client send an
/// empty `Last-Event-ID`).
pub fn parse_cursor(raw: &str) -> Result<Option<u64>, CursorError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if trimmed.len() > 20 || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CursorError(truncate(raw)));
    }
    trimmed
        .parse::<u64>()
        .map(Some)
        .map_err(|_| CursorError(truncate(raw)))
}

fn truncate(raw: &str) -> String {
    raw.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::event::tests::round;

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor("42"), Ok(Some(42)));
        assert_eq!(parse_cursor(" 0 "), Ok(Some(0)));
        assert_eq!(parse_cursor(""), Ok(None));
        for bad in [
            "-1",
            "+1",
            "1.5",
            "abc",
            "0x10",
            "18446744073709551616",
            "1 2",
        ] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_match_and_filter() {
        let event = Event::new(&round(3, "crash", "multiplier")).unwrap();
        assert!(Topic::Game("crash".into()).matches(&event));
        assert!(Topic::Type("multiplier".into()).matches(&event));
        assert!(!Topic::Game("slot".into()).matches(&event));
        assert!(!Topic::Type("color".into()).matches(&event));
        assert_eq!(
            Topic::Game("crash".into()).subject_filter(),
            "rounds.*.crash"
        );
        assert_eq!(
            Topic::Type("color".into()).subject_filter(),
            "rounds.color.*"
        );
    }
}
