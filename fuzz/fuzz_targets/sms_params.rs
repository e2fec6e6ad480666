//! SMS webhooks after their signature or token check: the request's parameters (query string,
//! then a form or flat JSON body) through `SmsWebhook::parse` of each endpoint (Twilio message
//! and status, Vonage message and receipt, eSMS callback, a JSON and a form gateway), and the
//! pure readers under them (`Params`, Twilio's forms, Vonage's fields, eSMS's callback and send
//! reply, gateway extraction, addresses, GSM-7/UCS-2 layout).
//!
//! Input: one selector byte (endpoint, content type), the raw query string up to the first
//! `\n`, then the body.
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use omni_channel::WebhookAdapter;
use omni_fuzz::{check_parsed, head, now, sms_tenants, SECRET, TENANT};
use omni_sms::params::Params;
use omni_sms::webhook::{Endpoint, SmsWebhook};
use omni_sms::{Address, PhoneNumber};

const ENDPOINTS: [(Endpoint, &str); 7] = [
    (Endpoint::TwilioMessage, "/v1/webhooks/sms/twilio/acme"),
    (
        Endpoint::TwilioStatus,
        "/v1/webhooks/sms/twilio/acme/status",
    ),
    (Endpoint::VonageMessage, "/v1/webhooks/sms/vonage/acme"),
    (Endpoint::VonageDlr, "/v1/webhooks/sms/vonage/acme/dlr"),
    (
        Endpoint::EsmsCallback,
        "/v1/webhooks/sms/esms/acme/callback",
    ),
    (Endpoint::Gateway, "/v1/webhooks/sms/gateway/acme/jsongw"),
    (Endpoint::Gateway, "/v1/webhooks/sms/gateway/acme/formgw"),
];

const CONTENT_TYPES: [Option<&str>; 3] = [
    None,
    Some("application/x-www-form-urlencoded"),
    Some("application/json"),
];

fn encode<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// An address normalizes to a fixed point: parsing its normal form gives it back.
fn check_address(raw: &str) {
    if let Ok(address) = Address::parse(raw, "84") {
        assert_eq!(
            Address::parse(address.as_str(), "84").as_ref(),
            Ok(&address),
            "address normal form is stable"
        );
    }
    if let Ok(number) = PhoneNumber::parse(raw, "84") {
        assert!(number.as_str().starts_with('+'));
        assert_eq!(
            PhoneNumber::parse(number.as_str(), "84").as_ref(),
            Ok(&number)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (raw_query, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let raw_query = String::from_utf8_lossy(raw_query);
    let (endpoint, path) = ENDPOINTS[usize::from(selector) % ENDPOINTS.len()];
    let content_type = CONTENT_TYPES[usize::from(selector / 8) % CONTENT_TYPES.len()];

    // The pure readers.
    let query = Params::from_query(&raw_query);
    let reencoded = encode(query.iter());
    assert_eq!(
        Params::from_query(&reencoded),
        query,
        "form encoding round-trips"
    );
    if let Ok(params) = Params::from_request(&raw_query, content_type, body) {
        assert!(params.len() >= query.len());
        if let Ok(inbound) = omni_sms::vonage::VonageInbound::from_params(&params) {
            if let Some(part) = inbound.to_part() {
                assert!(part.number >= 1 && part.number <= part.total);
            }
            check_address(&inbound.msisdn);
        }
        let _ = omni_sms::vonage::parse_delivery_receipt(&params);
        let _ = omni_sms::esms::parse_delivery_callback(&params);
        if let Ok(inbound) = omni_sms::twilio::TwilioInbound::from_params(&params) {
            check_address(&inbound.from);
            check_address(&inbound.to);
            let layout = omni_sms::layout(&inbound.body);
            assert_eq!(layout.segments == 0, layout.text.is_empty());
        }
    }
    let _ = omni_sms::twilio::parse_inbound(body);
    let _ = omni_sms::twilio::parse_status(body);
    let _ = omni_sms::esms::parse_send_reply(body);

    // The endpoint as the daemon serves it, past its credential check.
    let uri = if reencoded.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{reencoded}")
    };
    let headers: Vec<(&str, &[u8])> = content_type
        .map(|ct| ("content-type", ct.as_bytes()))
        .into_iter()
        .collect();
    let adapter = SmsWebhook::new(sms_tenants(SECRET, None), endpoint);
    let (tenant, sms) = adapter.account(TENANT).unwrap();
    for method in [Method::POST, Method::GET] {
        let request = head(method, &uri, &headers);
        if let Ok(parsed) = adapter.parse(tenant, sms, &request, body, now()) {
            assert!(
                parsed.events.len() <= 1,
                "one SMS request, at most one event"
            );
            check_parsed(&parsed);
        }
    }
    for gateway in sms.gateways.values() {
        if let Ok(message) = gateway.gateway.extract(body) {
            check_address(&message.from);
        }
    }
});
