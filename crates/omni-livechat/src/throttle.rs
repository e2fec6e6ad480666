//! Rate limits that are not per conversation: every frame of a socket (a token bucket that a
//! flooding socket digs into debt), and session minting per client IP and per widget (token
//! buckets by key, in a map whose size is capped). Pure: time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// A bucket's rate and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Tokens held at most (what a burst may use).
    pub burst: f64,
}

impl Rate {
    /// `per_minute` tokens a minute, as many in a burst.
    pub fn per_minute(per_minute: u32) -> Self {
        let n = f64::from(per_minute.max(1));
        Self {
            per_sec: n / 60.0,
            burst: n,
        }
    }

    /// How long until a bucket at `tokens` holds one whole token again.
    fn wait_for_one(self, tokens: f64) -> Duration {
        let missing = (1.0 - tokens).max(0.0);
        Duration::from_secs_f64(missing / self.per_sec.max(f64::MIN_POSITIVE))
    }
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            refilled: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.refilled = now.max(self.refilled);
    }

    /// Takes a token; `Err(wait)` (how long until one is back) when there is none.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(rate.wait_for_one(self.tokens))
        }
    }

    /// True when the bucket has refilled to the brim: it then says nothing a fresh one would
    /// not, and can be forgotten.
    pub fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * rate.per_sec >= rate.burst
    }
}

/// What to do with a socket's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the budget: handle it.
    Admit,
    /// Over the budget: drop it and answer `rate_limited`.
    Refuse,
    /// Over the budget for long: drop it and close the socket (1008, policy violation).
    Close,
}

/// The frame budget of one socket: every frame from the widget costs a token, whatever its
/// type, so typing, reads, pings and garbage are bounded like messages.
///
/// A refused frame costs a token too, so the bucket goes into debt: a widget that backs off
/// after `rate_limited` refills and carries on, one that keeps sending digs deeper, and once
/// the debt reaches a whole burst (it sent twice the burst more than the rate allows) the
/// socket is closed.
#[derive(Debug, Clone, Copy)]
pub struct FrameBudget {
    rate: Rate,
    tokens: f64,
    refilled: Instant,
}

impl FrameBudget {
    /// A full budget of `per_sec` frames a second and `burst` at once.
    pub fn new(per_sec: u32, burst: u32, now: Instant) -> Self {
        let rate = Rate {
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
        };
        Self {
            rate,
            tokens: rate.burst,
            refilled: now,
        }
    }

    /// Charges one frame received at `now`.
    pub fn charge(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_sec).min(self.rate.burst);
        self.refilled = now.max(self.refilled);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Admit;
        }
        self.tokens -= 1.0;
        if self.tokens <= -self.rate.burst {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

/// Token buckets by key with at most `cap` keys: a full bucket is the same as none, so full
/// ones are pruned when the map reaches its cap; a key that still finds no room is not
/// limited by this map (the caller has another limit behind it). A spray of keys therefore
/// costs bounded memory and never refuses a key it has not seen.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: Rate,
    cap: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq> KeyedBuckets<K> {
    /// Buckets of `rate`, at most `cap` of them.
    pub fn new(rate: Rate, cap: usize) -> Self {
        Self {
            rate,
            cap: cap.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token of `key`'s bucket; `Err(wait)` when it has none.
    pub fn take(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.cap {
            let rate = self.rate;
            self.buckets.retain(|_, b| !b.is_full(rate, now));
            if self.buckets.len() >= self.cap {
                return Ok(());
            }
        }
        let rate = self.rate;
        self.buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Clients (IPs, IPv6 /64s) whose session buckets are kept at most; past it (a spray of
/// addresses, each with a bucket not yet refilled) a new address is limited by its widget's
/// bucket only. About 64 bytes each.
pub const SESSION_IPS_MAX: usize = 65_536;

/// Why a session request was refused, and when a retry may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The client's address minted too many.
    Ip(Duration),
    /// The widget minted too many (on this replica).
    Widget(Duration),
}

/// Session minting limits of one replica: a bucket per client address and one per widget.
#[derive(Debug)]
pub struct SessionLimits {
    per_ip: Option<KeyedBuckets<IpAddr>>,
    per_widget: Option<KeyedBuckets<(String, String)>>,
}

impl SessionLimits {
    /// `per_ip` and `per_widget` sessions a minute (each also the burst); 0 = no limit.
    pub fn new(per_ip: u32, per_widget: u32) -> Self {
        Self {
            per_ip: (per_ip > 0)
                .then(|| KeyedBuckets::new(Rate::per_minute(per_ip), SESSION_IPS_MAX)),
            per_widget: (per_widget > 0)
                .then(|| KeyedBuckets::new(Rate::per_minute(per_widget), 4096)),
        }
    }

    /// Charges a session request of `ip` for the widget; the address first, so a client
    /// over its own limit does not use up its widget's.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        tenant: &str,
        widget: &str,
        now: Instant,
    ) -> Result<(), SessionRefusal> {
        if let Some(b) = &mut self.per_ip {
            b.take(ip_key(ip), now).map_err(SessionRefusal::Ip)?;
        }
        if let Some(b) = &mut self.per_widget {
            b.take((tenant.to_owned(), widget.to_owned()), now)
                .map_err(SessionRefusal::Widget)?;
        }
        Ok(())
    }
}

/// The key of a client for per-IP limits: the IPv4 address, or the /64 of an IPv6 address
/// (one subscriber gets a whole /64: keying by address would let it mint without limit).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match crate::client_ip::canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_budget_refuses_past_the_burst_and_closes_a_socket_that_keeps_on() {
        let t0 = Instant::now();
        let mut b = FrameBudget::new(2, 5, t0);
        assert!((0..5).all(|_| b.charge(t0) == Verdict::Admit));
        // Over the budget: refused, each refusal digging deeper…
        assert!((0..4).all(|_| b.charge(t0) == Verdict::Refuse));
        // …until the debt is a whole burst: closed.
        assert_eq!(b.charge(t0), Verdict::Close);
    }

    #[test]
    fn a_widget_that_backs_off_after_a_refusal_recovers() {
        let t0 = Instant::now();
        let mut b = FrameBudget::new(2, 5, t0);
        for _ in 0..5 {
            b.charge(t0);
        }
        assert_eq!(b.charge(t0), Verdict::Refuse);
        // The debt of one refusal plus one frame: a second at 2/s pays for both.
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(b.charge(t1), Verdict::Admit);
        // At the sustained rate it is never refused.
        let mut t = t1;
        for _ in 0..100 {
            t += Duration::from_millis(500);
            assert_eq!(b.charge(t), Verdict::Admit);
        }
    }

    #[test]
    fn keyed_buckets_limit_each_key_and_say_when_to_retry() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::new(Rate::per_minute(2), 100);
        assert!(k.take("a", t0).is_ok());
        assert!(k.take("a", t0).is_ok());
        let wait = k.take("a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(30), "2 a minute: one every 30 s");
        assert!(k.take("b", t0).is_ok(), "another key has its own bucket");
        assert!(k.take("a", t0 + Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn a_spray_of_keys_never_grows_the_map_past_its_cap() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::new(Rate::per_minute(1), 3);
        for i in 0..1000 {
            assert!(k.take(i, t0).is_ok(), "a new key is never refused");
            assert!(k.len() <= 3);
        }
        // Keys held before the spray keep their state while the map is full.
        let mut k = KeyedBuckets::new(Rate::per_minute(1), 3);
        assert!(k.take(7, t0).is_ok());
        for i in 0..10 {
            let _ = k.take(i + 100, t0);
        }
        assert!(k.take(7, t0).is_err(), "still limited");
        // Once full buckets refilled, they make room.
        let later = t0 + Duration::from_secs(60);
        assert!(k.take(5000, later).is_ok());
        assert_eq!(k.len(), 1, "the refilled ones were pruned");
    }

    #[test]
    fn sessions_are_limited_per_address_then_per_widget() {
        let t0 = Instant::now();
        let mut s = SessionLimits::new(2, 3);
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let b: IpAddr = "198.51.100.7".parse().unwrap();
        let c: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(s.admit(a, "demo", "web", t0).is_ok());
        assert!(s.admit(a, "demo", "web", t0).is_ok());
        assert_eq!(
            s.admit(a, "demo", "web", t0),
            Err(SessionRefusal::Ip(Duration::from_secs(30)))
        );
        // The refused address did not use up the widget: one of its three is left.
        assert!(s.admit(b, "demo", "web", t0).is_ok());
        assert!(matches!(
            s.admit(c, "demo", "web", t0),
            Err(SessionRefusal::Widget(_))
        ));
        assert!(s.admit(c, "demo", "other", t0).is_ok(), "another widget");
        let none = &mut SessionLimits::new(0, 0);
        assert!((0..1000).all(|_| none.admit(a, "demo", "web", t0).is_ok()));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let v4: IpAddr = "203.0.113.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(ip_key(v4), v4);
        assert_eq!(ip_key(mapped), v4);
    }
}
