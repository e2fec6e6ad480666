//! eSMS's callback endpoint through the shared handler.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::{HeaderMap, Method, StatusCode};
use omni_core::DeliveryUpdate;

use crate::testing::*;
use crate::webhook::Endpoint;

#[tokio::test]
async fn esms_callbacks_need_the_token_and_map_to_delivery_events() {
    let f = fixture(None);
    let r = reference();
    let base = format!(
        "/v1/webhooks/sms/esms/acme/callback?{}",
        r.query("OMNI CARE")
    );
    let callback = |token: &str, status: &str| {
        format!(
            "{base}&token={token}&SMSID=d533459e&SendStatus={status}&SendSuccess=1&SendFailed=0&RequestId={}",
            r.outbound
        )
    };
    let (s, _, _) = f
        .send(
            Endpoint::EsmsCallback,
            Method::GET,
            &callback("wrong", "5"),
            HeaderMap::new(),
            "",
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let no_token = format!("{base}&SMSID=x&SendStatus=5");
    let (s, _, _) = f
        .send(
            Endpoint::EsmsCallback,
            Method::GET,
            &no_token,
            HeaderMap::new(),
            "",
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for status in ["2", "5"] {
        let (s, _, answer) = f
            .send(
                Endpoint::EsmsCallback,
                Method::GET,
                &callback("cb-token", status),
                HeaderMap::new(),
                "",
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{answer}");
    }
    let events: Vec<DeliveryUpdate> = f.on("omni.delivery.v1").iter().map(delivery).collect();
    assert_eq!(events.len(), 1, "2 (waiting to send) is pending");
    assert_eq!(events[0].status, omni_core::DeliveryStatus::Delivered);
    assert_eq!(events[0].outbound_event_id, r.outbound);
    assert_eq!(events[0].channel.account, "OMNI CARE");
    assert_eq!(events[0].provider_message_id.as_deref(), Some("d533459e"));
}
