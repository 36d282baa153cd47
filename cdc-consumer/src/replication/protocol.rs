//! The wire format of PostgreSQL's streaming replication protocol, as pure functions over bytes.
//!
//! Framing of backend messages, the CopyData payloads of a replication stream (XLogData and
//! primary keepalive), the standby status update we send back, and the text of the
//! `START_REPLICATION` command. No sockets here (the style of rust-postgres's postgres-protocol),
//! so every byte sequence, including truncated and hostile ones, can be unit tested; `conn` does
//! the I/O.
//!
//! Reference: PostgreSQL 15, "Message Formats" and "Streaming Replication Protocol".

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::time::PgTimestamp;
use super::Lsn;

/// The largest length field [`next_frame`] accepts (it counts itself, not the tag).
///
/// PostgreSQL builds every outgoing message in a `StringInfo`, which cannot grow past
/// `MaxAllocSize` (1 GiB - 1 byte), so no real frame comes near this; a larger length means the
/// stream is corrupt, and we refuse it rather than buffer a gigabyte waiting for it.
pub const MAX_FRAME_LEN: usize = 1 << 30;

/// Tag (1) + length (4).
const HEADER_LEN: usize = 5;
/// 'w' + walStart + walEnd + sendTime.
const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// 'k' + walEnd + sendTime + reply flag.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// 'r' + write + flush + apply + clock + reply flag.
const STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("backend message {tag:?} has length {len}, below the minimum of 4")]
    FrameTooShort { tag: char, len: i32 },
    #[error("backend message {tag:?} has length {len}, above the maximum of {MAX_FRAME_LEN}")]
    FrameTooLong { tag: char, len: i32 },
    #[error("empty CopyData message")]
    EmptyCopyData,
    #[error("unknown replication message {0:?} in CopyData")]
    UnknownCopyData(char),
    #[error("replication message {tag:?} is {len} bytes long, expected {expected}")]
    BadLength {
        tag: char,
        len: usize,
        expected: &'static str,
    },
    #[error("keepalive reply flag is {0}, expected 0 or 1")]
    BadReplyFlag(u8),
    #[error("malformed backend message {tag:?}: {reason}")]
    Malformed { tag: char, reason: String },
}

/// One message from a replication stream (the body of a CopyData frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL data: with logical replication, one pgoutput message in `data`.
    XLogData {
        /// Where `data` starts in the WAL.
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        send_time: PgTimestamp,
        data: Bytes,
    },
    /// Primary keepalive.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        send_time: PgTimestamp,
        /// The server disconnects after `wal_sender_timeout` unless we reply soon.
        reply_requested: bool,
    },
}

/// Splits one complete backend message off the front of `buf`: `(tag, body)` without the header.
///
/// `Ok(None)` when `buf` does not hold a whole message yet (nothing is consumed). An impossible
/// length is an error; the connection is unusable after it, since the framing is lost.
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<(u8, Bytes)>, ProtocolError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let body_len = match usize::try_from(len) {
        Ok(l) if l < 4 => {
            return Err(ProtocolError::FrameTooShort {
                tag: tag.into(),
                len,
            })
        }
        Ok(l) if l > MAX_FRAME_LEN => {
            return Err(ProtocolError::FrameTooLong {
                tag: tag.into(),
                len,
            })
        }
        Ok(l) => l - 4,
        Err(_) => {
            return Err(ProtocolError::FrameTooShort {
                tag: tag.into(),
                len,
            })
        }
    };
    if buf.len() < HEADER_LEN + body_len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    Ok(Some((tag, buf.split_to(body_len).freeze())))
}

/// Parses the body of a CopyData ('d') frame of a replication stream.
///
/// Anything but XLogData ('w') and primary keepalive ('k') is an error, never skipped: a stream
/// we do not understand is a stream we cannot confirm.
pub fn parse_copy_data(mut body: Bytes) -> Result<ReplicationMessage, ProtocolError> {
    let tag = *body.first().ok_or(ProtocolError::EmptyCopyData)?;
    match tag {
        b'w' => {
            if body.len() < XLOG_DATA_HEADER_LEN {
                return Err(ProtocolError::BadLength {
                    tag: 'w',
                    len: body.len(),
                    expected: "at least 25",
                });
            }
            body.advance(1);
            let wal_start = Lsn(body.get_u64());
            let wal_end = Lsn(body.get_u64());
            let send_time = PgTimestamp(body.get_i64());
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data: body,
            })
        }
        b'k' => {
            if body.len() != KEEPALIVE_LEN {
                return Err(ProtocolError::BadLength {
                    tag: 'k',
                    len: body.len(),
                    expected: "18",
                });
            }
            body.advance(1);
            let wal_end = Lsn(body.get_u64());
            let send_time = PgTimestamp(body.get_i64());
            let reply_requested = match body.get_u8() {
                0 => false,
                1 => true,
                other => return Err(ProtocolError::BadReplyFlag(other)),
            };
            Ok(ReplicationMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            })
        }
        other => Err(ProtocolError::UnknownCopyData(other.into())),
    }
}

/// Appends a CopyData frame carrying a Standby Status Update ('r') to `buf`.
///
/// `write`, `flush` and `apply` are positions after the last byte written, flushed and applied;
/// for a logical slot, `flush` is what PostgreSQL records as `confirmed_flush_lsn`.
pub fn encode_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    now: PgTimestamp,
    reply_requested: bool,
    buf: &mut BytesMut,
) {
    // Written by hand rather than with `frontend::CopyData`, whose length check returns a
    // Result that cannot fail for this fixed 34-byte body.
    buf.reserve(HEADER_LEN + STATUS_UPDATE_LEN);
    buf.put_u8(b'd');
    buf.put_u32(4 + STATUS_UPDATE_LEN as u32);
    buf.put_u8(b'r');
    buf.put_u64(write.0);
    buf.put_u64(flush.0);
    buf.put_u64(apply.0);
    buf.put_i64(now.0);
    buf.put_u8(u8::from(reply_requested));
}

/// The `START_REPLICATION` command for a pgoutput slot, quoted for the replication grammar.
///
/// The publication name is an identifier inside a string literal (pgoutput splits
/// `publication_names` like a list of identifiers), so it is quoted twice.
pub fn start_replication_command(slot: &str, start: Lsn, publication: &str) -> String {
    format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {}, \
         messages 'true')",
        quote_identifier(slot),
        quote_literal(&quote_identifier(publication)),
    )
}

/// `"name"`, with embedded double quotes doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with embedded single quotes doubled. The replication command scanner knows no
/// backslash escapes (and no `E'...'`), so this is the only form it accepts.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn xlog_data(data: &[u8]) -> Vec<u8> {
        let mut body = vec![b'w'];
        body.extend_from_slice(&0x16_B374_D848_u64.to_be_bytes());
        body.extend_from_slice(&0x16_B374_D900_u64.to_be_bytes());
        body.extend_from_slice(&821_936_742_123_456_i64.to_be_bytes());
        body.extend_from_slice(data);
        body
    }

    fn keepalive(reply: u8) -> Vec<u8> {
        let mut body = vec![b'k'];
        body.extend_from_slice(&0x10_u64.to_be_bytes());
        body.extend_from_slice(&(-5_i64).to_be_bytes());
        body.push(reply);
        body
    }

    #[test]
    fn splits_frames_and_keeps_the_rest() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(b'd', b"hello"));
        buf.extend_from_slice(&frame(b'c', b""));
        buf.extend_from_slice(&frame(b'Z', b"I")[..3]);
        assert_eq!(
            next_frame(&mut buf).unwrap(),
            Some((b'd', Bytes::from_static(b"hello")))
        );
        assert_eq!(next_frame(&mut buf).unwrap(), Some((b'c', Bytes::new())));
        assert_eq!(next_frame(&mut buf).unwrap(), None);
        assert_eq!(
            &buf[..],
            &frame(b'Z', b"I")[..3],
            "incomplete frame consumed"
        );
        buf.extend_from_slice(&frame(b'Z', b"I")[3..]);
        assert_eq!(
            next_frame(&mut buf).unwrap(),
            Some((b'Z', Bytes::from_static(b"I")))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn every_truncation_of_a_frame_waits_for_more() {
        let full = frame(b'd', &xlog_data(b"BEGIN"));
        for len in 0..full.len() {
            let mut buf = BytesMut::from(&full[..len]);
            assert_eq!(next_frame(&mut buf).unwrap(), None, "prefix of {len} bytes");
            assert_eq!(buf.len(), len, "prefix of {len} bytes was consumed");
        }
    }

    #[test]
    fn impossible_lengths_are_errors() {
        for len in [i32::MIN, -1, 0, 3] {
            let mut buf = BytesMut::from(&b"d"[..]);
            buf.extend_from_slice(&len.to_be_bytes());
            assert_eq!(
                next_frame(&mut buf),
                Err(ProtocolError::FrameTooShort { tag: 'd', len })
            );
        }
        let too_long = i32::try_from(MAX_FRAME_LEN + 1).unwrap();
        let mut buf = BytesMut::from(&b"d"[..]);
        buf.extend_from_slice(&too_long.to_be_bytes());
        assert_eq!(
            next_frame(&mut buf),
            Err(ProtocolError::FrameTooLong {
                tag: 'd',
                len: too_long
            })
        );
        // The largest legal length is only waited for.
        let mut buf = BytesMut::from(&b"d"[..]);
        buf.extend_from_slice(&i32::try_from(MAX_FRAME_LEN).unwrap().to_be_bytes());
        assert_eq!(next_frame(&mut buf), Ok(None));
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic xorshift stream of byte soup, fed through both parsers.
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                // Bias towards the interesting tags.
                *first = [b'w', b'k', b'd', *first][(next() % 4) as usize];
            }
            let _ = parse_copy_data(Bytes::from(bytes.clone()));
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = next_frame(&mut buf) {}
        }
    }

    #[test]
    fn parses_xlog_data() {
        let body = Bytes::from(xlog_data(b"B123"));
        assert_eq!(
            parse_copy_data(body).unwrap(),
            ReplicationMessage::XLogData {
                wal_start: Lsn(0x16_B374_D848),
                wal_end: Lsn(0x16_B374_D900),
                send_time: PgTimestamp(821_936_742_123_456),
                data: Bytes::from_static(b"B123"),
            }
        );
        // An empty payload is well-formed at this layer; pgoutput decoding rejects it.
        let ReplicationMessage::XLogData { data, .. } =
            parse_copy_data(Bytes::from(xlog_data(b""))).unwrap()
        else {
            panic!("not XLogData");
        };
        assert!(data.is_empty());
    }

    #[test]
    fn parses_keepalives() {
        assert_eq!(
            parse_copy_data(Bytes::from(keepalive(1))).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: Lsn(0x10),
                send_time: PgTimestamp(-5),
                reply_requested: true,
            }
        );
        assert!(matches!(
            parse_copy_data(Bytes::from(keepalive(0))),
            Ok(ReplicationMessage::Keepalive {
                reply_requested: false,
                ..
            })
        ));
        assert_eq!(
            parse_copy_data(Bytes::from(keepalive(2))),
            Err(ProtocolError::BadReplyFlag(2))
        );
        let mut long = keepalive(0);
        long.push(0);
        assert!(matches!(
            parse_copy_data(Bytes::from(long)),
            Err(ProtocolError::BadLength {
                tag: 'k',
                len: 19,
                ..
            })
        ));
    }

    #[test]
    fn every_truncation_of_copy_data_is_an_error() {
        let xlog = xlog_data(b"");
        for len in 0..xlog.len() {
            assert!(
                parse_copy_data(Bytes::copy_from_slice(&xlog[..len])).is_err(),
                "XLogData prefix of {len} bytes parsed"
            );
        }
        let keepalive = keepalive(1);
        for len in 0..keepalive.len() {
            assert!(
                parse_copy_data(Bytes::copy_from_slice(&keepalive[..len])).is_err(),
                "keepalive prefix of {len} bytes parsed"
            );
        }
    }

    #[test]
    fn other_copy_data_is_an_error() {
        assert_eq!(
            parse_copy_data(Bytes::new()),
            Err(ProtocolError::EmptyCopyData)
        );
        // 'r' is what we send, never what we receive.
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"r")),
            Err(ProtocolError::UnknownCopyData('r'))
        );
    }

    #[test]
    fn encodes_a_standby_status_update() {
        let mut buf = BytesMut::from(&b"xx"[..]);
        encode_status_update(
            Lsn(0x0102_0304_0506_0708),
            Lsn(0x10),
            Lsn(0x20),
            PgTimestamp(-2),
            true,
            &mut buf,
        );
        let mut expected = b"xxd\0\0\0\x26r".to_vec();
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(&0x10_u64.to_be_bytes());
        expected.extend_from_slice(&0x20_u64.to_be_bytes());
        expected.extend_from_slice(&(-2_i64).to_be_bytes());
        expected.push(1);
        assert_eq!(&buf[..], &expected[..]);
        // It is one frame: the framer gives back exactly the body.
        buf.advance(2);
        let (tag, body) = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!((tag, body.len()), (b'd', 34));
        assert!(buf.is_empty());
    }

    #[test]
    fn quotes_the_start_replication_command() {
        assert_eq!(
            start_replication_command("datastream", Lsn(0x16_B374_D848), "datastream"),
            "START_REPLICATION SLOT \"datastream\" LOGICAL 16/B374D848 (proto_version '1', \
             publication_names '\"datastream\"', messages 'true')"
        );
        assert_eq!(
            start_replication_command("s\"1", Lsn::ZERO, "My 'Pub\", x"),
            "START_REPLICATION SLOT \"s\"\"1\" LOGICAL 0/0 (proto_version '1', \
             publication_names '\"My ''Pub\"\", x\"', messages 'true')"
        );
    }
}
