//! The per-connection outgoing queue: bounded in bytes, filled by the hub, drained by the
//! connection.
//!
//! The hub's dispatch loop must never wait for a client, so a push is a lock, a `VecDeque`
//! push of an `Arc` and, when the connection is parked, one wake. The connection takes
//! everything queued in one swap (double-buffered, so neither side reallocates in steady state)
//! and writes it as one batch. When a push would exceed the bound the queue is emptied and
//! closed as [`EndReason::Slow`]: the client is disconnected and resumes with its cursor, while
//! the hub and every other client carry on.

use std::collections::VecDeque;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::event::Event;
use crate::metrics::{EndReason, Metrics, Protocol};

/// What happened to a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// The push overflowed the bound; the queue dropped this many events and closed.
    Overflowed {
        dropped: usize,
    },
    /// The queue was already closed: forget the subscriber.
    Closed,
}

/// The queue of one connection. Its first close is counted in `gateway_disconnects_total` with
/// its reason, at the moment it is decided (a slow client's socket may close much later).
#[derive(Debug)]
pub(crate) struct Queue {
    limit: usize,
    protocol: Protocol,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Arc<Event>>,
    bytes: usize,
    closed: Option<EndReason>,
    waker: Option<Waker>,
}

impl Queue {
    pub(crate) fn new(limit: usize, protocol: Protocol, metrics: Arc<Metrics>) -> Arc<Queue> {
        Arc::new(Queue {
            limit,
            protocol,
            metrics,
            state: Mutex::new(State::default()),
        })
    }

    /// Hub side: appends `event`, or closes the queue as slow when it does not fit.
    pub(crate) fn push(&self, event: &Arc<Event>) -> Pushed {
        let cost = event.queue_cost();
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return Pushed::Closed;
        }
        // An event larger than the bound still goes into an empty queue: only a backlog counts.
        let pushed = if !state.items.is_empty() && state.bytes + cost > self.limit {
            let dropped = state.items.len() + 1;
            state.items = VecDeque::new();
            state.bytes = 0;
            state.closed = Some(EndReason::Slow);
            Pushed::Overflowed { dropped }
        } else {
            state.items.push_back(Arc::clone(event));
            state.bytes += cost;
            Pushed::Queued
        };
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Pushed::Overflowed { dropped } = pushed {
            self.metrics.dropped_slow.inc_by(dropped as u64);
            self.metrics.protocol(self.protocol).ended(EndReason::Slow);
        }
        pushed
    }

    /// Closes the queue with `reason` (kept if already closed) and wakes the connection.
    /// Anything still queued is discarded.
    pub(crate) fn close(&self, reason: EndReason) {
        let mut state = self.state.lock();
        let first = state.closed.is_none();
        if first {
            state.closed = Some(reason);
        }
        state.items = VecDeque::new();
        state.bytes = 0;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        if first {
            self.metrics.protocol(self.protocol).ended(reason);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    /// Connection side: swaps everything queued into `into` (which must be empty), or reports
    /// the reason the queue closed, or registers the task's waker.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Arc<Event>>,
    ) -> Poll<Result<(), EndReason>> {
        debug_assert!(into.is_empty());
        let mut state = self.state.lock();
        if !state.items.is_empty() {
            mem::swap(&mut state.items, into);
            state.bytes = 0;
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = state.closed {
            return Poll::Ready(Err(reason));
        }
        register(&mut state.waker, cx);
        Poll::Pending
    }

    /// Connection side: whether the queue closed, without taking anything (used while a resume
    /// holds live events back). Registers the waker when it did not.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<EndReason> {
        let mut state = self.state.lock();
        if let Some(reason) = state.closed {
            return Poll::Ready(reason);
        }
        register(&mut state.waker, cx);
        Poll::Pending
    }
}

fn register(slot: &mut Option<Waker>, cx: &mut Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::event::tests::round;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn queue(limit: usize) -> Arc<Queue> {
        Queue::new(limit, Protocol::Ws, Metrics::new())
    }

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(&round(seq, "crash", "multiplier")).unwrap())
    }

    #[test]
    fn takes_everything_queued_and_wakes_a_parked_reader() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let queue = queue(64 * 1024);
        let mut batch = VecDeque::new();
        assert!(queue.poll_take(&mut cx, &mut batch).is_pending());
        assert_eq!(queue.push(&event(1)), Pushed::Queued);
        assert_eq!(queue.push(&event(2)), Pushed::Queued);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "one wake for a burst");
        assert!(matches!(
            queue.poll_take(&mut cx, &mut batch),
            Poll::Ready(Ok(()))
        ));
        let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn overflow_closes_as_slow_and_drops_the_backlog() {
        let one = event(1).queue_cost();
        let queue = queue(one * 3);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for seq in 1..=3 {
            assert_eq!(queue.push(&event(seq)), Pushed::Queued);
        }
        assert_eq!(queue.push(&event(4)), Pushed::Overflowed { dropped: 4 });
        assert_eq!(queue.push(&event(5)), Pushed::Closed);
        let mut batch = VecDeque::new();
        assert!(matches!(
            queue.poll_take(&mut cx, &mut batch),
            Poll::Ready(Err(EndReason::Slow))
        ));
        assert!(batch.is_empty());
    }

    #[test]
    fn an_event_larger_than_the_bound_fits_an_empty_queue() {
        let queue = queue(1024);
        let mut big = round(1, "slot", "multiplier");
        big.extras = "x".repeat(4096);
        let big = Arc::new(Event::new(&big).unwrap());
        assert_eq!(queue.push(&big), Pushed::Queued);
        assert_eq!(queue.push(&event(2)), Pushed::Overflowed { dropped: 2 });
    }

    #[test]
    fn close_keeps_the_first_reason() {
        let queue = queue(1024);
        queue.close(EndReason::Shutdown);
        queue.close(EndReason::ClientGone);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(queue.poll_closed(&mut cx), Poll::Ready(EndReason::Shutdown));
    }
}
