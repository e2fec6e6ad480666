//! eSMS.vn (Vietnamese brandname SMS): the send request body, its reply and the delivery
//! callback. Pure: the caller POSTs [`SendBody`] as JSON to [`SEND_URL`] and hands the answer
//! to [`parse_send_reply`].
//!
//! Decisions:
//! - Phone numbers go in the national form with trunk `0` (`0901234567`), the form eSMS's
//!   documentation and callbacks use; eSMS is a domestic gateway, so a number outside +84 is
//!   refused with [`EsmsError::NotVietnamese`] rather than sent to be rejected.
//! - `Content` is the NFC text measured by [`crate::encoding::layout`], and `IsUnicode` is `1`
//!   exactly when that text needs UCS-2; [`SendBody::layout`] gives the segment count.
//! - `RequestId` is the caller's outbound event id: eSMS refuses a second request with the same
//!   id, so a retried send cannot reach the customer twice. eSMS echoes it in callbacks, where
//!   it comes back as [`StatusReport::client_ref`].
//! - A reply `CodeResult` of `100` means accepted, even without `SMSID` (a missing id only
//!   means callbacks cannot be matched by it; reporting a failure would invite a resend).
//!   Anything else is [`EsmsError::Rejected`] with the code.
//! - The delivery callback (HTTP GET, per eSMS's "Callback Url" documentation page) carries
//!   `SMSID`, `SendStatus`, `SendSuccess`, `SendFailed`, `RequestId`. Those fields and the
//!   meaning of the numbers are not confirmed against real traffic, so keys are matched
//!   case-insensitively (`status` is accepted for `SendStatus`) and the mapping is:
//!   `1` (awaiting approval), `2` (waiting to send), `3` (sending, older docs) → pending;
//!   `7` (handed to the telco, awaiting its report) → sent; `4` (rejected), `6` (deleted,
//!   older docs) → failed with that code; `5` (processed) → delivered when `SendSuccess > 0`,
//!   failed when only `SendFailed > 0`, otherwise sent. Other numbers are
//!   [`EsmsError::UnknownStatus`]. With one phone per request the counts are 0 or 1.

use omni_core::Secret;
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

use crate::encoding::{layout, SmsLayout};
use crate::params::{clip, json_scalar_text, Params};
use crate::phone::PhoneNumber;
use crate::status::{DeliveryState, StatusReport};

/// The JSON send endpoint.
pub const SEND_URL: &str =
    "https://rest.esms.vn/MainService.svc/json/SendMultipleMessage_V4_post_json/";

/// `CodeResult` of an accepted request.
pub const ACCEPTED_CODE: &str = "100";

/// Viet Nam's country calling code: the only destinations eSMS takes here.
const VIETNAM: &str = "84";

/// Why a send could not be built, or eSMS refused it, or a callback is unreadable.
#[derive(Debug, Error)]
pub enum EsmsError {
    /// The recipient is not a +84 number.
    #[error("esms only sends to +84 numbers")]
    NotVietnamese,
    /// Nothing to send.
    #[error("message content is empty")]
    EmptyContent,
    /// A brandname message without a brandname.
    #[error("brandname messages need a brandname")]
    MissingBrandname,
    /// No request id: the send would lose its server-side dedupe.
    #[error("request id is empty")]
    MissingRequestId,
    /// The reply is not JSON.
    #[error("esms reply is not valid json")]
    InvalidJson(#[source] serde_json::Error),
    /// eSMS refused the request.
    #[error("esms refused the request with code {code}")]
    Rejected {
        /// `CodeResult` (e.g. `101` bad credentials, `103` balance, `104` brandname).
        code: String,
        /// `ErrorMessage`, when given (shortened).
        message: Option<String>,
    },
    /// A required field of a reply or callback is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// The field name.
        field: &'static str,
    },
    /// A callback status this crate does not know.
    #[error("unknown esms send status {status:?}")]
    UnknownStatus {
        /// The status received (shortened).
        status: String,
    },
}

/// An eSMS account's API credentials.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsmsCredentials {
    /// `ApiKey`.
    pub api_key: Secret,
    /// `SecretKey`.
    pub secret_key: Secret,
}

/// `SmsType`: which eSMS product carries the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmsType {
    /// `2`: customer-care message from a registered brandname.
    BrandnameCare,
    /// `8`: message from an eSMS fixed number (no brandname).
    FixedNumber,
}

impl SmsType {
    /// The `SmsType` value.
    pub fn code(self) -> &'static str {
        match self {
            Self::BrandnameCare => "2",
            Self::FixedNumber => "8",
        }
    }
}

/// What to send, in the caller's terms.
#[derive(Debug, Clone, Copy)]
pub struct SendRequest<'a> {
    /// The recipient.
    pub to: &'a PhoneNumber,
    /// The text, any normalization.
    pub text: &'a str,
    /// The product.
    pub sms_type: SmsType,
    /// The registered brandname (required for [`SmsType::BrandnameCare`], ignored otherwise).
    pub brandname: Option<&'a str>,
    /// `Sandbox=1`: eSMS checks the request but delivers nothing.
    pub sandbox: bool,
    /// The outbound event id, sent as `RequestId`.
    pub request_id: &'a str,
    /// Where eSMS should call back with delivery status.
    pub callback_url: Option<&'a str>,
}

/// The JSON body of `SendMultipleMessage_V4_post_json`. Serialize it as the request body;
/// `Debug` never shows the credentials.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendBody {
    #[serde(serialize_with = "expose")]
    api_key: Secret,
    #[serde(serialize_with = "expose")]
    secret_key: Secret,
    phone: String,
    content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    brandname: Option<String>,
    sms_type: &'static str,
    is_unicode: &'static str,
    sandbox: &'static str,
    request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<String>,
    #[serde(skip)]
    layout: SmsLayout,
}

impl SendBody {
    /// The layout of the content: encoding and segments, for the delivery event.
    pub fn layout(&self) -> &SmsLayout {
        &self.layout
    }

    /// The phone number as sent (national form).
    pub fn phone(&self) -> &str {
        &self.phone
    }
}

fn expose<S: Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}

/// Builds the send body (rules in the module docs).
pub fn build_send_body(
    credentials: &EsmsCredentials,
    request: &SendRequest<'_>,
) -> Result<SendBody, EsmsError> {
    let phone = request
        .to
        .national(VIETNAM)
        .ok_or(EsmsError::NotVietnamese)?;
    let measured = layout(request.text);
    if measured.text.trim().is_empty() {
        return Err(EsmsError::EmptyContent);
    }
    let request_id = request.request_id.trim();
    if request_id.is_empty() {
        return Err(EsmsError::MissingRequestId);
    }
    let brandname = match request.sms_type {
        SmsType::BrandnameCare => Some(
            request
                .brandname
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .ok_or(EsmsError::MissingBrandname)?
                .to_owned(),
        ),
        SmsType::FixedNumber => None,
    };
    Ok(SendBody {
        api_key: credentials.api_key.clone(),
        secret_key: credentials.secret_key.clone(),
        phone,
        content: measured.text.clone(),
        brandname,
        sms_type: request.sms_type.code(),
        is_unicode: if measured.encoding.is_unicode() {
            "1"
        } else {
            "0"
        },
        sandbox: if request.sandbox { "1" } else { "0" },
        request_id: request_id.to_owned(),
        callback_url: request.callback_url.map(str::to_owned),
        layout: measured,
    })
}

/// An accepted send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAccepted {
    /// eSMS's id for the message (`SMSID`), the key of its delivery callbacks.
    pub sms_id: Option<String>,
}

/// Reads the reply to a send: `CodeResult` `100` (string or number) is accepted, anything
/// else [`EsmsError::Rejected`].
pub fn parse_send_reply(body: &[u8]) -> Result<SendAccepted, EsmsError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(EsmsError::InvalidJson)?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(json_scalar_text)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let code = field("CodeResult").ok_or(EsmsError::MissingField {
        field: "CodeResult",
    })?;
    if code != ACCEPTED_CODE {
        return Err(EsmsError::Rejected {
            code: clip(&code),
            message: field("ErrorMessage").map(|m| clip(&m)),
        });
    }
    Ok(SendAccepted {
        sms_id: field("SMSID"),
    })
}

/// Reads a delivery callback's parameters (collect them with
/// [`Params::from_request`]; eSMS calls back with GET). Mapping in the module docs.
pub fn parse_delivery_callback(params: &Params) -> Result<StatusReport, EsmsError> {
    let get = |key: &str| {
        params
            .get_ignore_case(key)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let sms_id = get("SMSID").ok_or(EsmsError::MissingField { field: "SMSID" })?;
    let status = get("SendStatus")
        .or_else(|| get("status"))
        .ok_or(EsmsError::MissingField {
            field: "SendStatus",
        })?;
    let count = |key: &str| get(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let state = match status {
        "1" | "2" | "3" => DeliveryState::Pending,
        "7" => DeliveryState::Sent,
        "4" | "6" => DeliveryState::Failed {
            code: Some(status.to_owned()),
        },
        "5" if count("SendSuccess") > 0 => DeliveryState::Delivered,
        "5" if count("SendFailed") > 0 => DeliveryState::Failed { code: None },
        "5" => DeliveryState::Sent,
        other => {
            return Err(EsmsError::UnknownStatus {
                status: clip(other),
            })
        }
    };
    Ok(StatusReport {
        provider_message_id: sms_id.to_owned(),
        state,
        provider_status: status.to_owned(),
        client_ref: get("RequestId").map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn credentials() -> EsmsCredentials {
        EsmsCredentials {
            api_key: Secret::new("KEY"),
            secret_key: Secret::new("SECRET"),
        }
    }

    fn number(input: &str) -> PhoneNumber {
        PhoneNumber::parse(input, "84").unwrap()
    }

    fn request<'a>(to: &'a PhoneNumber, text: &'a str) -> SendRequest<'a> {
        SendRequest {
            to,
            text,
            sms_type: SmsType::BrandnameCare,
            brandname: Some("OMNI CARE"),
            sandbox: false,
            request_id: "0190f0c2-0000-7000-8000-000000000001",
            callback_url: Some("https://example.com/sms/esms/callback"),
        }
    }

    #[test]
    fn brandname_body_has_every_documented_field() {
        let to = number("+84901234567");
        let body = build_send_body(&credentials(), &request(&to, "Đơn hàng đã được giao")).unwrap();
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ApiKey": "KEY",
                "SecretKey": "SECRET",
                "Phone": "0901234567",
                "Content": "Đơn hàng đã được giao",
                "Brandname": "OMNI CARE",
                "SmsType": "2",
                "IsUnicode": "1",
                "Sandbox": "0",
                "RequestId": "0190f0c2-0000-7000-8000-000000000001",
                "CallbackUrl": "https://example.com/sms/esms/callback",
            })
        );
        assert_eq!(body.layout().segments, 1);
        assert_eq!(body.phone(), "0901234567");
    }

    #[test]
    fn gsm_text_is_not_unicode_and_fixed_number_has_no_brandname() {
        let to = number("0901234567");
        let mut fixed = request(&to, "Your order has shipped");
        fixed.sms_type = SmsType::FixedNumber;
        fixed.sandbox = true;
        fixed.callback_url = None;
        let json = serde_json::to_value(build_send_body(&credentials(), &fixed).unwrap()).unwrap();
        assert_eq!(json["IsUnicode"], "0");
        assert_eq!(json["SmsType"], "8");
        assert_eq!(json["Sandbox"], "1");
        assert!(json.get("Brandname").is_none());
        assert!(json.get("CallbackUrl").is_none());
    }

    #[test]
    fn content_is_sent_in_nfc() {
        let to = number("0901234567");
        let decomposed = "Xin cha\u{300}o";
        let body = build_send_body(&credentials(), &request(&to, decomposed)).unwrap();
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["Content"], "Xin chào");
        assert_eq!(json["IsUnicode"], "0", "à is in GSM-7 once composed");
    }

    #[test]
    fn invalid_sends_are_refused_before_calling_esms() {
        let vn = number("0901234567");
        let us = number("+14158675309");
        assert!(matches!(
            build_send_body(&credentials(), &request(&us, "hi")),
            Err(EsmsError::NotVietnamese)
        ));
        assert!(matches!(
            build_send_body(&credentials(), &request(&vn, "  ")),
            Err(EsmsError::EmptyContent)
        ));
        let mut no_brand = request(&vn, "hi");
        no_brand.brandname = Some(" ");
        assert!(matches!(
            build_send_body(&credentials(), &no_brand),
            Err(EsmsError::MissingBrandname)
        ));
        let mut no_id = request(&vn, "hi");
        no_id.request_id = "";
        assert!(matches!(
            build_send_body(&credentials(), &no_id),
            Err(EsmsError::MissingRequestId)
        ));
    }

    #[test]
    fn debug_output_never_shows_credentials() {
        let to = number("0901234567");
        let body = build_send_body(&credentials(), &request(&to, "hi")).unwrap();
        let printed = format!("{body:?}");
        assert!(!printed.contains("SECRET") && !printed.contains("KEY"));
    }

    #[test]
    fn reply_100_is_accepted_with_its_smsid() {
        let accepted = parse_send_reply(
            br#"{"CodeResult":"100","CountRegenerate":0,"SMSID":"d533459ee42b2b9525ba9eabf6a8156"}"#,
        )
        .unwrap();
        assert_eq!(
            accepted.sms_id.as_deref(),
            Some("d533459ee42b2b9525ba9eabf6a8156")
        );
        assert_eq!(
            parse_send_reply(br#"{"CodeResult":100}"#).unwrap(),
            SendAccepted { sms_id: None }
        );
    }

    #[test]
    fn other_codes_are_rejections_with_the_code() {
        let err = parse_send_reply(br#"{"CodeResult":"103","ErrorMessage":"Balance not enough"}"#)
            .unwrap_err();
        assert!(matches!(
            &err,
            EsmsError::Rejected { code, message: Some(m) } if code == "103" && m == "Balance not enough"
        ));
        assert_eq!(err.to_string(), "esms refused the request with code 103");
        assert!(matches!(
            parse_send_reply(br#"{"SMSID":"x"}"#),
            Err(EsmsError::MissingField {
                field: "CodeResult"
            })
        ));
        assert!(matches!(
            parse_send_reply(b"<html>"),
            Err(EsmsError::InvalidJson(_))
        ));
    }

    #[test]
    fn documented_callback_sample_with_failures_is_a_failure() {
        // The customer-care sample from eSMS's "Callback Url" page.
        let params = Params::from_query(
            "SMSID=dc712784-9c5f-4c69-b9a8-ea69d56adc9a87&SendFailed=2&SendStatus=5\
&SendSuccess=0&TotalPrice=0.0000&TotalReceiver=2&TotalSent=2&RequestId=&TypeId=2&telcoid=1\
&phonenumber=0901888484&switchsmsid=",
        );
        let report = parse_delivery_callback(&params).unwrap();
        assert_eq!(
            report.provider_message_id,
            "dc712784-9c5f-4c69-b9a8-ea69d56adc9a87"
        );
        assert_eq!(report.state, DeliveryState::Failed { code: None });
        assert_eq!(report.provider_status, "5");
        assert_eq!(report.client_ref, None);
    }

    #[test]
    fn callback_statuses_map_to_the_shared_states() {
        let state =
            |query: &str| parse_delivery_callback(&Params::from_query(query)).map(|r| r.state);
        assert_eq!(
            state("SMSID=1&SendStatus=5&SendSuccess=1&SendFailed=0").ok(),
            Some(DeliveryState::Delivered)
        );
        assert_eq!(
            state("SMSID=1&SendStatus=5").ok(),
            Some(DeliveryState::Sent)
        );
        assert_eq!(
            state("SMSID=1&SendStatus=7").ok(),
            Some(DeliveryState::Sent)
        );
        assert_eq!(
            state("SMSID=1&SendStatus=1").ok(),
            Some(DeliveryState::Pending)
        );
        assert_eq!(state("smsid=1&status=2").ok(), Some(DeliveryState::Pending));
        assert_eq!(
            state("SMSID=1&SendStatus=4").ok(),
            Some(DeliveryState::Failed {
                code: Some("4".into())
            })
        );
        assert!(matches!(
            state("SMSID=1&SendStatus=9"),
            Err(EsmsError::UnknownStatus { .. })
        ));
        assert!(matches!(
            state("SendStatus=5"),
            Err(EsmsError::MissingField { field: "SMSID" })
        ));
        let report =
            parse_delivery_callback(&Params::from_query("SMSID=1&SendStatus=7&RequestId=evt-9"))
                .unwrap();
        assert_eq!(report.client_ref.as_deref(), Some("evt-9"));
    }

    #[test]
    fn sms_types_deserialize_from_config_names() {
        let t: SmsType = serde_json::from_str(r#""brandname_care""#).unwrap();
        assert_eq!(t.code(), "2");
        let creds: EsmsCredentials =
            serde_json::from_str(r#"{"api_key":"a","secret_key":"b"}"#).unwrap();
        assert_eq!(creds.secret_key.expose(), "b");
    }

    proptest! {
        #[test]
        fn arbitrary_replies_and_callbacks_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            query in ".{0,120}",
        ) {
            let _ = parse_send_reply(&body);
            let _ = parse_delivery_callback(&Params::from_query(&query));
            let _ = parse_delivery_callback(&Params::from_form(&body));
        }
    }
}
