//! One round event as the gateway holds it: decoded once, encoded once, shared by everyone.
//!
//! The hub builds an [`Event`] when a message arrives from the stream and hands the same
//! `Arc<Event>` to every subscriber. The bytes each transport writes (the JSON, a complete
//! WebSocket text frame, the SSE `message` block, the WebTransport stream line) are built here,
//! once per event, so that a
//! delivery to one more client costs a reference count and a copy into that socket's buffer,
//! never a serialization. A new transport adds its wire form here.

use std::sync::OnceLock;

use actix_http::ws::{OpCode, Parser};
use bytes::{Bytes, BytesMut};
use shared::Round;

/// A round event with its stream sequence and its wire forms.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub game_slug: Box<str>,
    pub game_type: Box<str>,
    /// Commit time of the round, Unix milliseconds (the latency reference).
    pub timestamp_ms: i64,
    json: Bytes,
    ws_frame: Bytes,
    /// `json` + `\n`: a slice of the same buffer as `ws_frame`.
    wt_line: Bytes,
    sse_message: Bytes,
    /// Built on first use: only "latest" events are ever sent as `event: initial`.
    sse_initial: OnceLock<Bytes>,
}

/// Bytes a queued event counts against a connection's queue bound, beyond its JSON (the
/// framing, and the queue's own bookkeeping).
const QUEUE_OVERHEAD: usize = 32;

impl Event {
    /// Builds the event from a round whose `seq` is already set.
    pub fn new(round: &Round) -> Result<Event, shared::CodecError> {
        let json = round.to_json()?;
        let mut frame = BytesMut::with_capacity(json.len() + 11);
        Parser::write_message(&mut frame, &json[..], OpCode::Text, true, false);
        // One buffer: the frame (header, then the payload unmasked), then a line feed. The
        // frame, the JSON and the JSON line are slices of it, not copies.
        frame.extend_from_slice(b"\n");
        let buffer = frame.freeze();
        let line_feed = buffer.len() - 1;
        let ws_frame = buffer.slice(..line_feed);
        let json = buffer.slice(line_feed - json.len()..line_feed);
        let wt_line = buffer.slice(line_feed - json.len()..);
        let sse_message = sse_block(round.seq, "message", &json);
        Ok(Event {
            seq: round.seq,
            game_slug: round.game_slug.as_str().into(),
            game_type: round.game_type.as_str().into(),
            timestamp_ms: round.timestamp,
            json,
            ws_frame,
            wt_line,
            sse_message,
            sse_initial: OnceLock::new(),
        })
    }

    /// Decodes a stream message (a MessagePack round) stored at sequence `seq`.
    pub fn decode(payload: &[u8], seq: u64) -> Result<Event, shared::CodecError> {
        let mut round = Round::from_msgpack(payload)?;
        round.seq = seq;
        Event::new(&round)
    }

    /// The client JSON (one round object with `seq`).
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// A complete, unmasked WebSocket text frame carrying the JSON.
    pub fn ws_frame(&self) -> &Bytes {
        &self.ws_frame
    }

    /// The JSON and a line feed: one line of the WebTransport stream (newline-delimited JSON).
    pub fn wt_line(&self) -> &Bytes {
        &self.wt_line
    }

    /// `id: <seq>\nevent: message\ndata: <json>\n\n`.
    pub fn sse_message(&self) -> &Bytes {
        &self.sse_message
    }

    /// `id: <seq>\nevent: initial\ndata: <json>\n\n`.
    pub fn sse_initial(&self) -> &Bytes {
        self.sse_initial
            .get_or_init(|| sse_block(self.seq, "initial", &self.json))
    }

    /// What this event counts against a connection's queue bound.
    pub fn queue_cost(&self) -> usize {
        self.json.len() + QUEUE_OVERHEAD
    }
}

/// One SSE event. The JSON never contains a line break (serde_json escapes them inside strings),
/// so a single `data:` line carries it.
fn sse_block(seq: u64, event: &str, json: &[u8]) -> Bytes {
    let head = format!("id: {seq}\nevent: {event}\ndata: ");
    let mut block = BytesMut::with_capacity(head.len() + json.len() + 2);
    block.extend_from_slice(head.as_bytes());
    block.extend_from_slice(json);
    block.extend_from_slice(b"\n\n");
    block.freeze()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn round(seq: u64, slug: &str, game_type: &str) -> Round {
        Round {
            round_id: seq as i64 + 100,
            game_id: 1,
            game_slug: slug.into(),
            game_type: game_type.into(),
            finished_at: "2026-01-17T00:45:42.735266-03:00".into(),
            extras: r#"{"point": "11.72"}"#.into(),
            timestamp: 1_768_621_542_123,
            seq,
        }
    }

    #[test]
    fn wire_forms_share_one_json() {
        let event = Event::new(&round(7, "crash", "multiplier")).unwrap();
        let json = String::from_utf8(event.json().to_vec()).unwrap();
        assert!(json.starts_with(r#"{"round_id":107,"#), "{json}");
        assert!(json.ends_with(r#","seq":7}"#), "{json}");
        let frame = event.ws_frame();
        assert_eq!(frame[0], 0x81, "FIN + text");
        assert_eq!(frame[1], 126, "16-bit length follows, unmasked");
        assert_eq!(
            usize::from(u16::from_be_bytes([frame[2], frame[3]])),
            json.len()
        );
        assert_eq!(&frame[4..], json.as_bytes());
        assert_eq!(event.wt_line().as_ref(), format!("{json}\n").as_bytes());
        assert_eq!(
            event.sse_message().as_ref(),
            format!("id: 7\nevent: message\ndata: {json}\n\n").as_bytes()
        );
        assert_eq!(
            event.sse_initial().as_ref(),
            format!("id: 7\nevent: initial\ndata: {json}\n\n").as_bytes()
        );
    }

    #[test]
    fn long_payloads_use_the_extended_length() {
        let mut r = round(9, "slot", "multiplier");
        r.extras = "x".repeat(70_000);
        let event = Event::new(&r).unwrap();
        let frame = event.ws_frame();
        assert_eq!(frame[1], 127);
        let len = u64::from_be_bytes(frame[2..10].try_into().unwrap());
        assert_eq!(len as usize, event.json().len());
        assert_eq!(frame.len(), 10 + event.json().len());
        assert_eq!(&event.wt_line()[..event.json().len()], &event.json()[..]);
    }
}
