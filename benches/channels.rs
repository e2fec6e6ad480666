//! Criterion micro-benchmarks of the social webhooks' per-request work before Kafka: the
//! signature over the raw bytes and parse + normalize + serialize, for a Messenger webhook of
//! one text message (Meta's `\uXXXX`-escaped Vietnamese) and a Zalo `user_send_text` event.
//!
//! Run with `cargo bench -p omni-benches --bench channels`.
// criterion_group!/criterion_main! generate undocumented public items.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use axum::http::{HeaderMap, HeaderValue, Method};
use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use omni_channel::signature::{hmac_sha256_hex, sha256_hex};
use omni_channel::{request_head, WebhookAdapter};
use omni_core::{Secret, TenantId};
use omni_social::messenger::{MessengerChannel, MessengerTenant, PageSettings};
use omni_social::zalo::{OaSettings, ZaloChannel, ZaloTenant};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

const VI: &str = r"Xin ch\u00e0o, \u0111\u01a1n h\u00e0ng #1024 c\u1ee7a t\u00f4i \u0111\u00e3 \u0111\u01b0\u1ee3c giao ch\u01b0a \u1ea1?";

fn messenger(c: &mut Criterion) {
    let tenant = TenantId::new("bench").unwrap();
    let account = MessengerTenant {
        app_secret: Secret::new("meta-app-secret"),
        verify_token: Secret::new("v"),
        accept_sha1: false,
        // The page the body is for: an item for another page would be refused, not parsed.
        pages: HashMap::from([(
            "104912345678901".to_owned(),
            PageSettings {
                access_token: Secret::new("t"),
                human_agent_tag: false,
            },
        )]),
        instagram: HashMap::new(),
    };
    let channel = MessengerChannel::new([(tenant.clone(), account.clone())]);
    let body = format!(
        r#"{{"object":"page","entry":[{{"id":"104912345678901","time":1700000000000,"messaging":[{{"sender":{{"id":"5384937120339286147"}},"recipient":{{"id":"104912345678901"}},"timestamp":1700000000000,"message":{{"mid":"m_AbCdEfGhIjKlMnOp","text":"{VI}"}}}}]}}]}}"#
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-hub-signature-256",
        HeaderValue::from_str(&format!(
            "sha256={}",
            hmac_sha256_hex(b"meta-app-secret", body.as_bytes())
        ))
        .unwrap(),
    );
    let head = request_head(Method::POST, "/v1/webhooks/messenger/bench", headers);
    assert!(channel.verify(&account, &head, body.as_bytes()).is_ok());
    let parsed = channel.parse(&tenant, &account, &head, body.as_bytes(), Utc::now());
    assert_eq!(parsed.map(|p| p.events.len()).ok(), Some(1));
    let mut group = c.benchmark_group("messenger");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_parse_serialize", |b| {
        b.iter(|| {
            channel
                .verify(&account, &head, black_box(body.as_bytes()))
                .unwrap();
            channel
                .parse(
                    &tenant,
                    &account,
                    &head,
                    black_box(body.as_bytes()),
                    Utc::now(),
                )
                .unwrap()
        });
    });
    group.finish();
}

fn zalo(c: &mut Criterion) {
    let tenant = TenantId::new("bench").unwrap();
    let oa = |key: &str| OaSettings {
        app_id: "1183926498471234567".into(),
        oa_secret_key: Secret::new(key),
        app_secret: Secret::new("s"),
        token_file: "unused".into(),
        initial_refresh_token: None,
        initial_access_token: None,
    };
    let account = ZaloTenant {
        oas: HashMap::from([
            ("4318458798374519001".to_owned(), oa("oa-key")),
            ("579745863508352884".to_owned(), oa("second-key")),
        ]),
        replay_window: None,
    };
    let channel = ZaloChannel::new([(tenant.clone(), account.clone())]);
    let ts = "1700000000000";
    let body = format!(
        r#"{{"app_id":"1183926498471234567","event_name":"user_send_text","timestamp":"{ts}","sender":{{"id":"2512523625412515123"}},"recipient":{{"id":"4318458798374519001"}},"message":{{"msg_id":"9d6b1c2a3e4f","text":"Cho mình hỏi giá sản phẩm này ạ"}}}}"#
    );
    let mac = sha256_hex(&[
        b"1183926498471234567",
        body.as_bytes(),
        ts.as_bytes(),
        b"oa-key",
    ]);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-zevent-signature",
        HeaderValue::from_str(&format!("mac={mac}")).unwrap(),
    );
    let head = request_head(Method::POST, "/v1/webhooks/zalo/bench", headers);
    assert!(channel.verify(&account, &head, body.as_bytes()).is_ok());
    let mut group = c.benchmark_group("zalo");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_parse_serialize", |b| {
        b.iter(|| {
            channel
                .verify(&account, &head, black_box(body.as_bytes()))
                .unwrap();
            channel
                .parse(
                    &tenant,
                    &account,
                    &head,
                    black_box(body.as_bytes()),
                    Utc::now(),
                )
                .unwrap()
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = messenger, zalo
}
criterion_main!(benches);
