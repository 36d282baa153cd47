//! Connection caps (per key, per client IP) and the token-issuing rate limit.
//!
//! A cap is held by a [`Slot`] for as long as the connection lives: dropping it gives the place
//! back. Rates are token buckets, per key and per IP.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Counts of open connections by some key, with a cap.
#[derive(Debug)]
pub struct Counter<K: Hash + Eq> {
    open: Mutex<HashMap<K, u32>>,
}

impl<K: Hash + Eq + Clone + Send + 'static> Counter<K> {
    pub fn new() -> Arc<Counter<K>> {
        Arc::new(Counter {
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for `key` if fewer than `cap` are open (`cap` 0: no cap).
    pub fn acquire(self: &Arc<Self>, key: K, cap: u32) -> Option<Slot<K>> {
        let mut open = self.open.lock();
        let count = open.entry(key.clone()).or_insert(0);
        if cap != 0 && *count >= cap {
            return None;
        }
        *count += 1;
        Some(Slot {
            counter: Arc::clone(self),
            key: Some(key),
        })
    }

    pub fn open(&self, key: &K) -> u32 {
        self.open.lock().get(key).copied().unwrap_or(0)
    }

    fn release(&self, key: &K) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                open.remove(key);
            }
        }
    }
}

/// A place held under a cap.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone + Send + 'static> {
    counter: Arc<Counter<K>>,
    key: Option<K>,
}

impl<K: Hash + Eq + Clone + Send + 'static> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.counter.release(&key);
        }
    }
}

/// What a token-issuing rate applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Key(i64),
    Ip(IpAddr),
}

/// Token buckets: `per_second` refill, bursts of up to four seconds' worth.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<RateKey, (f64, Instant)>>,
}

/// Buckets kept before full ones are forgotten.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    pub fn new(per_second: f64) -> RateLimiter {
        RateLimiter {
            per_second,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn burst(&self) -> f64 {
        (self.per_second * 4.0).max(1.0)
    }

    /// Takes one unit for `key`, or says how long until one is available.
    pub fn take(&self, key: RateKey, now: Instant) -> Result<(), Duration> {
        let burst = self.burst();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS {
            let per_second = self.per_second;
            buckets.retain(|_, (level, at)| {
                *level + now.duration_since(*at).as_secs_f64() * per_second < burst
            });
        }
        let (level, at) = buckets.entry(key).or_insert((burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.per_second).min(burst);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *level) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_while_slots_live() {
        let counter = Counter::new();
        let a = counter.acquire("k", 2).unwrap();
        let _b = counter.acquire("k", 2).unwrap();
        assert!(counter.acquire("k", 2).is_none());
        assert!(counter.acquire("other", 2).is_some());
        drop(a);
        assert_eq!(counter.open(&"k"), 1);
        assert!(counter.acquire("k", 2).is_some());
        assert!(counter.acquire("k", 0).is_some(), "0 means no cap");
    }

    #[test]
    fn rates_allow_a_burst_then_refill() {
        let limiter = RateLimiter::new(2.0);
        let start = Instant::now();
        for _ in 0..8 {
            assert!(limiter.take(RateKey::Key(1), start).is_ok());
        }
        let wait = limiter.take(RateKey::Key(1), start).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(
            limiter.take(RateKey::Key(2), start).is_ok(),
            "buckets are per key"
        );
        assert!(limiter
            .take(RateKey::Key(1), start + Duration::from_millis(500))
            .is_ok());
    }
}
