//! The JetStream sink: round events in, acknowledged positions (and confirmable LSNs) out.
//!
//! Exactly once, in commit order, across crashes and outages longer than the stream's duplicate
//! window:
//! - every message carries its WAL [`Position`]; at the start of a session the sink reads the
//!   stream's last message, and events at or before that position are already stored (the stream
//!   holds events in commit order and only the slot holder writes it), so they are skipped;
//! - publishes are pipelined but chained with `Nats-Expected-Last-Sequence`: if one is lost (a
//!   reconnect between two publishes), every later one is refused instead of stored out of order;
//! - any failure ends the session; the pipeline replays from the slot's confirmed LSN, which was
//!   only ever advanced past transactions whose every event was acknowledged.
//!
//! `Nats-Msg-Id: round-<id>` still de-duplicates within the window, which covers writers other
//! than the slot holder (`backfill`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;
use shared::nats::RoundsStream;
use shared::subject::{round_msg_id, round_subject, POSITION_HEADER};

use crate::events::{PendingRound, Position};
use crate::metrics::Metrics;
use crate::replication::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create or read stream {stream}: {source}")]
    Stream {
        stream: String,
        source: async_nats::Error,
    },
    #[error("round {round_id} does not encode: {0}", source)]
    Encode {
        round_id: i64,
        source: shared::CodecError,
    },
    #[error("publishing round {round_id} failed: {source}")]
    Publish {
        round_id: i64,
        source: jetstream::context::PublishError,
    },
    /// The stream already held this round (a message id seen within the duplicate window):
    /// stored once, but the publishes chained after it were refused.
    #[error("round {round_id} at {position} was already in the stream")]
    Duplicate { round_id: i64, position: Position },
}

type AckFuture = Pin<
    Box<
        dyn Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

enum Entry {
    Publish {
        ack: AckFuture,
        round_id: i64,
        position: Position,
        sent: Instant,
        /// The round's commit time, Unix milliseconds.
        committed_ms: i64,
    },
    /// End of a transaction: confirmable once every entry before it is acknowledged.
    Commit(Lsn),
}

/// What the stream held when the session began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamHead {
    pub last_seq: u64,
    /// Position of the last message, when it carries one.
    pub position: Option<Position>,
}

/// Publishes round events to the ROUNDS stream and tracks their acknowledgements in order.
pub struct Sink {
    js: jetstream::Context,
    head: StreamHead,
    /// `Nats-Expected-Last-Sequence` of the next publish.
    next_expected: u64,
    queue: VecDeque<Entry>,
    in_flight: usize,
    max_in_flight: usize,
    metrics: Metrics,
}

impl Sink {
    /// Creates the stream when missing and reads its head.
    pub async fn open(
        js: jetstream::Context,
        stream: &RoundsStream,
        max_in_flight: usize,
        metrics: Metrics,
    ) -> Result<Sink, SinkError> {
        let err = |source: async_nats::Error| SinkError::Stream {
            stream: stream.name.clone(),
            source,
        };
        let mut handle = js
            .get_or_create_stream(stream.config())
            .await
            .map_err(|e| err(e.into()))?;
        let last_seq = handle
            .info()
            .await
            .map_err(|e| err(e.into()))?
            .state
            .last_sequence;
        let position = if last_seq == 0 {
            None
        } else {
            match handle.get_raw_message(last_seq).await {
                Ok(message) => message
                    .headers
                    .get(POSITION_HEADER)
                    .and_then(|value| value.as_str().parse().ok()),
                // Removed by age or purged: nothing the slot can still replay is that old.
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    None
                }
                Err(e) => return Err(err(e.into())),
            }
        };
        let head = StreamHead { last_seq, position };
        tracing::info!(stream = %stream.name, last_seq, position = ?position.map(|p| p.to_string()), "stream head");
        Ok(Sink {
            js,
            head,
            next_expected: last_seq,
            queue: VecDeque::new(),
            in_flight: 0,
            max_in_flight,
            metrics,
        })
    }

    pub fn head(&self) -> StreamHead {
        self.head
    }

    /// Whether the stream already holds the event at `position` (it was published before the
    /// stream's last message).
    pub fn already_stored(&self, position: Position) -> bool {
        self.head.position.is_some_and(|head| position <= head)
    }

    /// Whether another publish fits in the pipeline.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.max_in_flight
    }

    /// Whether acknowledgements are outstanding.
    pub fn has_in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// Whether nothing is pending at all.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends one round; its acknowledgement is awaited later, in order, by [`Sink::next_ack`].
    pub async fn publish(&mut self, pending: &PendingRound) -> Result<(), SinkError> {
        let round = &pending.round;
        let payload = round.to_msgpack().map_err(|source| SinkError::Encode {
            round_id: round.round_id,
            source,
        })?;
        let message = PublishMessage::build()
            .payload(Bytes::from(payload))
            .message_id(round_msg_id(round.round_id))
            .expected_last_sequence(self.next_expected)
            .header(POSITION_HEADER, pending.position.to_string());
        let ack = self
            .js
            .send_publish(round_subject(&round.game_type, &round.game_slug), message)
            .await
            .map_err(|source| SinkError::Publish {
                round_id: round.round_id,
                source,
            })?;
        // Crash test: the message may be stored, its acknowledgement never seen.
        fail::fail_point!("publish-before-ack");
        self.next_expected += 1;
        self.in_flight += 1;
        self.queue.push_back(Entry::Publish {
            ack: std::future::IntoFuture::into_future(ack),
            round_id: round.round_id,
            position: pending.position,
            sent: Instant::now(),
            committed_ms: round.timestamp,
        });
        Ok(())
    }

    /// Records the end of a transaction. Returns the LSN at once when nothing is pending.
    pub fn commit(&mut self, end_lsn: Lsn) -> Option<Lsn> {
        if self.queue.is_empty() {
            return Some(end_lsn);
        }
        self.queue.push_back(Entry::Commit(end_lsn));
        None
    }

    /// Waits for the oldest outstanding acknowledgement. Returns the newest LSN that became
    /// confirmable, if any. Cancel-safe: an interrupted wait leaves the entry in place.
    pub async fn next_ack(&mut self) -> Result<Option<Lsn>, SinkError> {
        let Some(Entry::Publish {
            ack,
            round_id,
            position,
            sent,
            committed_ms,
        }) = self.queue.front_mut()
        else {
            return Ok(self.pop_commits());
        };
        let result = ack.await;
        let (round_id, position, sent, committed_ms) = (*round_id, *position, *sent, *committed_ms);
        self.queue.pop_front();
        self.in_flight -= 1;
        match result {
            Ok(ack) if ack.duplicate => {
                self.metrics.duplicates.inc();
                Err(SinkError::Duplicate { round_id, position })
            }
            Ok(ack) => {
                self.metrics.published.inc();
                self.metrics
                    .publish_latency
                    .observe(sent.elapsed().as_secs_f64());
                let since_commit_ms = unix_millis_now().saturating_sub(committed_ms).max(0);
                self.metrics
                    .commit_to_ack
                    .observe(since_commit_ms as f64 / 1000.0);
                tracing::trace!(round_id, seq = ack.sequence, %position, "acked");
                Ok(self.pop_commits())
            }
            Err(source) => {
                if source.kind() == PublishErrorKind::WrongLastSequence {
                    tracing::warn!(round_id, %position, "chain broken: an earlier publish was not stored");
                }
                Err(SinkError::Publish { round_id, source })
            }
        }
    }

    /// Commit time (Unix ms) of the oldest event still waiting for its acknowledgement.
    pub fn oldest_pending_commit_ms(&self) -> Option<i64> {
        self.queue.iter().find_map(|entry| match entry {
            Entry::Publish { committed_ms, .. } => Some(*committed_ms),
            Entry::Commit(_) => None,
        })
    }

    fn pop_commits(&mut self) -> Option<Lsn> {
        let mut confirmable = None;
        while let Some(Entry::Commit(lsn)) = self.queue.front() {
            confirmable = Some(*lsn);
            self.queue.pop_front();
        }
        confirmable
    }

    /// Waits for every outstanding acknowledgement (at shutdown), up to `deadline`.
    pub async fn drain(&mut self, deadline: Duration) -> Result<Option<Lsn>, SinkError> {
        let mut confirmable = None;
        let drain = async {
            while !self.queue.is_empty() {
                if let Some(lsn) = self.next_ack().await? {
                    confirmable = Some(lsn);
                }
            }
            Ok::<_, SinkError>(())
        };
        match tokio::time::timeout(deadline, drain).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!(
                "acknowledgements still outstanding at shutdown; the slot will replay them"
            ),
        }
        Ok(confirmable)
    }
}

pub(crate) fn unix_millis_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
