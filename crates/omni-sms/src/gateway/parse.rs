//! Reading one message out of a gateway's body, by the mapping's form keys or JSON pointers.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};

use super::{BodyFormat, Gateway, GatewayError, TimestampFormat, TimestampMapping};
use crate::params::{clip, Params};

/// One inbound message, as the gateway described it. Addresses are as the gateway wrote them;
/// use [`crate::phone::Address::parse`] to normalize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayMessage {
    /// The sender's address.
    pub from: String,
    /// Our number or short code.
    pub to: String,
    /// The text (may be empty).
    pub text: String,
    /// The gateway's id: the dedupe key.
    pub message_id: String,
    /// The gateway's timestamp, when mapped and present.
    pub timestamp: Option<DateTime<Utc>>,
}

impl Gateway {
    /// Reads the message out of a raw body. `from`, `to` and `message_id` must be present and
    /// non-empty, `text` present; the timestamp, when mapped, may be absent but not malformed.
    pub fn extract(&self, body: &[u8]) -> Result<GatewayMessage, GatewayError> {
        let source = match self.mapping.format {
            BodyFormat::Form => Source::Form(Params::from_form(body)),
            BodyFormat::Json => {
                Source::Json(serde_json::from_slice(body).map_err(GatewayError::InvalidJson)?)
            }
        };
        let m = &self.mapping;
        let required = |role: &'static str, field: &str| {
            source
                .lookup(role, field)?
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| GatewayError::MissingField {
                    role,
                    field: field.to_owned(),
                })
        };
        let from = required("from", &m.from)?;
        let to = required("to", &m.to)?;
        let message_id = required("message_id", &m.message_id)?;
        let text = source
            .lookup("text", &m.text)?
            .ok_or_else(|| GatewayError::MissingField {
                role: "text",
                field: m.text.clone(),
            })?;
        let timestamp = match &m.timestamp {
            Some(ts) => source
                .lookup("timestamp", &ts.field)?
                .filter(|v| !v.trim().is_empty())
                .map(|raw| parse_timestamp(ts, &raw))
                .transpose()?,
            None => None,
        };
        Ok(GatewayMessage {
            from: from.trim().to_owned(),
            to: to.trim().to_owned(),
            text,
            message_id: message_id.trim().to_owned(),
            timestamp,
        })
    }
}

enum Source {
    Form(Params),
    Json(serde_json::Value),
}

impl Source {
    /// The field's text, `None` when absent (or JSON `null`).
    fn lookup(&self, role: &'static str, field: &str) -> Result<Option<String>, GatewayError> {
        match self {
            Self::Form(params) => Ok(params.get(field).map(str::to_owned)),
            Self::Json(value) => match value.pointer(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(GatewayError::WrongType {
                    role,
                    field: field.to_owned(),
                }),
            },
        }
    }
}

fn parse_timestamp(mapping: &TimestampMapping, raw: &str) -> Result<DateTime<Utc>, GatewayError> {
    let value = raw.trim();
    let parsed = match &mapping.format {
        TimestampFormat::UnixSeconds => value
            .parse::<i64>()
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0)),
        TimestampFormat::UnixMillis => value
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis),
        TimestampFormat::Rfc3339 => DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|dt| dt.with_timezone(&Utc)),
        TimestampFormat::Pattern(pattern) => {
            let offset = FixedOffset::east_opt(mapping.utc_offset_minutes.saturating_mul(60));
            NaiveDateTime::parse_from_str(value, pattern)
                .ok()
                .zip(offset)
                .and_then(|(naive, offset)| offset.from_local_datetime(&naive).single())
                .map(|dt| dt.with_timezone(&Utc))
        }
    };
    parsed.ok_or_else(|| GatewayError::InvalidTimestamp {
        field: mapping.field.clone(),
        value: clip(value),
    })
}
