//! A generic inbound SMS mapping, so an operator can wire any gateway (the Vietnamese ones in
//! particular, whose MO webhooks are not documented reliably) from config, without code.
//!
//! Lifecycle: deserialize a [`GatewayMapping`] from config (unknown keys are refused), build a
//! [`Gateway`] with [`GatewayMapping::build`] (which runs [`GatewayMapping::validate`], no I/O),
//! then per request call [`Gateway::verify`] on the raw body and [`Gateway::extract`].
//!
//! Field addresses are form keys for `format = "form"` and JSON pointers (RFC 6901, `/data/from`)
//! for `format = "json"`. A JSON value may be a string or a number (gateways often send phone
//! numbers and ids as numbers); `null` counts as absent.
//!
//! The signature, when configured, is HMAC-SHA256 of the exact body bytes under the account's
//! secret, in a header, hex (any case) or standard base64, optionally after a prefix such as
//! `sha256=`; it is compared in constant time.
//!
//! Example (TOML):
//! ```toml
//! format = "json"
//! from = "/data/from"
//! to = "/data/to"
//! text = "/data/text"
//! message_id = "/data/id"
//! timestamp = { field = "/data/sent_at", format = { pattern = "%Y-%m-%d %H:%M:%S" }, utc_offset_minutes = 420 }
//! signature = { header = "X-Signature", encoding = "hex", prefix = "sha256=" }
//! ```

use base64::Engine as _;
use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use omni_channel::signature::secrets_match;
use serde::Deserialize;
use thiserror::Error;

use crate::crypto;
use crate::params::{clip, Params};

/// Most minutes a UTC offset can have (UTC±18:00).
const MAX_UTC_OFFSET_MINUTES: i32 = 18 * 60;

/// Why a mapping is invalid or a request was refused.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The mapping itself is wrong (found by [`GatewayMapping::validate`]).
    #[error("invalid gateway mapping: `{setting}` {reason}")]
    InvalidMapping {
        /// The setting at fault (`from`, `signature.header`…).
        setting: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The configured signature secret is empty.
    #[error("gateway signature secret is empty")]
    EmptySecret,
    /// The signature header is absent or empty.
    #[error("missing signature header `{header}`")]
    MissingSignature {
        /// The configured header name.
        header: String,
    },
    /// The header is not prefix + hex/base64.
    #[error("malformed signature in header `{header}`")]
    MalformedSignature {
        /// The configured header name.
        header: String,
    },
    /// The signature does not match the body.
    #[error("gateway signature does not match")]
    SignatureMismatch,
    /// A `format = "json"` body is not JSON.
    #[error("body is not valid json")]
    InvalidJson(#[source] serde_json::Error),
    /// A mapped field is absent, `null` or empty.
    #[error("missing {role} at `{field}`")]
    MissingField {
        /// Which message field (`from`, `to`, `text`, `message_id`).
        role: &'static str,
        /// The configured form key or JSON pointer.
        field: String,
    },
    /// A mapped JSON field is an object, array or boolean.
    #[error("{role} at `{field}` is not a string or number")]
    WrongType {
        /// Which message field.
        role: &'static str,
        /// The configured JSON pointer.
        field: String,
    },
    /// The timestamp does not match its configured format.
    #[error("invalid timestamp at `{field}`: {value:?}")]
    InvalidTimestamp {
        /// The configured form key or JSON pointer.
        field: String,
        /// The value received (shortened).
        value: String,
    },
}

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
    /// [`Verification::Unsigned`] and the endpoint needs another credential.
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

/// Whether a request was authenticated by its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The signature matched.
    Signed,
    /// The mapping configures no signature: nothing was checked.
    Unsigned,
}

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

/// A validated mapping, ready for requests.
#[derive(Debug, Clone)]
pub struct Gateway {
    mapping: GatewayMapping,
}

impl Gateway {
    /// The mapping it was built from.
    pub fn mapping(&self) -> &GatewayMapping {
        &self.mapping
    }

    /// The header to pass to [`Gateway::verify`], if the mapping has a signature.
    pub fn signature_header(&self) -> Option<&str> {
        self.mapping.signature.as_ref().map(|s| s.header.as_str())
    }

    /// Checks `header_value` (the value of [`Gateway::signature_header`]) against the raw
    /// `body` under `secret`.
    pub fn verify(
        &self,
        secret: &[u8],
        header_value: Option<&str>,
        body: &[u8],
    ) -> Result<Verification, GatewayError> {
        let Some(sig) = &self.mapping.signature else {
            return Ok(Verification::Unsigned);
        };
        if secret.is_empty() {
            return Err(GatewayError::EmptySecret);
        }
        let value = header_value
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| GatewayError::MissingSignature {
                header: sig.header.clone(),
            })?;
        let malformed = || GatewayError::MalformedSignature {
            header: sig.header.clone(),
        };
        let encoded = match &sig.prefix {
            Some(prefix) => value
                .get(..prefix.len())
                .filter(|head| head.eq_ignore_ascii_case(prefix))
                .and_then(|_| value.get(prefix.len()..))
                .ok_or_else(malformed)?,
            None => value,
        };
        let presented = match sig.encoding {
            SignatureEncoding::Hex => hex::decode(encoded.trim()).ok(),
            SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok(),
        }
        .ok_or_else(malformed)?;
        let expected = crypto::hmac_sha256(secret, &[body]);
        if secrets_match(&presented, &expected) {
            Ok(Verification::Signed)
        } else {
            Err(GatewayError::SignatureMismatch)
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const JSON_MAPPING: &str = r#"{
        "format": "json",
        "from": "/data/from",
        "to": "/data/to",
        "text": "/data/text",
        "message_id": "/data/id",
        "timestamp": {"field": "/data/sent_at", "format": {"pattern": "%Y-%m-%d %H:%M:%S"},
                      "utc_offset_minutes": 420},
        "signature": {"header": "X-Signature", "encoding": "hex", "prefix": "sha256="}
    }"#;

    fn json_gateway() -> Gateway {
        serde_json::from_str::<GatewayMapping>(JSON_MAPPING)
            .unwrap()
            .build()
            .unwrap()
    }

    fn form_mapping() -> GatewayMapping {
        GatewayMapping {
            format: BodyFormat::Form,
            from: "sender".into(),
            to: "receiver".into(),
            text: "message".into(),
            message_id: "id".into(),
            timestamp: Some(TimestampMapping {
                field: "ts".into(),
                format: TimestampFormat::UnixSeconds,
                utc_offset_minutes: 0,
            }),
            signature: Some(SignatureMapping {
                header: "X-Gateway-Signature".into(),
                encoding: SignatureEncoding::Base64,
                prefix: None,
            }),
        }
    }

    #[test]
    fn json_mapping_extracts_nested_fields_and_numbers() {
        let body = r#"{"data":{"from":84901234567,"to":"8085","text":"Xin chào",
            "id":"abc-1","sent_at":"2024-03-05 14:08:09"}}"#;
        let message = json_gateway().extract(body.as_bytes()).unwrap();
        assert_eq!(message.from, "84901234567");
        assert_eq!(message.to, "8085");
        assert_eq!(message.text, "Xin chào");
        assert_eq!(message.message_id, "abc-1");
        // 14:08:09 at UTC+7 is 07:08:09 UTC.
        assert_eq!(
            message.timestamp,
            DateTime::from_timestamp(1_709_622_489, 0)
        );
    }

    #[test]
    fn form_mapping_extracts_keys_and_unix_time() {
        let gateway = form_mapping().build().unwrap();
        let message = gateway
            .extract(b"sender=0901234567&receiver=8085&message=hi+there&id=42&ts=1709622489")
            .unwrap();
        assert_eq!(message.from, "0901234567");
        assert_eq!(message.text, "hi there");
        assert_eq!(
            message.timestamp,
            DateTime::from_timestamp(1_709_622_489, 0)
        );
    }

    #[test]
    fn missing_fields_are_named_in_the_error() {
        let gateway = json_gateway();
        let err = gateway
            .extract(br#"{"data":{"from":"1","text":"x","id":"1"}}"#)
            .unwrap_err();
        assert_eq!(err.to_string(), "missing to at `/data/to`");
        assert!(matches!(
            gateway.extract(br#"{"data":{"from":"1","to":"2","text":"x","id":null}}"#),
            Err(GatewayError::MissingField {
                role: "message_id",
                ..
            })
        ));
        assert!(matches!(
            gateway.extract(br#"{"data":{"from":{"n":1},"to":"2","text":"x","id":"1"}}"#),
            Err(GatewayError::WrongType { role: "from", .. })
        ));
        assert!(matches!(
            gateway.extract(b"from=1"),
            Err(GatewayError::InvalidJson(_))
        ));
        assert!(matches!(
            gateway
                .extract(br#"{"data":{"from":"1","to":"2","text":"x","id":"1","sent_at":"soon"}}"#),
            Err(GatewayError::InvalidTimestamp { .. })
        ));
        // A mapped timestamp that is absent is simply unknown.
        let message = gateway
            .extract(br#"{"data":{"from":"1","to":"2","text":"","id":"1"}}"#)
            .unwrap();
        assert_eq!((message.text.as_str(), message.timestamp), ("", None));
    }

    #[test]
    fn hex_signature_with_prefix_verifies_the_raw_body() {
        let gateway = json_gateway();
        let body = br#"{"data":{}}"#;
        let mac = hex::encode(crypto::hmac_sha256(b"s3cret", &[body]));
        assert_eq!(gateway.signature_header(), Some("X-Signature"));
        assert_eq!(
            gateway
                .verify(b"s3cret", Some(&format!("sha256={mac}")), body)
                .unwrap(),
            Verification::Signed
        );
        assert!(gateway
            .verify(
                b"s3cret",
                Some(&format!("SHA256={}", mac.to_uppercase())),
                body
            )
            .is_ok());
        assert!(matches!(
            gateway.verify(b"s3cret", Some(&format!("sha256={mac}")), b"{\"data\":1}"),
            Err(GatewayError::SignatureMismatch)
        ));
        assert!(matches!(
            gateway.verify(b"other", Some(&format!("sha256={mac}")), body),
            Err(GatewayError::SignatureMismatch)
        ));
        assert!(matches!(
            gateway.verify(b"s3cret", Some(&mac), body),
            Err(GatewayError::MalformedSignature { .. })
        ));
        assert!(matches!(
            gateway.verify(b"s3cret", None, body),
            Err(GatewayError::MissingSignature { .. })
        ));
        assert!(matches!(
            gateway.verify(b"", Some(&format!("sha256={mac}")), body),
            Err(GatewayError::EmptySecret)
        ));
    }

    #[test]
    fn base64_signature_verifies() {
        let gateway = form_mapping().build().unwrap();
        let body = b"sender=1&receiver=2&message=x&id=1";
        let mac =
            base64::engine::general_purpose::STANDARD.encode(crypto::hmac_sha256(b"k", &[body]));
        assert!(gateway.verify(b"k", Some(&mac), body).is_ok());
        assert!(matches!(
            gateway.verify(b"k", Some("!!!"), body),
            Err(GatewayError::MalformedSignature { .. })
        ));
    }

    #[test]
    fn a_mapping_without_signature_says_it_is_unsigned() {
        let mut mapping = form_mapping();
        mapping.signature = None;
        let gateway = mapping.build().unwrap();
        assert_eq!(
            gateway.verify(b"", None, b"x").unwrap(),
            Verification::Unsigned
        );
    }

    #[test]
    fn invalid_mappings_are_refused_at_build_time() {
        let with = |edit: fn(&mut GatewayMapping)| {
            let mut mapping: GatewayMapping = serde_json::from_str(JSON_MAPPING).unwrap();
            edit(&mut mapping);
            mapping.build().map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(
            with(|m| m.from = "data.from".into()),
            Err("invalid gateway mapping: `from` must be a json pointer starting with '/'".into())
        );
        assert!(with(|m| m.text = String::new()).is_err());
        assert!(with(|m| {
            if let Some(sig) = m.signature.as_mut() {
                sig.header = "X Signature".into();
            }
        })
        .is_err());
        assert!(with(|m| {
            if let Some(sig) = m.signature.as_mut() {
                sig.prefix = Some(String::new());
            }
        })
        .is_err());
        assert!(with(|m| {
            if let Some(ts) = m.timestamp.as_mut() {
                ts.format = TimestampFormat::Pattern("%Q".into());
            }
        })
        .is_err());
        assert!(with(|m| {
            if let Some(ts) = m.timestamp.as_mut() {
                ts.utc_offset_minutes = 24 * 60;
            }
        })
        .is_err());
        let mut form = form_mapping();
        form.to = "/to".into();
        assert!(form.validate().is_err());
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let with_typo = JSON_MAPPING.replace("\"message_id\"", "\"messageid\"");
        assert!(serde_json::from_str::<GatewayMapping>(&with_typo).is_err());
        let extra_in_signature = JSON_MAPPING.replace("\"prefix\"", "\"prefx\"");
        assert!(serde_json::from_str::<GatewayMapping>(&extra_in_signature).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_and_headers_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            header in proptest::option::of(".{0,80}"),
        ) {
            let json = json_gateway();
            let form = form_mapping().build().unwrap();
            let _ = json.extract(&body);
            let _ = form.extract(&body);
            let _ = json.verify(b"k", header.as_deref(), &body);
            let _ = form.verify(b"k", header.as_deref(), &body);
        }
    }
}
