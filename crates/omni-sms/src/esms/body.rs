//! The JSON body of eSMS's send call, and the reply to it (rules in the module docs of
//! [`crate::esms`]).

use omni_core::Secret;
use serde::{Serialize, Serializer};

use super::{EsmsCredentials, EsmsError, SmsType};
use crate::encoding::{layout, SmsLayout};
use crate::params::{clip, json_scalar_text};
use crate::phone::PhoneNumber;

/// The JSON send endpoint.
pub const SEND_URL: &str =
    "https://rest.esms.vn/MainService.svc/json/SendMultipleMessage_V4_post_json/";

/// `CodeResult` of an accepted request.
pub const ACCEPTED_CODE: &str = "100";

/// Viet Nam's country calling code: the only destinations eSMS takes here.
const VIETNAM: &str = "84";
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esms::parse_delivery_callback;
    use crate::params::Params;
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
