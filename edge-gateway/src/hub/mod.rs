//! The hub: one NATS feed per process, fanned out to every subscriber of this pod.
//!
//! # Shape
//! - `feed` reads the stream with ONE ordered JetStream consumer on `rounds.>` (so every event
//!   carries its stream sequence, and a gap after a NATS reconnect is refilled by the consumer
//!   recreating itself from the last sequence it delivered), watches the `games` KV bucket, and
//!   hands each event to `Hub::dispatch`.
//! - `Hub::dispatch` decodes nothing and encodes nothing: the [`Event`] arrives with its wire
//!   forms built. Under the hub's lock it updates the latest round per game and per type, the
//!   bounded recent history, and pushes the shared `Arc<Event>` into the queue of every
//!   subscriber of `game:<slug>` and of `type:<type>` (`queue`), starting each event at another
//!   subscriber: connections are written in the order they are woken, and this way nobody is
//!   always the last one.
//! - [`Hub::subscribe`] registers a subscriber and reads what it must get first (the latest
//!   round, or the events it missed) under the same lock, so nothing committed in between is
//!   lost or duplicated; a resume the history cannot serve is fetched from the stream by the
//!   [`Subscription`] itself while live events wait in its queue.
//!
//! # Threading
//! The feed and the dispatch run on their own thread with a single-threaded Tokio runtime (see
//! `crate::server`), apart from actix-web's workers, which only drain queues into sockets.
//! Dispatching one event to 10,000 subscribers is about a millisecond of pushing and waking:
//! on its own thread it never delays a socket write, and it never waits on one either, because a
//! push cannot block. The NATS client's connection task lives on that runtime too; the workers
//! use the same client (its handle is `Send`) for the rare requests a resume needs.
//!
//! # What a transport adapter calls
//! [`Hub::game_topic`] / [`Hub::type_topic`] (404 when `None`), [`parse_cursor`] (400 on
//! error), [`Hub::subscribe`] (503 on error), then [`Subscription::poll_next`] (or
//! [`Subscription::next`]) until it returns [`Next::End`], writing
//! [`Delivery::event`]'s wire form for each delivery.

mod event;
pub(crate) mod feed;
mod queue;
mod replay;
mod subscription;
mod topic;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_nats::jetstream;
use parking_lot::{Mutex, RwLock};
use shared::Game;

pub use event::Event;
pub use subscription::{Closer, Delivery, Next, ResetReason, Start, Subscription};
pub use topic::{parse_cursor, CursorError, Topic};

use crate::metrics::{Metrics, Protocol, ResumeSource};
use queue::{Pushed, Queue};

/// The hub's settings.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The JetStream stream holding the rounds.
    pub stream: String,
    /// Recent events kept for resumes (all topics together).
    pub history_size: usize,
    /// The same bound in bytes (of [`Event::queue_cost`]).
    pub history_bytes: usize,
    /// Bound of each subscriber's queue, in bytes.
    pub queue_bytes: usize,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscribeError {
    #[error("the gateway is starting: it has not caught up with the stream yet")]
    NotReady,
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("cannot reach the stream to check the resume cursor: {0}")]
    Unavailable(String),
}

/// The parts of readiness, for `/ready`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Readiness {
    pub nats_connected: bool,
    pub caught_up: bool,
    pub catalog_loaded: bool,
    pub shutting_down: bool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.nats_connected && self.caught_up && self.catalog_loaded && !self.shutting_down
    }
}

/// The process's hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("stream", &self.inner.settings.stream)
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: HubSettings,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    catalog: RwLock<BTreeMap<String, Game>>,
    nats: OnceLock<Nats>,
    caught_up: AtomicBool,
    catalog_loaded: AtomicBool,
    shutting_down: AtomicBool,
    next_conn_id: AtomicU64,
}

#[derive(Clone)]
pub(crate) struct Nats {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
}

#[derive(Default)]
struct State {
    /// Sequence of the last stream message the hub consumed.
    hub_seq: u64,
    /// Best knowledge of the stream's last sequence (for lag and cursors ahead of the hub).
    stream_last: u64,
    /// The most recent events, contiguous in stream sequence, oldest first.
    history: VecDeque<Arc<Event>>,
    history_bytes: usize,
    latest_by_game: HashMap<Box<str>, Arc<Event>>,
    latest_by_type: HashMap<Box<str>, Arc<Event>>,
    by_game: HashMap<Box<str>, Vec<Arc<Queue>>>,
    by_type: HashMap<Box<str>, Vec<Arc<Queue>>>,
    registered: i64,
    closed: bool,
}

/// What a subscriber gets before live events, decided under the hub's lock.
enum Plan {
    /// The stream's bounds are needed to judge the cursor.
    NeedBounds,
    Ready(Registration),
}

pub(crate) struct Registration {
    pub(crate) start: Start,
    pub(crate) initial: VecDeque<Delivery>,
    /// Missed events to fetch from the stream: `(from, upto)`, inclusive.
    pub(crate) replay: Option<(u64, u64)>,
    /// Live events at or below this are already known to the client.
    pub(crate) skip_upto: u64,
}

/// The stream's first and last sequence.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    first: u64,
    last: u64,
}

impl Hub {
    pub fn new(settings: HubSettings, metrics: Arc<Metrics>) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                settings,
                metrics,
                state: Mutex::new(State::default()),
                catalog: RwLock::new(BTreeMap::new()),
                nats: OnceLock::new(),
                caught_up: AtomicBool::new(false),
                catalog_loaded: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                next_conn_id: AtomicU64::new(1),
            }),
        }
    }

    pub fn settings(&self) -> &HubSettings {
        &self.inner.settings
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The topic of game `slug`, if the catalog knows it.
    pub fn game_topic(&self, slug: &str) -> Option<Topic> {
        self.inner
            .catalog
            .read()
            .contains_key(slug)
            .then(|| Topic::Game(slug.to_owned()))
    }

    /// The topic of game type `game_type`, if some game in the catalog has it.
    pub fn type_topic(&self, game_type: &str) -> Option<Topic> {
        self.inner
            .catalog
            .read()
            .values()
            .any(|g| g.game_type == game_type)
            .then(|| Topic::Type(game_type.to_owned()))
    }

    /// The type of game `slug`, if the catalog knows it.
    pub fn game_type(&self, slug: &str) -> Option<String> {
        self.inner
            .catalog
            .read()
            .get(slug)
            .map(|g| g.game_type.clone())
    }

    /// The catalog, ordered by slug.
    pub fn games(&self) -> Vec<Game> {
        self.inner.catalog.read().values().cloned().collect()
    }

    /// The latest round of a game, if any.
    pub fn latest_for_game(&self, slug: &str) -> Option<Arc<Event>> {
        self.inner.state.lock().latest_by_game.get(slug).cloned()
    }

    pub fn readiness(&self) -> Readiness {
        let nats_connected = self.inner.nats.get().is_some_and(|n| {
            n.client.connection_state() == async_nats::connection::State::Connected
        });
        Readiness {
            nats_connected,
            caught_up: self.inner.caught_up.load(Ordering::Acquire),
            catalog_loaded: self.inner.catalog_loaded.load(Ordering::Acquire),
            shutting_down: self.inner.shutting_down.load(Ordering::Acquire),
        }
    }

    /// Stops taking subscribers and ends every subscription with [`EndReason::Shutdown`].
    ///
    /// [`EndReason::Shutdown`]: crate::metrics::EndReason::Shutdown
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let queues: Vec<Arc<Queue>> = {
            let mut guard = self.inner.state.lock();
            let state = &mut *guard;
            state.closed = true;
            state.registered = 0;
            state
                .by_game
                .drain()
                .chain(state.by_type.drain())
                .flat_map(|(_, subs)| subs)
                .collect()
        };
        self.inner.metrics.hub_subscribers.set(0);
        for queue in queues {
            queue.close(crate::metrics::EndReason::Shutdown);
        }
    }

    /// Subscribes to `topic`. Without a cursor the subscriber first gets the latest round of the
    /// topic; with one, every event of the topic after it (from the pod's history, or fetched
    /// from the stream), then live events, with no gap and no duplicate. A cursor outside the
    /// stream gives [`Start::Reset`] and the latest round, like a fresh subscription.
    pub async fn subscribe(
        &self,
        topic: Topic,
        cursor: Option<u64>,
        protocol: Protocol,
    ) -> Result<Subscription, SubscribeError> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(SubscribeError::ShuttingDown);
        }
        if !self.inner.caught_up.load(Ordering::Acquire)
            || !self.inner.catalog_loaded.load(Ordering::Acquire)
        {
            return Err(SubscribeError::NotReady);
        }
        let queue = Queue::new(
            self.inner.settings.queue_bytes,
            protocol,
            Arc::clone(&self.inner.metrics),
        );
        // At most twice: the second time with the stream's bounds, if the cursor needs them.
        let mut bounds = None;
        loop {
            let registration = {
                let mut state = self.inner.state.lock();
                if state.closed {
                    return Err(SubscribeError::ShuttingDown);
                }
                match state.plan(&topic, cursor, bounds) {
                    Plan::NeedBounds => None,
                    Plan::Ready(registration) => {
                        state.register(&topic, Arc::clone(&queue));
                        self.inner.metrics.hub_subscribers.set(state.registered);
                        Some(registration)
                    }
                }
            };
            match registration {
                Some(registration) => {
                    let id = self.inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
                    match &registration.start {
                        Start::Fresh => {}
                        Start::Resumed { source } => self.inner.metrics.resumed(*source),
                        Start::Reset { .. } => self.inner.metrics.resumed(ResumeSource::Reset),
                    }
                    return Ok(Subscription::new(
                        id,
                        self.clone(),
                        topic,
                        protocol,
                        Arc::clone(&queue),
                        registration,
                    ));
                }
                None => bounds = Some(self.stream_bounds().await?),
            }
        }
    }

    async fn stream_bounds(&self) -> Result<Bounds, SubscribeError> {
        let nats = self
            .inner
            .nats
            .get()
            .ok_or_else(|| SubscribeError::Unavailable("not connected to NATS".into()))?;
        let stream = nats
            .js
            .get_stream(&self.inner.settings.stream)
            .await
            .map_err(|err| SubscribeError::Unavailable(err.to_string()))?;
        let state = &stream.cached_info().state;
        let bounds = Bounds {
            first: state.first_sequence,
            last: state.last_sequence,
        };
        self.set_stream_last(bounds.last);
        Ok(bounds)
    }

    pub(crate) fn nats(&self) -> Option<&Nats> {
        self.inner.nats.get()
    }

    pub(crate) fn set_nats(&self, nats: Nats) {
        let _ = self.inner.nats.set(nats);
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.inner.state.lock().hub_seq + 1
    }

    pub(crate) fn set_caught_up(&self) {
        if !self.inner.caught_up.swap(true, Ordering::AcqRel) {
            let seq = self.inner.state.lock().hub_seq;
            tracing::info!(seq, "hub caught up with the stream");
        }
    }

    pub(crate) fn set_catalog_loaded(&self) {
        if !self.inner.catalog_loaded.swap(true, Ordering::AcqRel) {
            let games = self.inner.catalog.read().len();
            tracing::info!(games, "game catalog loaded");
        }
    }

    pub(crate) fn put_game(&self, game: Game) {
        self.inner.catalog.write().insert(game.slug.clone(), game);
    }

    pub(crate) fn remove_game(&self, slug: &str) {
        self.inner.catalog.write().remove(slug);
    }

    /// Records what the stream's last sequence is (from stream info).
    pub(crate) fn set_stream_last(&self, last: u64) {
        let mut state = self.inner.state.lock();
        state.stream_last = last.max(state.hub_seq);
        self.inner
            .metrics
            .hub_lag
            .set(state.stream_last - state.hub_seq);
    }

    /// Offers a round loaded at start-up as the latest of its game and type (kept only if newer
    /// than what the hub has).
    pub(crate) fn offer_latest(&self, event: Arc<Event>) {
        let mut state = self.inner.state.lock();
        state.update_latest(&event);
    }

    /// Consumes stream message `seq` that is not a round event: only the position moves.
    pub(crate) fn skip(&self, seq: u64, pending: u64) {
        let mut state = self.inner.state.lock();
        if seq <= state.hub_seq {
            return;
        }
        state.advance(seq, pending, &self.inner.metrics);
    }

    /// Hands one event to every subscriber of its game and of its type, and records it as the
    /// latest of both and in the history. `pending` is what the stream still holds after it.
    pub(crate) fn dispatch(&self, event: Arc<Event>, pending: u64) {
        let metrics = &self.inner.metrics;
        let mut state = self.inner.state.lock();
        if event.seq <= state.hub_seq {
            // Redelivered after a consumer was recreated: already dispatched.
            return;
        }
        state.advance(event.seq, pending, metrics);
        state.remember(&event, &self.inner.settings);
        state.update_latest(&event);
        let mut removed = 0;
        let State {
            by_game, by_type, ..
        } = &mut *state;
        for subs in [
            by_game.get_mut(&*event.game_slug),
            by_type.get_mut(&*event.game_type),
        ]
        .into_iter()
        .flatten()
        {
            // Connections are woken, and so written, in push order: each event starts at another
            // subscriber, so that nobody (the newest connection, one protocol) is always last.
            let start = fair_start(event.seq, subs.len());
            let mut ended = false;
            for queue in subs[start..].iter().chain(&subs[..start]) {
                ended |= queue.push(&event) != Pushed::Queued;
            }
            if ended {
                let before = subs.len();
                subs.retain(|queue| !queue.is_closed());
                removed += before - subs.len();
            }
        }
        if removed > 0 {
            state.registered -= removed as i64;
            metrics.hub_subscribers.set(state.registered);
        }
    }
}

impl State {
    fn advance(&mut self, seq: u64, pending: u64, metrics: &Metrics) {
        if self.hub_seq != 0 && seq != self.hub_seq + 1 {
            // Messages were removed from the stream (expired, deleted) while we were away: the
            // history would no longer be contiguous, so resumes go to the stream instead.
            tracing::warn!(
                seq,
                expected = self.hub_seq + 1,
                "gap in the stream's sequence; the pod's history restarts here"
            );
            self.history.clear();
            self.history_bytes = 0;
        }
        self.hub_seq = seq;
        self.stream_last = self.stream_last.max(seq + pending);
        metrics.hub_seq.set(seq);
        metrics.hub_lag.set(self.stream_last - seq);
        metrics.events_in.inc();
    }

    /// Appends to the history, dropping the oldest events beyond either bound.
    fn remember(&mut self, event: &Arc<Event>, settings: &HubSettings) {
        self.history.push_back(Arc::clone(event));
        self.history_bytes += event.queue_cost();
        while self.history.len() > settings.history_size
            || self.history_bytes > settings.history_bytes
        {
            let Some(oldest) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= oldest.queue_cost();
        }
    }

    fn update_latest(&mut self, event: &Arc<Event>) {
        put_if_newer(&mut self.latest_by_game, &event.game_slug, event);
        put_if_newer(&mut self.latest_by_type, &event.game_type, event);
    }

    fn latest(&self, topic: &Topic) -> Option<Arc<Event>> {
        match topic {
            Topic::Game(slug) => self.latest_by_game.get(slug.as_str()).cloned(),
            Topic::Type(game_type) => self.latest_by_type.get(game_type.as_str()).cloned(),
        }
    }

    fn register(&mut self, topic: &Topic, queue: Arc<Queue>) {
        let subs = match topic {
            Topic::Game(slug) => self.by_game.entry(slug.as_str().into()).or_default(),
            Topic::Type(game_type) => self.by_type.entry(game_type.as_str().into()).or_default(),
        };
        if subs.len() == subs.capacity() {
            // Before growing, forget subscribers that left since this topic's last event.
            let before = subs.len();
            subs.retain(|q| !q.is_closed());
            self.registered -= (before - subs.len()) as i64;
        }
        subs.push(queue);
        self.registered += 1;
    }

    /// Decides what a new subscriber gets first. See docs/gateway.md, "Resume".
    fn plan(&self, topic: &Topic, cursor: Option<u64>, bounds: Option<Bounds>) -> Plan {
        let fresh = |start: Start| {
            Plan::Ready(Registration {
                start,
                initial: self
                    .latest(topic)
                    .map(Delivery::Initial)
                    .into_iter()
                    .collect(),
                replay: None,
                skip_upto: 0,
            })
        };
        let resumed = |source, initial, replay, skip_upto| {
            Plan::Ready(Registration {
                start: Start::Resumed { source },
                initial,
                replay,
                skip_upto,
            })
        };
        let Some(cursor) = cursor else {
            return fresh(Start::Fresh);
        };
        let head = self.hub_seq;
        if cursor >= head {
            if cursor <= head.max(self.stream_last) {
                // Nothing missed (or this pod is a little behind the pod the client came from:
                // live events up to the cursor are skipped).
                return resumed(ResumeSource::History, VecDeque::new(), None, cursor);
            }
            return match bounds {
                None => Plan::NeedBounds,
                Some(b) if cursor <= b.last => {
                    resumed(ResumeSource::History, VecDeque::new(), None, cursor)
                }
                Some(b) => fresh(Start::Reset {
                    reason: ResetReason::Ahead {
                        cursor,
                        last: b.last,
                    },
                }),
            };
        }
        if self
            .history
            .front()
            .is_some_and(|oldest| oldest.seq <= cursor + 1)
        {
            let missed = self
                .history
                .iter()
                .rev()
                .take_while(|e| e.seq > cursor)
                .filter(|e| topic.matches(e))
                .cloned()
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .map(Delivery::Message)
                .collect();
            return resumed(ResumeSource::History, missed, None, cursor);
        }
        match bounds {
            None => Plan::NeedBounds,
            Some(b) if cursor + 1 < b.first => fresh(Start::Reset {
                reason: ResetReason::TooOld {
                    cursor,
                    first: b.first,
                },
            }),
            Some(_) => resumed(
                ResumeSource::Stream,
                VecDeque::new(),
                Some((cursor + 1, head)),
                cursor,
            ),
        }
    }
}

/// Where event `seq`'s pushes start among `len` subscribers. Hashed rather than `seq % len`: a
/// game's events are often evenly spaced in the stream (every 15th, say), which would start
/// them all at the same subscriber.
fn fair_start(seq: u64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let spread = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (spread % len as u64) as usize
}

fn put_if_newer(map: &mut HashMap<Box<str>, Arc<Event>>, key: &str, event: &Arc<Event>) {
    match map.get_mut(key) {
        Some(latest) if latest.seq >= event.seq => {}
        Some(latest) => *latest = Arc::clone(event),
        None => {
            map.insert(key.into(), Arc::clone(event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::event::tests::round;

    fn hub(history: usize) -> Hub {
        let hub = Hub::new(
            HubSettings {
                stream: "ROUNDS".into(),
                history_size: history,
                history_bytes: 1024 * 1024,
                queue_bytes: 64 * 1024,
            },
            Metrics::new(),
        );
        for (slug, game_type) in [
            ("crash", "multiplier"),
            ("slot", "multiplier"),
            ("double", "color"),
        ] {
            hub.put_game(Game {
                id: 1,
                slug: slug.into(),
                name: slug.into(),
                game_type: game_type.into(),
            });
        }
        hub.set_catalog_loaded();
        hub.set_caught_up();
        hub
    }

    fn publish(hub: &Hub, seq: u64, slug: &str, game_type: &str) {
        hub.dispatch(
            Arc::new(Event::new(&round(seq, slug, game_type)).unwrap()),
            0,
        );
    }

    fn registration(
        hub: &Hub,
        topic: &Topic,
        cursor: Option<u64>,
        bounds: Option<Bounds>,
    ) -> Option<Registration> {
        match hub.inner.state.lock().plan(topic, cursor, bounds) {
            Plan::NeedBounds => None,
            Plan::Ready(r) => Some(r),
        }
    }

    fn seqs(initial: &VecDeque<Delivery>) -> Vec<u64> {
        initial.iter().map(|d| d.event().seq).collect()
    }

    #[test]
    fn latest_per_game_and_per_type() {
        let hub = hub(100);
        publish(&hub, 1, "crash", "multiplier");
        publish(&hub, 2, "slot", "multiplier");
        publish(&hub, 3, "double", "color");
        let game = registration(&hub, &Topic::Game("crash".into()), None, None).unwrap();
        assert!(matches!(game.start, Start::Fresh));
        assert!(matches!(game.initial.front(), Some(Delivery::Initial(e)) if e.seq == 1));
        let kind = registration(&hub, &Topic::Type("multiplier".into()), None, None).unwrap();
        assert_eq!(seqs(&kind.initial), [2]);
        assert_eq!(hub.latest_for_game("double").map(|e| e.seq), Some(3));
    }

    #[test]
    fn resume_from_history_gets_only_the_topic_after_the_cursor() {
        let hub = hub(100);
        for seq in 1..=6 {
            let (slug, t) = if seq % 2 == 0 {
                ("crash", "multiplier")
            } else {
                ("double", "color")
            };
            publish(&hub, seq, slug, t);
        }
        let r = registration(&hub, &Topic::Game("crash".into()), Some(2), None).unwrap();
        assert!(matches!(
            r.start,
            Start::Resumed {
                source: ResumeSource::History
            }
        ));
        assert_eq!(seqs(&r.initial), [4, 6]);
        assert!(matches!(r.initial.front(), Some(Delivery::Message(_))));
        let r = registration(&hub, &Topic::Game("crash".into()), Some(6), None).unwrap();
        assert!(r.initial.is_empty());
    }

    #[test]
    fn resume_older_than_history_needs_the_stream() {
        let hub = hub(3);
        for seq in 1..=10 {
            publish(&hub, seq, "crash", "multiplier");
        }
        let topic = Topic::Game("crash".into());
        assert!(
            registration(&hub, &topic, Some(5), None).is_none(),
            "needs bounds"
        );
        // History holds 8..=10, so a cursor of 7 is still served from it.
        assert_eq!(
            seqs(&registration(&hub, &topic, Some(7), None).unwrap().initial),
            [8, 9, 10]
        );
        let r = registration(&hub, &topic, Some(5), Some(Bounds { first: 1, last: 10 })).unwrap();
        assert!(matches!(
            r.start,
            Start::Resumed {
                source: ResumeSource::Stream
            }
        ));
        assert_eq!(r.replay, Some((6, 10)));
        let r = registration(&hub, &topic, Some(2), Some(Bounds { first: 5, last: 10 })).unwrap();
        assert!(matches!(
            r.start,
            Start::Reset {
                reason: ResetReason::TooOld { first: 5, .. }
            }
        ));
        assert_eq!(
            seqs(&r.initial),
            [10],
            "a reset starts like a fresh subscription"
        );
    }

    #[test]
    fn cursor_ahead_of_the_stream_is_a_reset() {
        let hub = hub(10);
        publish(&hub, 1, "crash", "multiplier");
        let topic = Topic::Game("crash".into());
        assert!(registration(&hub, &topic, Some(50), None).is_none());
        let r = registration(&hub, &topic, Some(50), Some(Bounds { first: 1, last: 1 })).unwrap();
        assert!(matches!(
            r.start,
            Start::Reset {
                reason: ResetReason::Ahead { last: 1, .. }
            }
        ));
        let r = registration(&hub, &topic, Some(50), Some(Bounds { first: 1, last: 60 })).unwrap();
        assert!(matches!(r.start, Start::Resumed { .. }));
        assert_eq!(
            r.skip_upto, 50,
            "a pod behind another skips what the client has"
        );
    }

    #[test]
    fn a_gap_in_the_stream_restarts_the_history() {
        let hub = hub(10);
        publish(&hub, 1, "crash", "multiplier");
        publish(&hub, 2, "crash", "multiplier");
        publish(&hub, 5, "crash", "multiplier");
        let topic = Topic::Game("crash".into());
        assert!(
            registration(&hub, &topic, Some(1), None).is_none(),
            "history no longer covers 2"
        );
        assert_eq!(
            seqs(&registration(&hub, &topic, Some(4), None).unwrap().initial),
            [5]
        );
    }

    #[test]
    fn subscriptions_can_move_to_any_task() {
        // The WebTransport adapter will drive subscriptions from spawned tasks.
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Subscription>();
        assert_send::<Hub>();
    }

    #[test]
    fn history_is_bounded_in_bytes_too() {
        let hub = hub(100);
        let one = Event::new(&round(1, "crash", "multiplier"))
            .unwrap()
            .queue_cost();
        let mut hub_settings = hub.settings().clone();
        hub_settings.history_bytes = 3 * one;
        let mut state = State::default();
        for seq in 1..=5 {
            let event = Arc::new(Event::new(&round(seq, "crash", "multiplier")).unwrap());
            state.remember(&event, &hub_settings);
        }
        let seqs: Vec<u64> = state.history.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(state.history_bytes, 3 * one);
    }

    /// Wakes by recording its subscriber's index.
    struct Recorder(usize, Arc<Mutex<Vec<usize>>>);
    impl std::task::Wake for Recorder {
        fn wake(self: Arc<Self>) {
            self.1.lock().push(self.0);
        }
    }

    #[test]
    fn every_subscriber_takes_its_turn_at_the_front() {
        let hub = hub(1000);
        let topic = Topic::Game("crash".into());
        let woken = Arc::new(Mutex::new(Vec::new()));
        // As many subscribers as games: `seq % 15` would start every event of this game at the
        // same one.
        let subscribers: Vec<(Arc<Queue>, std::task::Waker)> = (0..15)
            .map(|i| {
                let queue = Queue::new(1 << 20, Protocol::Ws, Metrics::new());
                hub.inner.state.lock().register(&topic, Arc::clone(&queue));
                let waker = std::task::Waker::from(Arc::new(Recorder(i, Arc::clone(&woken))));
                (queue, waker)
            })
            .collect();
        let mut first = [0; 15];
        // One game among 15: its events are every 15th in the stream.
        for seq in (1..=150).map(|k| 15 * k) {
            // Drain, then park: the waker is registered once the queue is empty.
            for (queue, waker) in &subscribers {
                let mut cx = std::task::Context::from_waker(waker);
                let mut taken = std::collections::VecDeque::new();
                while queue.poll_take(&mut cx, &mut taken).is_ready() {
                    taken.clear();
                }
            }
            woken.lock().clear();
            publish(&hub, seq, "crash", "multiplier");
            let order = std::mem::take(&mut *woken.lock());
            assert_eq!(order.len(), 15, "every subscriber is woken once");
            let rotation: Vec<usize> = (0..15).map(|k| (order[0] + k) % 15).collect();
            assert_eq!(order, rotation, "in registration order, from another start");
            first[order[0]] += 1;
        }
        assert!(
            first.iter().all(|&n| n > 0),
            "each subscriber is first now and then: {first:?}"
        );
    }

    #[test]
    fn dispatch_ignores_redeliveries() {
        let hub = hub(10);
        publish(&hub, 1, "crash", "multiplier");
        publish(&hub, 2, "crash", "multiplier");
        publish(&hub, 1, "crash", "multiplier");
        assert_eq!(hub.inner.state.lock().history.len(), 2);
        assert_eq!(hub.latest_for_game("crash").map(|e| e.seq), Some(2));
    }
}
