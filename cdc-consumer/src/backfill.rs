//! `backfill --from-round-id N`: re-publishes stored finished rounds, to rebuild a lost stream or
//! cover a slot that had to be recreated.
//!
//! Rounds the stream already holds are skipped (found by scanning the stream's message ids, which
//! works beyond the duplicate window too); the rest are published in round id order with the
//! usual message id. Their position header repeats the stream's current head, so the consumer's
//! "what does the stream hold" check stays correct. `timestamp` is the commit time when
//! `track_commit_timestamp` is on, else `finished_at` (the commit time of old rows is gone).

use std::collections::HashSet;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, message::PublishMessage};
use futures_util::StreamExt;
use shared::nats::RoundsStream;
use shared::subject::{round_msg_id, round_subject, MSG_ID_HEADER, POSITION_HEADER};
use shared::Round;

/// Rounds read from PostgreSQL per query.
const BATCH: i64 = 1000;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub published: u64,
    pub present: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("reading rounds: {0}")]
    Read(#[from] tokio_postgres::Error),
    #[error("stream {stream}: {source}")]
    Stream {
        stream: String,
        source: async_nats::Error,
    },
    #[error("round {round_id}: {source}")]
    Publish {
        round_id: i64,
        source: async_nats::Error,
    },
}

pub async fn run(
    client: &tokio_postgres::Client,
    nats: async_nats::Client,
    stream: &RoundsStream,
    from_round_id: i64,
) -> Result<Report, BackfillError> {
    let js = jetstream::new(nats);
    let stream_err = |source: async_nats::Error| BackfillError::Stream {
        stream: stream.name.clone(),
        source,
    };
    let mut handle = js
        .get_or_create_stream(stream.config())
        .await
        .map_err(|e| stream_err(e.into()))?;
    let state = handle
        .info()
        .await
        .map_err(|e| stream_err(e.into()))?
        .state
        .clone();
    let last_seq = state.last_sequence;
    let head_position = if state.messages == 0 {
        None
    } else {
        handle.get_raw_message(last_seq).await.ok().and_then(|m| {
            m.headers
                .get(POSITION_HEADER)
                .map(|v| v.as_str().to_owned())
        })
    };
    let present = stored_round_ids(&handle, state.messages, last_seq, from_round_id)
        .await
        .map_err(stream_err)?;
    let commit_time = if track_commit_timestamp(client).await? {
        "(extract(epoch FROM pg_xact_commit_timestamp(r.xmin)) * 1000)::bigint"
    } else {
        "(extract(epoch FROM r.finished_at) * 1000)::bigint"
    };
    let query = format!(
        "SELECT r.id, r.game_id, g.slug, g.type, to_json(r.finished_at) #>> '{{}}', r.extras::text, {commit_time}
           FROM rounds r JOIN games g ON g.id = r.game_id
          WHERE r.id >= $1 AND r.finished_at IS NOT NULL
          ORDER BY r.id LIMIT $2"
    );
    let mut report = Report::default();
    let mut cursor = from_round_id;
    loop {
        let rows = client.query(&query, &[&cursor, &BATCH]).await?;
        let Some(last) = rows.last() else {
            return Ok(report);
        };
        cursor = last.get::<_, i64>(0) + 1;
        let mut acks = Vec::with_capacity(rows.len());
        for row in &rows {
            let round = Round {
                round_id: row.get(0),
                game_id: row.get(1),
                game_slug: row.get(2),
                game_type: row.get(3),
                finished_at: row.get(4),
                extras: row.get(5),
                timestamp: row.get::<_, Option<i64>>(6).unwrap_or_default(),
                seq: 0,
            };
            if present.contains(&round.round_id) {
                report.present += 1;
                continue;
            }
            let publish_err = |source: async_nats::Error| BackfillError::Publish {
                round_id: round.round_id,
                source,
            };
            let payload = round.to_msgpack().map_err(|e| publish_err(e.into()))?;
            let mut message = PublishMessage::build()
                .payload(payload.into())
                .message_id(round_msg_id(round.round_id));
            if let Some(position) = &head_position {
                message = message.header(POSITION_HEADER, position.as_str());
            }
            let ack = js
                .send_publish(round_subject(&round.game_type, &round.game_slug), message)
                .await
                .map_err(|e| publish_err(e.into()))?;
            acks.push((round.round_id, ack));
        }
        for (round_id, ack) in acks {
            let ack = ack.await.map_err(|e| BackfillError::Publish {
                round_id,
                source: e.into(),
            })?;
            if ack.duplicate {
                report.present += 1;
            } else {
                report.published += 1;
            }
        }
        tracing::info!(
            up_to = cursor - 1,
            published = report.published,
            "backfill progress"
        );
    }
}

/// Round ids at or above `from` that the stream holds, read from message ids (headers only).
async fn stored_round_ids(
    stream: &jetstream::stream::Stream,
    messages: u64,
    last_seq: u64,
    from: i64,
) -> Result<HashSet<i64>, async_nats::Error> {
    let mut ids = HashSet::new();
    if messages == 0 {
        return Ok(ids);
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            headers_only: true,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(MSG_ID_HEADER))
            .and_then(|v| v.as_str().strip_prefix("round-")?.parse::<i64>().ok());
        if let Some(id) = id.filter(|id| *id >= from) {
            ids.insert(id);
        }
        let info = message.info()?;
        if info.stream_sequence >= last_seq || info.pending == 0 {
            break;
        }
    }
    Ok(ids)
}

async fn track_commit_timestamp(
    client: &tokio_postgres::Client,
) -> Result<bool, tokio_postgres::Error> {
    let on: String = client
        .query_one("SHOW track_commit_timestamp", &[])
        .await?
        .get(0);
    Ok(on == "on")
}
