//! Providers' webhooks as the providers send them: the body each provider posts for a customer
//! message, signed the way it signs, posted to the daemon. One poster per provider, shared by
//! every test that plays that provider.

use crate::Daemon;
use omni_channel::signature::{hmac_sha256_hex, sha256_hex};
use omni_sms::params::Params;

/// A Messenger text message as Meta posts it (`page` receives it from `psid`).
pub fn messenger_text(page: &str, psid: &str, mid: &str, text: &str) -> String {
    format!(
        r#"{{"object":"page","entry":[{{"id":"{page}","time":1700000000000,"messaging":[{{"sender":{{"id":"{psid}"}},"recipient":{{"id":"{page}"}},"timestamp":1700000000000,"message":{{"mid":"{mid}","text":"{text}"}}}}]}}]}}"#
    )
}

/// Posts `body` to `tenant`'s Messenger webhook, signed with `app_secret` as Meta signs
/// (`X-Hub-Signature-256`); the status.
pub async fn post_messenger(daemon: &Daemon, tenant: &str, app_secret: &str, body: &str) -> u16 {
    post_meta(
        daemon,
        &format!("/v1/webhooks/messenger/{tenant}"),
        app_secret,
        body,
    )
    .await
}

/// A WhatsApp Cloud API text message as Meta posts it (`number` receives it from `wa_id`,
/// whose profile name is `name`).
pub fn whatsapp_text(number: &str, wa_id: &str, name: &str, wamid: &str, text: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"84281234567","phone_number_id":"{number}"}},"contacts":[{{"profile":{{"name":"{name}"}},"wa_id":"{wa_id}"}}],"messages":[{{"from":"{wa_id}","id":"{wamid}","timestamp":"1700000000","type":"text","text":{{"body":"{text}"}}}}]}}}}]}}]}}"#
    )
}

/// Posts `body` to `tenant`'s WhatsApp webhook, signed with `app_secret` as Meta signs; the
/// status.
pub async fn post_whatsapp(daemon: &Daemon, tenant: &str, app_secret: &str, body: &str) -> u16 {
    post_meta(
        daemon,
        &format!("/v1/webhooks/whatsapp/{tenant}"),
        app_secret,
        body,
    )
    .await
}

/// Posts a Meta webhook body to `path`, with `X-Hub-Signature-256` over the exact bytes.
async fn post_meta(daemon: &Daemon, path: &str, app_secret: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(daemon.url(path))
        .header(
            "x-hub-signature-256",
            format!(
                "sha256={}",
                hmac_sha256_hex(app_secret.as_bytes(), body.as_bytes())
            ),
        )
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Now in Unix milliseconds, as Zalo stamps its events: inside every replay window.
pub fn now_millis() -> String {
    chrono::Utc::now().timestamp_millis().to_string()
}

/// A Zalo OA webhook event: a text from `user` to `oa`, sent at `timestamp` (milliseconds).
pub fn zalo_text(app_id: &str, oa: &str, user: &str, msg_id: &str, text: &str, ts: &str) -> String {
    format!(
        r#"{{"app_id":"{app_id}","event_name":"user_send_text","timestamp":"{ts}","sender":{{"id":"{user}"}},"recipient":{{"id":"{oa}"}},"message":{{"msg_id":"{msg_id}","text":"{text}"}}}}"#
    )
}

/// Posts a Zalo event `body` (sent at `ts`) to `tenant`'s Zalo webhook, signed as Zalo signs
/// (`X-ZEvent-Signature: mac=sha256(app_id + body + timestamp + OA secret key)`); the status.
pub async fn post_zalo(
    daemon: &Daemon,
    tenant: &str,
    (app_id, oa_secret_key): (&str, &str),
    body: &str,
    ts: &str,
) -> u16 {
    let mac = sha256_hex(&[
        app_id.as_bytes(),
        body.as_bytes(),
        ts.as_bytes(),
        oa_secret_key.as_bytes(),
    ]);
    reqwest::Client::new()
        .post(daemon.url(&format!("/v1/webhooks/zalo/{tenant}")))
        .header("x-zevent-signature", format!("mac={mac}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Twilio's `X-Twilio-Signature` of a form `body` posted to the public `url`.
pub fn twilio_sign(auth_token: &str, url: &str, body: &str) -> String {
    omni_sms::twilio::compute_signature(
        auth_token.as_bytes(),
        url,
        &Params::from_form(body.as_bytes()),
    )
}

/// An `application/x-www-form-urlencoded` body.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Posts a Twilio form `body` to `path` on the daemon as Twilio does: signed for the public
/// URL (`public` + `path`, what Twilio calls behind a TLS-terminating proxy).
pub async fn post_twilio(
    daemon: &Daemon,
    public: &str,
    path: &str,
    auth_token: &str,
    body: String,
) -> reqwest::Response {
    let signature = twilio_sign(auth_token, &format!("{public}{path}"), &body);
    reqwest::Client::new()
        .post(daemon.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
}
