//! Every webhook's credential check on arbitrary headers, query and body: the API channel
//! (HMAC and bearer), Meta (`X-Hub-Signature-256`, legacy SHA-1), Zalo (`X-ZEvent-Signature`),
//! Twilio, Vonage (signed and `?token=`), eSMS, both gateway encodings, and live chat's
//! identity hash.
//!
//! Invariants: no request verifies under two different secrets (a check that ignores its
//! secret, or accepts an empty or truncated signature, breaks it), and a request the harness
//! signed with the provider's documented algorithm verifies under that secret (where the
//! algorithm covers the whole request) and never under another.
#![no_main]

use arbitrary::Arbitrary;
use axum::http::request::Parts;
use axum::http::Method;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use omni_channel::signature::{hmac_sha1_hex, hmac_sha256_hex, sha256_hex};
use omni_channel::WebhookAdapter;
use omni_fuzz::{
    api_channel, head, messenger, sms_tenants, whatsapp, zalo, OTHER_SECRET, SECRET, SMS_BASE,
    TENANT, ZALO_APP,
};
use omni_sms::params::Params;
use omni_sms::vonage::SignatureMethod;
use omni_sms::webhook::{Endpoint, SmsWebhook};

#[derive(Debug, Arbitrary)]
struct Input {
    verifier: u8,
    /// Sign the request correctly under [`SECRET`] instead of presenting `header`.
    sign: bool,
    header: Vec<u8>,
    query: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Which check, and the header it reads.
#[derive(Debug, Clone, Copy)]
enum Check {
    ApiHmac,
    ApiBearer,
    Meta256,
    MetaSha1,
    Whatsapp,
    Zalo,
    Twilio,
    VonageSigned(SignatureMethod),
    VonageToken,
    Esms,
    GatewayJson,
    GatewayForm,
}

const CHECKS: [Check; 16] = [
    Check::ApiHmac,
    Check::ApiBearer,
    Check::Meta256,
    Check::MetaSha1,
    Check::Whatsapp,
    Check::Zalo,
    Check::Twilio,
    Check::VonageSigned(SignatureMethod::Md5Hash),
    Check::VonageSigned(SignatureMethod::HmacMd5),
    Check::VonageSigned(SignatureMethod::HmacSha1),
    Check::VonageSigned(SignatureMethod::HmacSha256),
    Check::VonageSigned(SignatureMethod::HmacSha512),
    Check::VonageToken,
    Check::Esms,
    Check::GatewayJson,
    Check::GatewayForm,
];

impl Check {
    fn header(self) -> &'static str {
        match self {
            Check::ApiHmac => "x-omni-signature",
            Check::ApiBearer => "authorization",
            Check::Meta256 | Check::Whatsapp => "x-hub-signature-256",
            Check::MetaSha1 => "x-hub-signature",
            Check::Zalo => "x-zevent-signature",
            Check::Twilio => "x-twilio-signature",
            Check::GatewayJson => "x-signature",
            Check::GatewayForm => "x-hub-sig",
            Check::VonageSigned(_) | Check::VonageToken | Check::Esms => "x-unused",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Check::ApiHmac | Check::ApiBearer => "/v1/inbound/acme",
            Check::Meta256 | Check::MetaSha1 => "/v1/webhooks/messenger/acme",
            Check::Whatsapp => "/v1/webhooks/whatsapp/acme",
            Check::Zalo => "/v1/webhooks/zalo/acme",
            Check::Twilio => "/v1/webhooks/sms/twilio/acme",
            Check::VonageSigned(_) | Check::VonageToken => "/v1/webhooks/sms/vonage/acme",
            Check::Esms => "/v1/webhooks/sms/esms/acme/callback",
            Check::GatewayJson => "/v1/webhooks/sms/gateway/acme/jsongw",
            Check::GatewayForm => "/v1/webhooks/sms/gateway/acme/formgw",
        }
    }

    /// Runs the check with every credential set to `secret`.
    fn verify(self, secret: &str, request: &Parts, body: &[u8]) -> bool {
        fn run<A: WebhookAdapter>(a: &A, request: &Parts, body: &[u8]) -> bool {
            let (_, account) = a.account(TENANT).expect("the fixture serves the tenant");
            a.verify(account, request, body).is_ok()
        }
        let sms = |method, endpoint| SmsWebhook::new(sms_tenants(secret, method), endpoint);
        match self {
            Check::ApiHmac | Check::ApiBearer => run(&api_channel(secret), request, body),
            Check::Meta256 => run(&messenger(secret, false), request, body),
            Check::MetaSha1 => run(&messenger(secret, true), request, body),
            Check::Whatsapp => run(&whatsapp(secret), request, body),
            Check::Zalo => run(&zalo(secret), request, body),
            Check::Twilio => run(&sms(None, Endpoint::TwilioMessage), request, body),
            Check::VonageSigned(m) => run(&sms(Some(m), Endpoint::VonageMessage), request, body),
            Check::VonageToken => run(&sms(None, Endpoint::VonageMessage), request, body),
            Check::Esms => run(&sms(None, Endpoint::EsmsCallback), request, body),
            Check::GatewayJson | Check::GatewayForm => {
                run(&sms(None, Endpoint::Gateway), request, body)
            }
        }
    }
}

/// The query string of `pairs`, form-encoded so it is always a valid URI.
fn encode(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn uri(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// The request `check` expects, signed under [`SECRET`]: a header value and maybe a query.
fn signed(check: Check, query: &mut Vec<(String, String)>, body: &[u8]) -> Vec<u8> {
    let s = SECRET.as_bytes();
    match check {
        Check::ApiHmac | Check::Meta256 | Check::Whatsapp => {
            format!("sha256={}", hmac_sha256_hex(s, body)).into_bytes()
        }
        Check::ApiBearer => format!("Bearer {SECRET}").into_bytes(),
        Check::MetaSha1 => format!("sha1={}", hmac_sha1_hex(s, body)).into_bytes(),
        Check::Zalo => {
            let ts = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| match &v["timestamp"] {
                    serde_json::Value::String(t) => Some(t.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .unwrap_or_default();
            let mac = sha256_hex(&[ZALO_APP.as_bytes(), body, ts.as_bytes(), s]);
            format!("mac={mac}").into_bytes()
        }
        Check::Twilio => {
            let url = format!("{SMS_BASE}{}", uri(check.path(), &encode(query)));
            let params = if Params::from_url_query(&url).get("bodySHA256").is_some() {
                Params::new()
            } else {
                Params::from_form(body)
            };
            omni_sms::twilio::compute_signature(s, &url, &params).into_bytes()
        }
        Check::VonageSigned(method) => {
            query.retain(|(k, _)| k != "sig" && k != "timestamp");
            // The endpoint checks the signed timestamp against the wall clock.
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            query.push(("timestamp".into(), wall.to_string()));
            let mut params = Params::from_query(&encode(query));
            if let Ok(body_params) = Params::from_body(None, body) {
                params.extend(body_params);
            }
            let sig = omni_sms::vonage::sign(method, s, &params);
            query.push(("sig".into(), sig));
            Vec::new()
        }
        Check::VonageToken | Check::Esms => {
            query.insert(0, ("token".into(), SECRET.into()));
            Vec::new()
        }
        Check::GatewayJson => format!("sha256={}", hmac_sha256_hex(s, body)).into_bytes(),
        Check::GatewayForm => {
            let mac = hex_to_bytes(&hmac_sha256_hex(s, body));
            base64::engine::general_purpose::STANDARD
                .encode(mac)
                .into_bytes()
        }
    }
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

fuzz_target!(|input: Input| {
    let Input {
        verifier,
        sign,
        header,
        mut query,
        body,
    } = input;
    let check = CHECKS[usize::from(verifier) % CHECKS.len()];
    let header = if sign {
        signed(check, &mut query, &body)
    } else {
        header
    };
    let request = head(
        Method::POST,
        &uri(check.path(), &encode(&query)),
        &[(check.header(), &header)],
    );
    let mine = check.verify(SECRET, &request, &body);
    let other = check.verify(OTHER_SECRET, &request, &body);
    assert!(
        !(mine && other),
        "{check:?}: one request verified under two secrets"
    );
    if sign {
        assert!(
            !other,
            "{check:?}: a request signed under one secret verified under another"
        );
        // Where the signature covers exactly what was signed here, it must verify (Zalo's
        // needs the body's own app id, Twilio's and Vonage's a body that reads as a form;
        // Vonage reads its parameters, the body's too, before any check).
        let unreadable = Params::from_body(None, &body).is_err();
        let may_refuse = match check {
            Check::Zalo | Check::Twilio | Check::VonageSigned(_) => true,
            Check::VonageToken => unreadable,
            _ => false,
        };
        if !may_refuse {
            assert!(mine, "{check:?}: a correctly signed request was refused");
        }
    }
    // Live chat's identity hash: the body is the user id, the header the presented hash.
    let user_id = String::from_utf8_lossy(&body);
    let hash = String::from_utf8_lossy(&header);
    assert!(
        !(omni_livechat::token::identity_matches(SECRET.as_bytes(), &user_id, &hash)
            && omni_livechat::token::identity_matches(OTHER_SECRET.as_bytes(), &user_id, &hash)),
        "identity hash matched under two secrets"
    );
});
