//! How long an agent waits before it dials the relay again: exponential from
//! [`Backoff::MIN`] to [`Backoff::MAX`], each wait drawn at random in `[d/2, d]` so
//! that a fleet cut off at once does not come back at once. The same on every agent.

use crate::time::Duration;

/// Reconnect waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    /// The first wait (at most).
    pub const MIN: Duration = Duration::from_millis(500);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(30);
    /// A connection that lasted this long was a success: the next wait starts over.
    pub const STABLE: Duration = Duration::from_secs(30);

    /// Waits from the start.
    pub const fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// The relay accepted the agent (or the connection held for [`Backoff::STABLE`]):
    /// start over.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }

    /// The next wait, given `random` (any `u32`, uniformly drawn).
    pub fn next(&mut self, random: u32) -> Duration {
        let d = self.next.as_millis();
        self.next = Duration::from_millis((d * 2).min(Self::MAX.as_millis()));
        let half = d / 2;
        Duration::from_millis(half + (half * random as u64) / u32::MAX as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_within_half_to_full_and_reset() {
        let mut b = Backoff::new();
        let (lo, hi) = (
            b.next(0).as_millis(),
            Backoff::new().next(u32::MAX).as_millis(),
        );
        assert_eq!((lo, hi), (250, 500));
        let mut last = 0;
        for _ in 0..20 {
            last = b.next(u32::MAX).as_millis();
        }
        assert_eq!(last, 30_000);
        assert!(b.next(0).as_millis() >= 15_000);
        b.reset();
        assert!(b.next(u32::MAX).as_millis() <= 500);
    }
}
