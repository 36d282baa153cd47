//! Missed events fetched from the stream, for a resume the pod's history cannot serve.
//!
//! An ordered pull consumer filtered to the topic's subjects starts at the cursor + 1 and stops
//! at the hub's position when the subscriber registered (`upto`); everything after that reaches
//! the subscriber live, through its queue, which holds it meanwhile. Pulling in bounded batches
//! at the pace the client's socket accepts keeps a long replay from piling up in memory.
//! The consumer is ephemeral; the server removes it 30 s after the replay stops reading.

use std::pin::Pin;
use std::sync::Arc;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::{Stream, StreamExt};

use super::event::Event;
use super::{Hub, Nats};

/// Messages pulled per request.
const BATCH: i64 = 256;

pub(crate) type Replay = Pin<Box<dyn Stream<Item = Result<Arc<Event>, ReplayError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayError {
    #[error("not connected to NATS")]
    NoNats,
    #[error("cannot create the resume consumer: {0}")]
    Consumer(String),
    #[error("the resume consumer failed: {0}")]
    Messages(String),
    #[error("the resume consumer ended before the resume point")]
    Ended,
}

struct Ctx {
    nats: Option<Nats>,
    stream: String,
    filter: String,
    from: u64,
    upto: u64,
    conn_id: u64,
}

enum Step {
    Open(Ctx),
    Reading(Ctx, Box<pull::Ordered>),
    Done,
}

/// The topic's events with sequence in `from..=upto`, in order.
pub(crate) fn from_stream(hub: &Hub, filter: String, from: u64, upto: u64, conn_id: u64) -> Replay {
    let ctx = Ctx {
        nats: hub.nats().cloned(),
        stream: hub.settings().stream.clone(),
        filter,
        from,
        upto,
        conn_id,
    };
    Box::pin(futures_util::stream::unfold(Step::Open(ctx), step))
}

async fn step(step: Step) -> Option<(Result<Arc<Event>, ReplayError>, Step)> {
    let (ctx, mut messages) = match step {
        Step::Done => return None,
        Step::Reading(ctx, messages) => (ctx, *messages),
        Step::Open(ctx) => match open(&ctx).await {
            Ok(Some(messages)) => (ctx, messages),
            Ok(None) => return None,
            Err(err) => return Some((Err(err), Step::Done)),
        },
    };
    loop {
        let message = match messages.next().await {
            None => return Some((Err(ReplayError::Ended), Step::Done)),
            Some(Err(err)) => {
                return Some((Err(ReplayError::Messages(err.to_string())), Step::Done))
            }
            Some(Ok(message)) => message,
        };
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(err) => return Some((Err(ReplayError::Messages(err.to_string())), Step::Done)),
        };
        if seq > ctx.upto {
            return None;
        }
        let last = seq >= ctx.upto || pending == 0;
        match Event::decode(&message.payload, seq) {
            Ok(event) => {
                let next = if last {
                    Step::Done
                } else {
                    Step::Reading(ctx, Box::new(messages))
                };
                return Some((Ok(Arc::new(event)), next));
            }
            Err(err) => {
                tracing::warn!(conn_id = ctx.conn_id, seq, subject = %message.subject, error = %err, "skipping a stream message that is not a round");
                if last {
                    return None;
                }
            }
        }
    }
}

async fn open(ctx: &Ctx) -> Result<Option<pull::Ordered>, ReplayError> {
    let nats = ctx.nats.as_ref().ok_or(ReplayError::NoNats)?;
    let stream = nats
        .js
        .get_stream_no_info(&ctx.stream)
        .await
        .map_err(|err| ReplayError::Consumer(err.to_string()))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: ctx.filter.clone(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: ctx.from,
            },
            max_batch: BATCH,
            ..Default::default()
        })
        .await
        .map_err(|err| ReplayError::Consumer(err.to_string()))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(None);
    }
    tracing::debug!(conn_id = ctx.conn_id, filter = %ctx.filter, from = ctx.from, upto = ctx.upto, pending = consumer.cached_info().num_pending, "resuming from the stream");
    consumer
        .messages()
        .await
        .map(Some)
        .map_err(|err| ReplayError::Consumer(err.to_string()))
}
