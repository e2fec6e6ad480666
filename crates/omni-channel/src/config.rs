//! What every channel's raw config shares: the error that names the key an operator must fix,
//! and the limits no channel may exceed. Each channel crate owns its raw (serde) structs and
//! validates them into its typed settings with no I/O; the daemon only prefixes the keys.

/// Largest body (or WebSocket frame) any inbound endpoint may be configured to accept (16
/// MiB): attachments travel by URL, not inline.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A config value is invalid; `key` is the full dotted path (`tenants.acme.sms.twilio`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config key {key}: {reason}")]
pub struct InvalidKey {
    /// The key, as `section.key`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl InvalidKey {
    /// The error for `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A provider API base URL must be http(s): `Err` names `key`.
pub fn check_http_url(key: &str, url: &str) -> Result<(), InvalidKey> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(InvalidKey::new(
            key,
            format!("{url:?} is not an http(s) URL"),
        ))
    }
}
