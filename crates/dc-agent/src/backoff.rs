//! Bounded exponential backoff shared by every retry loop of the agent.

use std::time::Duration;

/// Doubles from `initial_ms` up to `max_ms`; never grows without bound, never reaches zero.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    pub fn new(initial_ms: u64, max_ms: u64) -> Self {
        assert!(initial_ms > 0 && initial_ms <= max_ms, "backoff bounds must satisfy 0 < initial <= max");
        Self { initial_ms, max_ms, next_ms: initial_ms }
    }

    /// The delay to wait now; the following call returns twice as much, capped at the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next_ms;
        self.next_ms = self.next_ms.saturating_mul(2).min(self.max_ms);
        Duration::from_millis(delay)
    }

    /// The delay [`Backoff::next_delay`] would return, without advancing.
    pub fn peek(&self) -> Duration {
        Duration::from_millis(self.next_ms)
    }

    pub fn reset(&mut self) {
        self.next_ms = self.initial_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(200, 1000);
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, vec![200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(200));
    }
}
