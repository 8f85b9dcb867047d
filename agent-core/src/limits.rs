//! Rate limiting: a token bucket in bytes per second, on the caller's clock.
//!
//! The level is kept in milli-bytes so that refill is exact at millisecond
//! resolution (200 kbit/s is exactly 25 bytes per millisecond). The level may go
//! negative ("debt") when a caller must pass a whole frame that is larger than what
//! is available — the relay does that for frames it forwards; the next frame then
//! waits until the debt is paid. The long-run rate is exact either way, and a burst is
//! never larger than the bucket plus one frame.

use crate::time::{Duration, Instant};

/// Default rate: 200 kbit/s, in bytes per second.
pub const DEFAULT_RATE: u32 = 25_000;

/// A token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    /// Milli-bytes available (negative: debt).
    level: i64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilled at `rate` bytes per second
    /// (`rate` 0 is treated as 1 byte per second, never as unlimited).
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = burst.max(1);
        TokenBucket {
            rate: rate.max(1),
            burst,
            level: i64::from(burst) * 1000,
            last: now,
        }
    }

    /// The bucket size a rate gets when sent through a window of `window` bytes:
    /// a fifth of a second of traffic, at least 4 KiB, at most one window.
    pub fn burst_for(rate: u32, window: u32) -> u32 {
        (rate / 5).max(4096).min(window.max(1))
    }

    /// Bytes per second.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let ms = (now - self.last).as_millis();
            let add = i64::try_from(ms.saturating_mul(u64::from(self.rate))).unwrap_or(i64::MAX);
            self.level = self
                .level
                .saturating_add(add)
                .min(i64::from(self.burst) * 1000);
            self.last = now;
        }
    }

    /// Whole bytes available now (0 while in debt).
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        (self.level.max(0) / 1000) as usize
    }

    /// Spend `n` bytes; the level may go negative.
    pub fn consume(&mut self, n: usize, now: Instant) {
        self.refill(now);
        let n = i64::try_from(n).unwrap_or(i64::MAX / 1000);
        self.level = self.level.saturating_sub(n.saturating_mul(1000));
    }

    /// When at least `n` bytes (capped at the bucket size) will be available.
    pub fn ready_at(&self, n: usize) -> Instant {
        let want = i64::try_from(n.min(self.burst as usize)).unwrap_or(0) * 1000;
        if self.level >= want {
            return self.last;
        }
        let missing = (want - self.level) as u64;
        self.last + Duration::from_millis(missing.div_ceil(u64::from(self.rate)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_rate_is_exact_and_burst_bounded() {
        let mut b = TokenBucket::new(DEFAULT_RATE, 5000, Instant(0));
        // Drain as fast as allowed, in 1000-byte chunks, for 10 virtual seconds.
        let mut now = Instant(0);
        let mut sent = 0usize;
        while now < Instant(10_000) {
            let n = b.available(now).min(1000);
            if n == 0 {
                now = b.ready_at(1000);
                continue;
            }
            b.consume(n, now);
            sent += n;
        }
        // 10 s at 25 000 B/s plus the initial full bucket.
        assert!((250_000..=255_000).contains(&sent), "{sent}");
    }

    #[test]
    fn debt_delays_the_next_frame() {
        let mut b = TokenBucket::new(1000, 100, Instant(0));
        assert_eq!(b.available(Instant(0)), 100);
        b.consume(600, Instant(0)); // a frame larger than the bucket passes once
        assert_eq!(b.available(Instant(0)), 0);
        assert_eq!(b.ready_at(1), Instant(501));
        assert_eq!(b.available(Instant(500)), 0);
        assert_eq!(b.available(Instant(600)), 100);
        assert_eq!(TokenBucket::burst_for(25_000, 65_536), 5000);
        assert_eq!(TokenBucket::burst_for(10_000_000, 65_536), 65_536);
    }
}
