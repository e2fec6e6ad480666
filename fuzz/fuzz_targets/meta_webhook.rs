//! Meta's messaging webhook (Messenger pages and Instagram accounts, one endpoint) after
//! `X-Hub-Signature-256` was checked: `MessengerChannel::parse` on the raw body.
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use omni_channel::WebhookAdapter;
use omni_core::ChannelKind;
use omni_fuzz::{check_parsed, head, messenger, now, SECRET, TENANT};

fuzz_target!(|body: &[u8]| {
    let channel = messenger(SECRET, false);
    let (tenant, account) = channel.account(TENANT).unwrap();
    let request = head(Method::POST, "/v1/webhooks/messenger/acme", &[]);
    if let Ok(parsed) = channel.parse(tenant, account, &request, body, now()) {
        check_parsed(&parsed);
        if !parsed.events.is_empty() {
            assert!(matches!(
                parsed.channel,
                Some(ChannelKind::Messenger | ChannelKind::Instagram)
            ));
        }
    }
});
