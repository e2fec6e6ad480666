//! Per-account send rate limits (a token bucket per page, OA or number), so a burst of
//! replies waits its turn here instead of being refused by the provider.
//!
//! The buckets are in memory, and a limit holds for the whole deployment by ownership: a
//! tenant's replies are sent only by the replica that owns the tenant's outbound partition
//! (see [`crate::outbound`]), so each page, OA or number is sent to by one process at a time.
//! A hand-over starts the new owner with a full bucket: at most one burst more.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by account, all with the same rate.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `per_second` sends per account on average, up to `burst` at once. A zero rate means
    /// no limit.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            rate: per_second.max(0.0),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `account` at `now`, or says how long until one is free (the token
    /// is then reserved: the caller waits that long and goes).
    pub fn reserve(&self, account: &str, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(account.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now.max(bucket.updated);
        bucket.tokens -= 1.0;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.rate)
        }
    }

    /// Waits until `account` may send.
    pub async fn acquire(&self, account: &str) {
        let wait = self.reserve(account, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_sends_are_spaced_at_the_rate() {
        let limiter = RateLimiter::new(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.reserve("page", t0), Duration::ZERO);
        }
        let wait = limiter.reserve("page", t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        let wait = limiter.reserve("page", t0);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
        // Accounts do not share a bucket.
        assert_eq!(limiter.reserve("other", t0), Duration::ZERO);
        // After a second the bucket is full again.
        assert_eq!(
            limiter.reserve("page", t0 + Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let limiter = RateLimiter::new(0.0, 1);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(limiter.reserve("a", t0), Duration::ZERO);
        }
    }
}
