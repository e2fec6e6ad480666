//! How hard the dispatcher tries before a retryable failure becomes a failed delivery.

use std::time::Duration;

/// How hard to try before a retryable failure becomes a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles each time.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first attempt.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based), honouring the provider's own request,
    /// with jitter so a burst of failures does not retry in lockstep.
    pub(super) fn backoff(
        &self,
        retry: u32,
        requested: Option<Duration>,
        jitter_seed: u128,
    ) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        // Up to +25 % jitter, deterministic per message so tests can reason about it.
        let jitter_pct = u32::try_from(jitter_seed % 26).unwrap_or(0);
        let jittered = exp + exp * jitter_pct / 100;
        requested
            .map_or(jittered, |r| r.max(jittered))
            .min(self.max_backoff)
    }
}
