//! Replay windows: how far the time a provider (or an API client) signed may be from ours.
//!
//! A signature proves who sent a request, not when: a captured request stays valid for ever.
//! Where the signed bytes include a time, a window bounds how long a capture can be replayed;
//! within the window, the dedupe cache of event ids stops the repeat. The window is checked
//! both ways, since a sender's clock can be ahead of ours.

use chrono::{DateTime, Utc};
use std::time::Duration;

use crate::error::IngressError;

/// The window applied where a tenant names none: five minutes either way, the usual choice
/// (Vonage's, Stripe's, Slack's), well within the dedupe window that covers repeats inside it.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// How far a signed time may be from now, either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow {
    max_age: Duration,
}

/// A signed time outside the window: the request is refused, nothing is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the signed time is {age_secs}s away from now, more than {max_age_secs}s")]
pub struct Stale {
    /// Distance between the signed time and now, in whole seconds.
    pub age_secs: u64,
    /// The window, in seconds.
    pub max_age_secs: u64,
}

impl ReplayWindow {
    /// A window of `max_age` either way.
    pub const fn new(max_age: Duration) -> Self {
        Self { max_age }
    }

    /// The window a config key in seconds asks for: absent is [`DEFAULT_MAX_AGE`], `0` turns
    /// the check off (for a sender whose clock is known to be wrong), anything else is that.
    pub fn from_config_secs(secs: Option<u64>) -> Option<Self> {
        match secs {
            None => Some(Self::new(DEFAULT_MAX_AGE)),
            Some(0) => None,
            Some(s) => Some(Self::new(Duration::from_secs(s))),
        }
    }

    /// The window's length.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Accepts `signed_at` when it is within the window of `now`, in the past or the future.
    pub fn check(&self, signed_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), Stale> {
        let age = (now - signed_at).abs().to_std().unwrap_or(Duration::MAX);
        if age > self.max_age {
            Err(Stale {
                age_secs: age.as_secs(),
                max_age_secs: self.max_age.as_secs(),
            })
        } else {
            Ok(())
        }
    }
}

impl From<Stale> for IngressError {
    fn from(s: Stale) -> Self {
        IngressError::Stale {
            age_secs: s.age_secs,
            max_age_secs: s.max_age_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::StatusCode;
    use chrono::TimeDelta;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn times_within_the_window_either_way_pass_and_others_are_stale() {
        let w = ReplayWindow::new(Duration::from_secs(300));
        let now = at(1_800_000_000);
        for ok in [0, 1, 299, 300, -300, -1] {
            assert_eq!(w.check(now + TimeDelta::seconds(ok), now), Ok(()), "{ok}");
        }
        assert_eq!(
            w.check(now - TimeDelta::seconds(301), now),
            Err(Stale {
                age_secs: 301,
                max_age_secs: 300
            })
        );
        assert!(w.check(now + TimeDelta::seconds(3_600), now).is_err());
        assert!(w.check(DateTime::<Utc>::MIN_UTC, now).is_err());
        assert!(w.check(DateTime::<Utc>::MAX_UTC, now).is_err());
    }

    #[test]
    fn config_absent_is_the_default_and_zero_is_off() {
        assert_eq!(
            ReplayWindow::from_config_secs(None).map(|w| w.max_age()),
            Some(DEFAULT_MAX_AGE)
        );
        assert_eq!(ReplayWindow::from_config_secs(Some(0)), None);
        assert_eq!(
            ReplayWindow::from_config_secs(Some(30)).map(|w| w.max_age()),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn a_stale_request_is_a_401_with_its_own_reason() {
        let e = IngressError::from(Stale {
            age_secs: 900,
            max_age_secs: 300,
        });
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(e.reason(), "stale_timestamp");
        assert!(e.to_string().contains("900s"), "{e}");
    }
}
