//! Vonage (Nexmo) SMS API webhooks: signed requests, inbound messages and delivery receipts.
//!
//! Vonage calls with GET (query string), POST form or POST JSON depending on the account
//! setting; collect everything with [`crate::params::Params::from_request`] and hand the
//! [`Params`] to the functions here.
//!
//! Signature (when the account has signed webhooks): drop `sig`, sort the parameters by key,
//! replace `&` and `=` inside values with `_`, join as `&k=v&k2=v2…`; `md5hash` is
//! `hex(md5(string + secret))`, the HMAC modes `hex(HMAC(secret, string))`. Vonage writes hex
//! in either case, so the comparison decodes both sides and compares bytes in constant time.
//! The signed `timestamp` (Unix seconds) allows an optional maximum age: a captured request
//! cannot be replayed later.
//!
//! When a key repeats, the first value is the one used, for fields and signature alike.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use omni_channel::signature::secrets_match;
use serde::Deserialize;
use thiserror::Error;

use crate::crypto;
use crate::params::{clip, Params};
use crate::reassembly::{ConcatKey, Part};
use crate::status::{DeliveryState, StatusReport};

/// `message-timestamp` format, always UTC.
const MESSAGE_TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Why a Vonage request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VonageError {
    /// Signed webhooks are configured but the request has no `sig`.
    #[error("missing sig parameter")]
    MissingSignature,
    /// `sig` does not match the parameters under the signature secret.
    #[error("vonage signature does not match")]
    SignatureMismatch,
    /// The signed `timestamp` is further from `now` than the configured maximum age.
    #[error("signed timestamp is {age_secs}s away from now, more than {max_age_secs}s")]
    StaleTimestamp {
        /// Distance between the timestamp and now, in seconds.
        age_secs: i64,
        /// The configured maximum, in seconds.
        max_age_secs: u64,
    },
    /// A required field is absent or empty.
    #[error("missing field `{field}`")]
    MissingField {
        /// The parameter name.
        field: &'static str,
    },
    /// A field is present but not what Vonage documents.
    #[error("invalid field `{field}`: {value:?}")]
    InvalidField {
        /// The parameter name.
        field: &'static str,
        /// The value received (shortened).
        value: String,
    },
    /// A delivery receipt `status` this crate does not know.
    #[error("unknown delivery status {status:?}")]
    UnknownStatus {
        /// The status received (shortened).
        status: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

/// The signature method set in the Vonage dashboard; config names follow Vonage's SDKs
/// (`md5hash`, `md5`, `sha1`, `sha256`, `sha512`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum SignatureMethod {
    /// `md5(string + secret)`: Vonage's legacy scheme.
    #[serde(rename = "md5hash")]
    Md5Hash,
    /// HMAC-MD5.
    #[serde(rename = "md5", alias = "hmac_md5")]
    HmacMd5,
    /// HMAC-SHA1.
    #[serde(rename = "sha1", alias = "hmac_sha1")]
    HmacSha1,
    /// HMAC-SHA256.
    #[serde(rename = "sha256", alias = "hmac_sha256")]
    HmacSha256,
    /// HMAC-SHA512.
    #[serde(rename = "sha512", alias = "hmac_sha512")]
    HmacSha512,
}

/// How an account's webhooks are signed: the method and, for replay protection, how far the
/// signed `timestamp` may be from now (`None` accepts any timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureSettings {
    /// The dashboard's signature method.
    pub method: SignatureMethod,
    /// Maximum distance between `timestamp` and now, either way (clocks drift).
    pub max_age: Option<Duration>,
}

/// The string Vonage signs: `&k=v&k2=v2…` over the parameters sorted by key, without `sig`,
/// with `&` and `=` inside values replaced by `_`.
pub fn signing_string(params: &Params) -> String {
    let mut first_values: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, value) in params.iter().filter(|(key, _)| *key != "sig") {
        first_values.entry(key).or_insert(value);
    }
    let mut out = String::new();
    for (key, value) in first_values {
        out.push('&');
        out.push_str(key);
        out.push('=');
        out.extend(
            value
                .chars()
                .map(|c| if c == '&' || c == '=' { '_' } else { c }),
        );
    }
    out
}

/// The signature Vonage sends for `params`, as lowercase hex.
pub fn sign(method: SignatureMethod, secret: &[u8], params: &Params) -> String {
    hex::encode(raw_signature(method, secret, params))
}

fn raw_signature(method: SignatureMethod, secret: &[u8], params: &Params) -> Vec<u8> {
    let data = signing_string(params);
    let data = data.as_bytes();
    match method {
        SignatureMethod::Md5Hash => crypto::md5(&[data, secret]),
        SignatureMethod::HmacMd5 => crypto::hmac_md5(secret, &[data]),
        SignatureMethod::HmacSha1 => crypto::hmac_sha1(secret, &[data]),
        SignatureMethod::HmacSha256 => crypto::hmac_sha256(secret, &[data]),
        SignatureMethod::HmacSha512 => crypto::hmac_sha512(secret, &[data]),
    }
}

/// Checks the request's `sig` (hex, any case) in constant time, then, when
/// `settings.max_age` is set, that the signed `timestamp` is within it of `now`.
pub fn verify_signature(
    settings: &SignatureSettings,
    secret: &[u8],
    params: &Params,
    now: DateTime<Utc>,
) -> Result<(), VonageError> {
    let presented = params
        .get("sig")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(VonageError::MissingSignature)?;
    let expected = raw_signature(settings.method, secret, params);
    let matches = hex::decode(presented).is_ok_and(|sig| secrets_match(&sig, &expected));
    if !matches {
        return Err(VonageError::SignatureMismatch);
    }
    if let Some(max_age) = settings.max_age {
        let raw = required(params, "timestamp")?;
        let signed_at = raw
            .parse::<i64>()
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .ok_or_else(|| VonageError::InvalidField {
                field: "timestamp",
                value: clip(&raw),
            })?;
        let age = now.signed_duration_since(signed_at).abs();
        if age > TimeDelta::from_std(max_age).unwrap_or(TimeDelta::MAX) {
            return Err(VonageError::StaleTimestamp {
                age_secs: age.num_seconds(),
                max_age_secs: max_age.as_secs(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inbound messages
// ---------------------------------------------------------------------------------------------

/// The `type` of an inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageType {
    /// GSM-7 text.
    Text,
    /// UCS-2 text.
    Unicode,
    /// Binary data (`data` and `udh` parameters, no `text`).
    Binary,
    /// A type Vonage added after this was written, kept rather than refused.
    Other(String),
}

/// Where a part sits in a multipart message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcatInfo {
    /// `concat-ref`: shared by the parts of one message.
    pub reference: String,
    /// `concat-total`.
    pub total: u16,
    /// `concat-part`, from 1.
    pub part: u16,
}

/// An inbound SMS (or one part of a multipart SMS). Addresses are as Vonage wrote them
/// (international digits without `+`); use [`crate::phone::Address::parse`] to normalize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VonageInbound {
    /// The customer's number.
    pub msisdn: String,
    /// Our number it was sent to.
    pub to: String,
    /// Vonage's id of this message (of this part, for multipart): the dedupe key.
    pub message_id: String,
    /// The text; empty for binary messages.
    pub text: String,
    /// `type`, `text` when absent.
    pub kind: MessageType,
    /// The first word of the text, upper-cased by Vonage.
    pub keyword: Option<String>,
    /// When Vonage received it.
    pub message_timestamp: Option<DateTime<Utc>>,
    /// Present for a part of a multipart message: reassemble before publishing.
    pub concat: Option<ConcatInfo>,
}

impl VonageInbound {
    /// Reads an inbound message. `msisdn`, `to`, `messageId` are required, and `text` unless
    /// `type` is `binary`; `concat-ref`, `concat-total` and `concat-part` are required when
    /// `concat` is `true` (or any of them is present), with `1 <= part <= total`.
    pub fn from_params(params: &Params) -> Result<Self, VonageError> {
        let kind = match params.get("type").map(str::trim) {
            None | Some("") | Some("text") => MessageType::Text,
            Some("unicode") => MessageType::Unicode,
            Some("binary") => MessageType::Binary,
            Some(other) => MessageType::Other(clip(other)),
        };
        let text = match (params.get("text"), &kind) {
            (Some(text), _) => text.to_owned(),
            (None, MessageType::Binary) => String::new(),
            (None, _) => return Err(VonageError::MissingField { field: "text" }),
        };
        let message_timestamp = optional(params, "message-timestamp")
            .map(|raw| {
                NaiveDateTime::parse_from_str(&raw, MESSAGE_TIMESTAMP_FORMAT)
                    .map(|naive| naive.and_utc())
                    .map_err(|_| VonageError::InvalidField {
                        field: "message-timestamp",
                        value: clip(&raw),
                    })
            })
            .transpose()?;
        Ok(Self {
            msisdn: required(params, "msisdn")?,
            to: required(params, "to")?,
            message_id: required(params, "messageId")?,
            text,
            kind,
            keyword: optional(params, "keyword"),
            message_timestamp,
            concat: concat_info(params)?,
        })
    }

    /// This message as a part for [`crate::reassembly::Reassembler`], when it is one; keyed by
    /// (msisdn, to, concat-ref).
    pub fn to_part(&self) -> Option<Part> {
        let concat = self.concat.as_ref()?;
        Some(Part {
            key: ConcatKey {
                sender: self.msisdn.clone(),
                to: self.to.clone(),
                reference: concat.reference.clone(),
            },
            number: concat.part,
            total: concat.total,
            message_id: self.message_id.clone(),
            text: self.text.clone(),
        })
    }
}

fn concat_info(params: &Params) -> Result<Option<ConcatInfo>, VonageError> {
    let flagged = params
        .get("concat")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let any_field = ["concat-ref", "concat-total", "concat-part"]
        .iter()
        .any(|f| params.get(f).is_some());
    if !flagged && !any_field {
        return Ok(None);
    }
    let reference = required(params, "concat-ref")?;
    let total = number(params, "concat-total")?;
    let part = number(params, "concat-part")?;
    if total == 0 {
        return Err(VonageError::InvalidField {
            field: "concat-total",
            value: total.to_string(),
        });
    }
    if part == 0 || part > total {
        return Err(VonageError::InvalidField {
            field: "concat-part",
            value: part.to_string(),
        });
    }
    Ok(Some(ConcatInfo {
        reference,
        total,
        part,
    }))
}

// ---------------------------------------------------------------------------------------------
// Delivery receipts
// ---------------------------------------------------------------------------------------------

/// Reads a delivery receipt (`messageId`, `status`, `err-code`, `client-ref`). Mapping:
/// `delivered` → delivered; `accepted`, `buffered` → sent (the carrier has it); `expired`,
/// `failed`, `rejected` → failed with `err-code`; `unknown` → pending (no news). Any other
/// status is [`VonageError::UnknownStatus`].
pub fn parse_delivery_receipt(params: &Params) -> Result<StatusReport, VonageError> {
    let message_id = required(params, "messageId")?;
    let status = required(params, "status")?;
    let code = optional(params, "err-code");
    let state = match status.to_ascii_lowercase().as_str() {
        "delivered" => DeliveryState::Delivered,
        "accepted" | "buffered" => DeliveryState::Sent,
        "expired" | "failed" | "rejected" => DeliveryState::Failed { code },
        "unknown" => DeliveryState::Pending,
        _ => {
            return Err(VonageError::UnknownStatus {
                status: clip(&status),
            })
        }
    };
    Ok(StatusReport {
        provider_message_id: message_id,
        state,
        provider_status: status,
        client_ref: optional(params, "client-ref"),
    })
}

// ---------------------------------------------------------------------------------------------
// Field helpers
// ---------------------------------------------------------------------------------------------

fn required(params: &Params, field: &'static str) -> Result<String, VonageError> {
    optional(params, field).ok_or(VonageError::MissingField { field })
}

fn optional(params: &Params, field: &str) -> Option<String> {
    params
        .get(field)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn number(params: &Params, field: &'static str) -> Result<u16, VonageError> {
    let raw = required(params, field)?;
    raw.parse().map_err(|_| VonageError::InvalidField {
        field,
        value: clip(&raw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vector_params() -> Params {
        [("a", "1"), ("b", "2"), ("timestamp", "1461605396")]
            .into_iter()
            .collect()
    }

    fn settings(method: SignatureMethod) -> SignatureSettings {
        SignatureSettings {
            method,
            max_age: None,
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn signed(method: SignatureMethod, mut params: Params) -> Params {
        let sig = sign(method, b"secret", &params);
        params.push("sig", sig);
        params
    }

    #[test]
    fn published_md5hash_vector_matches() {
        assert_eq!(
            sign(SignatureMethod::Md5Hash, b"secret", &vector_params()),
            "6af838ef94998832dbfc29020b564830"
        );
    }

    #[test]
    fn hmac_modes_match_independently_computed_vectors() {
        // Computed with Python 3: hmac.new(b"secret", b"&a=1&b=2&timestamp=1461605396",
        // "<md5|sha1|sha256|sha512>").hexdigest()
        let cases = [
            (SignatureMethod::HmacMd5, "c15c21ced558c93a226c305f58f902f2"),
            (
                SignatureMethod::HmacSha1,
                "3e19a4e6880fdc2c1426bfd0587c98b9532f0210",
            ),
            (
                SignatureMethod::HmacSha256,
                "a321e824b9b816be7c3f28859a31749a098713d39f613c80d455bbaffae1cd24",
            ),
            (
                SignatureMethod::HmacSha512,
                "812a18f76680fa0fe1b8bd9ee1625466ceb1bd96242e4d050d2cfd9a7b40166c\
                 63ed26ec9702168781b6edcf1633db8ff95af9341701004eec3fcf9550572ee8",
            ),
        ];
        for (method, expected) in cases {
            assert_eq!(
                sign(method, b"secret", &vector_params()),
                expected,
                "{method:?}"
            );
        }
    }

    #[test]
    fn signing_string_sorts_drops_sig_and_masks_separators() {
        let params: Params = [("text", "a=b&c"), ("sig", "x"), ("msisdn", "84")]
            .into_iter()
            .collect();
        assert_eq!(signing_string(&params), "&msisdn=84&text=a_b_c");
    }

    #[test]
    fn every_method_verifies_its_own_signature_in_any_case() {
        for method in [
            SignatureMethod::Md5Hash,
            SignatureMethod::HmacMd5,
            SignatureMethod::HmacSha1,
            SignatureMethod::HmacSha256,
            SignatureMethod::HmacSha512,
        ] {
            let params = signed(method, vector_params());
            assert_eq!(
                verify_signature(&settings(method), b"secret", &params, at(0)),
                Ok(())
            );
            let mut upper = vector_params();
            upper.push(
                "sig",
                sign(method, b"secret", &vector_params()).to_uppercase(),
            );
            assert_eq!(
                verify_signature(&settings(method), b"secret", &upper, at(0)),
                Ok(())
            );
            assert_eq!(
                verify_signature(&settings(method), b"other", &params, at(0)),
                Err(VonageError::SignatureMismatch)
            );
        }
    }

    #[test]
    fn tampering_or_missing_sig_is_refused() {
        let method = SignatureMethod::HmacSha256;
        let mut tampered = signed(method, vector_params());
        tampered.push("text", "injected");
        assert_eq!(
            verify_signature(&settings(method), b"secret", &tampered, at(0)),
            Err(VonageError::SignatureMismatch)
        );
        assert_eq!(
            verify_signature(&settings(method), b"secret", &vector_params(), at(0)),
            Err(VonageError::MissingSignature)
        );
        let mut garbage = vector_params();
        garbage.push("sig", "not hex");
        assert_eq!(
            verify_signature(&settings(method), b"secret", &garbage, at(0)),
            Err(VonageError::SignatureMismatch)
        );
    }

    #[test]
    fn max_age_refuses_old_and_far_future_timestamps() {
        let method = SignatureMethod::HmacSha256;
        let replay_safe = SignatureSettings {
            method,
            max_age: Some(Duration::from_secs(300)),
        };
        let params = signed(method, vector_params());
        let ts = 1_461_605_396;
        assert_eq!(
            verify_signature(&replay_safe, b"secret", &params, at(ts + 300)),
            Ok(())
        );
        assert_eq!(
            verify_signature(&replay_safe, b"secret", &params, at(ts + 301)),
            Err(VonageError::StaleTimestamp {
                age_secs: 301,
                max_age_secs: 300
            })
        );
        assert!(matches!(
            verify_signature(&replay_safe, b"secret", &params, at(ts - 301)),
            Err(VonageError::StaleTimestamp { .. })
        ));
        let no_timestamp = signed(method, [("a", "1")].into_iter().collect());
        assert_eq!(
            verify_signature(&replay_safe, b"secret", &no_timestamp, at(ts)),
            Err(VonageError::MissingField { field: "timestamp" })
        );
    }

    #[test]
    fn signature_methods_deserialize_from_sdk_names() {
        let method: SignatureMethod = serde_json::from_str(r#""sha256""#).unwrap();
        assert_eq!(method, SignatureMethod::HmacSha256);
        let method: SignatureMethod = serde_json::from_str(r#""md5hash""#).unwrap();
        assert_eq!(method, SignatureMethod::Md5Hash);
        assert!(serde_json::from_str::<SignatureMethod>(r#""sha3""#).is_err());
    }

    #[test]
    fn inbound_query_becomes_a_typed_message() {
        let params = Params::from_query(
            "msisdn=84901234567&to=8085&messageId=0A0000000123ABCD1&text=Xin+ch%C3%A0o\
&type=unicode&keyword=XIN&message-timestamp=2024-03-05+07%3A08%3A09",
        );
        let message = VonageInbound::from_params(&params).unwrap();
        assert_eq!(message.msisdn, "84901234567");
        assert_eq!(message.to, "8085");
        assert_eq!(message.message_id, "0A0000000123ABCD1");
        assert_eq!(message.text, "Xin chào");
        assert_eq!(message.kind, MessageType::Unicode);
        assert_eq!(message.keyword.as_deref(), Some("XIN"));
        assert_eq!(message.message_timestamp, Some(at(1_709_622_489)));
        assert_eq!(message.concat, None);
        assert_eq!(message.to_part(), None);
    }

    #[test]
    fn inbound_json_with_concat_becomes_a_part() {
        let body = br#"{"msisdn":"447700900001","to":"447700900000","messageId":"M2",
            "text":"world","type":"text","concat":"true","concat-ref":"12",
            "concat-total":"2","concat-part":"2"}"#;
        let params = Params::from_request("", Some("application/json"), body).unwrap();
        let message = VonageInbound::from_params(&params).unwrap();
        assert_eq!(
            message.concat,
            Some(ConcatInfo {
                reference: "12".into(),
                total: 2,
                part: 2
            })
        );
        let part = message.to_part().unwrap();
        assert_eq!(part.key.reference, "12");
        assert_eq!(part.key.sender, "447700900001");
        assert_eq!((part.number, part.total), (2, 2));
        assert_eq!(part.message_id, "M2");
    }

    #[test]
    fn inbound_errors_name_the_field() {
        let missing = |query: &str| VonageInbound::from_params(&Params::from_query(query));
        assert_eq!(
            missing("to=1&messageId=M&text=x"),
            Err(VonageError::MissingField { field: "msisdn" })
        );
        assert_eq!(
            missing("msisdn=1&to=1&messageId=M"),
            Err(VonageError::MissingField { field: "text" })
        );
        assert!(missing("msisdn=1&to=1&messageId=M&type=binary").is_ok());
        assert!(matches!(
            missing("msisdn=1&to=1&messageId=M&text=x&message-timestamp=yesterday"),
            Err(VonageError::InvalidField {
                field: "message-timestamp",
                ..
            })
        ));
        assert_eq!(
            missing("msisdn=1&to=1&messageId=M&text=x&concat=true&concat-ref=1&concat-total=2"),
            Err(VonageError::MissingField {
                field: "concat-part"
            })
        );
        assert!(matches!(
            missing(
                "msisdn=1&to=1&messageId=M&text=x&concat=true&concat-ref=1&concat-total=2&concat-part=3"
            ),
            Err(VonageError::InvalidField {
                field: "concat-part",
                ..
            })
        ));
    }

    #[test]
    fn delivery_receipts_map_to_the_shared_states() {
        let state = |status: &str| {
            parse_delivery_receipt(&Params::from_query(&format!(
                "messageId=M1&status={status}&err-code=5&client-ref=evt-1"
            )))
            .map(|r| r.state)
        };
        assert_eq!(state("delivered"), Ok(DeliveryState::Delivered));
        assert_eq!(state("accepted"), Ok(DeliveryState::Sent));
        assert_eq!(state("buffered"), Ok(DeliveryState::Sent));
        assert_eq!(state("unknown"), Ok(DeliveryState::Pending));
        for failed in ["expired", "failed", "rejected"] {
            assert_eq!(
                state(failed),
                Ok(DeliveryState::Failed {
                    code: Some("5".into())
                })
            );
        }
        assert!(matches!(
            state("lost"),
            Err(VonageError::UnknownStatus { .. })
        ));
        let report = parse_delivery_receipt(&Params::from_query(
            "messageId=M1&status=delivered&client-ref=evt-1",
        ))
        .unwrap();
        assert_eq!(report.provider_message_id, "M1");
        assert_eq!(report.client_ref.as_deref(), Some("evt-1"));
        assert_eq!(
            parse_delivery_receipt(&Params::from_query("status=delivered")),
            Err(VonageError::MissingField { field: "messageId" })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_requests_never_panic(
            query in ".{0,120}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            json in any::<bool>(),
            now in any::<i64>(),
        ) {
            let ct = if json { Some("application/json") } else { None };
            if let Ok(params) = Params::from_request(&query, ct, &body) {
                let _ = VonageInbound::from_params(&params);
                let _ = parse_delivery_receipt(&params);
                let now = DateTime::from_timestamp(now % 10_000_000_000, 0).unwrap_or_default();
                let replay_safe = SignatureSettings {
                    method: SignatureMethod::HmacSha256,
                    max_age: Some(Duration::MAX),
                };
                let _ = verify_signature(&replay_safe, b"secret", &params, now);
            }
        }
    }
}
