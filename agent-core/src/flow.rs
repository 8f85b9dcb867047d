//! Credit-based flow control for one direction of one channel.
//!
//! The receiver announces a window (bytes it can buffer). The sender keeps a credit
//! counter: it starts at the window, each `Data` payload spends it, each `Credit`
//! frame adds to it. A sender never has more unacknowledged bytes in flight than the
//! receiver granted; a receiver that sees more treats it as a protocol violation.
//!
//! Throughput of one channel is at most its window per round trip, so a receiver that
//! can afford it may grow its window ([`RecvWindow::growing`]): each credit it returns
//! then carries as much again on top, until the window reaches the receiver's
//! maximum. The window doubles with every window's worth of data consumed, as TCP's
//! slow start does, so a channel that moves little keeps a small window and a bulk
//! transfer reaches the bandwidth-delay product in a few round trips. Growing needs no
//! clock and nothing from the sender: to it, a larger grant is just a grant.

/// A peer sent more than it was granted, or granted more than a window can count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowViolation;

impl core::fmt::Display for FlowViolation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("flow control violated")
    }
}

/// The sending half: how many bytes may still be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    credit: u32,
}

impl SendWindow {
    /// A window whose peer granted `initial` bytes.
    pub const fn new(initial: u32) -> Self {
        SendWindow { credit: initial }
    }
    /// Bytes that may be sent now.
    pub const fn credit(&self) -> u32 {
        self.credit
    }
    /// Spend up to `want` bytes of credit; returns how many were granted.
    pub fn take(&mut self, want: usize) -> usize {
        let n = want.min(self.credit as usize);
        self.credit -= n as u32;
        n
    }
    /// Return unused credit taken with [`SendWindow::take`].
    pub fn give_back(&mut self, n: usize) {
        self.credit = self.credit.saturating_add(n as u32);
    }
    /// The peer granted `bytes` more. Errors if the sum no longer fits in 32 bits.
    pub fn grant(&mut self, bytes: u32) -> Result<(), FlowViolation> {
        self.credit = self.credit.checked_add(bytes).ok_or(FlowViolation)?;
        Ok(())
    }
}

/// The receiving half: checks the peer against the window and decides when to
/// return credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    /// Bytes the peer may have unacknowledged: the announced window, plus growth.
    window: u32,
    /// What the window may grow to.
    max: u32,
    /// Bytes the peer may still send without new credit.
    remaining: u32,
    /// Bytes consumed by the application and not yet returned as credit.
    unreturned: u32,
}

impl RecvWindow {
    /// A receiver that can buffer `window` bytes, always.
    pub const fn new(window: u32) -> Self {
        RecvWindow::growing(window, window)
    }
    /// A receiver that announces `window` bytes and grows it, with the credit it
    /// returns, up to `max` bytes (what it can afford to buffer). A `max` below
    /// `window` is `window`.
    pub const fn growing(window: u32, max: u32) -> Self {
        RecvWindow {
            window,
            max: if max > window { max } else { window },
            remaining: window,
            unreturned: 0,
        }
    }
    /// The window announced at the start (what [`RecvWindow::new`] or
    /// [`RecvWindow::growing`] was given) until it grows, then the grown one: the most
    /// the peer may have unacknowledged now.
    pub const fn window(&self) -> u32 {
        self.window
    }
    /// Bytes the peer may still send without new credit.
    pub const fn remaining(&self) -> u32 {
        self.remaining
    }
    /// The most the window may grow to.
    pub const fn max(&self) -> u32 {
        self.max
    }
    /// Let the window grow to `max` from now on (never below the window it has): a
    /// receiver sharing a memory budget between windows lowers it when others grew.
    pub fn set_max(&mut self, max: u32) {
        self.max = max.max(self.window);
    }
    /// Account for `n` received bytes. Errors if the peer exceeded its credit.
    pub fn on_data(&mut self, n: usize) -> Result<(), FlowViolation> {
        let n = u32::try_from(n).map_err(|_| FlowViolation)?;
        self.remaining = self.remaining.checked_sub(n).ok_or(FlowViolation)?;
        Ok(())
    }
    /// The application consumed `n` bytes (wrote them out). Never credits more than
    /// was received.
    pub fn consume(&mut self, n: usize) {
        let outstanding = self.window - self.remaining - self.unreturned;
        self.unreturned += (n as u32).min(outstanding);
    }
    /// Credit to announce now, if enough has accumulated to be worth a frame
    /// (a quarter of the window, or everything once the peer is fully blocked). A
    /// growing window adds as much again, within its maximum.
    pub fn credit_due(&mut self) -> Option<u32> {
        if self.unreturned == 0 {
            return None;
        }
        if self.unreturned >= self.window / 4 || self.remaining == 0 {
            let grow = self.unreturned.min(self.max - self.window);
            let c = self.unreturned + grow;
            self.window += grow;
            self.unreturned = 0;
            self.remaining += c;
            Some(c)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A sender that honours credit never breaks a growing receiver; the receiver
        /// never lets more than its maximum be in flight nor credits unreceived bytes.
        #[test]
        fn growing_windows_keep_their_bounds(
            window in 1u32..5000,
            extra in 0u32..20000,
            steps in proptest::collection::vec((0usize..3000, 0usize..3000), 1..200),
        ) {
            let mut r = RecvWindow::growing(window, window + extra);
            let mut s = SendWindow::new(window);
            let mut buffered = 0usize; // received, not consumed
            for (send, eat) in steps {
                let n = s.take(send);
                prop_assert!(r.on_data(n).is_ok());
                buffered += n;
                let eaten = eat.min(buffered);
                r.consume(eaten);
                buffered -= eaten;
                if let Some(c) = r.credit_due() {
                    s.grant(c).unwrap();
                }
                prop_assert!(r.window() <= window + extra);
                // In flight (credit the sender holds) plus buffered is the window.
                prop_assert!(s.credit() as usize + buffered <= r.window() as usize);
            }
        }
    }

    #[test]
    fn sender_never_exceeds_grant() {
        let mut s = SendWindow::new(10);
        assert_eq!(s.take(7), 7);
        assert_eq!(s.take(7), 3);
        assert_eq!(s.take(1), 0);
        s.grant(5).unwrap();
        assert_eq!(s.take(100), 5);
        assert!(s.grant(u32::MAX).is_ok());
        assert!(s.grant(1).is_err());
    }

    #[test]
    fn receiver_rejects_excess_and_returns_credit() {
        let mut r = RecvWindow::new(100);
        r.on_data(60).unwrap();
        r.consume(10);
        assert_eq!(r.credit_due(), None, "10 < a quarter of the window");
        r.consume(20);
        assert_eq!(r.credit_due(), Some(30));
        r.on_data(70).unwrap();
        assert!(
            r.on_data(1).is_err(),
            "100 bytes in flight is the whole window"
        );
        r.consume(1000); // consuming more than received credits only what was received
        assert_eq!(r.credit_due(), Some(100));
        assert!(r.on_data(101).is_err());
    }

    #[test]
    fn a_growing_window_doubles_per_window_consumed_up_to_its_maximum() {
        let mut r = RecvWindow::growing(100, 350);
        assert_eq!((r.window(), r.max()), (100, 350));
        r.on_data(100).unwrap();
        assert!(r.on_data(1).is_err(), "the announced window holds at first");
        r.consume(25);
        // A quarter consumed: that credit, and as much again.
        assert_eq!(r.credit_due(), Some(50));
        assert_eq!(r.window(), 125);
        r.consume(75);
        assert_eq!(r.credit_due(), Some(150));
        assert_eq!(r.window(), 200, "doubled after one window consumed");
        // The peer may now have the whole grown window in flight, not a byte more.
        r.on_data(200).unwrap();
        assert!(r.on_data(1).is_err());
        r.consume(200);
        // Growth stops at the maximum: 150 more would pass it.
        assert_eq!(r.credit_due(), Some(350));
        assert_eq!(r.window(), 350);
        r.on_data(350).unwrap();
        assert!(r.on_data(1).is_err());
        r.consume(350);
        assert_eq!(
            r.credit_due(),
            Some(350),
            "at the maximum: what was consumed"
        );
        assert_eq!(r.window(), 350);
    }

    #[test]
    fn a_lowered_maximum_stops_growth_but_never_shrinks_the_window() {
        let mut r = RecvWindow::growing(100, 1000);
        r.on_data(100).unwrap();
        r.consume(100);
        assert_eq!(r.credit_due(), Some(200));
        r.set_max(150);
        assert_eq!(r.max(), 200, "not below the window it has");
        r.on_data(200).unwrap();
        r.consume(200);
        assert_eq!(r.credit_due(), Some(200));
        assert_eq!(r.window(), 200);
        r.set_max(300);
        r.on_data(200).unwrap();
        r.consume(200);
        assert_eq!(r.credit_due(), Some(300));
        assert_eq!(r.window(), 300);
    }

    #[test]
    fn a_window_grows_only_by_what_was_consumed() {
        // Data received but not consumed (the application is slow) earns nothing.
        let mut r = RecvWindow::growing(64, 1 << 20);
        r.on_data(64).unwrap();
        assert_eq!(r.credit_due(), None);
        r.consume(1);
        assert_eq!(
            r.credit_due(),
            Some(2),
            "the peer is blocked: 1 consumed, 1 grown"
        );
        assert_eq!(r.window(), 65);
        // Never more in flight than the window: 63 unconsumed + 2 granted.
        r.on_data(2).unwrap();
        assert!(r.on_data(1).is_err());
        // A fixed window never grows; a maximum below the window is the window.
        let mut fixed = RecvWindow::growing(64, 10);
        fixed.on_data(64).unwrap();
        fixed.consume(64);
        assert_eq!(fixed.credit_due(), Some(64));
        assert_eq!(fixed, {
            let mut n = RecvWindow::new(64);
            n.on_data(64).unwrap();
            n.consume(64);
            n.credit_due();
            n
        });
    }

    #[test]
    fn small_consume_is_credited_when_peer_is_blocked() {
        let mut r = RecvWindow::new(8);
        r.on_data(8).unwrap();
        r.consume(1);
        assert_eq!(r.credit_due(), Some(1));
    }
}
