//! The event rule: decoded pgoutput messages in, what the sinks must do out.
//!
//! A round becomes an event exactly once: when it is inserted with `finished_at` set, or when an
//! update sets `finished_at` on a round that had none (the old row comes with `REPLICA IDENTITY
//! FULL`). Game slug and type come from a cache of `games` that the same stream keeps current,
//! so a round sees its game as of its position in the transaction, and a rename at once.
//! Changes to `games` and `api_keys` become catalog changes for the KV buckets.
//!
//! Pure: no I/O. The pipeline feeds messages in stream order and carries out the [`Change`]s.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use shared::{ApiKeyRecord, Game, Round};

use crate::pgtext;
use crate::replication::pgoutput::{decode, OldTuple, PgOutput, Relation, Tuple, Value};
use crate::replication::time::PgTimestamp;
use crate::replication::Lsn;

/// Where an event sits in commit order: its transaction's commit LSN and its index among the
/// transaction's events. Replaying the slot yields the same positions, which is what lets the
/// consumer skip what the stream already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub index: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.commit_lsn, self.index)
    }
}

impl FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Position, String> {
        let bad = || format!("{s:?} is not a position like 16/B374D848:3");
        let (lsn, index) = s.split_once(':').ok_or_else(bad)?;
        Ok(Position {
            commit_lsn: lsn.parse().map_err(|_| bad())?,
            index: index.parse().map_err(|_| bad())?,
        })
    }
}

/// A round event waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRound {
    pub round: Round,
    pub position: Position,
}

/// A change to one of the KV buckets.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogChange {
    GameUpsert(Game),
    GameRemoved { slug: String },
    GamesCleared,
    KeyUpsert(ApiKeyRecord),
    KeyRemoved { id: i64 },
    KeysCleared,
}

/// What the pipeline must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Round(PendingRound),
    Catalog(CatalogChange),
    /// Everything before this belongs to a transaction that ends at `end_lsn`: once all of it is
    /// acknowledged, `end_lsn` may be confirmed to PostgreSQL.
    Commit {
        end_lsn: Lsn,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("{0} outside a transaction")]
    OutsideTransaction(&'static str),
    #[error("BEGIN inside a transaction")]
    NestedBegin,
    #[error("change to relation {0} before its Relation message")]
    UnknownRelation(u32),
    #[error("table {table} has no column {column}")]
    MissingColumn { table: String, column: &'static str },
    #[error("{table}.{column}: {why}")]
    BadValue {
        table: &'static str,
        column: &'static str,
        why: String,
    },
    #[error("UPDATE of rounds came without the old row: rounds needs REPLICA IDENTITY FULL")]
    NoOldRow,
    #[error("round {round_id} refers to game {game_id}, which the catalog does not have")]
    UnknownGame { round_id: i64, game_id: i64 },
}

/// Column positions of a published table, resolved from its Relation message by name, so added
/// or reordered columns need no code change.
#[derive(Debug, Clone, Copy)]
enum Table {
    Rounds {
        id: usize,
        game_id: usize,
        finished_at: usize,
        extras: usize,
    },
    Games {
        id: usize,
        slug: usize,
        name: usize,
        game_type: usize,
    },
    ApiKeys {
        id: usize,
        name: usize,
        key_hash: usize,
        scopes: usize,
        max_connections: usize,
        revoked_at: usize,
    },
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Txn {
    final_lsn: Lsn,
    commit_time: PgTimestamp,
    next_index: u32,
}

/// Turns pgoutput messages into [`Change`]s; holds the relation and games caches.
#[derive(Debug)]
pub struct EventBuilder {
    relations: HashMap<u32, Table>,
    games: HashMap<i64, Game>,
    /// Catalog changes committed before this LSN are already in the snapshot the caches were
    /// loaded from; replaying them would briefly roll the KV buckets back (e.g. un-revoke a key).
    catalog_guard: Lsn,
    txn: Option<Txn>,
}

impl EventBuilder {
    /// `games` and `catalog_guard` come from the snapshot the session loaded at start.
    pub fn new(games: impl IntoIterator<Item = Game>, catalog_guard: Lsn) -> EventBuilder {
        EventBuilder {
            relations: HashMap::new(),
            games: games.into_iter().map(|g| (g.id, g)).collect(),
            catalog_guard,
            txn: None,
        }
    }

    /// Whether a transaction has begun and not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Feeds `input`, pgoutput messages each after a 2-byte big-endian length, through
    /// [`EventBuilder::apply`] until the input ends or a message is refused; bytes that do not
    /// decode are skipped. The input format of the `events` fuzz target and of the test that
    /// replays its findings, kept here so that both read it the same way.
    pub fn apply_length_prefixed(&mut self, input: &[u8], out: &mut Vec<Change>) {
        let mut rest = input;
        while let [hi, lo, tail @ ..] = rest {
            let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
            let (message, after) = tail.split_at(len);
            rest = after;
            if let Ok(message) = decode(bytes::Bytes::copy_from_slice(message)) {
                if self.apply(message, out).is_err() {
                    return;
                }
            }
        }
    }

    /// Applies one message, appending what it implies to `out`.
    pub fn apply(&mut self, msg: PgOutput, out: &mut Vec<Change>) -> Result<(), EventError> {
        match msg {
            PgOutput::Begin(begin) => {
                if self.txn.is_some() {
                    return Err(EventError::NestedBegin);
                }
                self.txn = Some(Txn {
                    final_lsn: begin.final_lsn,
                    commit_time: begin.commit_time,
                    next_index: 0,
                });
            }
            PgOutput::Commit(commit) => {
                self.txn
                    .take()
                    .ok_or(EventError::OutsideTransaction("COMMIT"))?;
                out.push(Change::Commit {
                    end_lsn: commit.end_lsn,
                });
            }
            PgOutput::Relation(relation) => {
                let table = Table::resolve(&relation)?;
                self.relations.insert(relation.oid, table);
            }
            PgOutput::Insert { relation, new } => {
                let txn = self.txn.ok_or(EventError::OutsideTransaction("INSERT"))?;
                match self.table(relation)? {
                    Table::Rounds { .. } => {
                        if let Some(round) = self.finished_round(relation, &new, txn)? {
                            self.push_round(round, out);
                        }
                    }
                    _ if self.in_snapshot(txn) => {}
                    _ => self.catalog_upsert(relation, &new, out)?,
                }
            }
            PgOutput::Update { relation, old, new } => {
                let txn = self.txn.ok_or(EventError::OutsideTransaction("UPDATE"))?;
                match self.table(relation)? {
                    Table::Rounds { finished_at, .. } => {
                        let Some(OldTuple::Full(old)) = old else {
                            return Err(EventError::NoOldRow);
                        };
                        let was_running = matches!(old.0.get(finished_at), Some(Value::Null));
                        let new = fill_unchanged(new, &old);
                        if was_running {
                            if let Some(round) = self.finished_round(relation, &new, txn)? {
                                self.push_round(round, out);
                            }
                        }
                    }
                    _ if self.in_snapshot(txn) => {}
                    _ => {
                        let new = match &old {
                            Some(old) => fill_unchanged(new, old.tuple()),
                            None => new,
                        };
                        self.catalog_upsert(relation, &new, out)?;
                    }
                }
            }
            PgOutput::Delete { relation, old } => {
                let txn = self.txn.ok_or(EventError::OutsideTransaction("DELETE"))?;
                if !self.in_snapshot(txn) {
                    self.catalog_delete(relation, old.tuple(), out)?;
                }
            }
            PgOutput::Truncate { relations, .. } => {
                let txn = self.txn.ok_or(EventError::OutsideTransaction("TRUNCATE"))?;
                // Already in the snapshot: nothing to clear.
                let relations = if self.in_snapshot(txn) {
                    Vec::new()
                } else {
                    relations
                };
                for relation in relations {
                    match self.table(relation)? {
                        Table::Games { .. } => {
                            self.games.clear();
                            out.push(Change::Catalog(CatalogChange::GamesCleared));
                        }
                        Table::ApiKeys { .. } => {
                            out.push(Change::Catalog(CatalogChange::KeysCleared))
                        }
                        Table::Rounds { .. } | Table::Other => {}
                    }
                }
            }
            // Heartbeats and other logical messages exist only to move the slot; types and
            // origins change nothing we publish.
            PgOutput::Message { .. } | PgOutput::Type { .. } | PgOutput::Origin { .. } => {}
        }
        Ok(())
    }

    fn table(&self, relation: u32) -> Result<Table, EventError> {
        self.relations
            .get(&relation)
            .copied()
            .ok_or(EventError::UnknownRelation(relation))
    }

    fn push_round(&mut self, round: Round, out: &mut Vec<Change>) {
        if let Some(txn) = self.txn.as_mut() {
            let position = Position {
                commit_lsn: txn.final_lsn,
                index: txn.next_index,
            };
            txn.next_index += 1;
            out.push(Change::Round(PendingRound { round, position }));
        }
    }

    /// The round event for a `rounds` row, if the row is finished.
    fn finished_round(
        &self,
        relation: u32,
        row: &Tuple,
        txn: Txn,
    ) -> Result<Option<Round>, EventError> {
        let Table::Rounds {
            id,
            game_id,
            finished_at,
            extras,
        } = self.table(relation)?
        else {
            return Ok(None);
        };
        let Some(finished_at) = text(row, finished_at, "rounds", "finished_at")? else {
            return Ok(None);
        };
        let round_id = int(row, id, "rounds", "id")?;
        let game_id = int(row, game_id, "rounds", "game_id")?;
        let game = self
            .games
            .get(&game_id)
            .ok_or(EventError::UnknownGame { round_id, game_id })?;
        let extras =
            text(row, extras, "rounds", "extras")?.ok_or_else(|| EventError::BadValue {
                table: "rounds",
                column: "extras",
                why: "NULL".into(),
            })?;
        let finished_at = pgtext::timestamptz_to_rfc3339(finished_at).unwrap_or_else(|| {
            tracing::warn!(
                round_id,
                finished_at,
                "finished_at has no RFC 3339 form; sent as stored"
            );
            finished_at.to_owned()
        });
        Ok(Some(Round {
            round_id,
            game_id,
            game_slug: game.slug.clone(),
            game_type: game.game_type.clone(),
            finished_at,
            extras: extras.to_owned(),
            timestamp: txn.commit_time.unix_millis(),
            seq: 0,
        }))
    }

    /// Whether `txn`'s catalog changes are already in the snapshot the caches were loaded from.
    fn in_snapshot(&self, txn: Txn) -> bool {
        txn.final_lsn < self.catalog_guard
    }

    fn catalog_upsert(
        &mut self,
        relation: u32,
        row: &Tuple,
        out: &mut Vec<Change>,
    ) -> Result<(), EventError> {
        match self.table(relation)? {
            Table::Games {
                id,
                slug,
                name,
                game_type,
            } => {
                let game = Game {
                    id: int(row, id, "games", "id")?,
                    slug: required(row, slug, "games", "slug")?,
                    name: required(row, name, "games", "name")?,
                    game_type: required(row, game_type, "games", "type")?,
                };
                if let Some(previous) = self.games.insert(game.id, game.clone()) {
                    if previous.slug != game.slug {
                        out.push(Change::Catalog(CatalogChange::GameRemoved {
                            slug: previous.slug,
                        }));
                    }
                }
                out.push(Change::Catalog(CatalogChange::GameUpsert(game)));
            }
            Table::ApiKeys {
                id,
                name,
                key_hash,
                scopes,
                max_connections,
                revoked_at,
            } => {
                let scopes_text = required(row, scopes, "api_keys", "scopes")?;
                let scopes =
                    pgtext::text_array(&scopes_text).ok_or_else(|| EventError::BadValue {
                        table: "api_keys",
                        column: "scopes",
                        why: format!("{scopes_text:?} is not a text array"),
                    })?;
                let max_connections =
                    match text(row, max_connections, "api_keys", "max_connections")? {
                        None => None,
                        Some(raw) => Some(raw.parse().map_err(|_| EventError::BadValue {
                            table: "api_keys",
                            column: "max_connections",
                            why: format!("{raw:?} is not a connection count"),
                        })?),
                    };
                out.push(Change::Catalog(CatalogChange::KeyUpsert(ApiKeyRecord {
                    id: int(row, id, "api_keys", "id")?,
                    name: required(row, name, "api_keys", "name")?,
                    key_hash: required(row, key_hash, "api_keys", "key_hash")?,
                    scopes,
                    revoked: text(row, revoked_at, "api_keys", "revoked_at")?.is_some(),
                    max_connections,
                })));
            }
            Table::Rounds { .. } | Table::Other => {}
        }
        Ok(())
    }

    fn catalog_delete(
        &mut self,
        relation: u32,
        old: &Tuple,
        out: &mut Vec<Change>,
    ) -> Result<(), EventError> {
        match self.table(relation)? {
            Table::Games { id, .. } => {
                let id = int(old, id, "games", "id")?;
                if let Some(game) = self.games.remove(&id) {
                    out.push(Change::Catalog(CatalogChange::GameRemoved {
                        slug: game.slug,
                    }));
                }
            }
            Table::ApiKeys { id, .. } => {
                let id = int(old, id, "api_keys", "id")?;
                out.push(Change::Catalog(CatalogChange::KeyRemoved { id }));
            }
            Table::Rounds { .. } | Table::Other => {}
        }
        Ok(())
    }
}

impl Table {
    fn resolve(relation: &Relation) -> Result<Table, EventError> {
        if relation.namespace != "public" {
            return Ok(Table::Other);
        }
        let col = |column: &'static str| {
            relation
                .columns
                .iter()
                .position(|c| c.name == column)
                .ok_or_else(|| EventError::MissingColumn {
                    table: relation.name.clone(),
                    column,
                })
        };
        Ok(match relation.name.as_str() {
            "rounds" => Table::Rounds {
                id: col("id")?,
                game_id: col("game_id")?,
                finished_at: col("finished_at")?,
                extras: col("extras")?,
            },
            "games" => Table::Games {
                id: col("id")?,
                slug: col("slug")?,
                name: col("name")?,
                game_type: col("type")?,
            },
            "api_keys" => Table::ApiKeys {
                id: col("id")?,
                name: col("name")?,
                key_hash: col("key_hash")?,
                scopes: col("scopes")?,
                max_connections: col("max_connections")?,
                revoked_at: col("revoked_at")?,
            },
            _ => Table::Other,
        })
    }
}

/// The new row with unchanged TOASTed values taken from the old row, where it has them.
fn fill_unchanged(mut new: Tuple, old: &Tuple) -> Tuple {
    for (value, old) in new.0.iter_mut().zip(&old.0) {
        if *value == Value::UnchangedToast && matches!(old, Value::Text(_) | Value::Binary(_)) {
            *value = old.clone();
        }
    }
    new
}

fn text<'a>(
    row: &'a Tuple,
    index: usize,
    table: &'static str,
    column: &'static str,
) -> Result<Option<&'a str>, EventError> {
    let bad = |why: &str| EventError::BadValue {
        table,
        column,
        why: why.to_owned(),
    };
    match row.0.get(index) {
        Some(Value::Null) => Ok(None),
        Some(Value::Text(bytes)) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| bad("not UTF-8")),
        Some(Value::UnchangedToast) => Err(bad(
            "unchanged TOAST value without an old row to take it from",
        )),
        Some(Value::Binary(_)) => Err(bad("binary value; the session asks for text")),
        None => Err(bad("missing from the row")),
    }
}

fn required(
    row: &Tuple,
    index: usize,
    table: &'static str,
    column: &'static str,
) -> Result<String, EventError> {
    text(row, index, table, column)?
        .map(str::to_owned)
        .ok_or_else(|| EventError::BadValue {
            table,
            column,
            why: "NULL".into(),
        })
}

fn int(
    row: &Tuple,
    index: usize,
    table: &'static str,
    column: &'static str,
) -> Result<i64, EventError> {
    let raw = required(row, index, table, column)?;
    raw.parse().map_err(|_| EventError::BadValue {
        table,
        column,
        why: format!("{raw:?} is not an integer"),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::replication::pgoutput::{Begin, Column, Commit};

    const ROUNDS: u32 = 100;
    const GAMES: u32 = 101;
    const KEYS: u32 = 102;
    // 2026-01-17T03:45:42.123456Z
    const COMMIT_TIME: PgTimestamp = PgTimestamp(821_936_742_123_456);

    fn relation(oid: u32, name: &str, columns: &[&str]) -> PgOutput {
        PgOutput::Relation(Relation {
            oid,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: b'f',
            columns: columns
                .iter()
                .map(|c| Column {
                    key: *c == "id",
                    name: (*c).into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    fn row(values: &[Option<&str>]) -> Tuple {
        Tuple(
            values
                .iter()
                .map(|v| match v {
                    Some(text) => Value::Text(Bytes::copy_from_slice(text.as_bytes())),
                    None => Value::Null,
                })
                .collect(),
        )
    }

    fn crash() -> Game {
        Game {
            id: 1,
            slug: "crash".into(),
            name: "Crash".into(),
            game_type: "multiplier".into(),
        }
    }

    /// A builder that has seen the three tables' Relation messages.
    fn builder(guard: Lsn) -> EventBuilder {
        let mut b = EventBuilder::new([crash()], guard);
        let mut out = Vec::new();
        // `note` is an added column: columns are found by name.
        b.apply(
            relation(
                ROUNDS,
                "rounds",
                &["id", "game_id", "note", "finished_at", "extras"],
            ),
            &mut out,
        )
        .unwrap();
        b.apply(
            relation(GAMES, "games", &["id", "slug", "name", "type"]),
            &mut out,
        )
        .unwrap();
        b.apply(
            relation(
                KEYS,
                "api_keys",
                &[
                    "id",
                    "name",
                    "key_hash",
                    "scopes",
                    "max_connections",
                    "created_at",
                    "revoked_at",
                ],
            ),
            &mut out,
        )
        .unwrap();
        assert!(out.is_empty());
        b
    }

    fn txn(
        b: &mut EventBuilder,
        final_lsn: u64,
        body: Vec<PgOutput>,
    ) -> Result<Vec<Change>, EventError> {
        let mut out = Vec::new();
        b.apply(
            PgOutput::Begin(Begin {
                final_lsn: Lsn(final_lsn),
                commit_time: COMMIT_TIME,
                xid: 7,
            }),
            &mut out,
        )?;
        for msg in body {
            b.apply(msg, &mut out)?;
        }
        b.apply(
            PgOutput::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(final_lsn),
                end_lsn: Lsn(final_lsn + 8),
                commit_time: COMMIT_TIME,
            }),
            &mut out,
        )?;
        Ok(out)
    }

    fn insert_round(id: &str, finished_at: Option<&str>) -> PgOutput {
        PgOutput::Insert {
            relation: ROUNDS,
            new: row(&[
                Some(id),
                Some("1"),
                None,
                finished_at,
                Some(r#"{"point": "11.72"}"#),
            ]),
        }
    }

    fn rounds(changes: &[Change]) -> Vec<(i64, Position)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Round(p) => Some((p.round.round_id, p.position)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_finished_insert_is_an_event_with_the_spec_fields() {
        let mut b = builder(Lsn::ZERO);
        let out = txn(
            &mut b,
            0x500,
            vec![insert_round("512", Some("2026-01-17 00:45:42.735266-03"))],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                Change::Round(PendingRound {
                    round: Round {
                        round_id: 512,
                        game_id: 1,
                        game_slug: "crash".into(),
                        game_type: "multiplier".into(),
                        finished_at: "2026-01-17T00:45:42.735266-03:00".into(),
                        extras: r#"{"point": "11.72"}"#.into(),
                        timestamp: 1_768_621_542_123,
                        seq: 0,
                    },
                    position: Position {
                        commit_lsn: Lsn(0x500),
                        index: 0
                    },
                }),
                Change::Commit {
                    end_lsn: Lsn(0x508)
                },
            ]
        );
    }

    #[test]
    fn a_running_insert_is_not_an_event_but_the_update_that_finishes_it_is() {
        let mut b = builder(Lsn::ZERO);
        let out = txn(&mut b, 0x10, vec![insert_round("7", None)]).unwrap();
        assert_eq!(out, vec![Change::Commit { end_lsn: Lsn(0x18) }]);

        let running = row(&[Some("7"), Some("1"), None, None, Some("{}")]);
        let mut finished = row(&[
            Some("7"),
            Some("1"),
            None,
            Some("2026-01-17 00:45:42-03"),
            None,
        ]);
        // The unchanged, TOASTed extras comes from the old row.
        finished.0[4] = Value::UnchangedToast;
        let out = txn(
            &mut b,
            0x20,
            vec![PgOutput::Update {
                relation: ROUNDS,
                old: Some(OldTuple::Full(running)),
                new: finished.clone(),
            }],
        )
        .unwrap();
        let Change::Round(event) = &out[0] else {
            panic!("no event: {out:?}");
        };
        assert_eq!(event.round.round_id, 7);
        assert_eq!(event.round.extras, "{}");
        assert_eq!(event.round.finished_at, "2026-01-17T00:45:42-03:00");

        // Updating an already finished round (e.g. its extras) is not a second event.
        let mut already = finished.clone();
        already.0[4] = Value::Text(Bytes::from_static(b"{}"));
        let out = txn(
            &mut b,
            0x30,
            vec![PgOutput::Update {
                relation: ROUNDS,
                old: Some(OldTuple::Full(already)),
                new: finished,
            }],
        )
        .unwrap();
        assert_eq!(rounds(&out), vec![]);
    }

    #[test]
    fn positions_number_events_within_their_transaction() {
        let mut b = builder(Lsn::ZERO);
        let out = txn(
            &mut b,
            0x40,
            vec![
                insert_round("1", Some("2026-01-17 00:45:42-03")),
                insert_round("2", None),
                insert_round("3", Some("2026-01-17 00:45:43-03")),
            ],
        )
        .unwrap();
        let at = |index| Position {
            commit_lsn: Lsn(0x40),
            index,
        };
        assert_eq!(rounds(&out), vec![(1, at(0)), (3, at(1))]);
        assert!(
            at(1)
                < Position {
                    commit_lsn: Lsn(0x41),
                    index: 0
                }
        );
    }

    #[test]
    fn a_rename_in_the_same_transaction_is_seen_by_the_round() {
        let mut b = builder(Lsn::ZERO);
        let out = txn(
            &mut b,
            0x50,
            vec![
                PgOutput::Update {
                    relation: GAMES,
                    old: None,
                    new: row(&[
                        Some("1"),
                        Some("crash-x"),
                        Some("Crash X"),
                        Some("multiplier"),
                    ]),
                },
                insert_round("9", Some("2026-01-17 00:45:42-03")),
            ],
        )
        .unwrap();
        assert_eq!(
            out[0],
            Change::Catalog(CatalogChange::GameRemoved {
                slug: "crash".into()
            })
        );
        let Change::Catalog(CatalogChange::GameUpsert(game)) = &out[1] else {
            panic!("no upsert: {out:?}");
        };
        assert_eq!(game.slug, "crash-x");
        let Change::Round(event) = &out[2] else {
            panic!("no event: {out:?}");
        };
        assert_eq!(event.round.game_slug, "crash-x");
    }

    #[test]
    fn catalog_changes_older_than_the_snapshot_are_not_replayed() {
        let mut b = builder(Lsn(0x1000));
        let rename = PgOutput::Update {
            relation: GAMES,
            old: None,
            new: row(&[Some("1"), Some("old-name"), Some("Old"), Some("multiplier")]),
        };
        let out = txn(
            &mut b,
            0x900,
            vec![
                rename.clone(),
                insert_round("3", Some("2026-01-17 00:45:42-03")),
            ],
        )
        .unwrap();
        assert!(
            !out.iter().any(|c| matches!(c, Change::Catalog(_))),
            "{out:?}"
        );
        let Change::Round(event) = &out[0] else {
            panic!("no event: {out:?}");
        };
        assert_eq!(
            event.round.game_slug, "crash",
            "round must see the snapshot's game"
        );
        let out = txn(&mut b, 0x1000, vec![rename]).unwrap();
        assert!(
            matches!(out[1], Change::Catalog(CatalogChange::GameUpsert(_))),
            "{out:?}"
        );
    }

    #[test]
    fn api_keys_become_records_without_secrets() {
        let mut b = builder(Lsn::ZERO);
        let hash = "a".repeat(64);
        let out = txn(
            &mut b,
            0x60,
            vec![
                PgOutput::Insert {
                    relation: KEYS,
                    new: row(&[
                        Some("4"),
                        Some("partner"),
                        Some(&hash),
                        Some("{game:crash,type:color}"),
                        Some("10"),
                        Some("2026-01-17 00:45:42-03"),
                        Some("2026-01-18 00:00:00-03"),
                    ]),
                },
                PgOutput::Delete {
                    relation: KEYS,
                    old: OldTuple::Key(row(&[Some("5"), None, None, None, None, None, None])),
                },
            ],
        )
        .unwrap();
        assert_eq!(
            out[0],
            Change::Catalog(CatalogChange::KeyUpsert(ApiKeyRecord {
                id: 4,
                name: "partner".into(),
                key_hash: hash,
                scopes: vec!["game:crash".into(), "type:color".into()],
                revoked: true,
                max_connections: Some(10),
            }))
        );
        assert_eq!(out[1], Change::Catalog(CatalogChange::KeyRemoved { id: 5 }));
    }

    #[test]
    fn truncating_api_keys_clears_every_key() {
        let mut b = builder(Lsn::ZERO);
        let out = txn(
            &mut b,
            0x70,
            vec![PgOutput::Truncate {
                options: 0,
                relations: vec![KEYS, ROUNDS],
            }],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                Change::Catalog(CatalogChange::KeysCleared),
                Change::Commit { end_lsn: Lsn(0x78) }
            ]
        );
    }

    #[test]
    fn what_cannot_be_decided_is_an_error() {
        let mut b = builder(Lsn::ZERO);
        let unknown_game = PgOutput::Insert {
            relation: ROUNDS,
            new: row(&[
                Some("8"),
                Some("99"),
                None,
                Some("2026-01-17 00:45:42-03"),
                Some("{}"),
            ]),
        };
        assert_eq!(
            txn(&mut b, 0x80, vec![unknown_game]),
            Err(EventError::UnknownGame {
                round_id: 8,
                game_id: 99
            })
        );
        let mut b = builder(Lsn::ZERO);
        let no_old_row = PgOutput::Update {
            relation: ROUNDS,
            old: None,
            new: row(&[
                Some("8"),
                Some("1"),
                None,
                Some("2026-01-17 00:45:42-03"),
                Some("{}"),
            ]),
        };
        assert_eq!(
            txn(&mut b, 0x90, vec![no_old_row]),
            Err(EventError::NoOldRow)
        );
        let mut b = builder(Lsn::ZERO);
        assert_eq!(
            txn(
                &mut b,
                0xA0,
                vec![PgOutput::Insert {
                    relation: 555,
                    new: row(&[])
                }]
            ),
            Err(EventError::UnknownRelation(555))
        );
        let mut b = EventBuilder::new([], Lsn::ZERO);
        let mut out = Vec::new();
        assert!(matches!(
            b.apply(
                relation(ROUNDS, "rounds", &["id", "game_id", "extras"]),
                &mut out
            ),
            Err(EventError::MissingColumn {
                column: "finished_at",
                ..
            })
        ));
        assert_eq!(
            b.apply(insert_round("1", None), &mut out),
            Err(EventError::OutsideTransaction("INSERT"))
        );
    }

    #[test]
    fn positions_display_and_parse() {
        let p = Position {
            commit_lsn: Lsn(0x16_B374_D848),
            index: 3,
        };
        assert_eq!(p.to_string(), "16/B374D848:3");
        assert_eq!("16/B374D848:3".parse::<Position>(), Ok(p));
        assert!("16/B374D848".parse::<Position>().is_err());
        assert!("x:1".parse::<Position>().is_err());
    }
}
