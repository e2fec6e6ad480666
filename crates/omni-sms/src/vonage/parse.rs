//! What Vonage calls us with: inbound messages (one part of a multipart message included) and
//! delivery receipts, read from the request's parameters (query, form or JSON alike).

use chrono::{DateTime, NaiveDateTime, Utc};

use super::VonageError;
use crate::params::{clip, Params};
use crate::reassembly::{ConcatKey, Part};
use crate::status::{DeliveryState, StatusReport};

/// `message-timestamp` format, always UTC.
const MESSAGE_TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

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

pub(super) fn required(params: &Params, field: &'static str) -> Result<String, VonageError> {
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
        assert_eq!(
            message.message_timestamp,
            DateTime::from_timestamp(1_709_622_489, 0)
        );
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
}
