//! Feeding NATS the way cdc-consumer does, without PostgreSQL: the ROUNDS stream (created from
//! `RoundsStream::config()`), the `games` KV bucket (created with `ensure_kv_bucket`), and rounds
//! published as MessagePack on `rounds.<type>.<slug>` with `Nats-Msg-Id: round-<id>`.
//!
//! Gateway tests use it to drive the gateway with exactly the messages the consumer produces.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use shared::nats::RoundsStream;
use shared::subject::{round_msg_id, round_subject, DEFAULT_STREAM, GAMES_BUCKET, MSG_ID_HEADER};
use shared::{Game, Round};

/// The games the migrations seed, also for tests that feed NATS through something else.
pub use testkit::seeded_games;

/// The ROUNDS stream as the consumer creates it.
pub fn rounds_stream() -> RoundsStream {
    RoundsStream {
        name: DEFAULT_STREAM.to_owned(),
        max_age: Duration::from_secs(24 * 3600),
        duplicate_window: Duration::from_secs(120),
        replicas: 1,
    }
}

/// A throwaway nats-server and a feed on it.
pub async fn nats_and_feed() -> anyhow::Result<(testkit::Nats, Feed)> {
    let nats = testkit::Nats::start().await?;
    let feed = Feed::start(&nats.url()).await?;
    Ok((nats, feed))
}

/// A stand-in for cdc-consumer.
pub struct Feed {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub games_kv: kv::Store,
}

/// Round ids, unique in the test process (so two feeds on one NATS never collide in the
/// stream's duplicate window).
static NEXT_ROUND_ID: AtomicI64 = AtomicI64::new(1);

impl Feed {
    /// Connects, and creates the stream and the games bucket when missing.
    pub async fn start(nats_url: &str) -> anyhow::Result<Feed> {
        let client = async_nats::ConnectOptions::new()
            .name("test feed")
            .retry_on_initial_connect()
            .connect(nats_url)
            .await
            .context("connecting the feed to NATS")?;
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(rounds_stream().config())
            .await
            .context("creating the ROUNDS stream")?;
        let games_kv = shared::nats::ensure_kv_bucket(&js, GAMES_BUCKET, 1)
            .await
            .context("creating the games bucket")?;
        Ok(Feed {
            client,
            js,
            games_kv,
        })
    }

    /// Puts every seeded game in the bucket.
    pub async fn put_seeded_games(&self) -> anyhow::Result<Vec<Game>> {
        let games = seeded_games();
        for game in &games {
            self.put_game(game).await?;
        }
        Ok(games)
    }

    pub async fn put_game(&self, game: &Game) -> anyhow::Result<()> {
        self.games_kv
            .put(&game.slug, serde_json::to_vec(game)?.into())
            .await
            .with_context(|| format!("putting game {}", game.slug))?;
        Ok(())
    }

    pub async fn delete_game(&self, slug: &str) -> anyhow::Result<()> {
        self.games_kv
            .delete(slug)
            .await
            .with_context(|| format!("deleting game {slug}"))?;
        Ok(())
    }

    /// A new finished round of `game`, committed now, with `extras` as its JSON text.
    pub fn round(&self, game: &Game, extras: &str) -> Round {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Round {
            round_id: NEXT_ROUND_ID.fetch_add(1, Ordering::Relaxed),
            game_id: game.id,
            game_slug: game.slug.clone(),
            game_type: game.game_type.clone(),
            finished_at: rfc3339_utc(now),
            extras: extras.to_owned(),
            timestamp: now.as_millis() as i64,
            seq: 0,
        }
    }

    /// Publishes one round and returns its stream sequence.
    pub async fn publish(&self, round: &Round) -> anyhow::Result<u64> {
        Ok(self.publish_all(std::slice::from_ref(round)).await?[0])
    }

    /// Publishes rounds pipelined (all sent, then all acks awaited); returns their sequences.
    pub async fn publish_all(&self, rounds: &[Round]) -> anyhow::Result<Vec<u64>> {
        let mut acks = Vec::with_capacity(rounds.len());
        for round in rounds {
            let mut headers = HeaderMap::new();
            headers.insert(MSG_ID_HEADER, round_msg_id(round.round_id).as_str());
            let ack = self
                .js
                .publish_with_headers(
                    round_subject(&round.game_type, &round.game_slug),
                    headers,
                    round.to_msgpack()?.into(),
                )
                .await
                .with_context(|| format!("publishing round {}", round.round_id))?;
            acks.push(ack);
        }
        let mut seqs = Vec::with_capacity(acks.len());
        for ack in acks {
            let ack = ack.await.context("waiting for a publish ack")?;
            anyhow::ensure!(!ack.duplicate, "round published twice");
            seqs.push(ack.sequence);
        }
        Ok(seqs)
    }

    /// Removes every message with a sequence below `keep_from` (as retention would).
    pub async fn purge_before(&self, keep_from: u64) -> anyhow::Result<()> {
        let stream = self.js.get_stream(DEFAULT_STREAM).await?;
        stream.purge().sequence(keep_from).await?;
        Ok(())
    }
}

/// `2026-01-17T03:45:42.735Z`-style RFC 3339 in UTC, from time since the epoch.
pub fn rfc3339_utc(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(
            rfc3339_utc(Duration::from_millis(1_768_621_542_735)),
            "2026-01-17T03:45:42.735000Z"
        );
        assert_eq!(rfc3339_utc(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
    }
}
