//! What the SMS webhook tests share: a tenant with every provider, the shared handler over an
//! in-memory sink standing in for Kafka, and requests signed with the providers' real
//! algorithms (the core's functions, checked against the published vectors).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use omni_channel::sink::MemorySink;
use omni_channel::Ingress;
use omni_core::{
    ChannelKind, ChannelRef, CloudEvent, ConversationId, DeliveryUpdate, EventId, Secret, TenantId,
};
use prometheus::Registry;

use crate::callback::CallbackRef;
use crate::gateway::GatewayMapping;
use crate::params::Params;
use crate::reassembly::ReassemblerConfig;
use crate::settings::{EsmsAccount, GatewayAccount, SmsTenant, TwilioAccount, VonageAccount};
use crate::twilio;
use crate::vonage::concat_store::{ConcatMetrics, ConcatStore};
use crate::vonage::{SignatureMethod, SignatureSettings};
use crate::webhook::{tenants, Endpoint, SmsTenants, SmsWebhook};

pub(crate) const SID: &str = "AC0123456789abcdef0123456789abcdef";
pub(crate) const TOKEN: &str = "twilio-auth-token";
pub(crate) const BASE: &str = "https://sms.shop.example.vn";
pub(crate) const VI: &str = "Chào shop, đơn hàng #1024 của tôi đã giao chưa ạ? Cảm ơn!";
pub(crate) const VONAGE_SECRET: &str = "vonage-signature-secret";

fn gateway(json: bool) -> GatewayAccount {
    let toml_mapping = if json {
        GatewayMapping {
            format: crate::gateway::BodyFormat::Json,
            from: "/data/from".into(),
            to: "/data/to".into(),
            text: "/data/text".into(),
            message_id: "/data/id".into(),
            timestamp: None,
            signature: Some(crate::gateway::SignatureMapping {
                header: "X-Signature".into(),
                encoding: crate::gateway::SignatureEncoding::Hex,
                prefix: Some("sha256=".into()),
            }),
        }
    } else {
        GatewayMapping {
            format: crate::gateway::BodyFormat::Form,
            from: "sender".into(),
            to: "receiver".into(),
            text: "content".into(),
            message_id: "msgid".into(),
            timestamp: None,
            signature: Some(crate::gateway::SignatureMapping {
                header: "X-Hub-Sig".into(),
                encoding: crate::gateway::SignatureEncoding::Base64,
                prefix: None,
            }),
        }
    };
    GatewayAccount {
        gateway: toml_mapping.build().unwrap(),
        secret: Some(Secret::new("gw-secret")),
    }
}

fn tenant(vonage_method: Option<SignatureMethod>) -> SmsTenant {
    SmsTenant {
        public_base_url: BASE.into(),
        country_code: "84".into(),
        twilio: Some(TwilioAccount {
            account_sid: SID.into(),
            auth_token: Secret::new(TOKEN),
        }),
        vonage: Some(VonageAccount {
            api_key: "key".into(),
            api_secret: Secret::new("secret"),
            signature: vonage_method.map(|method| {
                (
                    SignatureSettings {
                        method,
                        max_age: Some(Duration::from_secs(300)),
                    },
                    Secret::new(VONAGE_SECRET),
                )
            }),
        }),
        esms: Some(EsmsAccount {
            credentials: crate::esms::EsmsCredentials {
                api_key: Secret::new("k"),
                secret_key: Secret::new("s"),
            },
            sandbox: false,
        }),
        gateways: HashMap::from([
            ("vngw".to_owned(), gateway(true)),
            ("formgw".to_owned(), gateway(false)),
        ]),
        numbers: HashMap::new(),
        callback_token: Some(Secret::new("cb-token")),
    }
}

/// One tenant `acme` with every provider, and an ingress publishing into memory.
pub(crate) struct Fixture {
    pub(crate) sink: Arc<MemorySink>,
    pub(crate) ingress: Ingress,
    pub(crate) tenants: SmsTenants,
    pub(crate) registry: Registry,
    /// Records of the parts topic already read back ([`read_back_parts`]).
    pub(crate) parts_read: std::sync::Mutex<usize>,
}

pub(crate) fn fixture(vonage_method: Option<SignatureMethod>) -> Fixture {
    let sink = Arc::new(MemorySink::default());
    let registry = Registry::new();
    let ingress = Ingress::standalone(sink.clone(), &registry, 16 * 1024).unwrap();
    Fixture {
        sink,
        ingress,
        tenants: tenants([(TenantId::new("acme").unwrap(), tenant(vonage_method))]),
        registry,
        parts_read: std::sync::Mutex::new(0),
    }
}

impl Fixture {
    /// Drives one request through `endpoint` for tenant `acme`.
    pub(crate) async fn send(
        &self,
        endpoint: Endpoint,
        method: Method,
        uri: &str,
        headers: HeaderMap,
        body: impl Into<Vec<u8>>,
    ) -> (StatusCode, String, String) {
        let adapter = SmsWebhook::new(self.tenants.clone(), endpoint);
        let head = omni_channel::request_head(method, uri, headers);
        let response = self
            .ingress
            .handle(&adapter, "acme", &head, Body::from(body.into()))
            .await;
        read(response).await
    }

    /// The records published on `topic` so far, tombstones left out.
    pub(crate) fn on(&self, topic: &str) -> Vec<serde_json::Value> {
        self.sink
            .records()
            .into_iter()
            .filter(|r| r.topic == topic && !r.tombstone)
            .map(|r| serde_json::from_slice(&r.payload).unwrap())
            .collect()
    }
}

pub(crate) async fn read(response: axum::response::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, ct, String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

pub(crate) fn form_headers(signature: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    if let Some(sig) = signature {
        h.insert("x-twilio-signature", HeaderValue::from_str(sig).unwrap());
    }
    h
}

/// Signs a Twilio form request to `path` the way Twilio does (public URL + sorted params).
pub(crate) fn twilio_signed(path: &str, body: &str) -> HeaderMap {
    let url = format!("{BASE}{path}");
    let sig =
        twilio::compute_signature(TOKEN.as_bytes(), &url, &Params::from_form(body.as_bytes()));
    form_headers(Some(&sig))
}

pub(crate) const TWILIO_PATH: &str = "/v1/webhooks/sms/twilio/acme";

pub(crate) fn reference() -> CallbackRef {
    let tenant = TenantId::new("acme").unwrap();
    let channel = ChannelRef::new(ChannelKind::Sms, "+84281234567");
    CallbackRef {
        outbound: EventId::new_random(),
        conversation: ConversationId::derive(&tenant, &channel, "+84901234567", None),
    }
}

pub(crate) fn delivery(value: &serde_json::Value) -> DeliveryUpdate {
    serde_json::from_value::<CloudEvent<DeliveryUpdate>>(value.clone())
        .unwrap()
        .data
}

pub(crate) fn encode(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

pub(crate) fn concat_store(f: &Fixture) -> ConcatStore {
    ConcatStore::new(
        SmsWebhook::new(f.tenants.clone(), Endpoint::VonageMessage),
        "omni.sms-parts.v1",
        ReassemblerConfig::default(),
        ConcatMetrics::register(&f.registry).unwrap(),
    )
}
