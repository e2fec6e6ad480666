//! The WhatsApp Business Account webhook after `X-Hub-Signature-256` was checked:
//! `WhatsappChannel::parse` on the raw body (messages, statuses and their callback refs).
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use omni_channel::WebhookAdapter;
use omni_fuzz::{check_parsed, head, now, whatsapp, SECRET, TENANT};

fuzz_target!(|body: &[u8]| {
    let channel = whatsapp(SECRET);
    let (tenant, account) = channel.account(TENANT).unwrap();
    let request = head(Method::POST, "/v1/webhooks/whatsapp/acme", &[]);
    if let Ok(parsed) = channel.parse(tenant, account, &request, body, now()) {
        check_parsed(&parsed);
    }
});
