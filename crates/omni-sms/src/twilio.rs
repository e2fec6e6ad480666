//! Twilio Programmable Messaging webhooks: the `X-Twilio-Signature` check, the inbound message
//! form and the status callback form.
//!
//! Signature, as Twilio's SDKs compute it:
//! - form body: `base64(HMAC-SHA1(auth token, URL + k1 + v1 + k2 + v2 …))` over the decoded
//!   form parameters sorted by key, then by value, repeated keys included;
//! - any other body (JSON): Twilio adds `bodySHA256=<hex sha256(body)>` to the URL's query and
//!   signs the URL alone, with no parameters; the hash must then match the raw body.
//!
//! The URL is the full public URL Twilio called, query included. Like the SDKs, a check also
//! accepts the URL with the scheme's default port added (when it has none) or removed (when it
//! has the default one), because Twilio is not consistent about it. Behind a TLS-terminating
//! proxy the caller must rebuild the public URL (scheme, host, port) before calling
//! [`verify_request`].

use base64::Engine as _;
use omni_channel::signature::secrets_match;
use thiserror::Error;

use crate::crypto;
use crate::params::{clip, Params};
use crate::status::{DeliveryState, StatusReport};

/// The header Twilio signs requests in.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";

/// The query parameter that marks a JSON-body request.
const BODY_HASH_PARAM: &str = "bodySHA256";

/// Why a Twilio request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TwilioError {
    /// No `X-Twilio-Signature` header.
    #[error("missing x-twilio-signature header")]
    MissingSignature,
    /// The signature does not match the URL and body under the auth token.
    #[error("twilio signature does not match")]
    SignatureMismatch,
    /// The URL's `bodySHA256` is not the SHA-256 of the body received.
    #[error("bodySHA256 does not match the body")]
    BodyHashMismatch,
    /// A field Twilio always sends is absent or empty.
    #[error("missing field `{field}`")]
    MissingField {
        /// The form key.
        field: String,
    },
    /// A field is present but not what Twilio documents.
    #[error("invalid field `{field}`: {value:?}")]
    InvalidField {
        /// The form key.
        field: String,
        /// The value received (shortened).
        value: String,
    },
    /// A `MessageStatus` this crate does not know (Twilio adds statuses over time).
    #[error("unknown message status {status:?}")]
    UnknownStatus {
        /// The status received (shortened).
        status: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

/// The signature Twilio sends for a request to `url` with `params` (the decoded form fields;
/// empty for a JSON body).
pub fn compute_signature(auth_token: &[u8], url: &str, params: &Params) -> String {
    let mut pairs: Vec<(&str, &str)> = params.iter().collect();
    pairs.sort_unstable();
    let mut data = String::from(url);
    for (key, value) in pairs {
        data.push_str(key);
        data.push_str(value);
    }
    let mac = crypto::hmac_sha1(auth_token, &[data.as_bytes()]);
    base64::engine::general_purpose::STANDARD.encode(mac)
}

/// Checks `signature` against `url` (as given, then with its default port added or removed)
/// and `params`, in constant time.
pub fn verify_signature(
    auth_token: &[u8],
    url: &str,
    params: &Params,
    signature: &str,
) -> Result<(), TwilioError> {
    let presented = signature.trim().as_bytes();
    // Every variant is checked, so the time taken does not tell which one matched.
    let matched = url_variants(url)
        .iter()
        .map(|candidate| {
            secrets_match(
                presented,
                compute_signature(auth_token, candidate, params).as_bytes(),
            )
        })
        .fold(false, |any, this| any | this);
    if matched {
        Ok(())
    } else {
        Err(TwilioError::SignatureMismatch)
    }
}

/// Verifies a whole webhook request as an axum handler has it: the full public `url`, the raw
/// `body` and the `X-Twilio-Signature` header. A URL carrying `bodySHA256` is checked as a
/// JSON-body request, any other as a form request.
pub fn verify_request(
    auth_token: &[u8],
    url: &str,
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), TwilioError> {
    let signature = signature
        .filter(|s| !s.trim().is_empty())
        .ok_or(TwilioError::MissingSignature)?;
    match Params::from_url_query(url).get(BODY_HASH_PARAM) {
        Some(expected_hash) => {
            verify_signature(auth_token, url, &Params::new(), signature)?;
            let matches = hex::decode(expected_hash.trim())
                .is_ok_and(|expected| secrets_match(&expected, &crypto::sha256(body)));
            if matches {
                Ok(())
            } else {
                Err(TwilioError::BodyHashMismatch)
            }
        }
        None => verify_signature(auth_token, url, &Params::from_form(body), signature),
    }
}

/// `url`, then the same URL with the scheme's default port added or removed, when that
/// differs. Unknown schemes and unparsable URLs give only `url` itself.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let Some((scheme, after_scheme)) = url.split_once("://") else {
        return variants;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return variants,
    };
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(authority_end);
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    // The port follows the last ':' that is not inside an IPv6 literal.
    let host_end = match host_port.rfind(']') {
        Some(bracket) => bracket + 1,
        None => 0,
    };
    let (host, port) = match host_port[host_end..].rfind(':') {
        Some(colon) => {
            let (host, port) = host_port.split_at(host_end + colon);
            (host, Some(&port[1..]))
        }
        None => (host_port, None),
    };
    if host.is_empty() {
        return variants;
    }
    match port {
        None => variants.push(format!("{scheme}://{userinfo}{host}:{default_port}{rest}")),
        Some(port) if port == default_port => {
            variants.push(format!("{scheme}://{userinfo}{host}{rest}"));
        }
        Some(_) => {}
    }
    variants
}

// ---------------------------------------------------------------------------------------------
// Inbound messages
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Field helpers
// ---------------------------------------------------------------------------------------------

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
    use proptest::prelude::*;

    const TOKEN: &[u8] = b"12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn published_params() -> Params {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .collect()
    }

    fn form(params: &Params) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish()
            .into_bytes()
    }

    #[test]
    fn published_test_vector_matches() {
        assert_eq!(
            compute_signature(TOKEN, URL, &published_params()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn parameter_order_in_the_body_does_not_matter() {
        let reversed: Params = published_params()
            .iter()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert!(verify_request(
            TOKEN,
            URL,
            &form(&reversed),
            Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")
        )
        .is_ok());
    }

    #[test]
    fn tampered_body_url_token_or_signature_fails() {
        let body = form(&published_params());
        let sig = Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(verify_request(TOKEN, URL, &body, sig).is_ok());
        let mut tampered = published_params();
        tampered.push("Extra", "1");
        assert_eq!(
            verify_request(TOKEN, URL, &form(&tampered), sig),
            Err(TwilioError::SignatureMismatch)
        );
        assert_eq!(
            verify_request(TOKEN, "https://mycompany.com/myapp.php?foo=1", &body, sig),
            Err(TwilioError::SignatureMismatch)
        );
        assert_eq!(
            verify_request(b"54321", URL, &body, sig),
            Err(TwilioError::SignatureMismatch)
        );
        assert_eq!(
            verify_request(TOKEN, URL, &body, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8")),
            Err(TwilioError::SignatureMismatch)
        );
        assert_eq!(
            verify_request(TOKEN, URL, &body, None),
            Err(TwilioError::MissingSignature)
        );
        assert_eq!(
            verify_request(TOKEN, URL, &body, Some("  ")),
            Err(TwilioError::MissingSignature)
        );
    }

    #[test]
    fn repeated_keys_are_signed_sorted_by_value() {
        let params: Params = [("b", "2"), ("a", "z"), ("a", "y")].into_iter().collect();
        // Computed independently: base64(HMAC-SHA1("12345", URL + "ay" + "az" + "b2")).
        let expected = base64::engine::general_purpose::STANDARD.encode(crypto::hmac_sha1(
            TOKEN,
            &[format!("{URL}ayazb2").as_bytes()],
        ));
        assert_eq!(compute_signature(TOKEN, URL, &params), expected);
    }

    #[test]
    fn default_port_may_be_added_or_removed() {
        let params = published_params();
        let body = form(&params);
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let signed_with_port = compute_signature(TOKEN, with_port, &params);
        // Twilio signed with :443, we rebuilt the URL without it.
        assert!(verify_request(TOKEN, URL, &body, Some(&signed_with_port)).is_ok());
        // Twilio signed without, our URL has it.
        assert!(verify_request(
            TOKEN,
            with_port,
            &body,
            Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")
        )
        .is_ok());
        // A non-default port is never dropped.
        let odd_port = "https://mycompany.com:8443/myapp.php?foo=1&bar=2";
        assert_eq!(
            verify_request(TOKEN, odd_port, &body, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")),
            Err(TwilioError::SignatureMismatch)
        );
    }

    #[test]
    fn url_variants_handle_http_userinfo_and_ipv6() {
        assert_eq!(
            url_variants("http://u:p@example.com/x"),
            vec!["http://u:p@example.com/x", "http://u:p@example.com:80/x"]
        );
        assert_eq!(
            url_variants("https://[::1]:443?a=1"),
            vec!["https://[::1]:443?a=1", "https://[::1]?a=1"]
        );
        assert_eq!(
            url_variants("ftp://example.com/"),
            vec!["ftp://example.com/"]
        );
        assert_eq!(url_variants("not a url"), vec!["not a url"]);
    }

    #[test]
    fn json_body_is_checked_by_its_hash_in_the_url() {
        let body = br#"{"MessageSid":"SM1"}"#;
        let hash = hex::encode(crypto::sha256(body));
        let url = format!("https://example.com/sms/twilio?{BODY_HASH_PARAM}={hash}");
        let signature = compute_signature(TOKEN, &url, &Params::new());
        assert!(verify_request(TOKEN, &url, body, Some(&signature)).is_ok());
        // A different body with the same (signed) URL fails on the hash.
        assert_eq!(
            verify_request(TOKEN, &url, br#"{"MessageSid":"SM2"}"#, Some(&signature)),
            Err(TwilioError::BodyHashMismatch)
        );
        // The URL is signed: changing the hash in it breaks the signature.
        let other_hash = hex::encode(crypto::sha256(b"{}"));
        let forged = format!("https://example.com/sms/twilio?{BODY_HASH_PARAM}={other_hash}");
        assert_eq!(
            verify_request(TOKEN, &forged, b"{}", Some(&signature)),
            Err(TwilioError::SignatureMismatch)
        );
    }

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

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            url in ".{0,80}",
            sig in proptest::option::of(".{0,40}"),
        ) {
            let _ = parse_inbound(&body);
            let _ = parse_status(&body);
            let _ = verify_request(TOKEN, &url, &body, sig.as_deref());
            let _ = url_variants(&url);
        }
    }
}
