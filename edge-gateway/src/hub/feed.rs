//! The hub's side of NATS: the one consumer of the rounds stream, the games catalog, and the
//! stream's bounds.
//!
//! Start-up, in order: wait for the stream; load the latest round of every subject (one
//! `get_last_raw_message_by_subject` each, so a game quiet for days still has a latest); then
//! read the last `HISTORY_SIZE` events through the ordered consumer that keeps running for the
//! life of the process. The hub is caught up (ready) once that consumer reaches the sequence the
//! stream had at start.
//!
//! The consumer always starts at or before the stream's last message, so it delivers at least
//! one message at once. That matters: async-nats recreates an ordered consumer that has
//! delivered nothing from the start of the stream, which after a NATS restart on a quiet stream
//! would replay everything. Whatever it redelivers is dropped by sequence in the hub.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::kv::Operation;
use async_nats::jetstream::{self, stream::Stream};
use futures_util::{StreamExt, TryStreamExt};
use shared::subject::{is_valid_token, GAMES_BUCKET, ROUNDS_FILTER};
use shared::Game;

use super::{Event, Hub, Nats};

const RETRY: Duration = Duration::from_secs(1);
/// How often the stream's last sequence is read, for the lag metric.
const BOUNDS_REFRESH: Duration = Duration::from_secs(5);

/// Runs the feed for the life of the process. Spawn it on the hub's runtime.
pub async fn run(hub: Hub, nats_url: String) {
    let client = loop {
        match shared::nats::connect(&nats_url, "edge-gateway").await {
            Ok(client) => break client,
            Err(err) => {
                tracing::warn!(error = %err, "cannot connect to NATS; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let js = jetstream::new(client.clone());
    hub.set_nats(Nats {
        client: client.clone(),
        js: js.clone(),
    });
    tokio::spawn(watch_catalog(hub.clone(), js.clone()));
    tokio::spawn(refresh_bounds(hub.clone(), js.clone()));
    consume(hub, client, js).await;
}

/// Waits for the stream, loads the latest rounds, then follows the stream forever.
async fn consume(hub: Hub, client: async_nats::Client, js: jetstream::Context) {
    let stream_name = hub.settings().stream.clone();
    let mut stream = loop {
        match js.get_stream(&stream_name).await {
            Ok(stream) => break stream,
            Err(err) => {
                tracing::info!(stream = %stream_name, error = %err, "waiting for the rounds stream");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let (first, last) = loop {
        match stream.info().await {
            Ok(info) => break (info.state.first_sequence, info.state.last_sequence),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the stream's info; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    hub.set_stream_last(last);
    while let Err(err) = load_latest(&hub, &stream).await {
        tracing::warn!(error = %err, "cannot load the latest rounds; retrying");
        tokio::time::sleep(RETRY).await;
    }
    let history = hub.settings().history_size as u64;
    let mut start = if last == 0 {
        hub.set_caught_up();
        None
    } else {
        // At least one message (the last), at most the history's worth, never before `first`.
        Some(
            last.saturating_sub(history.saturating_sub(1))
                .max(first)
                .min(last),
        )
    };
    tracing::info!(stream = %stream_name, first, last, start = ?start, "following the rounds stream");
    loop {
        let deliver_policy = match start {
            None => DeliverPolicy::All,
            Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        };
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                filter_subject: ROUNDS_FILTER.to_owned(),
                deliver_policy,
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(consumer) => consumer.messages().await,
            Err(err) => {
                tracing::warn!(error = %err, "cannot create the stream consumer; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "cannot subscribe to the stream consumer; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(err) => {
                    // The ordered consumer recreates itself from the last sequence it delivered.
                    tracing::warn!(error = %err, "stream consumer error");
                    continue;
                }
            };
            let (seq, pending) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(err) => {
                    tracing::warn!(subject = %message.subject, error = %err, "stream message without metadata");
                    continue;
                }
            };
            match Event::decode(&message.payload, seq) {
                Ok(event) => hub.dispatch(Arc::new(event), pending),
                Err(err) => {
                    hub.metrics().events_invalid.inc();
                    tracing::warn!(subject = %message.subject, seq, error = %err, "skipping a stream message that is not a round");
                    hub.skip(seq, pending);
                }
            }
            if pending == 0 || seq >= last {
                hub.set_caught_up();
            }
        }
        tracing::warn!("the stream consumer ended; recreating it");
        start = Some(hub.next_seq());
        if let Ok(fresh) = js.get_stream(&stream_name).await {
            stream = fresh;
        }
    }
}

/// The latest round of every subject in the stream.
async fn load_latest(hub: &Hub, stream: &Stream) -> Result<(), async_nats::Error> {
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(ROUNDS_FILTER)
        .await?
        .try_collect()
        .await?;
    for (subject, _) in &subjects {
        let message = stream.get_last_raw_message_by_subject(subject).await?;
        match Event::decode(&message.payload, message.sequence) {
            Ok(event) => hub.offer_latest(Arc::new(event)),
            Err(err) => {
                tracing::warn!(%subject, seq = message.sequence, error = %err, "latest message is not a round")
            }
        }
    }
    tracing::info!(subjects = subjects.len(), "latest rounds loaded");
    Ok(())
}

/// Keeps the catalog equal to the `games` bucket: put, rename (delete + put) and delete reach
/// the hub without a restart.
async fn watch_catalog(hub: Hub, js: jetstream::Context) {
    loop {
        let kv = match shared::nats::open_kv_bucket(&js, GAMES_BUCKET).await {
            Ok(kv) => kv,
            Err(err) => {
                tracing::info!(error = %err, "waiting for the games bucket");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut watch = match kv.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the games bucket; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        // An empty bucket delivers nothing to say "that was everything".
        if kv.status().await.is_ok_and(|status| status.values() == 0) {
            hub.set_catalog_loaded();
        }
        while let Some(entry) = watch.next().await {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    tracing::warn!(error = %err, "games bucket watch error");
                    continue;
                }
            };
            match entry.operation {
                Operation::Put => match serde_json::from_slice::<Game>(&entry.value) {
                    Ok(game) if is_valid_token(&game.slug) && is_valid_token(&game.game_type) => {
                        if game.slug != entry.key {
                            tracing::warn!(key = %entry.key, slug = %game.slug, "games bucket key differs from the slug; using the slug");
                        }
                        tracing::info!(slug = %game.slug, game_type = %game.game_type, "game in catalog");
                        hub.put_game(game);
                    }
                    Ok(game) => {
                        tracing::warn!(key = %entry.key, slug = %game.slug, "game with an invalid slug or type ignored")
                    }
                    Err(err) => {
                        tracing::warn!(key = %entry.key, error = %err, "games bucket value is not a game")
                    }
                },
                Operation::Delete | Operation::Purge => {
                    tracing::info!(slug = %entry.key, "game removed from catalog");
                    hub.remove_game(&entry.key);
                }
            }
            if entry.seen_current {
                hub.set_catalog_loaded();
            }
        }
        tracing::warn!("games bucket watch ended; reopening");
        tokio::time::sleep(RETRY).await;
    }
}

/// Reads the stream's last sequence now and then, so the lag metric moves even when the hub's
/// consumer is stuck.
async fn refresh_bounds(hub: Hub, js: jetstream::Context) {
    let stream_name = hub.settings().stream.clone();
    loop {
        tokio::time::sleep(BOUNDS_REFRESH).await;
        if let Ok(stream) = js.get_stream(&stream_name).await {
            hub.set_stream_last(stream.cached_info().state.last_sequence);
        }
    }
}
