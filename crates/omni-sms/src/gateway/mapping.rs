//! A gateway's mapping as an operator writes it in config, checked without I/O before a
//! [`Gateway`] is built from it.

use chrono::format::{Item, StrftimeItems};
use serde::Deserialize;

use super::{Gateway, GatewayError};

/// Most minutes a UTC offset can have (UTC±18:00).
const MAX_UTC_OFFSET_MINUTES: i32 = 18 * 60;
/// How the gateway encodes its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`: fields are form keys.
    Form,
    /// JSON: fields are JSON pointers.
    Json,
}

/// How a gateway writes its timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// Seconds since the Unix epoch.
    UnixSeconds,
    /// Milliseconds since the Unix epoch.
    UnixMillis,
    /// RFC 3339 with its own offset (`2024-03-05T07:08:09+07:00`).
    Rfc3339,
    /// A chrono `strftime` pattern without offset, read in `utc_offset_minutes`.
    Pattern(String),
}

/// Where the gateway's own timestamp is, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampMapping {
    /// Form key or JSON pointer.
    pub field: String,
    /// Its format.
    pub format: TimestampFormat,
    /// Offset of local times for `pattern` (420 for Viet Nam, UTC+7); 0 when absent.
    #[serde(default)]
    pub utc_offset_minutes: i32,
}

/// How the signature header is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    /// Hex, either case.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// Where the gateway puts its HMAC-SHA256 of the body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureMapping {
    /// Header name (case-insensitive, as HTTP headers are).
    pub header: String,
    /// How the MAC is written.
    pub encoding: SignatureEncoding,
    /// Text before the MAC, e.g. `sha256=` (matched case-insensitively).
    #[serde(default)]
    pub prefix: Option<String>,
}

/// An operator's description of a gateway's inbound webhook, as written in config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayMapping {
    /// Body encoding.
    pub format: BodyFormat,
    /// Where the sender's number is.
    pub from: String,
    /// Where our number (or short code) is.
    pub to: String,
    /// Where the text is.
    pub text: String,
    /// Where the gateway's message id (the dedupe key) is.
    pub message_id: String,
    /// Where the gateway's timestamp is; without it, the caller uses the time of receipt.
    #[serde(default)]
    pub timestamp: Option<TimestampMapping>,
    /// The signature header; without it, [`Gateway::verify`] reports
    /// [`super::Verification::Unsigned`] and the endpoint needs another credential.
    #[serde(default)]
    pub signature: Option<SignatureMapping>,
}

impl GatewayMapping {
    /// Checks the mapping without I/O: fields present and of the right kind for the format
    /// (JSON pointers start with `/`, form keys do not), a header name that HTTP allows, a
    /// non-empty prefix, a valid timestamp pattern and offset.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let fields = [
            ("from", &self.from),
            ("to", &self.to),
            ("text", &self.text),
            ("message_id", &self.message_id),
        ];
        for (setting, field) in fields {
            self.validate_field(setting, field)?;
        }
        if let Some(ts) = &self.timestamp {
            self.validate_field("timestamp.field", &ts.field)?;
            if ts.utc_offset_minutes.abs() > MAX_UTC_OFFSET_MINUTES {
                return Err(invalid(
                    "timestamp.utc_offset_minutes",
                    "is beyond ±18 hours",
                ));
            }
            if let TimestampFormat::Pattern(pattern) = &ts.format {
                let broken = StrftimeItems::new(pattern).any(|item| matches!(item, Item::Error));
                if pattern.trim().is_empty() || broken {
                    return Err(invalid(
                        "timestamp.format.pattern",
                        "is not a valid pattern",
                    ));
                }
            }
        }
        if let Some(sig) = &self.signature {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if sig.header.is_empty() || !sig.header.bytes().all(token) {
                return Err(invalid("signature.header", "is not a valid header name"));
            }
            if sig.prefix.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(
                    "signature.prefix",
                    "is empty (leave it out instead)",
                ));
            }
        }
        Ok(())
    }

    /// Validates, then builds the [`Gateway`] used per request.
    pub fn build(self) -> Result<Gateway, GatewayError> {
        self.validate()?;
        Ok(Gateway { mapping: self })
    }

    fn validate_field(&self, setting: &'static str, field: &str) -> Result<(), GatewayError> {
        if field.trim().is_empty() {
            return Err(invalid(setting, "is empty"));
        }
        match self.format {
            BodyFormat::Json if !field.starts_with('/') => {
                Err(invalid(setting, "must be a json pointer starting with '/'"))
            }
            BodyFormat::Form if field.starts_with('/') => {
                Err(invalid(setting, "is a json pointer but the format is form"))
            }
            _ => Ok(()),
        }
    }
}

fn invalid(setting: &'static str, reason: &'static str) -> GatewayError {
    GatewayError::InvalidMapping { setting, reason }
}
