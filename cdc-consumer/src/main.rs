//! `cdc-consumer`: the binary's edge. Parses settings, then runs one subcommand.

use anyhow::Context as _;
use cdc_consumer::cli::{Cli, Command, KeysCommand, Settings};
use cdc_consumer::metrics::{self, Metrics};
use cdc_consumer::pipeline::{self, Context};
use cdc_consumer::replication::slot;
use cdc_consumer::shutdown::Shutdown;
use cdc_consumer::{backfill, keys, migrate};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = shared::config::parse_or_exit();
    // Fail points (a test build only): `FAILPOINTS=name=action`; a triggered one crashes.
    let _failpoints = fail::FailScenario::setup();
    #[cfg(feature = "failpoints")]
    std::panic::set_hook(Box::new(|info| {
        eprintln!("crashing: {info}");
        std::process::abort();
    }));
    let pg = cli.settings.validate();
    shared::config::init_tracing(cli.settings.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.settings, pg).await,
        Command::Migrate => migrate(&cli.settings, &pg).await,
        Command::Status => status(&cli.settings, &pg).await,
        Command::Keys(command) => manage_keys(command, &pg).await,
        Command::Backfill { from_round_id } => {
            let client = connect(&pg).await?;
            let nats =
                shared::nats::connect_now(&cli.settings.nats_url, "cdc-consumer backfill").await?;
            let report =
                backfill::run(&client, nats, &cli.settings.rounds_stream(), from_round_id).await?;
            println!(
                "backfill from round {from_round_id}: {} published, {} already in the stream",
                report.published, report.present
            );
            Ok(())
        }
    }
}

async fn run(settings: Settings, pg: tokio_postgres::Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    let metrics = Metrics::new();
    let server = metrics::serve(settings.metrics_addr, metrics.clone())
        .with_context(|| format!("serving metrics on {}", settings.metrics_addr))?;
    let server_handle = server.handle();
    tokio::spawn(server);
    let nats = shared::nats::connect(&settings.nats_url, "cdc-consumer").await?;
    tracing::info!(slot = %settings.slot_name, stream = %settings.stream, "cdc-consumer starting");
    let ctx = Context {
        settings,
        pg,
        nats,
        metrics,
    };
    pipeline::run(&ctx, shutdown).await;
    if let Err(err) = ctx.nats.flush().await {
        tracing::warn!(error = %err, "flushing NATS at exit");
    }
    server_handle.stop(true).await;
    Ok(())
}

async fn migrate(settings: &Settings, pg: &tokio_postgres::Config) -> anyhow::Result<()> {
    let mut client = connect(pg).await?;
    let applied = migrate::apply(&mut client).await?;
    let created = slot::ensure_publication(&client, &settings.publication).await?;
    println!(
        "migrations: {} applied now ({}); publication {}: {}",
        applied.len(),
        if applied.is_empty() {
            "up to date".to_owned()
        } else {
            applied.join(", ")
        },
        settings.publication,
        if created { "created" } else { "present" }
    );
    Ok(())
}

async fn status(settings: &Settings, pg: &tokio_postgres::Config) -> anyhow::Result<()> {
    let client = connect(pg).await?;
    match slot::slot_status(&client, &settings.slot_name).await? {
        None => println!(
            "slot        {}: missing (created by `run`)",
            settings.slot_name
        ),
        Some(s) => {
            let holder = match (s.active, s.active_pid) {
                (true, Some(pid)) => format!("active, walsender pid {pid}"),
                (true, None) => "active".to_owned(),
                (false, _) => "inactive".to_owned(),
            };
            let show = |lsn: Option<cdc_consumer::replication::Lsn>| {
                lsn.map_or("-".to_owned(), |l| l.to_string())
            };
            println!("slot        {} ({holder})", settings.slot_name);
            println!("confirmed   {}", show(s.confirmed_flush_lsn));
            println!("restart     {}", show(s.restart_lsn));
            println!("wal_status  {}", s.wal_status.as_deref().unwrap_or("-"));
            println!(
                "lag         {} bytes",
                s.lag_bytes.map_or("-".to_owned(), |b| b.to_string())
            );
        }
    }
    let nats = shared::nats::connect_now(&settings.nats_url, "cdc-consumer status").await?;
    let js = async_nats::jetstream::new(nats);
    match js.get_stream(&settings.stream).await {
        Ok(mut stream) => {
            let info = stream.info().await?;
            println!(
                "stream      {}: {} messages, first seq {}, last seq {}",
                settings.stream,
                info.state.messages,
                info.state.first_sequence,
                info.state.last_sequence
            );
        }
        Err(err) => println!("stream      {}: unavailable ({err})", settings.stream),
    }
    Ok(())
}

async fn manage_keys(command: KeysCommand, pg: &tokio_postgres::Config) -> anyhow::Result<()> {
    let client = connect(pg).await?;
    match command {
        KeysCommand::Create {
            name,
            scopes,
            max_connections,
        } => {
            let created = keys::create(&client, &name, &scopes, max_connections).await?;
            println!("id   {}", created.id);
            println!("key  {}", created.key);
            println!("Store the key now: it is not shown again, and only its hash is kept.");
        }
        KeysCommand::List => {
            println!(
                "{:>5}  {:<24} {:<10} {:<8} {:<34} scopes",
                "id", "name", "state", "max conn", "created"
            );
            for key in keys::list(&client).await? {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                let scopes = if key.scopes.is_empty() {
                    "(all)".to_owned()
                } else {
                    key.scopes.join(",")
                };
                let max = key
                    .max_connections
                    .map_or("-".to_owned(), |n| n.to_string());
                println!(
                    "{:>5}  {:<24} {:<10} {:<8} {:<34} {}",
                    key.id, key.name, state, max, key.created_at, scopes
                );
            }
        }
        KeysCommand::Revoke { id } => {
            keys::revoke(&client, id).await?;
            println!("key {id} revoked");
        }
    }
    Ok(())
}

async fn connect(pg: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}
