//! The replication connection and slot management against a throwaway PostgreSQL 15: every
//! authentication method, the stream from insert to confirmed flush, the slot held by one reader
//! at a time, keepalives, heartbeats and the ways a stream ends.

use std::time::Duration;

use bytes::Bytes;
use cdc_consumer::replication::pgoutput::{self, Column, PgOutput, Tuple, Value};
use cdc_consumer::replication::slot::{self, SlotStatus};
use cdc_consumer::replication::{
    Lsn, ReplicationClient, ReplicationError, ReplicationMessage, ReplicationStream,
};
use testkit::pg::{MD5_USER, SCRAM_USER};
use testkit::{wait_until, Postgres};

const SLOT: &str = "datastream";
const PUBLICATION: &str = "datastream";
/// Long enough for a loaded 2-core machine, short enough to fail quickly.
const DEADLINE: Duration = Duration::from_secs(15);

fn config(url: &str) -> tokio_postgres::Config {
    url.parse().expect("a valid URL")
}

/// A cluster with the migrations applied, and an ordinary client on it.
async fn migrated() -> (Postgres, tokio_postgres::Client) {
    let pg = Postgres::start().await.expect("PostgreSQL starts");
    let client = pg.client().await.expect("client connects");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("migrations/ is readable")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no migrations found in {dir}");
    for file in files {
        let sql = std::fs::read_to_string(&file).expect("migration is readable");
        client.batch_execute(&sql).await.expect("migration applies");
    }
    (pg, client)
}

/// A cluster with the migrations, the publication and the slot.
async fn with_slot() -> (Postgres, tokio_postgres::Client) {
    let (pg, client) = migrated().await;
    slot::ensure_publication(&client, PUBLICATION)
        .await
        .expect("publication created");
    slot::ensure_slot(&client, SLOT)
        .await
        .expect("slot created");
    (pg, client)
}

async fn start_stream(url: &str) -> ReplicationStream {
    ReplicationClient::connect(&config(url))
        .await
        .expect("replication connection")
        .start_logical_replication(SLOT, Lsn::ZERO, PUBLICATION)
        .await
        .expect("replication starts")
}

/// The next pgoutput message, skipping keepalives.
async fn next_change(stream: &mut ReplicationStream) -> PgOutput {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.next().await.expect("the stream goes on") {
                ReplicationMessage::XLogData { data, .. } => {
                    return pgoutput::decode(data).expect("pgoutput decodes")
                }
                ReplicationMessage::Keepalive { .. } => {}
            }
        }
    })
    .await
    .expect("a pgoutput message in time")
}

async fn status(client: &tokio_postgres::Client) -> SlotStatus {
    slot::slot_status(client, SLOT)
        .await
        .expect("slot status query")
        .expect("the slot exists")
}

fn text(value: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(value.as_bytes()))
}

async fn identify(url: &str) -> cdc_consumer::replication::SystemIdentity {
    let mut client = ReplicationClient::connect(&config(url))
        .await
        .expect("replication connection");
    assert!(client.backend_pid().is_some_and(|pid| pid > 0));
    client.identify_system().await.expect("IDENTIFY_SYSTEM")
}

#[tokio::test]
async fn trust_connection_identifies_the_system() {
    let pg = Postgres::start().await.unwrap();
    let client = pg.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT system_identifier::text, pg_current_wal_lsn()::text \
             FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap();
    let (system_id, before): (String, String) = (row.get(0), row.get(1));
    let before: Lsn = before.parse().unwrap();

    let identity = identify(&pg.url()).await;
    assert_eq!(identity.system_id, system_id);
    assert_eq!(identity.timeline, 1);
    assert_eq!(identity.dbname.as_deref(), Some("datastream"));
    assert!(
        identity.xlogpos >= before,
        "{} < {before}",
        identity.xlogpos
    );
}

#[tokio::test]
async fn md5_and_scram_passwords_authenticate() {
    let pg = Postgres::start().await.unwrap();
    for (user, password) in [MD5_USER, SCRAM_USER] {
        let identity = identify(&pg.url_for(user, Some(password))).await;
        assert_eq!(identity.dbname.as_deref(), Some("datastream"), "{user}");
    }
    // The roles really store the hashes that make the server ask for MD5 and SCRAM.
    let client = pg.client().await.unwrap();
    let rows = client
        .query(
            "SELECT rolname::text, CASE WHEN rolpassword LIKE 'md5%' THEN 'md5' \
                    WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' END \
             FROM pg_authid WHERE rolname IN ($1, $2) ORDER BY rolname",
            &[&MD5_USER.0, &SCRAM_USER.0],
        )
        .await
        .unwrap();
    let hashes: Vec<(String, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        hashes,
        [
            (MD5_USER.0.to_owned(), Some("md5".to_owned())),
            (SCRAM_USER.0.to_owned(), Some("scram".to_owned())),
        ]
    );
}

#[tokio::test]
async fn wrong_or_missing_passwords_are_auth_errors() {
    let pg = Postgres::start().await.unwrap();
    for (user, _) in [MD5_USER, SCRAM_USER] {
        let error = ReplicationClient::connect(&config(&pg.url_for(user, Some("wrong"))))
            .await
            .err()
            .expect("a wrong password is refused");
        match &error {
            ReplicationError::Auth {
                code: Some(code),
                message,
            } => {
                assert_eq!(code, "28P01", "{user}");
                assert_eq!(
                    message,
                    &format!("password authentication failed for user \"{user}\"")
                );
            }
            other => panic!("{user}: expected an auth error, got {other:?}"),
        }
        let error = ReplicationClient::connect(&config(&pg.url_for(user, None)))
            .await
            .err()
            .expect("a missing password is refused");
        assert!(
            matches!(error, ReplicationError::Auth { code: None, .. }),
            "{user}: {error:?}"
        );
    }
}

#[tokio::test]
async fn connects_over_the_unix_socket() {
    let pg = Postgres::start().await.unwrap();
    let client = pg.client().await.unwrap();
    let dir: String = client
        .query_one("SHOW unix_socket_directories", &[])
        .await
        .unwrap()
        .get(0);
    let url = format!(
        "host={dir} port={} user=postgres dbname=datastream",
        pg.port()
    );
    let identity = identify(&url).await;
    assert_eq!(identity.dbname.as_deref(), Some("datastream"));
}

#[tokio::test]
async fn unknown_database_is_a_server_error() {
    let pg = Postgres::start().await.unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/nosuchdb", pg.port());
    let error = ReplicationClient::connect(&config(&url))
        .await
        .err()
        .expect("an unknown database is refused");
    match error {
        ReplicationError::Server { code, message } => {
            assert_eq!(code, "3D000");
            assert_eq!(message, "database \"nosuchdb\" does not exist");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn creates_publication_and_slot_once() {
    let (_pg, client) = migrated().await;
    assert!(slot::ensure_publication(&client, PUBLICATION)
        .await
        .unwrap());
    assert!(!slot::ensure_publication(&client, PUBLICATION)
        .await
        .unwrap());
    assert_eq!(slot::slot_status(&client, SLOT).await.unwrap(), None);
    assert!(slot::ensure_slot(&client, SLOT).await.unwrap());
    assert!(!slot::ensure_slot(&client, SLOT).await.unwrap());

    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 \
             ORDER BY tablename",
            &[&PUBLICATION],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["api_keys", "games", "rounds"]);

    let status = status(&client).await;
    assert!(!status.active);
    assert_eq!(status.active_pid, None);
    assert_eq!(status.wal_status.as_deref(), Some("reserved"));
    let confirmed = status
        .confirmed_flush_lsn
        .expect("a new slot has a position");
    assert!(status.restart_lsn.is_some_and(|r| r <= confirmed));
    let lag = status.lag_bytes.expect("lag is known");
    assert!(lag >= 0, "{lag}");

    assert_eq!(
        slot::replica_identity(&client, "rounds").await.unwrap(),
        Some('f')
    );
    assert_eq!(
        slot::replica_identity(&client, "games").await.unwrap(),
        Some('d')
    );
    assert_eq!(
        slot::replica_identity(&client, "no_such_table")
            .await
            .unwrap(),
        None
    );

    // A slot of the same name for another plugin is refused, not silently used.
    client
        .execute(
            "SELECT pg_create_logical_replication_slot('other', 'test_decoding')",
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(
        slot::ensure_slot(&client, "other").await,
        Err(slot::SlotError::Unusable { .. })
    ));
}

#[tokio::test]
async fn concurrent_creators_both_succeed() {
    let (pg, first) = migrated().await;
    let second = pg.client().await.unwrap();
    let (a, b) = tokio::join!(
        slot::ensure_publication(&first, PUBLICATION),
        slot::ensure_publication(&second, PUBLICATION)
    );
    let mut created = [a.unwrap(), b.unwrap()];
    created.sort();
    assert_eq!(
        created,
        [false, true],
        "exactly one creates the publication"
    );
    let (a, b) = tokio::join!(
        slot::ensure_slot(&first, SLOT),
        slot::ensure_slot(&second, SLOT)
    );
    let mut created = [a.unwrap(), b.unwrap()];
    created.sort();
    assert_eq!(created, [false, true], "exactly one creates the slot");
}

#[tokio::test]
async fn streams_inserts_and_confirms_the_flush_position() {
    let (pg, client) = with_slot().await;
    let mut stream = start_stream(&pg.url()).await;
    let status_now = status(&client).await;
    assert!(status_now.active);
    assert_eq!(status_now.active_pid, stream.backend_pid());

    client
        .batch_execute(
            "INSERT INTO rounds (id, game_id, finished_at, extras) VALUES \
             (101, 1, '2026-01-17 00:45:42.735266-03', '{\"point\": \"11.72\"}'), \
             (102, 12, NULL, '{\"number\": 5, \"color\": \"red\"}')",
        )
        .await
        .unwrap();
    let rounds_oid: u32 = client
        .query_one("SELECT 'rounds'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);

    let PgOutput::Begin(begin) = next_change(&mut stream).await else {
        panic!("expected Begin");
    };
    let PgOutput::Relation(relation) = next_change(&mut stream).await else {
        panic!("expected Relation");
    };
    assert_eq!(relation.oid, rounds_oid);
    assert_eq!(
        (relation.namespace.as_str(), relation.name.as_str()),
        ("public", "rounds")
    );
    assert_eq!(relation.replica_identity, b'f');
    let column = |name: &str, type_oid| Column {
        key: true, // REPLICA IDENTITY FULL: every column is part of the identity
        name: name.to_owned(),
        type_oid,
        type_modifier: -1,
    };
    assert_eq!(
        relation.columns,
        [
            column("id", 20),
            column("game_id", 20),
            column("finished_at", 1184),
            column("extras", 3802),
        ]
    );
    assert_eq!(
        next_change(&mut stream).await,
        PgOutput::Insert {
            relation: rounds_oid,
            new: Tuple(vec![
                text("101"),
                text("1"),
                text("2026-01-17 00:45:42.735266-03"),
                text("{\"point\": \"11.72\"}"),
            ]),
        }
    );
    assert_eq!(
        next_change(&mut stream).await,
        PgOutput::Insert {
            relation: rounds_oid,
            new: Tuple(vec![
                text("102"),
                text("12"),
                Value::Null,
                // jsonb's own normalized text
                text("{\"color\": \"red\", \"number\": 5}"),
            ]),
        }
    );
    let PgOutput::Commit(commit) = next_change(&mut stream).await else {
        panic!("expected Commit");
    };
    assert_eq!(commit.commit_lsn, begin.final_lsn);
    assert_eq!(commit.commit_time, begin.commit_time);
    assert!(commit.end_lsn > commit.commit_lsn);
    assert!(
        status(&client).await.confirmed_flush_lsn < Some(commit.end_lsn),
        "confirmed before we said so"
    );

    stream
        .send_status(commit.end_lsn, commit.end_lsn, false)
        .await
        .unwrap();
    let confirmed = wait_until(DEADLINE, "confirmed_flush_lsn to reach the commit", || {
        let client = &client;
        async move {
            let now = status(client).await;
            (now.confirmed_flush_lsn == Some(commit.end_lsn)).then_some(now)
        }
    })
    .await
    .unwrap();
    assert!(confirmed.active);
}

#[tokio::test]
async fn a_second_reader_gets_slot_in_use_until_the_first_closes() {
    let (pg, client) = with_slot().await;
    let first = start_stream(&pg.url()).await;
    let first_pid = first.backend_pid().expect("backend pid");

    let error = ReplicationClient::connect(&config(&pg.url()))
        .await
        .unwrap()
        .start_logical_replication(SLOT, Lsn::ZERO, PUBLICATION)
        .await
        .err()
        .expect("the slot is taken");
    assert!(error.is_slot_in_use(), "{error:?}");
    let ReplicationError::SlotInUse { message } = error else {
        unreachable!()
    };
    assert_eq!(
        message,
        format!("replication slot \"{SLOT}\" is active for PID {first_pid}")
    );

    // close() returns once the server hung up, and by then the slot is free.
    first.close().await;
    let after = status(&client).await;
    assert!(!after.active, "{after:?}");
    let second = start_stream(&pg.url()).await;
    assert_eq!(status(&client).await.active_pid, second.backend_pid());
}

#[tokio::test]
async fn unknown_slot_is_a_server_error() {
    let (pg, _client) = with_slot().await;
    let error = ReplicationClient::connect(&config(&pg.url()))
        .await
        .unwrap()
        .start_logical_replication("no_such_slot", Lsn::ZERO, PUBLICATION)
        .await
        .err()
        .expect("an unknown slot is refused");
    match error {
        ReplicationError::Server { code, message } => {
            assert_eq!(code, "42704");
            assert_eq!(message, "replication slot \"no_such_slot\" does not exist");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn short_sender_timeout_brings_keepalives_asking_for_a_reply() {
    let (pg, client) = with_slot().await;
    let url = format!("{}?options=-c%20wal_sender_timeout%3D2s", pg.url());
    let mut stream = start_stream(&url).await;
    let started = std::time::Instant::now();
    // Answering every request keeps the session alive past the 2 s timeout.
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let message = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("a keepalive in time")
            .unwrap();
        if let ReplicationMessage::Keepalive {
            wal_end,
            reply_requested: true,
            ..
        } = message
        {
            assert!(wal_end > Lsn::ZERO);
            let confirmed = status(&client).await.confirmed_flush_lsn.unwrap();
            stream.send_status(wal_end, confirmed, false).await.unwrap();
            answered += 1;
        }
    }
    // With the default 60 s timeout, the first request would come after 30 s.
    assert!(answered >= 3, "only {answered} reply requests in 5 s");
    slot::emit_heartbeat(&client, "still-there").await.unwrap();
    assert!(matches!(next_change(&mut stream).await, PgOutput::Begin(_)));
}

#[tokio::test]
async fn unanswered_keepalives_end_the_session_after_the_sender_timeout() {
    let (pg, _client) = with_slot().await;
    let url = format!("{}?options=-c%20wal_sender_timeout%3D1s", pg.url());
    let mut stream = start_stream(&url).await;
    let error = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Err(error) = stream.next().await {
                return error;
            }
        }
    })
    .await
    .expect("the server gives up on us");
    assert!(matches!(error, ReplicationError::Closed), "{error:?}");
}

#[tokio::test]
async fn a_heartbeat_arrives_as_a_message_and_moves_the_slot() {
    let (pg, client) = with_slot().await;
    let mut stream = start_stream(&pg.url()).await;
    let emitted = slot::emit_heartbeat(&client, "datastream-heartbeat")
        .await
        .unwrap();

    let PgOutput::Begin(begin) = next_change(&mut stream).await else {
        panic!("expected Begin");
    };
    let PgOutput::Message {
        transactional,
        lsn,
        prefix,
        content,
    } = next_change(&mut stream).await
    else {
        panic!("expected Message");
    };
    let PgOutput::Commit(commit) = next_change(&mut stream).await else {
        panic!("expected Commit");
    };
    assert!(transactional);
    assert_eq!(prefix, "datastream-heartbeat");
    // The content is now()::text of the emitting transaction: the commit time, to the µs, is
    // at or after it.
    let content = std::str::from_utf8(&content).unwrap().to_owned();
    let emitted_at: bool = client
        .query_one(
            "SELECT $1::text::timestamptz <= to_timestamp($2::float8 / 1e6 + 946684800)",
            &[&content, &(begin.commit_time.0 as f64)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(emitted_at, "{content} is after the commit");
    // pg_logical_emit_message and the decoded message both give the end of the message's WAL
    // record, which is where the commit record right after it starts.
    assert_eq!(lsn, emitted);
    assert_eq!(commit.commit_lsn, emitted);

    stream
        .send_status(commit.end_lsn, commit.end_lsn, false)
        .await
        .unwrap();
    wait_until(DEADLINE, "the heartbeat to be confirmed", || {
        let client = &client;
        async move {
            (status(client).await.confirmed_flush_lsn == Some(commit.end_lsn)).then_some(())
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shutdown_ends_the_stream() {
    let (mut pg, client) = with_slot().await;
    let mut stream = start_stream(&pg.url()).await;
    drop(client);
    // A walsender stops only once the client confirmed everything it was sent, so answer
    // keepalives with their WAL end, as an idle consumer does.
    let reader = tokio::spawn(async move {
        loop {
            match stream.next().await {
                Ok(ReplicationMessage::Keepalive {
                    wal_end,
                    reply_requested: true,
                    ..
                }) => stream.send_status(wal_end, wal_end, false).await?,
                Ok(_) => {}
                Err(error) => return Err::<(), _>(error),
            }
        }
    });
    pg.stop().unwrap();
    let ended = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(
        matches!(ended, Err(ReplicationError::StreamEnded)),
        "{ended:?}"
    );
}
