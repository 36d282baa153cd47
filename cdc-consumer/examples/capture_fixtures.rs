//! Captures the protocol fixtures under `tests/fixtures/` from a throwaway PostgreSQL 15.
//!
//! The decoder's tests run on bytes PostgreSQL really sent, not on bytes we believe it sends:
//! this program migrates a fresh cluster, creates the publication and slot, runs one scenario per
//! transaction (the shapes the consumer must handle) and saves, through our own
//! `ReplicationStream`, every XLogData payload to `pgoutput/NNN-<scenario>-<message>.bin` and a
//! few raw CopyData bodies to `copydata/`, with a `MANIFEST.md` describing each file.
//!
//! Run with `cargo run -p cdc-consumer --example capture_fixtures`; then update the assertions in
//! `tests/pgoutput_fixtures.rs` if a scenario changed.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use cdc_consumer::replication::pgoutput::{self, PgOutput};
use cdc_consumer::replication::protocol::{self, ReplicationMessage};
use cdc_consumer::replication::{slot, Lsn, ReplicationClient, ReplicationStream};

const SLOT: &str = "datastream";
const PUBLICATION: &str = "datastream";
/// How long one scenario's transaction (or a wanted keepalive) may take to arrive.
const DEADLINE: Duration = Duration::from_secs(20);

/// One transaction's worth of SQL (several statements run as separate transactions) and what it
/// shows.
struct Scenario {
    name: &'static str,
    what: &'static str,
    sql: &'static [&'static str],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "insert-rounds",
        what:
            "one transaction inserting three rounds: two finished, one running (finished_at NULL)",
        sql: &[
            "INSERT INTO rounds (id, game_id, finished_at, extras) VALUES \
                (1, 1, '2026-01-17 00:45:42.735266-03', '{\"point\": \"11.72\"}'), \
                (2, 12, NULL, '{\"color\": \"red\", \"number\": 5}'), \
                (3, 10, '2026-01-17 00:45:43-03', \
                 '{\"reels\": [\"cherry\", \"lemon\", \"orange\"], \"multiplier\": \"2.00\"}')",
        ],
    },
    Scenario {
        name: "finish-round",
        what: "an UPDATE setting finished_at on running round 2; REPLICA IDENTITY FULL sends the \
               old row ('O')",
        sql: &["UPDATE rounds SET finished_at = '2026-01-17 00:45:50.5-03' WHERE id = 2"],
    },
    Scenario {
        name: "insert-large-extras",
        what: "running round 4 whose extras (12.8 kB of md5 hex) is TOASTed out of line",
        sql: &[
            "INSERT INTO rounds (id, game_id, finished_at, extras) VALUES \
                (4, 15, NULL, jsonb_build_object('history', \
                 (SELECT string_agg(md5(i::text), '' ORDER BY i) \
                  FROM generate_series(1, 400) AS i)))",
        ],
    },
    Scenario {
        name: "finish-toasted-round",
        what: "an UPDATE of round 4 changing only finished_at: the new row has 'u' (unchanged \
               TOAST) for extras, the full old row has its value",
        sql: &["UPDATE rounds SET finished_at = '2026-01-17 00:46:00-03' WHERE id = 4"],
    },
    Scenario {
        name: "delete-round",
        what: "a DELETE of round 3, with the full old row",
        sql: &["DELETE FROM rounds WHERE id = 3"],
    },
    Scenario {
        name: "truncate-rounds",
        what: "TRUNCATE rounds",
        sql: &["TRUNCATE rounds"],
    },
    Scenario {
        name: "add-column",
        what: "ALTER TABLE rounds ADD COLUMN note text (its own transaction, which sends \
               nothing), then an insert: a second Relation for rounds, with five columns",
        sql: &[
            "ALTER TABLE rounds ADD COLUMN note text",
            "INSERT INTO rounds (id, game_id, finished_at, extras, note) VALUES \
             (5, 13, '2026-01-17 00:47:00-03', '{\"result\": 4}', 'after alter')",
        ],
    },
    Scenario {
        name: "rename-game",
        what: "UPDATE games SET slug: games has the default replica identity (its key), which \
               did not change, so there is no old row",
        sql: &["UPDATE games SET slug = 'crash-classic' WHERE id = 1"],
    },
    Scenario {
        name: "heartbeat",
        what: "pg_logical_emit_message(true, 'datastream-heartbeat', 'x'): a transactional \
               message",
        sql: &["SELECT pg_logical_emit_message(true, 'datastream-heartbeat', 'x')"],
    },
    Scenario {
        name: "insert-api-key",
        what: "an api_keys insert (key_hash is the SHA-256 of 'demo-key')",
        sql: &["INSERT INTO api_keys \
                (id, name, key_hash, scopes, max_connections, created_at) VALUES \
                (1, 'demo', encode(sha256('demo-key'::bytea), 'hex'), \
                 '{game:crash,type:color}', 100, '2026-01-17 00:00:00-03')"],
    },
];

/// Files written so far, for the manifest.
struct Capture {
    pgoutput_dir: std::path::PathBuf,
    copydata_dir: std::path::PathBuf,
    pgoutput_rows: Vec<String>,
    copydata_rows: Vec<String>,
    count: usize,
    /// The last commit's end: what we confirm when PostgreSQL asks for a reply.
    confirmed: Lsn,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let pg = testkit::Postgres::start().await?;
    let client = pg.client().await?;
    migrate(&client).await?;
    slot::ensure_publication(&client, PUBLICATION).await?;
    slot::ensure_slot(&client, SLOT).await?;
    let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);

    // A short sender timeout makes PostgreSQL ask for a reply within a second.
    let url = format!("{}?options=-c%20wal_sender_timeout%3D2s", pg.url());
    let mut replication = ReplicationClient::connect(&url.parse()?).await?;
    let identity = replication.identify_system().await?;
    let mut stream = replication
        .start_logical_replication(SLOT, Lsn::ZERO, PUBLICATION)
        .await?;

    let mut capture = Capture {
        pgoutput_dir: fixtures.join("pgoutput"),
        copydata_dir: fixtures.join("copydata"),
        pgoutput_rows: Vec::new(),
        copydata_rows: Vec::new(),
        count: 0,
        confirmed: identity.xlogpos,
    };
    for dir in [&capture.pgoutput_dir, &capture.copydata_dir] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }

    for scenario in SCENARIOS {
        for sql in scenario.sql {
            client
                .batch_execute(sql)
                .await
                .with_context(|| format!("scenario {}", scenario.name))?;
        }
        capture.transaction(&mut stream, scenario).await?;
    }
    capture.keepalives(&mut stream).await?;
    stream.close().await;

    let manifest = capture.manifest(&version);
    std::fs::write(fixtures.join("MANIFEST.md"), manifest)?;
    println!(
        "captured {} pgoutput and {} CopyData fixtures in {}",
        capture.pgoutput_rows.len(),
        capture.copydata_rows.len(),
        fixtures.display()
    );
    Ok(())
}

async fn migrate(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "sql"));
    files.sort();
    for file in files {
        let sql = std::fs::read_to_string(&file)?;
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("applying {}", file.display()))?;
    }
    Ok(())
}

impl Capture {
    /// Saves every message of the scenario's transaction, up to its Commit.
    async fn transaction(
        &mut self,
        stream: &mut ReplicationStream,
        scenario: &Scenario,
    ) -> anyhow::Result<()> {
        loop {
            let body = next_copy_data(stream).await?;
            let (data, wal_start) = match protocol::parse_copy_data(body.clone())? {
                ReplicationMessage::XLogData {
                    data, wal_start, ..
                } => (data, wal_start),
                ReplicationMessage::Keepalive {
                    wal_end,
                    reply_requested,
                    ..
                } => {
                    self.keepalive(stream, body, wal_end, reply_requested)
                        .await?;
                    continue;
                }
            };
            let message = pgoutput::decode(data.clone())?;
            let kind = kind(&message);
            self.count += 1;
            let file = format!("{:03}-{}-{kind}.bin", self.count, scenario.name);
            std::fs::write(self.pgoutput_dir.join(&file), &data)?;
            self.pgoutput_rows.push(format!(
                "| `{file}` | {} | {wal_start} | {} |",
                data.len(),
                scenario.what
            ));
            if matches!(kind.as_str(), "begin" | "insert") {
                self.save_copydata(&format!("xlogdata-{kind}.bin"), &body, "XLogData ('w')")?;
            }
            if let PgOutput::Commit(commit) = message {
                self.confirmed = commit.end_lsn;
                return Ok(());
            }
        }
    }

    /// Waits until both kinds of keepalive were saved (PostgreSQL sends one without reply
    /// request after data, and one asking for a reply after half the sender timeout).
    async fn keepalives(&mut self, stream: &mut ReplicationStream) -> anyhow::Result<()> {
        while !(self.has("keepalive.bin") && self.has("keepalive-reply-requested.bin")) {
            let body = next_copy_data(stream).await?;
            match protocol::parse_copy_data(body.clone())? {
                ReplicationMessage::Keepalive {
                    wal_end,
                    reply_requested,
                    ..
                } => {
                    self.keepalive(stream, body, wal_end, reply_requested)
                        .await?
                }
                ReplicationMessage::XLogData { .. } => {
                    bail!("unexpected XLogData after the scenarios")
                }
            }
        }
        Ok(())
    }

    async fn keepalive(
        &mut self,
        stream: &mut ReplicationStream,
        body: Bytes,
        wal_end: Lsn,
        reply_requested: bool,
    ) -> anyhow::Result<()> {
        if reply_requested {
            self.save_copydata(
                "keepalive-reply-requested.bin",
                &body,
                "primary keepalive ('k') asking for a reply",
            )?;
            stream.send_status(wal_end, self.confirmed, false).await?;
        } else {
            self.save_copydata(
                "keepalive.bin",
                &body,
                "primary keepalive ('k'), no reply asked",
            )?;
        }
        Ok(())
    }

    fn has(&self, file: &str) -> bool {
        self.copydata_dir.join(file).exists()
    }

    /// Saves the first body of each kind only.
    fn save_copydata(&mut self, file: &str, body: &Bytes, what: &str) -> anyhow::Result<()> {
        if !self.has(file) {
            std::fs::write(self.copydata_dir.join(file), body)?;
            self.copydata_rows
                .push(format!("| `{file}` | {} | {what} |", body.len()));
        }
        Ok(())
    }

    fn manifest(&self, version: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Protocol fixtures\n\n\
             Captured by `cargo run -p cdc-consumer --example capture_fixtures` from PostgreSQL \
             {version} (a throwaway cluster with the migrations applied, `TimeZone` \
             America/Sao_Paulo), through `ReplicationStream`, with `proto_version '1'` and \
             `messages 'true'`. Do not edit the `.bin` files: capture again, then update \
             `tests/pgoutput_fixtures.rs`. LSNs, xids, relation oids and commit times differ \
             from one capture to the next; the tests assert them by their relations.\n\n\
             ## pgoutput/\n\n\
             Each file is the payload (`data`) of one XLogData message: one pgoutput message, \
             in stream order. The file name is `<order>-<scenario>-<message>.bin`. The WAL \
             start is the XLogData header's; PostgreSQL sends Relation messages with 0/0 there.\n\n\
             | file | bytes | WAL start | scenario |\n| --- | --- | --- | --- |"
        );
        for row in &self.pgoutput_rows {
            let _ = writeln!(out, "{row}");
        }
        let _ = writeln!(
            out,
            "\n## copydata/\n\n\
             Whole CopyData bodies, as `protocol::parse_copy_data` takes them.\n\n\
             | file | bytes | what |\n| --- | --- | --- |"
        );
        for row in &self.copydata_rows {
            let _ = writeln!(out, "{row}");
        }
        out
    }
}

async fn next_copy_data(stream: &mut ReplicationStream) -> anyhow::Result<Bytes> {
    Ok(tokio::time::timeout(DEADLINE, stream.next_copy_data())
        .await
        .context("nothing from PostgreSQL in time")??)
}

/// `begin`, `relation-rounds`, `update`, ...: the last part of a fixture's file name.
fn kind(message: &PgOutput) -> String {
    match message {
        PgOutput::Begin(_) => "begin".to_owned(),
        PgOutput::Commit(_) => "commit".to_owned(),
        PgOutput::Origin { .. } => "origin".to_owned(),
        PgOutput::Relation(relation) => format!("relation-{}", relation.name.replace('_', "-")),
        PgOutput::Type { .. } => "type".to_owned(),
        PgOutput::Insert { .. } => "insert".to_owned(),
        PgOutput::Update { .. } => "update".to_owned(),
        PgOutput::Delete { .. } => "delete".to_owned(),
        PgOutput::Truncate { .. } => "truncate".to_owned(),
        PgOutput::Message { .. } => "message".to_owned(),
    }
}
