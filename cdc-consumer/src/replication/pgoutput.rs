//! A pure decoder for the pgoutput logical decoding plugin's messages (protocol version 1).
//!
//! Input is the payload of one XLogData message; output is one [`PgOutput`]. No I/O, no state:
//! relation metadata is the caller's to keep. Values are slices of the input (`Bytes`), so
//! decoding copies nothing but names. Anything unexpected, including a tag this decoder does not
//! know, is a [`DecodeError`]: the caller reconnects rather than skip data it did not understand.
//!
//! Reference: PostgreSQL 15, "Logical Replication Message Formats".

use bytes::{Buf, Bytes};

use super::time::PgTimestamp;
use super::Lsn;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum PgOutput {
    Begin(Begin),
    Commit(Commit),
    /// The transaction came from another node (replication origin).
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    /// A non-built-in type used by a published column.
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    Update {
        relation: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: OldTuple,
    },
    Truncate {
        options: u8,
        relations: Vec<u32>,
    },
    /// From `pg_logical_emit_message` (needs `messages 'true'`).
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record: identifies the transaction in commit order.
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the transaction is handled.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// A table's shape, sent before its first change in a session and again after it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key.
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The row image before an update or delete.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// Only the replica identity key columns (others are `Null`).
    Key(Tuple),
    /// Every column (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// Column values in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Value>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the update did not change; its bytes are not in this message.
    UnchangedToast,
    /// The type's text output.
    Text(Bytes),
    /// The type's binary send format (only when the `binary` option is on).
    Binary(Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {0:?}")]
    UnknownTag(char),
    #[error("pgoutput message {tag:?} ends early: needs {needed} more bytes at offset {offset}")]
    Truncated {
        tag: char,
        offset: usize,
        needed: usize,
    },
    #[error("pgoutput message {tag:?}: {what}")]
    Invalid { tag: char, what: String },
}

/// Decodes one pgoutput message.
pub fn decode(data: Bytes) -> Result<PgOutput, DecodeError> {
    let tag = *data.first().ok_or(DecodeError::Empty)?;
    let mut r = Reader {
        tag: char::from(tag),
        len: data.len(),
        buf: data.slice(1..),
    };
    let msg = match tag {
        b'B' => PgOutput::Begin(Begin {
            final_lsn: r.lsn()?,
            commit_time: PgTimestamp(r.i64()?),
            xid: r.u32()?,
        }),
        b'C' => PgOutput::Commit(Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: PgTimestamp(r.i64()?),
        }),
        b'O' => PgOutput::Origin {
            commit_lsn: r.lsn()?,
            name: r.string()?,
        },
        b'R' => PgOutput::Relation(r.relation()?),
        b'Y' => PgOutput::Type {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let relation = r.u32()?;
            r.expect(b'N')?;
            PgOutput::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                other => return Err(r.invalid(format!("tuple kind {:?}", char::from(other)))),
            };
            if old.is_some() {
                r.expect(b'N')?;
            }
            PgOutput::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => return Err(r.invalid(format!("tuple kind {:?}", char::from(other)))),
            };
            PgOutput::Delete { relation, old }
        }
        b'T' => {
            let count = r.u32()?;
            let options = r.u8()?;
            let count = r.count(count, 4)?;
            let relations = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
            PgOutput::Truncate { options, relations }
        }
        b'M' => {
            let transactional = r.u8()? & 1 == 1;
            let lsn = r.lsn()?;
            let prefix = r.string()?;
            let len = r.u32()?;
            PgOutput::Message {
                transactional,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        other => return Err(DecodeError::UnknownTag(char::from(other))),
    };
    if r.buf.has_remaining() {
        return Err(r.invalid(format!("{} unexpected trailing bytes", r.buf.remaining())));
    }
    Ok(msg)
}

/// Bounds-checked reads; every shortfall is a [`DecodeError::Truncated`], never a panic.
struct Reader {
    tag: char,
    len: usize,
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                offset: self.len - self.buf.remaining(),
                needed: n - self.buf.remaining(),
            });
        }
        Ok(())
    }

    fn invalid(&self, what: String) -> DecodeError {
        DecodeError::Invalid {
            tag: self.tag,
            what,
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        self.need(8)?;
        Ok(Lsn(self.buf.get_u64()))
    }

    fn expect(&mut self, want: u8) -> Result<(), DecodeError> {
        match self.u8()? {
            got if got == want => Ok(()),
            got => Err(self.invalid(format!(
                "expected {:?}, found {:?}",
                char::from(want),
                char::from(got)
            ))),
        }
    }

    fn bytes(&mut self, len: u32) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(len).map_err(|_| self.invalid(format!("length {len}")))?;
        self.need(len)?;
        Ok(self.buf.split_to(len))
    }

    /// A count of items each at least `min_size` bytes long, checked against what is left, so a
    /// corrupt count cannot make us allocate gigabytes.
    fn count(&self, count: u32, min_size: usize) -> Result<usize, DecodeError> {
        let count = usize::try_from(count).map_err(|_| self.invalid(format!("count {count}")))?;
        self.need(count.saturating_mul(min_size))?;
        Ok(count)
    }

    /// A null-terminated UTF-8 string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let Some(end) = self.buf.iter().position(|&b| b == 0) else {
            return Err(self.invalid("string without terminator".to_owned()));
        };
        let raw = self.buf.split_to(end);
        self.buf.advance(1);
        String::from_utf8(raw.to_vec()).map_err(|_| self.invalid("string is not UTF-8".to_owned()))
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let oid = self.u32()?;
        let namespace = self.string()?;
        let name = self.string()?;
        let replica_identity = self.u8()?;
        let ncols = self.u16()?;
        // flags(1) + name(>=1) + type oid(4) + modifier(4)
        let ncols = self.count(u32::from(ncols), 10)?;
        let mut columns = Vec::with_capacity(ncols);
        for _ in 0..ncols {
            columns.push(Column {
                key: self.u8()? & 1 == 1,
                name: self.string()?,
                type_oid: self.u32()?,
                type_modifier: self.i32()?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let ncols = self.u16()?;
        let ncols = self.count(u32::from(ncols), 1)?;
        let mut values = Vec::with_capacity(ncols);
        for _ in 0..ncols {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => {
                    let len = self.u32()?;
                    Value::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.u32()?;
                    Value::Binary(self.bytes(len)?)
                }
                other => return Err(self.invalid(format!("value kind {:?}", char::from(other)))),
            });
        }
        Ok(Tuple(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way pgoutput writes them.
    #[derive(Default)]
    struct Msg(Vec<u8>);

    impl Msg {
        fn tag(tag: u8) -> Msg {
            Msg(vec![tag])
        }
        fn u8(mut self, v: u8) -> Msg {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Msg {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Msg {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Msg {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn str(mut self, v: &str) -> Msg {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Msg {
            let mut m = self.u8(b't').u32(v.len() as u32);
            m.0.extend_from_slice(v.as_bytes());
            m
        }
        fn done(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    #[test]
    fn begin_and_commit() {
        let begin = Msg::tag(b'B').u64(0x10).u64(5).u32(42).done();
        assert_eq!(
            decode(begin).unwrap(),
            PgOutput::Begin(Begin {
                final_lsn: Lsn(0x10),
                commit_time: PgTimestamp(5),
                xid: 42
            })
        );
        let commit = Msg::tag(b'C').u8(0).u64(0x10).u64(0x38).u64(5).done();
        assert_eq!(
            decode(commit).unwrap(),
            PgOutput::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x10),
                end_lsn: Lsn(0x38),
                commit_time: PgTimestamp(5)
            })
        );
    }

    #[test]
    fn update_with_full_old_row_and_unchanged_toast() {
        let msg = Msg::tag(b'U')
            .u32(16384)
            .u8(b'O')
            .u16(3)
            .text("7")
            .u8(b'n')
            .text("{}")
            .u8(b'N')
            .u16(3)
            .text("7")
            .text("2026-01-17 00:45:42-03")
            .u8(b'u')
            .done();
        let PgOutput::Update { relation, old, new } = decode(msg).unwrap() else {
            panic!("not an update");
        };
        assert_eq!(relation, 16384);
        assert_eq!(
            old,
            Some(OldTuple::Full(Tuple(vec![
                Value::Text(Bytes::from_static(b"7")),
                Value::Null,
                Value::Text(Bytes::from_static(b"{}")),
            ])))
        );
        assert_eq!(new.0[2], Value::UnchangedToast);
    }

    #[test]
    fn update_without_old_row() {
        let msg = Msg::tag(b'U').u32(1).u8(b'N').u16(1).u8(b'n').done();
        assert_eq!(
            decode(msg).unwrap(),
            PgOutput::Update {
                relation: 1,
                old: None,
                new: Tuple(vec![Value::Null])
            }
        );
    }

    #[test]
    fn relation_truncate_and_message() {
        let rel = Msg::tag(b'R')
            .u32(16384)
            .str("public")
            .str("rounds")
            .u8(b'f')
            .u16(1)
            .u8(1)
            .str("id")
            .u32(20)
            .u32(u32::MAX)
            .done();
        let PgOutput::Relation(rel) = decode(rel).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(rel.name, "rounds");
        assert_eq!(rel.replica_identity, b'f');
        assert_eq!(
            rel.columns,
            vec![Column {
                key: true,
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1
            }]
        );
        let truncate = Msg::tag(b'T').u32(2).u8(1).u32(10).u32(11).done();
        assert_eq!(
            decode(truncate).unwrap(),
            PgOutput::Truncate {
                options: 1,
                relations: vec![10, 11]
            }
        );
        let message = Msg::tag(b'M')
            .u8(1)
            .u64(9)
            .str("hb")
            .u32(2)
            .u8(b'o')
            .u8(b'k')
            .done();
        assert_eq!(
            decode(message).unwrap(),
            PgOutput::Message {
                transactional: true,
                lsn: Lsn(9),
                prefix: "hb".into(),
                content: Bytes::from_static(b"ok")
            }
        );
    }

    #[test]
    fn unknown_tags_are_errors() {
        assert_eq!(
            decode(Bytes::from_static(b"Z")),
            Err(DecodeError::UnknownTag('Z'))
        );
        // Streaming (protocol 2) messages are not asked for, so they are unexpected here.
        assert_eq!(
            decode(Bytes::from_static(b"S\0\0\0\x01\x01")),
            Err(DecodeError::UnknownTag('S'))
        );
        assert_eq!(decode(Bytes::new()), Err(DecodeError::Empty));
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        let full = Msg::tag(b'I')
            .u32(16384)
            .u8(b'N')
            .u16(2)
            .text("12")
            .text(r#"{"point": "1.5"}"#)
            .done();
        assert!(decode(full.clone()).is_ok());
        for len in 0..full.len() {
            assert!(
                decode(full.slice(..len)).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let msg = Msg::tag(b'T').u32(u32::MAX).u8(0).done();
        assert!(matches!(decode(msg), Err(DecodeError::Truncated { .. })));
        let msg = Msg::tag(b'I').u32(1).u8(b'N').u16(u16::MAX).done();
        assert!(matches!(decode(msg), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let msg = Msg::tag(b'B').u64(1).u64(2).u32(3).u8(0).done();
        assert!(matches!(decode(msg), Err(DecodeError::Invalid { .. })));
    }
}
