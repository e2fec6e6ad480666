//! Live chat's config as written (`[livechat]` and `[tenants.<id>.livechat]`), validated into
//! [`LivechatSettings`] and [`Widgets`] with no I/O; errors name the key to fix.

use omni_channel::config::{InvalidKey, MAX_BODY_BYTES};
use omni_core::{Secret, TenantId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::settings::{Hours, LivechatSettings, WidgetSettings, Widgets};

/// `[livechat]`: limits shared by every tenant's widgets.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLivechat {
    /// Serve live chat (sessions, sockets, the widget) from this daemon.
    pub enabled: bool,
    /// Lifetime of a visitor token; the widget renews it with a new session request.
    pub token_ttl_secs: u64,
    /// A token expired less than this long ago still renews into the same visitor.
    pub renew_window_secs: u64,
    /// Largest WebSocket frame/message from a widget, in bytes (larger: closed with 1009).
    pub max_frame_bytes: usize,
    /// Longest visitor message in characters.
    pub max_text_chars: usize,
    /// Visitor messages per minute per conversation, sustained…
    pub rate_per_minute: u32,
    /// …and in a burst.
    pub burst: u32,
    /// A socket silent for this long is closed (the widget pings every 25 s).
    pub idle_timeout_secs: u64,
    /// Open sockets per client IP.
    pub max_connections_per_ip: u32,
    /// How far back each instance reads inbound and outbound at start to rebuild conversations.
    pub history_window_secs: u64,
    /// Messages kept per conversation in memory (what a reconnecting widget can catch up on).
    pub log_max_messages: usize,
    /// Messages older than this are not replayed.
    pub log_ttl_secs: u64,
    /// Frames queued for one socket before it is closed as lagging.
    pub queue_cap: usize,
    /// Read buffer per socket in bytes (allocated up front for every idle socket).
    pub ws_read_buffer_bytes: usize,
    /// Replaced by `trusted_proxies`: `true` is refused (it believed the leftmost
    /// `X-Forwarded-For` entry, which any client writes); `false` is accepted and means
    /// nothing.
    pub trust_forwarded_for: Option<bool>,
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` entries are believed: a list, or a
    /// comma-separated string from the environment. The client is the rightmost hop that is
    /// not one of them.
    #[serde(deserialize_with = "list_or_csv")]
    pub trusted_proxies: Vec<String>,
    /// Frames per second a socket may send, sustained (every frame type)…
    pub frame_rate_per_second: u32,
    /// …and at once; a socket that keeps sending as many again past it is closed (1008).
    pub frame_burst: u32,
    /// Session requests per minute per client IP (IPv6: per /64), per replica; 0 = no limit.
    pub sessions_per_minute_per_ip: u32,
    /// Session requests per minute per widget, per replica; 0 = no limit.
    pub sessions_per_minute_per_widget: u32,
    /// Also accept `?token=` in the socket URL (widgets older than the subprotocol): only
    /// while old widget scripts may still be cached (an hour) during an upgrade.
    pub allow_token_in_url: bool,
    /// Each replica republishes its per-IP socket counts this often (and at once on a change).
    pub presence_heartbeat_ms: u64,
    /// A replica not heard from for this long stops counting toward the per-IP cap.
    pub presence_expiry_ms: u64,
    /// Keys the hash of client IPs on the presence topic; the same on every replica.
    pub ip_hash_secret: Option<Secret>,
}

impl Default for RawLivechat {
    fn default() -> Self {
        let d = LivechatSettings::default();
        Self {
            enabled: true,
            token_ttl_secs: d.token_ttl.as_secs(),
            renew_window_secs: d.renew_window.as_secs(),
            max_frame_bytes: d.max_frame_bytes,
            max_text_chars: d.max_text_chars,
            rate_per_minute: d.rate_per_minute,
            burst: d.burst,
            idle_timeout_secs: d.idle_timeout.as_secs(),
            max_connections_per_ip: d.max_connections_per_ip,
            history_window_secs: d.history_window.as_secs(),
            log_max_messages: d.log_max_messages,
            log_ttl_secs: d.log_ttl.as_secs(),
            queue_cap: d.queue_cap,
            ws_read_buffer_bytes: d.ws_read_buffer_bytes,
            trust_forwarded_for: None,
            trusted_proxies: Vec::new(),
            frame_rate_per_second: d.frame_rate_per_second,
            frame_burst: d.frame_burst,
            sessions_per_minute_per_ip: d.sessions_per_minute_per_ip,
            sessions_per_minute_per_widget: d.sessions_per_minute_per_widget,
            allow_token_in_url: d.allow_token_in_url,
            presence_heartbeat_ms: u64::try_from(d.presence_heartbeat.as_millis())
                .unwrap_or(u64::MAX),
            presence_expiry_ms: u64::try_from(d.presence_expiry.as_millis()).unwrap_or(u64::MAX),
            ip_hash_secret: None,
        }
    }
}

impl RawLivechat {
    /// The validated limits, or `None` when live chat is disabled.
    pub fn validate(self) -> Result<Option<LivechatSettings>, InvalidKey> {
        if !self.enabled {
            return Ok(None);
        }
        for (key, value) in [
            ("livechat.token_ttl_secs", self.token_ttl_secs),
            ("livechat.max_frame_bytes", self.max_frame_bytes as u64),
            ("livechat.max_text_chars", self.max_text_chars as u64),
            ("livechat.rate_per_minute", u64::from(self.rate_per_minute)),
            ("livechat.burst", u64::from(self.burst)),
            (
                "livechat.frame_rate_per_second",
                u64::from(self.frame_rate_per_second),
            ),
            ("livechat.frame_burst", u64::from(self.frame_burst)),
            ("livechat.idle_timeout_secs", self.idle_timeout_secs),
            (
                "livechat.max_connections_per_ip",
                u64::from(self.max_connections_per_ip),
            ),
            ("livechat.log_max_messages", self.log_max_messages as u64),
            ("livechat.queue_cap", self.queue_cap as u64),
            (
                "livechat.ws_read_buffer_bytes",
                self.ws_read_buffer_bytes as u64,
            ),
        ] {
            if value == 0 {
                return Err(InvalidKey::new(key, "must be at least 1"));
            }
        }
        if self.presence_heartbeat_ms == 0 {
            return Err(InvalidKey::new(
                "livechat.presence_heartbeat_ms",
                "must be at least 1",
            ));
        }
        if self.presence_expiry_ms < self.presence_heartbeat_ms.saturating_mul(2) {
            return Err(InvalidKey::new(
                "livechat.presence_expiry_ms",
                "must be at least twice presence_heartbeat_ms (one late heartbeat must not expire a replica)",
            ));
        }
        if self.trust_forwarded_for == Some(true) {
            return Err(InvalidKey::new(
                "livechat.trust_forwarded_for",
                "replaced by livechat.trusted_proxies: list your proxies' addresses or CIDRs \
                 (e.g. [\"10.0.0.0/8\"]) and remove trust_forwarded_for; it believed the leftmost \
                 X-Forwarded-For entry, which any client can write",
            ));
        }
        let mut proxies = Vec::with_capacity(self.trusted_proxies.len());
        for entry in &self.trusted_proxies {
            let net = crate::client_ip::TrustedProxies::parse_entry(entry).ok_or_else(|| {
                InvalidKey::new(
                    "livechat.trusted_proxies",
                    format!("{entry:?} is not an address or a CIDR like 10.0.0.0/8"),
                )
            })?;
            proxies.push(net);
        }
        if self.max_frame_bytes > MAX_BODY_BYTES {
            return Err(InvalidKey::new(
                "livechat.max_frame_bytes",
                format!("must be at most {MAX_BODY_BYTES}"),
            ));
        }
        Ok(Some(LivechatSettings {
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            renew_window: Duration::from_secs(self.renew_window_secs),
            max_frame_bytes: self.max_frame_bytes,
            max_text_chars: self.max_text_chars,
            rate_per_minute: self.rate_per_minute,
            burst: self.burst,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_connections_per_ip: self.max_connections_per_ip,
            history_window: Duration::from_secs(self.history_window_secs),
            log_max_messages: self.log_max_messages,
            log_ttl: Duration::from_secs(self.log_ttl_secs),
            queue_cap: self.queue_cap,
            ws_read_buffer_bytes: self.ws_read_buffer_bytes,
            frame_rate_per_second: self.frame_rate_per_second,
            frame_burst: self.frame_burst,
            sessions_per_minute_per_ip: self.sessions_per_minute_per_ip,
            sessions_per_minute_per_widget: self.sessions_per_minute_per_widget,
            trusted_proxies: crate::client_ip::TrustedProxies::new(proxies),
            allow_token_in_url: self.allow_token_in_url,
            presence_heartbeat: Duration::from_millis(self.presence_heartbeat_ms),
            presence_expiry: Duration::from_millis(self.presence_expiry_ms),
            ip_hash_secret: self.ip_hash_secret,
        }))
    }
}

/// `[tenants.<id>.livechat]`: a tenant's website widgets.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTenantLivechat {
    /// Widgets by id (the live chat channel account, `data-widget` in the embed snippet).
    pub widgets: BTreeMap<String, RawWidget>,
}

/// `[tenants.<id>.livechat.widgets.<widget id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWidget {
    /// Signs visitor tokens (long and random; rotate by changing it: visitors get new tokens).
    pub secret: Secret,
    /// Verifies `user_hash = hex(HMAC-SHA256(identity_secret, user_id))` for logged-in customers.
    #[serde(default)]
    pub identity_secret: Option<Secret>,
    /// Page origins allowed to embed the widget: a list, or a comma-separated string from the
    /// environment. `http://127.0.0.1:*` allows any port; `*` any origin.
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_origins: Vec<String>,
    /// Opening hours; outside them the widget shows an after-hours notice.
    #[serde(default)]
    pub hours: Option<RawChatHours>,
}

/// Opening hours of a widget's team.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChatHours {
    /// `mon` … `sun`.
    pub days: Vec<String>,
    /// `HH:MM` local.
    pub from: String,
    /// `HH:MM` local, after `from`.
    pub to: String,
    /// Local time's offset from UTC in minutes (Vietnam: 420).
    #[serde(default = "default_vn_offset")]
    pub utc_offset_minutes: i32,
}

fn default_vn_offset() -> i32 {
    420
}

fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(v) => v,
        ListOrCsv::Csv(s) => s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
    })
}

fn widget_settings(key: &str, id: &str, raw: RawWidget) -> Result<WidgetSettings, InvalidKey> {
    let invalid = |k: &str, reason: &str| {
        let key = if k.is_empty() {
            key.to_owned()
        } else {
            format!("{key}.{k}")
        };
        InvalidKey::new(key, reason)
    };
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            "",
            "a widget id is 1-64 chars of a-z, 0-9, '-', '_'",
        ));
    }
    if raw.secret.expose().len() < 16 {
        return Err(invalid("secret", "use at least 16 characters"));
    }
    if raw.allowed_origins.is_empty() {
        return Err(invalid(
            "allowed_origins",
            "list the page origins allowed to embed the widget",
        ));
    }
    for o in &raw.allowed_origins {
        let ok = o == "*" || o.starts_with("https://") || o.starts_with("http://");
        if !ok || o.trim_end_matches('/').matches('/').count() != 2 {
            return Err(invalid(
                "allowed_origins",
                &format!("{o:?} is not an origin like https://shop.example.vn"),
            ));
        }
    }
    let hours = match raw.hours {
        None => None,
        Some(h) => {
            let minute = |v: &str, k: &str| -> Result<u32, InvalidKey> {
                let (hh, mm) = v.split_once(':').ok_or_else(|| invalid(k, "use HH:MM"))?;
                match (hh.parse::<u32>(), mm.parse::<u32>()) {
                    (Ok(h), Ok(m)) if h <= 24 && m < 60 && h * 60 + m <= 1440 => Ok(h * 60 + m),
                    _ => Err(invalid(k, "use HH:MM")),
                }
            };
            let open = minute(&h.from, "hours.from")?;
            let close = minute(&h.to, "hours.to")?;
            if close <= open {
                return Err(invalid("hours.to", "must be after hours.from"));
            }
            let mut days = [false; 7];
            for d in &h.days {
                let i = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                    .iter()
                    .position(|x| x.eq_ignore_ascii_case(d))
                    .ok_or_else(|| {
                        invalid("hours.days", "use mon, tue, wed, thu, fri, sat, sun")
                    })?;
                days[i] = true;
            }
            if !(-720..=840).contains(&h.utc_offset_minutes) {
                return Err(invalid(
                    "hours.utc_offset_minutes",
                    "must be between -720 and 840",
                ));
            }
            Some(Hours {
                days,
                open,
                close,
                utc_offset_minutes: h.utc_offset_minutes,
            })
        }
    };
    Ok(WidgetSettings {
        secret: raw.secret,
        identity_secret: raw.identity_secret.filter(|s| !s.is_empty()),
        allowed_origins: raw.allowed_origins,
        hours,
    })
}

impl RawTenantLivechat {
    /// Checks the tenant's widgets and adds them to `widgets` by (tenant id, widget id);
    /// errors name `<tenant_key>.livechat.widgets.<id>…`. Says whether the tenant has any.
    pub fn validate_into(
        self,
        tenant_key: &str,
        tenant: &TenantId,
        widgets: &mut Widgets,
    ) -> Result<bool, InvalidKey> {
        let mut any = false;
        for (id, w) in self.widgets {
            let settings = widget_settings(&format!("{tenant_key}.livechat.widgets.{id}"), &id, w)?;
            widgets.insert((tenant.as_str().to_owned(), id), (tenant.clone(), settings));
            any = true;
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget(value: serde_json::Value) -> Result<WidgetSettings, InvalidKey> {
        widget_settings(
            "tenants.a.livechat.widgets.w",
            "w",
            serde_json::from_value(value).unwrap(),
        )
    }

    #[test]
    fn a_short_widget_secret_is_refused_by_key() {
        let err = widget(serde_json::json!({
            "secret": "short", "allowed_origins": ["https://shop.example.vn"]
        }))
        .unwrap_err();
        assert_eq!(err.key, "tenants.a.livechat.widgets.w.secret");
    }

    #[test]
    fn hours_must_close_after_they_open() {
        let err = widget(serde_json::json!({
            "secret": "0123456789abcdef", "allowed_origins": "https://a.vn, https://b.vn",
            "hours": { "days": ["mon"], "from": "18:00", "to": "09:00" }
        }))
        .unwrap_err();
        assert_eq!(err.key, "tenants.a.livechat.widgets.w.hours.to");
    }

    #[test]
    fn trust_forwarded_for_is_refused_in_favour_of_trusted_proxies() {
        let raw = RawLivechat {
            trust_forwarded_for: Some(true),
            ..RawLivechat::default()
        };
        let err = raw.validate().unwrap_err();
        assert_eq!(err.key, "livechat.trust_forwarded_for");
        assert!(err.to_string().contains("trusted_proxies"), "{err}");
        let off = RawLivechat {
            trust_forwarded_for: Some(false),
            ..RawLivechat::default()
        };
        assert!(off.validate().is_ok(), "false changes nothing: accepted");
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses_from_a_list_or_the_environment() {
        let raw: RawLivechat = serde_json::from_value(serde_json::json!({
            "trusted_proxies": "10.0.0.0/8, 127.0.0.1"
        }))
        .unwrap();
        let s = raw.validate().unwrap().unwrap();
        assert!(s.trusted_proxies.contains("10.9.8.7".parse().unwrap()));
        assert!(s.trusted_proxies.contains("127.0.0.1".parse().unwrap()));
        assert!(!s.trusted_proxies.contains("127.0.0.2".parse().unwrap()));
        let bad = RawLivechat {
            trusted_proxies: vec!["proxy.internal".into()],
            ..RawLivechat::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "livechat.trusted_proxies");
    }

    #[test]
    fn a_frame_budget_of_zero_is_refused() {
        let raw = RawLivechat {
            frame_burst: 0,
            ..RawLivechat::default()
        };
        assert_eq!(raw.validate().unwrap_err().key, "livechat.frame_burst");
    }

    #[test]
    fn a_heartbeat_slower_than_half_the_expiry_is_refused() {
        let raw = RawLivechat {
            presence_heartbeat_ms: 1000,
            presence_expiry_ms: 1500,
            ..RawLivechat::default()
        };
        assert_eq!(
            raw.validate().unwrap_err().key,
            "livechat.presence_expiry_ms"
        );
    }
}
