//! The round event: the one message clients receive.
//!
//! On NATS a round travels as MessagePack (a map, so a field added later does not break an older
//! reader); clients get JSON with the stream sequence in `seq`. `seq` is only known once the stream
//! has stored the message, so it is absent on NATS and filled in by the gateway.

use serde::{Deserialize, Serialize};

/// A finished round, in the published field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    pub round_id: i64,
    pub game_id: i64,
    pub game_slug: String,
    pub game_type: String,
    /// RFC 3339 with offset, e.g. `2026-01-17T00:45:42.735266-03:00`.
    pub finished_at: String,
    /// The row's `extras` as JSON text (the published format is a JSON-encoded string).
    pub extras: String,
    /// Commit time of the transaction that finished the round, Unix milliseconds.
    pub timestamp: i64,
    /// Sequence of the event in the ROUNDS stream; 0 (and omitted) until the stream assigned it.
    #[serde(default, skip_serializing_if = "is_unassigned")]
    pub seq: u64,
}

fn is_unassigned(seq: &u64) -> bool {
    *seq == 0
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("round does not encode as MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("message is not a MessagePack round: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("round does not encode as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Round {
    /// The NATS payload.
    pub fn to_msgpack(&self) -> Result<Vec<u8>, CodecError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }

    /// The client payload: one JSON object, fields in the published order.
    pub fn to_json(&self) -> Result<Vec<u8>, CodecError> {
        Ok(serde_json::to_vec(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash() -> Round {
        Round {
            round_id: 512,
            game_id: 1,
            game_slug: "crash".into(),
            game_type: "multiplier".into(),
            finished_at: "2026-01-17T00:45:42.735266-03:00".into(),
            extras: r#"{"point": "11.72"}"#.into(),
            timestamp: 1_768_621_542_123,
            seq: 90_211,
        }
    }

    #[test]
    fn json_matches_the_published_example() {
        let json = String::from_utf8(crash().to_json().unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"round_id":512,"game_id":1,"game_slug":"crash","game_type":"multiplier","finished_at":"2026-01-17T00:45:42.735266-03:00","extras":"{\"point\": \"11.72\"}","timestamp":1768621542123,"seq":90211}"#
        );
    }

    #[test]
    fn msgpack_round_trips_and_omits_an_unassigned_seq() {
        let mut round = crash();
        round.seq = 0;
        let bytes = round.to_msgpack().unwrap();
        assert!(!bytes.windows(3).any(|w| w == b"seq"));
        assert_eq!(Round::from_msgpack(&bytes).unwrap(), round);
        let with_seq = crash();
        assert_eq!(
            Round::from_msgpack(&with_seq.to_msgpack().unwrap()).unwrap(),
            with_seq
        );
    }

    #[test]
    fn a_reader_ignores_fields_added_later() {
        #[derive(Serialize)]
        struct Newer<'a> {
            #[serde(flatten)]
            round: &'a Round,
            region: &'a str,
        }
        let round = crash();
        let bytes = rmp_serde::to_vec_named(&Newer {
            round: &round,
            region: "br",
        })
        .unwrap();
        assert_eq!(Round::from_msgpack(&bytes).unwrap(), round);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(matches!(
            Round::from_msgpack(b"\xc1 not msgpack"),
            Err(CodecError::Decode(_))
        ));
    }
}
