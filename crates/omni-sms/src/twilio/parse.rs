//! The forms Twilio posts: an inbound SMS/MMS and a message status callback, read from the
//! decoded parameters into typed values (the raw-body parsers are for tests and tools).

use super::TwilioError;
use crate::params::{clip, Params};
use crate::status::{DeliveryState, StatusReport};

/// One media item of an MMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioMedia {
    /// Where Twilio serves the file (fetching it may need the account's credentials).
    pub url: String,
    /// Its MIME type, when Twilio gave one.
    pub content_type: Option<String>,
}

/// An inbound SMS or MMS as Twilio posts it. Addresses are kept exactly as Twilio wrote them
/// (E.164 for phone numbers); use [`crate::phone::Address::parse`] to classify them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioInbound {
    /// Twilio's id of the message: the dedupe key.
    pub message_sid: String,
    /// The account it arrived on, to find the tenant and check it matches the credentials.
    pub account_sid: String,
    /// The messaging service, when the number belongs to one.
    pub messaging_service_sid: Option<String>,
    /// The customer's address.
    pub from: String,
    /// Our number (or short code) it was sent to.
    pub to: String,
    /// The text; empty for a media-only MMS (or when Twilio left `Body` out).
    pub body: String,
    /// Segments the customer's message used, when Twilio says.
    pub num_segments: Option<u32>,
    /// Media items, in Twilio's order.
    pub media: Vec<TwilioMedia>,
    /// Every other parameter (`FromCity`, `ApiVersion`, new ones Twilio adds…), in order.
    pub other: Vec<(String, String)>,
}

impl TwilioInbound {
    /// Reads the decoded form parameters. `MessageSid`, `AccountSid`, `From` and `To` are
    /// required; `MediaUrl{N}` must exist for every N below `NumMedia`.
    pub fn from_params(params: &Params) -> Result<Self, TwilioError> {
        let num_media = optional_number(params, "NumMedia")?.unwrap_or(0);
        let mut media = Vec::new();
        for index in 0..num_media {
            let url_key = format!("MediaUrl{index}");
            let url = required(params, &url_key)?;
            media.push(TwilioMedia {
                url,
                content_type: optional(params, &format!("MediaContentType{index}")),
            });
        }
        let other = params
            .iter()
            .filter(|(key, _)| !is_known_inbound_key(key))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Self {
            message_sid: required(params, "MessageSid")?,
            account_sid: required(params, "AccountSid")?,
            messaging_service_sid: optional(params, "MessagingServiceSid"),
            from: required(params, "From")?,
            to: required(params, "To")?,
            body: params.get("Body").unwrap_or_default().to_owned(),
            num_segments: optional_number(params, "NumSegments")?,
            media,
            other,
        })
    }
}

/// Parses an inbound message's raw form body.
pub fn parse_inbound(body: &[u8]) -> Result<TwilioInbound, TwilioError> {
    TwilioInbound::from_params(&Params::from_form(body))
}

fn is_known_inbound_key(key: &str) -> bool {
    let indexed = |prefix: &str| {
        key.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!(
        key,
        "MessageSid"
            | "AccountSid"
            | "MessagingServiceSid"
            | "From"
            | "To"
            | "Body"
            | "NumMedia"
            | "NumSegments"
    ) || indexed("MediaUrl")
        || indexed("MediaContentType")
}

// ---------------------------------------------------------------------------------------------
// Status callbacks
// ---------------------------------------------------------------------------------------------

/// Reads a status callback's decoded form parameters (`MessageSid`, `MessageStatus`,
/// `ErrorCode`). Mapping: `queued`, `sending`, `accepted`, `scheduled` → pending; `sent` →
/// sent; `delivered` → delivered; `read` → read; `undelivered`, `failed`, `canceled` → failed
/// with `ErrorCode`. Any other status is [`TwilioError::UnknownStatus`].
pub fn status_from_params(params: &Params) -> Result<StatusReport, TwilioError> {
    let message_sid = required(params, "MessageSid")?;
    let status = required(params, "MessageStatus")?;
    let code = optional(params, "ErrorCode");
    let state = match status.to_ascii_lowercase().as_str() {
        "queued" | "sending" | "accepted" | "scheduled" => DeliveryState::Pending,
        "sent" => DeliveryState::Sent,
        "delivered" => DeliveryState::Delivered,
        "read" => DeliveryState::Read,
        "undelivered" | "failed" | "canceled" => DeliveryState::Failed { code },
        _ => {
            return Err(TwilioError::UnknownStatus {
                status: clip(&status),
            })
        }
    };
    Ok(StatusReport {
        provider_message_id: message_sid,
        state,
        provider_status: status,
        client_ref: None,
    })
}

/// Parses a status callback's raw form body.
pub fn parse_status(body: &[u8]) -> Result<StatusReport, TwilioError> {
    status_from_params(&Params::from_form(body))
}

fn required(params: &Params, field: &str) -> Result<String, TwilioError> {
    optional(params, field).ok_or_else(|| TwilioError::MissingField {
        field: field.to_owned(),
    })
}

fn optional(params: &Params, field: &str) -> Option<String> {
    params
        .get(field)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn optional_number(params: &Params, field: &str) -> Result<Option<u32>, TwilioError> {
    optional(params, field)
        .map(|value| {
            value.parse().map_err(|_| TwilioError::InvalidField {
                field: field.to_owned(),
                value: clip(&value),
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_form_becomes_a_typed_message_with_media_and_unknown_params() {
        let body = b"MessageSid=SM123&AccountSid=AC1&From=%2B14155550100&To=%2B14155550199\
&Body=Hello+there&NumMedia=2&NumSegments=1&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm0\
&MediaContentType0=image%2Fjpeg&MediaUrl1=https%3A%2F%2Fapi.twilio.com%2Fm1&FromCity=HANOI";
        let message = parse_inbound(body).unwrap();
        assert_eq!(message.message_sid, "SM123");
        assert_eq!(message.account_sid, "AC1");
        assert_eq!(message.from, "+14155550100");
        assert_eq!(message.to, "+14155550199");
        assert_eq!(message.body, "Hello there");
        assert_eq!(message.num_segments, Some(1));
        assert_eq!(
            message.media,
            vec![
                TwilioMedia {
                    url: "https://api.twilio.com/m0".into(),
                    content_type: Some("image/jpeg".into())
                },
                TwilioMedia {
                    url: "https://api.twilio.com/m1".into(),
                    content_type: None
                },
            ]
        );
        assert_eq!(message.other, vec![("FromCity".into(), "HANOI".into())]);
    }

    #[test]
    fn inbound_without_required_fields_names_the_field() {
        assert_eq!(
            parse_inbound(b"AccountSid=AC1&From=a&To=b"),
            Err(TwilioError::MissingField {
                field: "MessageSid".into()
            })
        );
        assert_eq!(
            parse_inbound(b"MessageSid=SM1&AccountSid=AC1&From=a&To=b&NumMedia=1"),
            Err(TwilioError::MissingField {
                field: "MediaUrl0".into()
            })
        );
        assert!(matches!(
            parse_inbound(b"MessageSid=SM1&AccountSid=AC1&From=a&To=b&NumMedia=x"),
            Err(TwilioError::InvalidField { .. })
        ));
        let media_only = parse_inbound(b"MessageSid=SM1&AccountSid=AC1&From=a&To=b").unwrap();
        assert_eq!(media_only.body, "");
    }

    #[test]
    fn status_callbacks_map_to_the_shared_states() {
        let state = |status: &str| {
            parse_status(
                format!("MessageSid=SM1&MessageStatus={status}&ErrorCode=30008").as_bytes(),
            )
            .map(|r| r.state)
        };
        assert_eq!(state("queued"), Ok(DeliveryState::Pending));
        assert_eq!(state("scheduled"), Ok(DeliveryState::Pending));
        assert_eq!(state("sent"), Ok(DeliveryState::Sent));
        assert_eq!(state("delivered"), Ok(DeliveryState::Delivered));
        assert_eq!(state("read"), Ok(DeliveryState::Read));
        assert_eq!(
            state("undelivered"),
            Ok(DeliveryState::Failed {
                code: Some("30008".into())
            })
        );
        assert!(matches!(
            state("canceled"),
            Ok(DeliveryState::Failed { .. })
        ));
        assert!(matches!(
            state("teleported"),
            Err(TwilioError::UnknownStatus { .. })
        ));
        let report = parse_status(b"MessageSid=SM9&MessageStatus=failed").unwrap();
        assert_eq!(report.provider_message_id, "SM9");
        assert_eq!(report.provider_status, "failed");
        assert_eq!(report.state, DeliveryState::Failed { code: None });
        assert_eq!(
            parse_status(b"MessageStatus=sent"),
            Err(TwilioError::MissingField {
                field: "MessageSid".into()
            })
        );
    }
}
