//! PostgreSQL's replication timestamps: microseconds since 2000-01-01 00:00:00 UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds between the Unix epoch and PostgreSQL's.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A timestamp as the replication protocol carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    pub fn now() -> PgTimestamp {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        PgTimestamp(micros - PG_EPOCH_UNIX_MICROS)
    }

    /// Unix milliseconds, rounded down. Saturates at the ends of `i64` (a corrupt or
    /// `infinity` timestamp must not overflow; found by fuzzing).
    pub fn unix_millis(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_UNIX_MICROS).div_euclid(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_unix_millis() {
        assert_eq!(PgTimestamp(0).unix_millis(), 946_684_800_000);
        // 2026-01-17T03:45:42.123456Z
        assert_eq!(
            PgTimestamp(821_936_742_123_456).unix_millis(),
            1_768_621_542_123
        );
        assert_eq!(PgTimestamp(-1).unix_millis(), 946_684_799_999);
    }

    #[test]
    fn extreme_timestamps_saturate() {
        assert_eq!(
            PgTimestamp(i64::MAX).unix_millis(),
            i64::MAX.div_euclid(1000)
        );
        assert!(PgTimestamp(i64::MIN).unix_millis() < 0);
    }

    #[test]
    fn now_is_after_2020() {
        assert!(PgTimestamp::now().unix_millis() > 1_577_836_800_000);
    }
}
