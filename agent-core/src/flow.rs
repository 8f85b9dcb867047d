//! Credit-based flow control for one direction of one channel.
//!
//! The receiver announces a window (bytes it can buffer). The sender keeps a credit
//! counter: it starts at the window, each `Data` payload spends it, each `Credit`
//! frame adds to it. A sender never has more unacknowledged bytes in flight than the
//! receiver granted; a receiver that sees more treats it as a protocol violation.

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
    window: u32,
    /// Bytes the peer may still send without new credit.
    remaining: u32,
    /// Bytes consumed by the application and not yet returned as credit.
    unreturned: u32,
}

impl RecvWindow {
    /// A receiver that can buffer `window` bytes.
    pub const fn new(window: u32) -> Self {
        RecvWindow {
            window,
            remaining: window,
            unreturned: 0,
        }
    }
    /// The announced window.
    pub const fn window(&self) -> u32 {
        self.window
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
    /// (a quarter of the window, or everything once the peer is fully blocked).
    pub fn credit_due(&mut self) -> Option<u32> {
        if self.unreturned == 0 {
            return None;
        }
        if self.unreturned >= self.window / 4 || self.remaining == 0 {
            let c = self.unreturned;
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
    fn small_consume_is_credited_when_peer_is_blocked() {
        let mut r = RecvWindow::new(8);
        r.on_data(8).unwrap();
        r.consume(1);
        assert_eq!(r.credit_due(), Some(1));
    }
}
