//! `POST /v1/inbound/{tenant}`: the API channel's JSON body after its credentials were checked
//! (`ApiChannel::parse`, what `Ingress::handle` calls), with and without a content type.
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use omni_channel::WebhookAdapter;
use omni_fuzz::{api_channel, check_parsed, head, now, tenant, SECRET};

fuzz_target!(|body: &[u8]| {
    let channel = api_channel(SECRET);
    let (tenant_id, creds) = channel.account(omni_fuzz::TENANT).unwrap();
    assert_eq!(tenant_id, &tenant());
    for content_type in [Some(&b"application/json; charset=utf-8"[..]), None] {
        let headers: Vec<(&str, &[u8])> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        let request = head(Method::POST, "/v1/inbound/acme", &headers);
        if let Ok(parsed) = channel.parse(tenant_id, creds, &request, body, now()) {
            assert_eq!(parsed.events.len(), 1, "one body, one message");
            check_parsed(&parsed);
        }
    }
    // A content type other than JSON is refused whatever the body.
    let request = head(
        Method::POST,
        "/v1/inbound/acme",
        &[("content-type", b"text/plain")],
    );
    assert!(channel
        .parse(tenant_id, creds, &request, body, now())
        .is_err());
});
