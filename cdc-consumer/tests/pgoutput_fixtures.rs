//! The decoder against bytes PostgreSQL 15 really sent: every file under `tests/fixtures/`
//! (captured by `examples/capture_fixtures.rs`, described in `tests/fixtures/MANIFEST.md`)
//! decodes, and decodes to exactly what its scenario wrote. No database needed.
//!
//! LSNs, xids, relation oids and commit times change from one capture to the next, so they are
//! asserted by their relations (a Begin's `final_lsn` is its Commit's `commit_lsn`, every change
//! names the oid its Relation announced); everything the scenarios wrote is asserted exactly.

use bytes::Bytes;
use cdc_consumer::replication::pgoutput::{
    self, Begin, Column, Commit, OldTuple, PgOutput, Relation, Tuple, Value,
};
use cdc_consumer::replication::protocol::{self, ReplicationMessage};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Every pgoutput fixture, in stream order.
const PGOUTPUT_FILES: [&str; 37] = [
    "001-insert-rounds-begin.bin",
    "002-insert-rounds-relation-rounds.bin",
    "003-insert-rounds-insert.bin",
    "004-insert-rounds-insert.bin",
    "005-insert-rounds-insert.bin",
    "006-insert-rounds-commit.bin",
    "007-finish-round-begin.bin",
    "008-finish-round-update.bin",
    "009-finish-round-commit.bin",
    "010-insert-large-extras-begin.bin",
    "011-insert-large-extras-insert.bin",
    "012-insert-large-extras-commit.bin",
    "013-finish-toasted-round-begin.bin",
    "014-finish-toasted-round-update.bin",
    "015-finish-toasted-round-commit.bin",
    "016-delete-round-begin.bin",
    "017-delete-round-delete.bin",
    "018-delete-round-commit.bin",
    "019-truncate-rounds-begin.bin",
    "020-truncate-rounds-relation-rounds.bin",
    "021-truncate-rounds-truncate.bin",
    "022-truncate-rounds-commit.bin",
    "023-add-column-begin.bin",
    "024-add-column-relation-rounds.bin",
    "025-add-column-insert.bin",
    "026-add-column-commit.bin",
    "027-rename-game-begin.bin",
    "028-rename-game-relation-games.bin",
    "029-rename-game-update.bin",
    "030-rename-game-commit.bin",
    "031-heartbeat-begin.bin",
    "032-heartbeat-message.bin",
    "033-heartbeat-commit.bin",
    "034-insert-api-key-begin.bin",
    "035-insert-api-key-relation-api-keys.bin",
    "036-insert-api-key-insert.bin",
    "037-insert-api-key-commit.bin",
];

/// The scenarios, in the order they ran (one transaction each).
const SCENARIOS: [&str; 10] = [
    "insert-rounds",
    "finish-round",
    "insert-large-extras",
    "finish-toasted-round",
    "delete-round",
    "truncate-rounds",
    "add-column",
    "rename-game",
    "heartbeat",
    "insert-api-key",
];

const BIGINT: u32 = 20;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const TEXT_ARRAY: u32 = 1009;
const TIMESTAMPTZ: u32 = 1184;
const JSONB: u32 = 3802;

fn read(dir: &str, name: &str) -> Bytes {
    let path = format!("{FIXTURES}/{dir}/{name}");
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

fn decode(name: &str) -> PgOutput {
    pgoutput::decode(read("pgoutput", name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn text(value: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(value.as_bytes()))
}

fn column(key: bool, name: &str, type_oid: u32) -> Column {
    Column {
        key,
        name: name.to_owned(),
        type_oid,
        type_modifier: -1,
    }
}

/// One scenario's transaction: its Begin, what is between, and its Commit.
struct Transaction {
    begin: Begin,
    changes: Vec<PgOutput>,
    commit: Commit,
}

fn transaction(scenario: &str) -> Transaction {
    let prefix = format!("{scenario}-");
    let mut messages: Vec<PgOutput> = PGOUTPUT_FILES
        .iter()
        .filter(|file| file[4..].starts_with(&prefix))
        .map(|file| decode(file))
        .collect();
    let Some(PgOutput::Commit(commit)) = messages.pop() else {
        panic!("{scenario} does not end with a Commit");
    };
    assert!(!messages.is_empty(), "{scenario} has no Begin");
    let PgOutput::Begin(begin) = messages.remove(0) else {
        panic!("{scenario} does not start with a Begin");
    };
    Transaction {
        begin,
        changes: messages,
        commit,
    }
}

/// The oid and exact shape of `rounds` as the migrations create it (before `note` is added).
fn assert_rounds_relation(message: &PgOutput) -> u32 {
    let PgOutput::Relation(relation) = message else {
        panic!("expected the rounds Relation, got {message:?}");
    };
    assert_eq!(
        relation,
        &Relation {
            oid: relation.oid,
            namespace: "public".to_owned(),
            name: "rounds".to_owned(),
            // REPLICA IDENTITY FULL: every column is flagged as part of the key.
            replica_identity: b'f',
            columns: vec![
                column(true, "id", BIGINT),
                column(true, "game_id", BIGINT),
                column(true, "finished_at", TIMESTAMPTZ),
                column(true, "extras", JSONB),
            ],
        }
    );
    relation.oid
}

fn rounds_oid() -> u32 {
    assert_rounds_relation(&decode("002-insert-rounds-relation-rounds.bin"))
}

#[test]
fn every_fixture_is_listed_and_decodes() {
    for dir in ["pgoutput", "copydata"] {
        let mut found: Vec<String> = std::fs::read_dir(format!("{FIXTURES}/{dir}"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        found.sort();
        let mut listed: Vec<&str> = if dir == "pgoutput" {
            PGOUTPUT_FILES.to_vec()
        } else {
            vec![
                "keepalive-reply-requested.bin",
                "keepalive.bin",
                "xlogdata-begin.bin",
                "xlogdata-insert.bin",
            ]
        };
        listed.sort();
        assert_eq!(found, listed, "{dir}/ holds files no test asserts");
    }
    for file in PGOUTPUT_FILES {
        decode(file);
    }
}

#[test]
fn every_truncation_of_every_fixture_is_an_error() {
    for file in PGOUTPUT_FILES {
        let data = read("pgoutput", file);
        for len in 0..data.len() {
            assert!(
                pgoutput::decode(data.slice(..len)).is_err(),
                "{file}: a prefix of {len} bytes decoded"
            );
        }
    }
}

#[test]
fn transactions_are_whole_and_in_commit_order() {
    let mut previous: Option<Transaction> = None;
    for scenario in SCENARIOS {
        let tx = transaction(scenario);
        assert_eq!(tx.begin.final_lsn, tx.commit.commit_lsn, "{scenario}");
        assert_eq!(tx.begin.commit_time, tx.commit.commit_time, "{scenario}");
        assert_eq!(tx.commit.flags, 0, "{scenario}");
        assert!(tx.commit.end_lsn > tx.commit.commit_lsn, "{scenario}");
        assert!(!tx.changes.is_empty(), "{scenario}: an empty transaction");
        if let Some(prev) = previous {
            assert!(tx.begin.xid > prev.begin.xid, "{scenario}");
            assert!(tx.begin.final_lsn >= prev.commit.end_lsn, "{scenario}");
            assert!(tx.begin.commit_time > prev.commit.commit_time, "{scenario}");
        }
        previous = Some(tx);
    }
}

#[test]
fn multi_row_insert_sends_the_relation_then_each_row() {
    let tx = transaction("insert-rounds");
    let [relation, first, second, third] = tx.changes.as_slice() else {
        panic!("{} changes", tx.changes.len());
    };
    let rounds = assert_rounds_relation(relation);
    assert_eq!(
        first,
        &PgOutput::Insert {
            relation: rounds,
            new: Tuple(vec![
                text("1"),
                text("1"),
                text("2026-01-17 00:45:42.735266-03"),
                text(r#"{"point": "11.72"}"#),
            ]),
        }
    );
    assert_eq!(
        second,
        &PgOutput::Insert {
            relation: rounds,
            new: Tuple(vec![
                text("2"),
                text("12"),
                Value::Null,
                text(r#"{"color": "red", "number": 5}"#),
            ]),
        }
    );
    assert_eq!(
        third,
        &PgOutput::Insert {
            relation: rounds,
            new: Tuple(vec![
                text("3"),
                text("10"),
                text("2026-01-17 00:45:43-03"),
                text(r#"{"reels": ["cherry", "lemon", "orange"], "multiplier": "2.00"}"#),
            ]),
        }
    );
}

#[test]
fn finishing_a_round_carries_the_full_old_row() {
    let tx = transaction("finish-round");
    assert_eq!(
        tx.changes,
        [PgOutput::Update {
            relation: rounds_oid(),
            old: Some(OldTuple::Full(Tuple(vec![
                text("2"),
                text("12"),
                Value::Null,
                text(r#"{"color": "red", "number": 5}"#),
            ]))),
            new: Tuple(vec![
                text("2"),
                text("12"),
                text("2026-01-17 00:45:50.5-03"),
                text(r#"{"color": "red", "number": 5}"#),
            ]),
        }]
    );
}

/// `{"history": "<md5('1')><md5('2')>...<md5('400')>"}`, as the scenario built it.
fn assert_large_extras(value: &Value) {
    let Value::Text(extras) = value else {
        panic!("extras is {value:?}");
    };
    let extras = std::str::from_utf8(extras).expect("jsonb text is UTF-8");
    assert_eq!(extras.len(), r#"{"history": ""}"#.len() + 400 * 32);
    let hex = extras
        .strip_prefix(r#"{"history": ""#)
        .and_then(|rest| rest.strip_suffix(r#""}"#))
        .expect("the history object");
    assert!(
        hex.starts_with("c4ca4238a0b923820dcc509a6f75849b"),
        "md5('1')"
    );
    assert!(
        hex.ends_with("18d8042386b79e2c279fd162df0205c8"),
        "md5('400')"
    );
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn an_update_leaving_toasted_extras_alone_sends_unchanged_toast() {
    let rounds = rounds_oid();
    let inserted = transaction("insert-large-extras");
    let [PgOutput::Insert { relation, new }] = inserted.changes.as_slice() else {
        panic!("{:?}", inserted.changes);
    };
    assert_eq!(*relation, rounds);
    assert_eq!(new.0[..3], [text("4"), text("15"), Value::Null]);
    assert_large_extras(&new.0[3]);
    let inserted_extras = new.0[3].clone();

    let updated = transaction("finish-toasted-round");
    let [PgOutput::Update { relation, old, new }] = updated.changes.as_slice() else {
        panic!("{:?}", updated.changes);
    };
    assert_eq!(*relation, rounds);
    // The new row leaves the TOASTed value out...
    assert_eq!(
        new,
        &Tuple(vec![
            text("4"),
            text("15"),
            text("2026-01-17 00:46:00-03"),
            Value::UnchangedToast,
        ])
    );
    // ...and REPLICA IDENTITY FULL puts it, detoasted, in the old row.
    assert_eq!(
        old,
        &Some(OldTuple::Full(Tuple(vec![
            text("4"),
            text("15"),
            Value::Null,
            inserted_extras,
        ])))
    );
}

#[test]
fn a_delete_carries_the_full_old_row() {
    let tx = transaction("delete-round");
    assert_eq!(
        tx.changes,
        [PgOutput::Delete {
            relation: rounds_oid(),
            old: OldTuple::Full(Tuple(vec![
                text("3"),
                text("10"),
                text("2026-01-17 00:45:43-03"),
                text(r#"{"reels": ["cherry", "lemon", "orange"], "multiplier": "2.00"}"#),
            ])),
        }]
    );
}

#[test]
fn truncate_resends_the_relation_first() {
    let tx = transaction("truncate-rounds");
    let [relation, truncate] = tx.changes.as_slice() else {
        panic!("{:?}", tx.changes);
    };
    // TRUNCATE gives the table a new file, which invalidates pgoutput's cached schema.
    let rounds = assert_rounds_relation(relation);
    assert_eq!(rounds, rounds_oid());
    assert_eq!(
        truncate,
        &PgOutput::Truncate {
            options: 0,
            relations: vec![rounds],
        }
    );
}

#[test]
fn an_added_column_brings_a_second_relation() {
    let tx = transaction("add-column");
    let rounds = rounds_oid();
    assert_eq!(
        tx.changes,
        [
            PgOutput::Relation(Relation {
                oid: rounds,
                namespace: "public".to_owned(),
                name: "rounds".to_owned(),
                replica_identity: b'f',
                columns: vec![
                    column(true, "id", BIGINT),
                    column(true, "game_id", BIGINT),
                    column(true, "finished_at", TIMESTAMPTZ),
                    column(true, "extras", JSONB),
                    column(true, "note", TEXT),
                ],
            }),
            PgOutput::Insert {
                relation: rounds,
                new: Tuple(vec![
                    text("5"),
                    text("13"),
                    text("2026-01-17 00:47:00-03"),
                    text(r#"{"result": 4}"#),
                    text("after alter"),
                ]),
            },
        ]
    );
}

#[test]
fn a_game_rename_has_no_old_row() {
    let tx = transaction("rename-game");
    let [PgOutput::Relation(relation), update] = tx.changes.as_slice() else {
        panic!("{:?}", tx.changes);
    };
    assert_ne!(relation.oid, rounds_oid());
    assert_eq!(
        relation,
        &Relation {
            oid: relation.oid,
            namespace: "public".to_owned(),
            name: "games".to_owned(),
            // Default identity: the primary key, which alone is flagged.
            replica_identity: b'd',
            columns: vec![
                column(true, "id", BIGINT),
                column(false, "slug", TEXT),
                column(false, "name", TEXT),
                column(false, "type", TEXT),
            ],
        }
    );
    assert_eq!(
        update,
        &PgOutput::Update {
            relation: relation.oid,
            old: None,
            new: Tuple(vec![
                text("1"),
                text("crash-classic"),
                text("Crash"),
                text("multiplier"),
            ]),
        }
    );
}

#[test]
fn a_heartbeat_is_a_transactional_message() {
    let tx = transaction("heartbeat");
    assert_eq!(
        tx.changes,
        [PgOutput::Message {
            transactional: true,
            // The end of the message's record, which is where the commit record starts.
            lsn: tx.commit.commit_lsn,
            prefix: "datastream-heartbeat".to_owned(),
            content: Bytes::from_static(b"x"),
        }]
    );
}

#[test]
fn an_api_key_insert() {
    let tx = transaction("insert-api-key");
    let [PgOutput::Relation(relation), insert] = tx.changes.as_slice() else {
        panic!("{:?}", tx.changes);
    };
    assert_eq!(
        relation,
        &Relation {
            oid: relation.oid,
            namespace: "public".to_owned(),
            name: "api_keys".to_owned(),
            replica_identity: b'd',
            columns: vec![
                column(true, "id", BIGINT),
                column(false, "name", TEXT),
                column(false, "key_hash", TEXT),
                column(false, "scopes", TEXT_ARRAY),
                column(false, "max_connections", INT4),
                column(false, "created_at", TIMESTAMPTZ),
                column(false, "revoked_at", TIMESTAMPTZ),
            ],
        }
    );
    assert_eq!(
        insert,
        &PgOutput::Insert {
            relation: relation.oid,
            new: Tuple(vec![
                text("1"),
                text("demo"),
                // sha256("demo-key")
                text("c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"),
                text("{game:crash,type:color}"),
                text("100"),
                text("2026-01-17 00:00:00-03"),
                Value::Null,
            ]),
        }
    );
}

#[test]
fn copydata_bodies_parse() {
    // The XLogData bodies are the first Begin and the first Insert: their payloads are the
    // pgoutput fixtures of the same messages, byte for byte.
    for (file, payload) in [
        ("xlogdata-begin.bin", "001-insert-rounds-begin.bin"),
        ("xlogdata-insert.bin", "003-insert-rounds-insert.bin"),
    ] {
        let body = read("copydata", file);
        assert_eq!(body[0], b'w');
        let ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            send_time,
            data,
        } = protocol::parse_copy_data(body.clone()).unwrap()
        else {
            panic!("{file} is not XLogData");
        };
        assert_eq!(data, read("pgoutput", payload), "{file}");
        assert_eq!(data.len(), body.len() - 25);
        // A logical walsender reports the same position as start and end.
        assert_eq!(wal_start, wal_end, "{file}");
        let PgOutput::Begin(begin) = decode("001-insert-rounds-begin.bin") else {
            unreachable!()
        };
        assert!(wal_start < begin.final_lsn, "{file}");
        assert!(
            send_time > begin.commit_time,
            "{file}: sent before the commit"
        );
    }

    let PgOutput::Commit(last_commit) = decode("037-insert-api-key-commit.bin") else {
        panic!("not a Commit");
    };
    for (file, reply) in [
        ("keepalive.bin", false),
        ("keepalive-reply-requested.bin", true),
    ] {
        let body = read("copydata", file);
        assert_eq!((body[0], body.len()), (b'k', 18), "{file}");
        let ReplicationMessage::Keepalive {
            wal_end,
            reply_requested,
            ..
        } = protocol::parse_copy_data(body).unwrap()
        else {
            panic!("{file} is not a keepalive");
        };
        assert_eq!(reply_requested, reply, "{file}");
        if reply {
            // Asked for after the scenarios, when the server's WAL ends at or after the last
            // commit.
            assert!(wal_end >= last_commit.end_lsn, "{file}");
        }
    }
}
