//! Validated live chat settings (the daemon parses and validates the raw config into these).

use chrono::{DateTime, Datelike, Timelike, Utc};
use omni_core::{Secret, TenantId};
use std::collections::HashMap;
use std::time::Duration;

/// Limits and timings shared by every widget.
#[derive(Debug, Clone)]
pub struct LivechatSettings {
    /// How long a visitor token is valid.
    pub token_ttl: Duration,
    /// How long after expiry a token may still be renewed into a new one for the same visitor.
    pub renew_window: Duration,
    /// Largest WebSocket message (and frame) accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Longest visitor message, in characters.
    pub max_text_chars: usize,
    /// Visitor messages per minute per conversation, sustained.
    pub rate_per_minute: u32,
    /// Visitor messages in a burst.
    pub burst: u32,
    /// A socket with no frame from the widget for this long is closed (the widget pings).
    pub idle_timeout: Duration,
    /// Open sockets per client IP at most.
    pub max_connections_per_ip: u32,
    /// How far back each instance reads both topics at start to rebuild conversation logs.
    pub history_window: Duration,
    /// Messages kept per conversation.
    pub log_max_messages: usize,
    /// Messages older than this are dropped from the logs.
    pub log_ttl: Duration,
    /// Frames queued per socket before it is closed as lagging (it then resumes).
    pub queue_cap: usize,
    /// tungstenite's read buffer per socket (allocated up front: keep it small).
    pub ws_read_buffer_bytes: usize,
    /// Frames a socket may send per second, sustained (every type: typing, reads, pings…).
    pub frame_rate_per_second: u32,
    /// Frames a socket may send at once; a socket that keeps sending this many past its
    /// budget is closed with 1008.
    pub frame_burst: u32,
    /// Session requests per minute per client IP (an IPv6 client: its /64) on this replica;
    /// 0 = no limit.
    pub sessions_per_minute_per_ip: u32,
    /// Session requests per minute per widget on this replica; 0 = no limit.
    pub sessions_per_minute_per_widget: u32,
    /// Proxies whose `X-Forwarded-For` entries are believed (the client is the rightmost hop
    /// that is not one of them); empty: the peer address is the client.
    pub trusted_proxies: crate::client_ip::TrustedProxies,
    /// Also accept the visitor token in the socket URL (`?token=`), as widgets before the
    /// subprotocol sent it: for a rolling upgrade only (URLs end up in proxies' logs).
    pub allow_token_in_url: bool,
    /// How often each replica republishes its per-IP socket counts on the presence topic (it
    /// also publishes at once when a socket opens or closes).
    pub presence_heartbeat: Duration,
    /// A replica not heard from for this long no longer counts toward any IP's cap (a replica
    /// killed without a goodbye holds its sockets' slots this long).
    pub presence_expiry: Duration,
    /// Keys the hash of client IPs on the presence topic, so the topic never holds addresses
    /// that can be reversed by hashing every IPv4 address. The same on every replica.
    pub ip_hash_secret: Option<Secret>,
}

impl Default for LivechatSettings {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(24 * 3600),
            renew_window: Duration::from_secs(30 * 24 * 3600),
            max_frame_bytes: 16 * 1024,
            max_text_chars: 4000,
            rate_per_minute: 30,
            burst: 10,
            idle_timeout: Duration::from_secs(120),
            max_connections_per_ip: 20,
            history_window: Duration::from_secs(24 * 3600),
            log_max_messages: 200,
            log_ttl: Duration::from_secs(24 * 3600),
            queue_cap: 256,
            ws_read_buffer_bytes: 1024,
            frame_rate_per_second: 5,
            frame_burst: 30,
            sessions_per_minute_per_ip: 60,
            sessions_per_minute_per_widget: 1200,
            trusted_proxies: crate::client_ip::TrustedProxies::default(),
            allow_token_in_url: false,
            presence_heartbeat: Duration::from_secs(1),
            presence_expiry: Duration::from_millis(3500),
            ip_hash_secret: None,
        }
    }
}

/// One widget: a live chat channel account of a tenant.
#[derive(Debug, Clone)]
pub struct WidgetSettings {
    /// Signs visitor tokens.
    pub secret: Secret,
    /// Verifies `user_hash` for logged-in customers; without it identities are refused.
    pub identity_secret: Option<Secret>,
    /// Page origins allowed to use the widget (`https://shop.example.vn`, `http://127.0.0.1:*`
    /// for any port, or `*`).
    pub allowed_origins: Vec<String>,
    /// Opening hours shown to visitors (outside them the widget shows an after-hours notice).
    pub hours: Option<Hours>,
}

impl WidgetSettings {
    /// True when a page at `origin` may use this widget.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        self.allowed_origins.iter().any(|pattern| {
            let pattern = pattern.trim_end_matches('/');
            if pattern == "*" || pattern.eq_ignore_ascii_case(origin) {
                return true;
            }
            match pattern.strip_suffix(":*") {
                Some(base) => {
                    origin
                        .rsplit_once(':')
                        .filter(|(_, port)| {
                            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                        })
                        .is_some_and(|(host, _)| host.eq_ignore_ascii_case(base))
                        || origin.eq_ignore_ascii_case(base)
                }
                None => false,
            }
        })
    }
}

/// Weekly opening hours at a fixed UTC offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hours {
    /// Open days, Monday first.
    pub days: [bool; 7],
    /// Opening minute of the day.
    pub open: u32,
    /// Closing minute of the day (after `open`).
    pub close: u32,
    /// The offset of local time (Vietnam: +420).
    pub utc_offset_minutes: i32,
}

impl Hours {
    /// Whether the team is open at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        let local = now + chrono::Duration::minutes(i64::from(self.utc_offset_minutes));
        let day = local.weekday().num_days_from_monday() as usize;
        let minute = local.hour() * 60 + local.minute();
        self.days[day] && minute >= self.open && minute < self.close
    }
}

/// Every tenant's widgets, by (tenant, widget id).
pub type Widgets = HashMap<(String, String), (TenantId, WidgetSettings)>;

#[cfg(test)]
mod tests {
    use super::*;

    fn widget(origins: &[&str]) -> WidgetSettings {
        WidgetSettings {
            secret: Secret::new("s"),
            identity_secret: None,
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            hours: None,
        }
    }

    #[test]
    fn origins_match_exactly_or_by_port_wildcard() {
        let w = widget(&["https://shop.example.vn", "http://127.0.0.1:*"]);
        assert!(w.origin_allowed("https://shop.example.vn"));
        assert!(w.origin_allowed("https://SHOP.example.vn/"));
        assert!(w.origin_allowed("http://127.0.0.1:43121"));
        assert!(!w.origin_allowed("http://127.0.0.1.evil.test:80"));
        assert!(!w.origin_allowed("https://shop.example.vn.evil.test"));
        assert!(!w.origin_allowed("http://shop.example.vn"));
        assert!(!w.origin_allowed("null"));
        assert!(widget(&["*"]).origin_allowed("https://anything.test"));
    }

    #[test]
    fn hours_follow_the_local_offset() {
        let h = Hours {
            days: [true, true, true, true, true, false, false],
            open: 8 * 60,
            close: 21 * 60,
            utc_offset_minutes: 420,
        };
        // Monday 2026-11-23 01:30 UTC = 08:30 in Hanoi.
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert!(h.is_open(t("2026-11-23T01:30:00Z")));
        assert!(!h.is_open(t("2026-11-23T00:30:00Z")));
        assert!(!h.is_open(t("2026-11-23T14:00:00Z")), "21:00 is closed");
        assert!(!h.is_open(t("2026-11-28T03:00:00Z")), "Saturday");
    }
}
