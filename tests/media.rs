//! Media that does not expire, end to end: inbound attachments copied into a directory store
//! and into S3 (a real local moto server) by the daemon, events carrying the store's URL; the
//! safe fetch of replies' attachments refusing loopback, link-local, private (after a
//! redirect), oversized and slow sources with clear delivery reasons.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use axum::response::IntoResponse;
use omni_channel::FailureReason;
use omni_e2e::standin::StandIn;
use omni_e2e::webhooks::{post_messenger, post_whatsapp};
use omni_e2e::{metric_value, read_topic, Broker, Daemon};
use omni_media::testing::Moto;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PAGE: &str = "104912345678901";
const PSID: &str = "5384937120339286147";
const NUMBER: &str = "106540352242922";
const WA_ID: &str = "84901234567";
const MEDIA_ID: &str = "1479537139650973";

/// `n` bytes of a recognizable pattern.
fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A Messenger message with these attachments (type, URL).
fn messenger_attachments(mid: &str, attachments: &[(&str, &str)]) -> String {
    let items: Vec<Value> = attachments
        .iter()
        .map(|(kind, url)| json!({"type": kind, "payload": {"url": url}}))
        .collect();
    json!({"object": "page", "entry": [{"id": PAGE, "time": 1_700_000_000_000_i64, "messaging": [{
        "sender": {"id": PSID}, "recipient": {"id": PAGE}, "timestamp": 1_700_000_000_000_i64,
        "message": {"mid": mid, "attachments": items},
    }]}]})
    .to_string()
}

fn env_of(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The Messenger and WhatsApp tenant settings the daemon tests share.
fn channels_env(graph: &StandIn) -> Vec<(String, String)> {
    vec![
        (
            "OMNI__TENANTS__DEMO__MESSENGER__APP_SECRET".into(),
            "META-SECRET".into(),
        ),
        (
            "OMNI__TENANTS__DEMO__MESSENGER__VERIFY_TOKEN".into(),
            "V".into(),
        ),
        (
            format!("OMNI__TENANTS__DEMO__MESSENGER__PAGES__{PAGE}__ACCESS_TOKEN"),
            "PAGE-TOKEN".into(),
        ),
        ("OMNI__WHATSAPP__GRAPH_BASE_URL".into(), graph.url.clone()),
        (
            "OMNI__TENANTS__DEMO__WHATSAPP__APP_SECRET".into(),
            "WA-SECRET".into(),
        ),
        (
            "OMNI__TENANTS__DEMO__WHATSAPP__VERIFY_TOKEN".into(),
            "V".into(),
        ),
        (
            format!("OMNI__TENANTS__DEMO__WHATSAPP__NUMBERS__{NUMBER}__ACCESS_TOKEN"),
            "WA-TOKEN".into(),
        ),
        // The stand-ins are on this host: allowed explicitly, nothing else private is.
        (
            "OMNI__MEDIA__FETCH__ALLOW_NETWORKS".into(),
            "127.0.0.1/32".into(),
        ),
    ]
}

fn inbound_events(broker: &Broker, n: usize) -> Vec<Value> {
    read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        n,
        Duration::from_secs(30),
        Duration::from_millis(300),
    )
    .into_iter()
    .map(|r| r.value)
    .collect()
}

/// A Messenger message with three attachments and a WhatsApp voice note arrive with a
/// directory store configured: the image and the voice note are copied (the voice note
/// through Graph's media lookup with the number's token), events carry the store's URLs with
/// exact types and sizes; the file over Messenger's limit and the image at the cloud
/// metadata address keep their provider URLs, each counted by why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_attachments_are_copied_into_the_directory_store() {
    let broker = Broker::memory();
    let cdn = StandIn::start().await;
    let graph = StandIn::start().await;
    let image = content(3000);
    let voice = content(1500);
    cdn.always("/img/hoa-don", 200, "image/jpeg", &image);
    cdn.always("/big.bin", 200, "application/octet-stream", &content(5000));
    cdn.always("/wa/voice", 200, "audio/ogg", &voice);
    let described = json!({"url": format!("{}/wa/voice", cdn.url), "mime_type": "audio/ogg; codecs=opus",
        "file_size": voice.len(), "id": MEDIA_ID, "messaging_product": "whatsapp"});
    graph.always(
        &format!("/v23.0/{MEDIA_ID}"),
        200,
        "application/json",
        described.to_string().as_bytes(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut env = channels_env(&graph);
    env.extend([
        ("OMNI__MEDIA__STORE".to_owned(), "directory".to_owned()),
        (
            "OMNI__MEDIA__DIR".to_owned(),
            dir.path().display().to_string(),
        ),
        (
            "OMNI__MEDIA__BASE_URL".to_owned(),
            "https://media.shop.example.vn".to_owned(),
        ),
        (
            "OMNI__MEDIA__CHANNEL_MAX_BYTES__MESSENGER".to_owned(),
            "4096".to_owned(),
        ),
    ]);
    let daemon = Daemon::start(&broker, &env_of(&env)).await;

    let metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";
    let big = format!("{}/big.bin", cdn.url);
    let img = format!("{}/img/hoa-don", cdn.url);
    let fb = messenger_attachments(
        "m_media",
        &[("image", &img), ("file", &big), ("image", metadata)],
    );
    assert_eq!(
        post_messenger(&daemon, "demo", "META-SECRET", &fb).await,
        200
    );
    let wa = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "84281234567", "phone_number_id": NUMBER},
        "contacts": [{"profile": {"name": "An"}, "wa_id": WA_ID}],
        "messages": [{"from": WA_ID, "id": "wamid.VOICE", "timestamp": "1700000000", "type": "audio",
                      "audio": {"id": MEDIA_ID, "mime_type": "audio/ogg; codecs=opus", "voice": true}}]}}]}]})
    .to_string();
    assert_eq!(post_whatsapp(&daemon, "demo", "WA-SECRET", &wa).await, 200);

    let events = inbound_events(&broker, 2);
    assert_eq!(events.len(), 2, "{}", daemon.log());
    let fb = events
        .iter()
        .find(|e| e["data"]["channel"]["kind"] == "messenger")
        .unwrap();
    let id = fb["id"].as_str().unwrap();
    let attachments = fb["data"]["message"]["attachments"].as_array().unwrap();
    assert_eq!(
        attachments[0],
        json!({"url": format!("https://media.shop.example.vn/demo/{id}/1-attachment"),
               "content_type": "image/jpeg", "size": 3000})
    );
    let stored = std::fs::read(dir.path().join(format!("demo/{id}/1-attachment"))).unwrap();
    assert_eq!(stored, image);
    assert_eq!(attachments[1]["url"], big, "over the channel's limit: kept");
    assert_eq!(attachments[2]["url"], metadata, "never fetched: kept");
    let schema = omni_e2e::schema("message-received.schema.json");
    assert!(schema.is_valid(&fb["data"]), "{fb}");

    let wa = events
        .iter()
        .find(|e| e["data"]["channel"]["kind"] == "whatsapp")
        .unwrap();
    let id = wa["id"].as_str().unwrap();
    let voice_note = &wa["data"]["message"]["attachments"][0];
    assert_eq!(
        voice_note["url"],
        format!("https://media.shop.example.vn/demo/{id}/1-attachment")
    );
    assert_eq!(voice_note["size"], 1500);
    let stored = std::fs::read(dir.path().join(format!("demo/{id}/1-attachment"))).unwrap();
    assert_eq!(stored, voice);
    let lookup = graph.requests_to(&format!("/v23.0/{MEDIA_ID}"));
    assert_eq!(lookup[0].headers["authorization"], "Bearer WA-TOKEN");
    let download = cdn.requests_to("/wa/voice");
    assert_eq!(download[0].headers["authorization"], "Bearer WA-TOKEN");
    assert!(
        !cdn.requests_to("/img/hoa-don")[0]
            .headers
            .contains_key("authorization"),
        "no credentials where the provider needs none"
    );

    let metrics = daemon.metrics().await;
    let copies = |channel: &str, result: &str| {
        let labels = [
            format!("channel=\"{channel}\""),
            format!("result=\"{result}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        metric_value(&metrics, "omni_media_copies_total", &labels)
    };
    assert_eq!(copies("messenger", "stored"), 1.0);
    assert_eq!(copies("messenger", "too_large"), 1.0);
    assert_eq!(copies("messenger", "forbidden"), 1.0);
    assert_eq!(copies("whatsapp", "stored"), 1.0);
}

/// With an S3 store (a real moto server), an API channel message's attachment is copied into
/// the bucket and the event's URL serves the same bytes with the source's type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_attachments_are_copied_into_s3_and_served_at_its_public_url() {
    let moto = Moto::start(&[]).await;
    moto.create_bucket("omni-media").await;
    let broker = Broker::memory();
    let cdn = StandIn::start().await;
    let pdf = content(2048);
    cdn.always("/files/hop-dong.pdf", 200, "application/pdf", &pdf);
    let env: Vec<(String, String)> = vec![
        ("OMNI__MEDIA__STORE".into(), "s3".into()),
        ("OMNI__MEDIA__S3__BUCKET".into(), "omni-media".into()),
        ("OMNI__MEDIA__S3__ENDPOINT".into(), moto.endpoint.clone()),
        ("OMNI__MEDIA__S3__ALLOW_HTTP".into(), "true".into()),
        ("OMNI__MEDIA__S3__ACCESS_KEY_ID".into(), "test-key".into()),
        (
            "OMNI__MEDIA__S3__SECRET_ACCESS_KEY".into(),
            "test-secret".into(),
        ),
        (
            "OMNI__MEDIA__FETCH__ALLOW_NETWORKS".into(),
            "127.0.0.1".into(),
        ),
    ];
    let daemon = Daemon::start(&broker, &env_of(&env)).await;
    let body = json!({
        "contact": {"id": "cust-42"},
        "text": "Hợp đồng đính kèm",
        "client_message_id": "msg-media-1",
        "attachments": [{"url": format!("{}/files/hop-dong.pdf", cdn.url), "name": "hợp đồng.pdf"}],
    });
    let (status, answer) =
        omni_e2e::post_json(&daemon.url("/v1/inbound/demo"), "demo-token", &body).await;
    assert_eq!(status, 202, "{answer}");
    let events = inbound_events(&broker, 1);
    let event = &events[0];
    let id = event["id"].as_str().unwrap();
    let attachment = &event["data"]["message"]["attachments"][0];
    let url = attachment["url"].as_str().unwrap();
    let prefix = format!("{}/omni-media/demo/{id}/1-", moto.endpoint);
    assert!(url.starts_with(&prefix), "{url} under {prefix}");
    assert_eq!(attachment["content_type"], "application/pdf");
    assert_eq!(attachment["size"], 2048);
    assert_eq!(
        attachment["name"], "hợp đồng.pdf",
        "the customer's name is kept"
    );
    let served = reqwest::get(url).await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/pdf");
    assert_eq!(served.bytes().await.unwrap().to_vec(), pdf);
}

// ---------------------------------------------------------------------------------------------
// The safe fetch of replies' attachments, as every sender uses it
// ---------------------------------------------------------------------------------------------

/// A host that redirects to a private address, and one that sends its headers and then
/// trickles its body forever.
async fn tricky_host() -> String {
    let app = axum::Router::new()
        .route(
            "/to-private",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::FOUND,
                    [(axum::http::header::LOCATION, "http://10.1.2.3/internal")],
                )
                    .into_response()
            }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                let body = futures_util::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")), ()))
                });
                axum::body::Body::from_stream(body).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn reply_attachments_from_internal_oversized_or_slow_sources_are_refused_with_reasons() {
    let cdn = StandIn::start().await;
    cdn.always("/ok.png", 200, "image/png", &content(100));
    cdn.always("/big.png", 200, "image/png", &content(10_000));
    let tricky = tricky_host().await;
    let fetch = omni_channel::provider::fetch_attachment;

    // Without the daemon's settings, the strictest policy: this host is not reachable at all.
    let err = fetch(None, &format!("{}/ok.png", cdn.url), 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::InvalidMessage, false)
    );
    assert!(err.detail.contains("loopback"), "{}", err.detail);
    let err = fetch(None, "http://localhost:9/x", 1 << 20)
        .await
        .unwrap_err();
    assert!(err.detail.contains("loopback"), "{}", err.detail);
    assert!(cdn.requests().is_empty(), "no request reached the host");

    // Cloud metadata (link-local) is refused before any connection.
    let started = Instant::now();
    let err = fetch(None, "http://169.254.169.254/latest/meta-data/", 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::InvalidMessage);
    assert!(err.detail.contains("link-local"), "{}", err.detail);
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = fetch(None, "file:///etc/passwd", 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(err.reason, FailureReason::InvalidMessage);

    // With this host allowed (as the daemon's config would), the rest is still refused.
    let config: omni_media::MediaConfig = serde_json::from_value(
        json!({"fetch": {"allow_networks": "127.0.0.1/32", "timeout_secs": 1}}),
    )
    .unwrap();
    let media = omni_media::Media::new(&config.validate().unwrap()).unwrap();
    let ok = fetch(Some(&media), &format!("{}/ok.png", cdn.url), 1 << 20)
        .await
        .unwrap();
    assert_eq!(ok, content(100));
    let err = fetch(Some(&media), &format!("{tricky}/to-private"), 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::InvalidMessage, false)
    );
    assert!(err.detail.contains("private"), "{}", err.detail);
    let err = fetch(Some(&media), &format!("{}/big.png", cdn.url), 4096)
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::InvalidMessage, false)
    );
    assert!(err.detail.contains("4096"), "{}", err.detail);
    let started = Instant::now();
    let err = fetch(Some(&media), &format!("{tricky}/slow"), 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(
        (err.reason, err.retryable),
        (FailureReason::ProviderUnavailable, true),
        "a slow host may answer later: retried"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the policy's timeout"
    );
}
