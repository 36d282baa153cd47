//! The replication slot and publication, managed over an ordinary tokio-postgres connection.
//!
//! The consumer creates what is missing and never drops anything: dropping a slot discards the
//! position that makes restarts lossless, so that stays a deliberate operator action. Creation
//! tolerates a concurrent creator (two replicas starting together), and the status query gives
//! the numbers an operator needs to see WAL piling up before the slot is invalidated.

use tokio_postgres::error::SqlState;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;
use tracing::info;

use super::Lsn;

/// The tables Datastream streams.
const PUBLISHED_TABLES: &str = "games, rounds, api_keys";

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{what}: {source}")]
    Query {
        what: &'static str,
        source: tokio_postgres::Error,
    },
    /// A slot of that name exists but cannot serve us (another plugin or another database).
    #[error("replication slot {slot:?} exists but {problem}")]
    Unusable { slot: String, problem: String },
}

fn query_error(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SlotError {
    move |source| SlotError::Query { what, source }
}

/// What `pg_replication_slots` says about a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    pub active: bool,
    /// The walsender streaming from the slot, if any.
    pub active_pid: Option<i32>,
    /// Everything before this is confirmed; a restart streams from here.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// The oldest WAL the slot still needs.
    pub restart_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (lost: the slot is invalidated).
    pub wal_status: Option<String>,
    /// Bytes of WAL written after `confirmed_flush_lsn`.
    pub lag_bytes: Option<i64>,
}

/// Creates publication `name` for the Datastream tables when it does not exist; true if created.
/// An existing publication is left as it is.
pub async fn ensure_publication(client: &Client, name: &str) -> Result<bool, SlotError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(query_error("looking up the publication"))?
        .is_some();
    if exists {
        return Ok(false);
    }
    let sql = format!(
        "CREATE PUBLICATION {} FOR TABLE {PUBLISHED_TABLES}",
        postgres_protocol::escape::escape_identifier(name)
    );
    match client.batch_execute(&sql).await {
        Ok(()) => {
            info!(
                publication = name,
                tables = PUBLISHED_TABLES,
                "publication created"
            );
            Ok(true)
        }
        // Another replica created it between our check and our CREATE. A creator that commits
        // while our CREATE runs surfaces as a unique violation on the catalog's name index.
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(false)
        }
        Err(e) => Err(query_error("creating the publication")(e)),
    }
}

/// Creates logical slot `name` with pgoutput when it does not exist; true if created.
///
/// Creating a slot waits for transactions running at that moment to finish, and fails inside a
/// transaction that has written: call it on an idle autocommit connection.
pub async fn ensure_slot(client: &Client, name: &str) -> Result<bool, SlotError> {
    let existing = client
        .query_opt(
            "SELECT plugin, database = current_database() FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(query_error("looking up the replication slot"))?;
    if let Some(row) = existing {
        let read = || query_error("reading the replication slot");
        let plugin: Option<String> = row.try_get(0).map_err(read())?;
        let same_database: Option<bool> = row.try_get(1).map_err(read())?;
        if plugin.as_deref() != Some("pgoutput") {
            return Err(SlotError::Unusable {
                slot: name.to_owned(),
                problem: format!("uses plugin {plugin:?}, not pgoutput"),
            });
        }
        if same_database != Some(true) {
            return Err(SlotError::Unusable {
                slot: name.to_owned(),
                problem: "belongs to another database".to_owned(),
            });
        }
        return Ok(false);
    }
    match client
        .query_one(
            "SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await
    {
        Ok(row) => {
            let lsn: PgLsn = row
                .try_get(0)
                .map_err(query_error("reading the created slot's LSN"))?;
            let lsn = Lsn(lsn.into());
            info!(slot = name, %lsn, "replication slot created");
            Ok(true)
        }
        // Another replica created it between our check and our call.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(query_error("creating the replication slot")(e)),
    }
}

/// The slot's state, or `None` when there is no such slot.
pub async fn slot_status(client: &Client, name: &str) -> Result<Option<SlotStatus>, SlotError> {
    let row = client
        .query_opt(
            "SELECT active, active_pid, confirmed_flush_lsn, restart_lsn, wal_status, \
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(query_error("reading the replication slot's status"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let read = || query_error("reading the replication slot's status");
    let lsn = |i: usize| -> Result<Option<Lsn>, SlotError> {
        let lsn: Option<PgLsn> = row.try_get(i).map_err(read())?;
        Ok(lsn.map(|l| Lsn(l.into())))
    };
    Ok(Some(SlotStatus {
        active: row.try_get(0).map_err(read())?,
        active_pid: row.try_get(1).map_err(read())?,
        confirmed_flush_lsn: lsn(2)?,
        restart_lsn: lsn(3)?,
        wal_status: row.try_get(4).map_err(read())?,
        lag_bytes: row.try_get(5).map_err(read())?,
    }))
}

/// Writes a transactional logical decoding message with `prefix` and the current time, and
/// returns the LSN `pg_logical_emit_message` reports (the end of its WAL record).
///
/// It reaches the stream as a pgoutput `Message` even when no published table changes, so the
/// consumer has something to confirm and the slot keeps moving on an idle database.
pub async fn emit_heartbeat(client: &Client, prefix: &str) -> Result<Lsn, SlotError> {
    let row = client
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, now()::text)",
            &[&prefix],
        )
        .await
        .map_err(query_error("emitting a heartbeat message"))?;
    let lsn: PgLsn = row
        .try_get(0)
        .map_err(query_error("reading the heartbeat's LSN"))?;
    Ok(Lsn(lsn.into()))
}

/// `relreplident` of `public.<table>`: `d` default, `n` nothing, `f` full, `i` index; `None`
/// when there is no such table.
pub async fn replica_identity(client: &Client, table: &str) -> Result<Option<char>, SlotError> {
    let row = client
        .query_opt(
            "SELECT c.relreplident FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relname = $1",
            &[&table],
        )
        .await
        .map_err(query_error("reading the table's replica identity"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    // "char" arrives as i8; its values are ASCII letters.
    let code: i8 = row
        .try_get(0)
        .map_err(query_error("reading the table's replica identity"))?;
    Ok(Some(char::from(code.to_ne_bytes()[0])))
}
