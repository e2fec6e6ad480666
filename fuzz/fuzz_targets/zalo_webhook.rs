//! The Zalo OA webhook after `X-ZEvent-Signature` was checked: `ZaloChannel::parse` on the raw
//! body (every `user_send_*`, OA echoes, follows, buttons, receipts).
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use omni_channel::WebhookAdapter;
use omni_fuzz::{check_parsed, head, now, zalo, SECRET, TENANT};

fuzz_target!(|body: &[u8]| {
    let channel = zalo(SECRET);
    let (tenant, account) = channel.account(TENANT).unwrap();
    let request = head(Method::POST, "/v1/webhooks/zalo/acme", &[]);
    if let Ok(parsed) = channel.parse(tenant, account, &request, body, now()) {
        assert!(
            parsed.events.len() <= 1,
            "one Zalo event, at most one published"
        );
        check_parsed(&parsed);
    }
});
