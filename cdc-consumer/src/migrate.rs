//! Applies the SQL files of `migrations/` (embedded at build time) in lexical order, each once,
//! recorded in `datastream_migrations`. Two processes migrating at once take turns on an
//! advisory lock.

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Arbitrary, fixed: the advisory lock key of migrations.
const LOCK_KEY: i64 = 0x6461_7461_7374_7265;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {file} failed: {source}")]
    Apply {
        file: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("migration bookkeeping failed: {0}")]
    Bookkeeping(#[from] tokio_postgres::Error),
}

/// Applies what is missing; returns the files applied now.
pub async fn apply(client: &mut tokio_postgres::Client) -> Result<Vec<&'static str>, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS datastream_migrations (
                 version    text PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_locked(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    result
}

async fn apply_locked(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<&'static str>, MigrateError> {
    let mut applied = Vec::new();
    for (file, sql) in MIGRATIONS {
        let done = client
            .query_opt(
                "SELECT 1 FROM datastream_migrations WHERE version = $1",
                &[file],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .map_err(|source| MigrateError::Apply { file, source })?;
        tx.execute(
            "INSERT INTO datastream_migrations (version) VALUES ($1)",
            &[file],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(file, "migration applied");
        applied.push(*file);
    }
    Ok(applied)
}
