//! What the fuzz targets share: the tenants each adapter is built with (the accounts of the
//! recorded payloads in `testdata/`, so seeds reach past tenant isolation), a request head,
//! a fixed clock, and the invariants every parsed webhook must keep.
//!
//! The targets call the same functions the daemon calls on those bytes; a target panics
//! (libFuzzer records a crash) only when the code under test panics or an invariant below
//! does not hold.
//!
//! # Layout
//! - [`check_parsed`]: every prepared event is a CloudEvent that reads back as itself.
//! - the fixtures: [`api_channel`], [`messenger`], [`whatsapp`], [`zalo`], [`sms_tenants`].
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use chrono::{DateTime, Utc};
use omni_channel::{ApiChannel, ApiCredentials, Parsed};
use omni_core::{ChannelSignal, CloudEvent, DeliveryUpdate, MessageReceived, Secret, TenantId};
use omni_sms::esms::EsmsCredentials;
use omni_sms::gateway::{
    BodyFormat, GatewayMapping, SignatureEncoding, SignatureMapping, TimestampFormat,
    TimestampMapping,
};
use omni_sms::settings::{EsmsAccount, GatewayAccount, SmsTenant, TwilioAccount, VonageAccount};
use omni_sms::vonage::{SignatureMethod, SignatureSettings};
use omni_sms::webhook::SmsTenants;
use omni_social::messenger::{MessengerChannel, MessengerTenant, PageSettings};
use omni_social::whatsapp::{NumberSettings, WhatsappChannel, WhatsappTenant};
use omni_social::zalo::{OaSettings, ZaloChannel, ZaloTenant};

/// The tenant every fixture serves.
pub const TENANT: &str = "acme";
/// The secret every fixture signs with; [`OTHER_SECRET`] is another tenant's.
pub const SECRET: &str = "fuzz-secret";
/// A second secret: no request may verify under both.
pub const OTHER_SECRET: &str = "other-secret";
/// The Messenger page of `testdata/messenger/`.
pub const PAGE: &str = "104912345678901";
/// The Instagram account of `testdata/instagram/`.
pub const IG_ACCOUNT: &str = "17841400000000001";
/// The WhatsApp number of `testdata/whatsapp/`.
pub const WA_NUMBER: &str = "106540352242922";
/// The Zalo app and OA of `testdata/zalo/`.
pub const ZALO_APP: &str = "1183926498471234567";
/// The Zalo OA of `testdata/zalo/`.
pub const ZALO_OA: &str = "4318458798374519001";
/// Twilio's account in the SMS seeds.
pub const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// The public URL Twilio signs.
pub const SMS_BASE: &str = "https://sms.shop.example.vn";

/// The clock every target parses at (2023-11-14).
pub fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

/// The tenant id.
pub fn tenant() -> TenantId {
    TenantId::new(TENANT).unwrap()
}

/// A request head as the router hands it to an adapter. Headers that are not valid header
/// names or values are left out, as hyper would refuse them before us.
pub fn head(method: Method, uri: &str, headers: &[(&str, &[u8])]) -> Parts {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    omni_channel::request_head(method, uri, map)
}

/// Every prepared event of a parsed request is a CloudEvent whose JSON reads back (as the
/// typed event its type names) and serializes to the same JSON, with the event's own id and
/// conversation: what a consumer of the topic relies on.
pub fn check_parsed(parsed: &Parsed) {
    for event in &parsed.events {
        let value: serde_json::Value =
            serde_json::from_slice(&event.payload).expect("a prepared event is JSON");
        assert_eq!(
            value["id"].as_str(),
            Some(event.id.to_string().as_str()),
            "payload id is the event id"
        );
        assert_eq!(
            value["subject"].as_str(),
            Some(event.conversation_id.to_string().as_str()),
            "payload subject is the event's conversation"
        );
        let again = match value["type"].as_str() {
            Some("omni.message.received" | "omni.message.echoed") => {
                roundtrip::<MessageReceived>(&value)
            }
            Some("omni.channel.signal") => roundtrip::<ChannelSignal>(&value),
            Some("omni.delivery.updated") => roundtrip::<DeliveryUpdate>(&value),
            other => panic!("unexpected event type {other:?}"),
        };
        assert_eq!(again, value, "event JSON reads back as itself");
    }
}

fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> serde_json::Value {
    let event: CloudEvent<T> = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("event does not read back: {e}"));
    serde_json::to_value(&event).unwrap()
}

/// The API channel with bearer and HMAC credentials for [`TENANT`] under `secret`.
pub fn api_channel(secret: &str) -> ApiChannel {
    ApiChannel::new([(
        tenant(),
        ApiCredentials::new(Some(Secret::new(secret)), Some(Secret::new(secret))),
    )])
}

/// Meta's messaging webhook with the page and Instagram account of the recorded payloads.
pub fn messenger(secret: &str, accept_sha1: bool) -> MessengerChannel {
    let settings = || PageSettings {
        access_token: Secret::new("page-token"),
        human_agent_tag: true,
    };
    MessengerChannel::new([(
        tenant(),
        MessengerTenant {
            app_secret: Secret::new(secret),
            verify_token: Secret::new("verify-me"),
            accept_sha1,
            pages: HashMap::from([(PAGE.to_owned(), settings())]),
            instagram: HashMap::from([(IG_ACCOUNT.to_owned(), settings())]),
        },
    )])
}

/// The WhatsApp webhook with the number of the recorded payloads.
pub fn whatsapp(secret: &str) -> WhatsappChannel {
    WhatsappChannel::new(
        [(
            tenant(),
            WhatsappTenant {
                app_secret: Secret::new(secret),
                verify_token: Secret::new("verify-me"),
                numbers: HashMap::from([(
                    WA_NUMBER.to_owned(),
                    NumberSettings {
                        access_token: Secret::new("wa-token"),
                    },
                )]),
            },
        )],
        "https://graph.example/v23.0",
    )
}

/// The Zalo webhook with the app and OA of the recorded payloads, its OA key `secret`.
pub fn zalo(secret: &str) -> ZaloChannel {
    ZaloChannel::new([(
        tenant(),
        ZaloTenant {
            oas: HashMap::from([(
                ZALO_OA.to_owned(),
                OaSettings {
                    app_id: ZALO_APP.into(),
                    oa_secret_key: Secret::new(secret),
                    app_secret: Secret::new("app-secret"),
                    token_file: "unused.json".into(),
                    initial_refresh_token: None,
                    initial_access_token: None,
                },
            )]),
            // The recorded payloads carry their 2023 timestamps; the window is a plain
            // comparison (omni-channel's replay tests), not a parser.
            replay_window: None,
        },
    )])
}

/// The gateway mappings of the SMS fixture: `jsongw` (JSON pointers, hex signature with a
/// prefix, a local-time timestamp) and `formgw` (form keys, base64 signature, Unix seconds).
fn gateway(json: bool, secret: &str) -> GatewayAccount {
    let mapping = if json {
        GatewayMapping {
            format: BodyFormat::Json,
            from: "/data/from".into(),
            to: "/data/to".into(),
            text: "/data/text".into(),
            message_id: "/data/id".into(),
            timestamp: Some(TimestampMapping {
                field: "/data/sent_at".into(),
                format: TimestampFormat::Pattern("%Y-%m-%d %H:%M:%S".into()),
                utc_offset_minutes: 420,
            }),
            signature: Some(SignatureMapping {
                header: "X-Signature".into(),
                encoding: SignatureEncoding::Hex,
                prefix: Some("sha256=".into()),
            }),
        }
    } else {
        GatewayMapping {
            format: BodyFormat::Form,
            from: "sender".into(),
            to: "receiver".into(),
            text: "content".into(),
            message_id: "msgid".into(),
            timestamp: Some(TimestampMapping {
                field: "ts".into(),
                format: TimestampFormat::UnixSeconds,
                utc_offset_minutes: 0,
            }),
            signature: Some(SignatureMapping {
                header: "X-Hub-Sig".into(),
                encoding: SignatureEncoding::Base64,
                prefix: None,
            }),
        }
    };
    GatewayAccount {
        gateway: mapping.build().expect("the fixture's mapping is valid"),
        secret: Some(Secret::new(secret)),
    }
}

/// One SMS tenant with every provider (Twilio, Vonage signed with `vonage_method` or by
/// `?token=`, eSMS, two gateways), every credential `secret`.
pub fn sms_tenant(secret: &str, vonage_method: Option<SignatureMethod>) -> SmsTenant {
    SmsTenant {
        public_base_url: SMS_BASE.into(),
        country_code: "84".into(),
        twilio: Some(TwilioAccount {
            account_sid: TWILIO_SID.into(),
            auth_token: Secret::new(secret),
        }),
        vonage: Some(VonageAccount {
            api_key: "key".into(),
            api_secret: Secret::new("api-secret"),
            signature: vonage_method.map(|method| {
                (
                    SignatureSettings {
                        method,
                        max_age: Some(Duration::from_secs(300)),
                    },
                    Secret::new(secret),
                )
            }),
        }),
        esms: Some(EsmsAccount {
            credentials: EsmsCredentials {
                api_key: Secret::new("k"),
                secret_key: Secret::new("s"),
            },
            sandbox: false,
        }),
        gateways: HashMap::from([
            ("jsongw".to_owned(), gateway(true, secret)),
            ("formgw".to_owned(), gateway(false, secret)),
        ]),
        numbers: HashMap::new(),
        callback_token: Some(Secret::new(secret)),
    }
}

/// [`sms_tenant`] as the shared tenant map every SMS endpoint is built over.
pub fn sms_tenants(secret: &str, vonage_method: Option<SignatureMethod>) -> SmsTenants {
    omni_sms::webhook::tenants([(tenant(), sms_tenant(secret, vonage_method))])
}
