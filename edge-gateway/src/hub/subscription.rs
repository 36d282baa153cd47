//! One client's subscription, as a transport sees it: a sequence of deliveries, then an end.
//!
//! A transport adapter polls [`Subscription::poll_next`] from wherever it writes (an actix
//! response body, a task) and writes each delivery's wire form. Everything that makes the
//! sequence right lives here, so every transport gets the same guarantees:
//! first the latest round (or the events missed since the client's cursor, from the pod's
//! history or fetched from the stream while live events wait in the queue), then live events
//! in stream order, never one twice; and an end with a reason (slow, shutdown, ...).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

use super::event::Event;
use super::queue::Queue;
use super::replay::{self, Replay};
use super::topic::Topic;
use super::{Hub, Registration};
use crate::metrics::{EndReason, Metrics, Protocol, ResumeSource};

/// How a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No cursor: the latest round of the topic comes first (as [`Delivery::Initial`]).
    Fresh,
    /// A cursor inside the stream: the events after it come first, then live ones.
    Resumed { source: ResumeSource },
    /// A cursor outside the stream: the client must be told (SSE `event: reset`, WebSocket close
    /// 4010); the subscription then continues like a fresh one.
    Reset { reason: ResetReason },
}

/// Why a cursor cannot be resumed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetReason {
    /// Events after the cursor have already left the stream.
    TooOld { cursor: u64, first: u64 },
    /// The cursor is beyond the stream's last event (e.g. the stream was rebuilt).
    Ahead { cursor: u64, last: u64 },
}

impl std::fmt::Display for ResetReason {
    // Kept short: it is also a WebSocket close reason (at most 123 bytes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResetReason::TooOld { cursor, first } => write!(
                f,
                "cursor {cursor} is older than the stream (first event {first}); reconnect without it"
            ),
            ResetReason::Ahead { cursor, last } => write!(
                f,
                "cursor {cursor} is beyond the stream (last event {last}); reconnect without it"
            ),
        }
    }
}

/// One event to send.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The latest round, sent first on a fresh subscription (SSE `event: initial`).
    Initial(Arc<Event>),
    /// Any other round (SSE `event: message`).
    Message(Arc<Event>),
}

impl Delivery {
    pub fn event(&self) -> &Arc<Event> {
        match self {
            Delivery::Initial(e) | Delivery::Message(e) => e,
        }
    }
}

/// What [`Subscription::poll_next`] yields.
#[derive(Debug)]
pub enum Next {
    Deliver(Delivery),
    /// The subscription is over; the transport closes the connection accordingly.
    End(EndReason),
}

/// Ends a subscription from outside its connection; does nothing once the subscription is gone.
#[derive(Debug, Clone)]
pub struct Closer(std::sync::Weak<Queue>);

impl Closer {
    pub fn close(&self, reason: EndReason) {
        if let Some(queue) = self.0.upgrade() {
            queue.close(reason);
        }
    }
}

/// A registered subscriber. Dropping it unregisters it.
pub struct Subscription {
    id: u64,
    topic: Topic,
    protocol: Protocol,
    start: Start,
    queue: Arc<Queue>,
    initial: VecDeque<Delivery>,
    replay: Option<Replay>,
    /// The batch most recently taken from the queue.
    live: VecDeque<Arc<Event>>,
    skip_upto: u64,
    ended: Option<EndReason>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("protocol", &self.protocol)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(
        id: u64,
        hub: Hub,
        topic: Topic,
        protocol: Protocol,
        queue: Arc<Queue>,
        registration: Registration,
    ) -> Subscription {
        let metrics = Arc::clone(hub.metrics());
        let counters = metrics.protocol(protocol);
        counters.connections.inc();
        counters.connections_opened.inc();
        let replay = registration
            .replay
            .map(|(from, upto)| replay::from_stream(&hub, topic.subject_filter(), from, upto, id));
        tracing::debug!(conn_id = id, %topic, protocol = protocol.as_str(), start = ?registration.start, "subscribed");
        Subscription {
            id,
            topic,
            protocol,
            start: registration.start,
            queue,
            initial: registration.initial,
            replay,
            live: VecDeque::new(),
            skip_upto: registration.skip_upto,
            ended: None,
            metrics,
        }
    }

    /// A handle that ends this subscription from outside its connection (a revoked key).
    pub fn closer(&self) -> Closer {
        Closer(Arc::downgrade(&self.queue))
    }

    /// The connection id used in logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    pub fn start(&self) -> &Start {
        &self.start
    }

    /// The next delivery, or the end. Registers the task's waker when there is nothing yet.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        if let Some(reason) = self.ended {
            return Poll::Ready(Next::End(reason));
        }
        let counters = self.metrics.protocol(self.protocol);
        if let Some(delivery) = self.initial.pop_front() {
            counters.deliveries.inc();
            return Poll::Ready(Next::Deliver(delivery));
        }
        if let Some(replay) = self.replay.as_mut() {
            match replay.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(event))) => {
                    counters.deliveries.inc();
                    return Poll::Ready(Next::Deliver(Delivery::Message(event)));
                }
                Poll::Ready(Some(Err(err))) => {
                    tracing::warn!(conn_id = self.id, topic = %self.topic, error = %err, "resume from the stream failed");
                    return Poll::Ready(Next::End(self.end(EndReason::ReplayFailed)));
                }
                Poll::Ready(None) => self.replay = None,
                Poll::Pending => {
                    // Live events wait in the queue meanwhile, but an end must not wait.
                    return match self.queue.poll_closed(cx) {
                        Poll::Ready(reason) => Poll::Ready(Next::End(self.end(reason))),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
        loop {
            while let Some(event) = self.live.pop_front() {
                if event.seq > self.skip_upto {
                    counters.deliveries.inc();
                    counters.latency.observe_us(latency_micros(&event));
                    return Poll::Ready(Next::Deliver(Delivery::Message(event)));
                }
            }
            match self.queue.poll_take(cx, &mut self.live) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(reason)) => return Poll::Ready(Next::End(self.end(reason))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Whether the subscription has ended, without taking a delivery: for a transport whose
    /// socket is full, which must still notice an end to send its close. Registers the waker
    /// when it has not.
    pub fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<EndReason> {
        if let Some(reason) = self.ended {
            return Poll::Ready(reason);
        }
        match self.queue.poll_closed(cx) {
            Poll::Ready(reason) => Poll::Ready(self.end(reason)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// [`Subscription::poll_next`] as a future, for transports that run a task per connection.
    pub async fn next(&mut self) -> Next {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Ends the subscription for a reason the transport found (the peer left, broke the
    /// protocol, ...). The first reason recorded is the one counted.
    pub fn finish(&mut self, reason: EndReason) {
        self.end(reason);
    }

    fn end(&mut self, reason: EndReason) -> EndReason {
        let reason = *self.ended.get_or_insert(reason);
        self.queue.close(reason);
        self.replay = None;
        self.initial.clear();
        self.live.clear();
        reason
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Counted in the disconnect metrics by the queue's first close, whoever decided it.
        let reason = self.ended.unwrap_or(EndReason::ClientGone);
        self.queue.close(reason);
        self.metrics.protocol(self.protocol).connections.dec();
        tracing::debug!(conn_id = self.id, topic = %self.topic, protocol = self.protocol.as_str(), reason = reason.as_str(), "subscription ended");
    }
}

/// From the round's commit to now.
fn latency_micros(event: &Event) -> u64 {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    u64::try_from(now_us - event.timestamp_ms.saturating_mul(1000)).unwrap_or(0)
}
