//! `simulator`: plays rounds of every game into PostgreSQL, the way game servers do.
//!
//! By default each game keeps its own pace: a round is inserted when it starts (`finished_at`
//! NULL) and updated with its result when it ends, so the consumer's update rule is exercised.
//! With `--rate N` it becomes a load source instead: N finished rounds per second, round-robin
//! over the games, each inserted finished in its own transaction.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde_json::{json, Value};
use shared::config::{init_tracing, parse_duration, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "simulator",
    about = "Plays rounds of every game into PostgreSQL"
)]
struct Args {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/datastream",
        hide_env_values = true
    )]
    database_url: String,
    /// Finished rounds per second over all games (load mode); without it, every game keeps its
    /// own realistic pace.
    #[arg(long, env = "SIM_RATE")]
    rate: Option<u32>,
    /// Divides every game's round length (2 = twice as many rounds); realistic pace only.
    #[arg(long, env = "SIM_SPEED", default_value_t = 1.0)]
    speed: f64,
    /// Stop after this long (default: run until interrupted).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    log_format: LogFormat,
}

/// A game as the simulator needs it.
#[derive(Debug, Clone)]
struct Game {
    id: i64,
    slug: String,
    game_type: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = shared::config::parse_or_exit();
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        shared::config::invalid("SIM_SPEED", "must be a positive number");
    }
    if args.rate == Some(0) {
        shared::config::invalid("SIM_RATE", "must be above 0");
    }
    init_tracing(args.log_format);
    let client = connect(&args.database_url).await?;
    let games: Vec<Game> = client
        .query("SELECT id, slug, type FROM games ORDER BY id", &[])
        .await
        .context("reading games (run `cdc-consumer migrate` first)")?
        .iter()
        .map(|r| Game {
            id: r.get(0),
            slug: r.get(1),
            game_type: r.get(2),
        })
        .collect();
    anyhow::ensure!(!games.is_empty(), "no games in the database");
    let play = async {
        match args.rate {
            Some(rate) => load(&client, &games, rate).await,
            None => realistic(&args.database_url, games, args.speed).await,
        }
    };
    match args.duration {
        Some(limit) => match tokio::time::timeout(limit, play).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        },
        None => {
            tokio::select! {
                result = play => result,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
    }
}

/// Every game plays on its own connection at its own pace.
async fn realistic(url: &str, games: Vec<Game>, speed: f64) -> anyhow::Result<()> {
    tracing::info!(
        games = games.len(),
        speed,
        "playing rounds at each game's pace"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for game in games {
        let client = connect(url).await?;
        tasks.spawn(async move { play(&client, &game, speed).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("a game stopped")??;
    }
    Ok(())
}

/// One game's rounds, forever: start, wait the round's length, finish with a result.
async fn play(
    client: &tokio_postgres::Client,
    game: &Game,
    speed: f64,
) -> Result<(), tokio_postgres::Error> {
    loop {
        let started = client
            .query_one(
                "INSERT INTO rounds (game_id, extras) VALUES ($1, '{}') RETURNING id",
                &[&game.id],
            )
            .await?;
        let id: i64 = started.get(0);
        tokio::time::sleep(round_length(game).div_f64(speed)).await;
        client
            .execute(
                "UPDATE rounds SET finished_at = now(), extras = $2::text::jsonb WHERE id = $1",
                &[&id, &outcome(game).to_string()],
            )
            .await?;
        tracing::debug!(round_id = id, game = %game.slug, "round finished");
    }
}

/// `rate` finished rounds per second, round-robin over the games.
async fn load(client: &tokio_postgres::Client, games: &[Game], rate: u32) -> anyhow::Result<()> {
    tracing::info!(rate, "playing finished rounds at a fixed rate");
    let insert = client
        .prepare(
            "INSERT INTO rounds (game_id, finished_at, extras) VALUES ($1, now(), $2::text::jsonb)",
        )
        .await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for game in games.iter().cycle() {
        tick.tick().await;
        client
            .execute(&insert, &[&game.id, &outcome(game).to_string()])
            .await?;
    }
    Ok(())
}

/// How long a round of this game lasts, with some variation.
fn round_length(game: &Game) -> Duration {
    let (min, max) = match game.game_type.as_str() {
        "multiplier" if is_slot(game) => (2.0, 4.0),
        "multiplier" => (6.0, 16.0),
        "color" => (12.0, 18.0),
        "dice" => (4.0, 6.0),
        "plinko" => (1.5, 3.0),
        "trend" => (8.0, 12.0),
        _ => (5.0, 10.0),
    };
    Duration::from_secs_f64(min + fastrand::f64() * (max - min))
}

fn is_slot(game: &Game) -> bool {
    matches!(game.slug.as_str(), "slot" | "fortune-dragon")
}

/// A result with the shape this kind of game publishes.
fn outcome(game: &Game) -> Value {
    match game.game_type.as_str() {
        "multiplier" if is_slot(game) => {
            const SYMBOLS: [&str; 6] = ["cherry", "lemon", "orange", "bell", "seven", "dragon"];
            let reels: Vec<&str> = (0..3)
                .map(|_| SYMBOLS[fastrand::usize(..SYMBOLS.len())])
                .collect();
            let multiplier = if reels[0] == reels[1] && reels[1] == reels[2] {
                10.0
            } else if reels[0] == reels[1] || reels[1] == reels[2] {
                2.0
            } else {
                0.0
            };
            json!({"reels": reels, "multiplier": format!("{multiplier:.2}")})
        }
        "multiplier" => {
            // A crash point: 1% instant crashes, otherwise 0.99 / (1 - u).
            let u = fastrand::f64();
            let point = if u < 0.01 {
                1.0
            } else {
                (0.99 / (1.0 - u)).clamp(1.0, 1000.0)
            };
            json!({"point": format!("{point:.2}")})
        }
        "color" => {
            let number = fastrand::u8(0..15);
            let color = match number {
                0 => "white",
                1..=7 => "red",
                _ => "black",
            };
            json!({"color": color, "number": number})
        }
        "dice" => {
            let dice = [fastrand::u8(1..=6), fastrand::u8(1..=6)];
            json!({"dice": dice, "sum": dice[0] + dice[1]})
        }
        "plinko" => {
            const MULTIPLIERS: [&str; 9] = [
                "10.00", "3.00", "1.50", "0.50", "0.30", "0.50", "1.50", "3.00", "10.00",
            ];
            let slot = (0..8).filter(|_| fastrand::bool()).count();
            json!({"rows": 8, "slot": slot, "multiplier": MULTIPLIERS[slot]})
        }
        "trend" => json!({"trending": if fastrand::bool() { "up" } else { "down" }}),
        _ => json!({}),
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL (is DATABASE_URL right?)")?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}
