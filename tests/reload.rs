//! Tenants without restarts: the daemon, started with a config file of its own, takes a new
//! tenant on SIGHUP, refuses a broken file it sees change (the config in force keeps serving,
//! the rejection is counted), and drops a removed tenant, all without restarting; every
//! channel's webhooks and senders take the tenants a reload adds and drop those it removes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use omni_e2e::standin::StandIn;
use omni_e2e::webhooks::{
    form, messenger_text, now_millis, post_messenger, post_twilio, post_zalo, zalo_text,
};
use omni_e2e::{
    command_event, metric_value, post_json, python_produce, read_topic, workspace, Broker, Daemon,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Polls `check` until it holds, for at most 30 s; panics with the log if it never does.
async fn eventually<F, Fut>(daemon: &Daemon, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}; daemon log:\n{}", daemon.log());
}

async fn inbound(daemon: &Daemon, tenant: &str, token: &str) -> u16 {
    let id = format!(
        "m-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let body = serde_json::json!({"contact": {"id": "cust-1"}, "text": "Xin chào", "client_message_id": id});
    post_json(&daemon.url(&format!("/v1/inbound/{tenant}")), token, &body)
        .await
        .0
}

async fn reloads(daemon: &Daemon, result: &str) -> f64 {
    let label = format!("result=\"{result}\"");
    metric_value(
        &daemon.metrics().await,
        "omni_config_reloads_total",
        &[&label],
    )
}

fn base_config() -> String {
    std::fs::read_to_string(workspace().join("config/default.toml")).unwrap()
}

const T2: &str = "\n[tenants.t2]\napi_token = \"t2-s3cret-token\"\n";

#[tokio::test]
async fn tenants_are_added_refused_and_removed_without_a_restart() {
    let broker = Broker::memory();
    let base = base_config();
    let daemon = Daemon::start_with_config(&broker, &base, &[]).await;
    assert_eq!(inbound(&daemon, "demo", "demo-token").await, 202);
    assert_eq!(
        inbound(&daemon, "t2", "t2-s3cret-token").await,
        404,
        "t2 is not configured yet"
    );

    // Add t2, and change a key the running listener cannot take: SIGHUP applies the tenant and
    // says what waits for a restart.
    let bigger_bodies = base.replace("max_body_bytes = 65536", "max_body_bytes = 131072");
    assert_ne!(
        bigger_bodies, base,
        "default.toml sets server.max_body_bytes"
    );
    daemon.write_config(&format!("{bigger_bodies}{T2}"));
    daemon.hangup();
    eventually(&daemon, "t2 is accepted after SIGHUP", || async {
        inbound(&daemon, "t2", "t2-s3cret-token").await == 202
    })
    .await;
    assert_eq!(inbound(&daemon, "t2", "wrong-token").await, 401);
    assert_eq!(inbound(&daemon, "demo", "demo-token").await, 202);
    assert!(reloads(&daemon, "applied").await >= 1.0);
    assert!(
        daemon
            .log()
            .contains("needs a restart: server.max_body_bytes"),
        "{}",
        daemon.log()
    );

    // A broken file, noticed by the file watch alone: refused, counted, and the config in
    // force keeps serving.
    daemon.write_config(&format!(
        "{bigger_bodies}{T2}\n[tenants.Bad]\napi_token = \"x\"\n"
    ));
    eventually(
        &daemon,
        "the broken config is counted as rejected",
        || async { reloads(&daemon, "rejected").await >= 1.0 },
    )
    .await;
    let log = daemon.log();
    assert!(
        log.contains("config reload refused") && log.contains("tenants.Bad"),
        "the refusal names the bad key: {log}"
    );
    let metrics = daemon.metrics().await;
    assert_eq!(
        metric_value(&metrics, "omni_config_last_reload_successful", &[]),
        0.0
    );
    assert!(
        metric_value(
            &metrics,
            "omni_config_last_reload_success_timestamp_seconds",
            &[]
        ) > 0.0
    );
    assert_eq!(inbound(&daemon, "t2", "t2-s3cret-token").await, 202);
    assert_eq!(inbound(&daemon, "demo", "demo-token").await, 202);

    // Remove t2: refused again, everything else serves.
    let applied = reloads(&daemon, "applied").await;
    daemon.write_config(&base);
    daemon.hangup();
    eventually(&daemon, "t2 is refused once removed", || async {
        inbound(&daemon, "t2", "t2-s3cret-token").await == 404
    })
    .await;
    assert_eq!(inbound(&daemon, "demo", "demo-token").await, 202);
    assert!(reloads(&daemon, "applied").await > applied);
    assert_eq!(
        metric_value(
            &daemon.metrics().await,
            "omni_config_last_reload_successful",
            &[]
        ),
        1.0
    );
    assert!(
        !daemon.log().contains("t2-s3cret-token"),
        "secrets are never logged"
    );

    // Reloads leave shutdown as it was: SIGTERM drains and exits 0.
    let mut daemon = daemon;
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        daemon.log()
    );
}

/// A record for a tenant the router does not know yet (a rolling update adding a tenant
/// reaches the other replicas first) is held, not committed or dropped, and applied once a
/// reloaded config knows the tenant.
#[tokio::test(flavor = "multi_thread")]
async fn records_of_a_tenant_not_yet_configured_wait_for_the_config_that_adds_it() {
    let broker = Broker::memory();
    let base = base_config();
    let daemon = Daemon::start_with_config(&broker, &base, &[]).await;
    let commands = [
        serde_json::json!({"command": "upsert_agent", "agent": "mai", "skills": {}, "capacity": 2}),
        serde_json::json!({"command": "set_presence", "agent": "mai", "presence": "online"}),
    ]
    .map(|data| {
        (
            "omni.commands.v1".to_owned(),
            "t3".to_owned(),
            command_event("t3", data),
            None,
        )
    });
    python_produce(&broker.bootstrap(), "murmur2_random", &commands);
    eventually(&daemon, "the router holds t3's records", || async {
        metric_value(&daemon.metrics().await, "omni_router_held_records", &[]) >= 2.0
    })
    .await;
    assert!(
        daemon.log().contains("holding its partition"),
        "the hold is logged: {}",
        daemon.log()
    );

    daemon.write_config(&format!(
        "{base}\n[tenants.t3]\napi_token = \"t3-token\"\nagent_api_token = \"t3-agent\"\n"
    ));
    daemon.hangup();
    let client = reqwest::Client::new();
    eventually(
        &daemon,
        "t3's agent, created before t3 was configured, is online",
        || async {
            let r = client
                .get(daemon.url("/v1/tenants/t3/agents"))
                .bearer_auth("t3-agent")
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    v["agents"][0]["id"] == "mai" && v["agents"][0]["presence"] == "online"
                }
                _ => false,
            }
        },
    )
    .await;
    assert_eq!(
        metric_value(&daemon.metrics().await, "omni_router_held_records", &[]),
        0.0
    );
}

const T3_PAGE: &str = "104933333333333";
const T3_OA: &str = "4433221100998877";
const T3_ZALO_APP: &str = "1183926498471230003";
const T3_PUBLIC: &str = "https://sms.t3.example.vn";
const T3_NUMBER: &str = "+84283333333";

/// Tenant t3 on Messenger, Zalo and Twilio SMS, as a config file writes it.
fn t3_on_every_webhook_channel(token_file: &std::path::Path) -> String {
    format!(
        r#"
[tenants.t3]
agent_api_token = "t3-agent-token"
[tenants.t3.messenger]
app_secret = "META-T3"
verify_token = "VERIFY-T3"
[tenants.t3.messenger.pages.{T3_PAGE}]
access_token = "PAGE-TOKEN-T3"
[tenants.t3.zalo.oas.{T3_OA}]
app_id = "{T3_ZALO_APP}"
oa_secret_key = "OA-KEY-T3"
app_secret = "Z-APP-SECRET-T3"
token_file = "{}"
refresh_token = "Z-R0"
[tenants.t3.sms]
public_base_url = "{T3_PUBLIC}"
[tenants.t3.sms.twilio]
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "TWILIO-T3"
[tenants.t3.sms.numbers."{T3_NUMBER}"]
provider = "twilio"
"#,
        token_file.display()
    )
}

/// What t3's three webhooks answer to a signed customer message each: (Messenger, Zalo,
/// Twilio). `n` makes the message ids unique.
async fn t3_webhooks(daemon: &Daemon, n: u32) -> (u16, u16, u16) {
    let messenger = post_messenger(
        daemon,
        "t3",
        "META-T3",
        &messenger_text(
            T3_PAGE,
            "5384937120339286333",
            &format!("m_t3_{n}"),
            "Chào shop",
        ),
    )
    .await;
    let ts = &now_millis();
    let zalo = post_zalo(
        daemon,
        "t3",
        (T3_ZALO_APP, "OA-KEY-T3"),
        &zalo_text(
            T3_ZALO_APP,
            T3_OA,
            "8811223344556677",
            &format!("z_t3_{n}"),
            "Chào shop",
            ts,
        ),
        ts,
    )
    .await;
    let sms = form(&[
        (
            "MessageSid",
            &format!("SMt3000000000000000000000000000{n:03}"),
        ),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("From", "+84901234567"),
        ("To", T3_NUMBER),
        ("Body", "Chào shop"),
        ("NumMedia", "0"),
    ]);
    let twilio = post_twilio(
        daemon,
        T3_PUBLIC,
        "/v1/webhooks/sms/twilio/t3",
        "TWILIO-T3",
        sms,
    )
    .await
    .status()
    .as_u16();
    (messenger, zalo, twilio)
}

/// A tenant added by a reload is served by the Messenger, Zalo and SMS webhooks, its
/// Messenger replies go out with its page token and its Zalo OA token is refreshed; once
/// removed, every webhook refuses it again.
#[tokio::test(flavor = "multi_thread")]
async fn every_channel_takes_a_tenant_added_by_a_reload_and_drops_it_when_removed() {
    let broker = Broker::memory();
    let (graph, oauth) = (StandIn::start().await, StandIn::start().await);
    oauth.always(
        "/v4/oa/access_token",
        200,
        "application/json",
        br#"{"access_token":"Z-ACCESS-T3","refresh_token":"Z-R1","expires_in":"90000"}"#,
    );
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("zalo-t3.json");
    let base = base_config();
    let env = [
        ("OMNI__MESSENGER__GRAPH_BASE_URL", graph.url.as_str()),
        ("OMNI__ZALO__OAUTH_BASE_URL", oauth.url.as_str()),
        (
            "OMNI__ZALO__TOKEN_KEY",
            "b21uaXJvdXRlci10ZXN0LXRva2VuLWtleS0zMmJ5dGU=",
        ),
    ];
    let daemon = Daemon::start_with_config(&broker, &base, &env).await;
    assert_eq!(
        t3_webhooks(&daemon, 0).await,
        (404, 404, 404),
        "t3 is not configured yet"
    );

    daemon.write_config(&format!(
        "{base}{}",
        t3_on_every_webhook_channel(&token_file)
    ));
    daemon.hangup();
    eventually(&daemon, "t3's webhooks accept after SIGHUP", || async {
        t3_webhooks(&daemon, 1).await == (200, 200, 200)
    })
    .await;
    eventually(&daemon, "t3's Zalo OA token is refreshed", || async {
        !oauth.requests_to("/v4/oa/access_token").is_empty()
    })
    .await;
    a_messenger_reply_of_the_new_tenant_goes_out_with_its_page_token(&broker, &daemon, &graph)
        .await;

    daemon.write_config(&base);
    daemon.hangup();
    eventually(
        &daemon,
        "t3's webhooks refuse once it is removed",
        || async { t3_webhooks(&daemon, 2).await == (404, 404, 404) },
    )
    .await;
    assert!(
        !daemon.log().contains("META-T3") && !daemon.log().contains("TWILIO-T3"),
        "secrets are never logged"
    );
}

/// t3's Messenger customer, read back from the inbound topic, is answered through the agent
/// API; Graph gets the reply on t3's page with t3's page token.
async fn a_messenger_reply_of_the_new_tenant_goes_out_with_its_page_token(
    broker: &Broker,
    daemon: &Daemon,
    graph: &StandIn,
) {
    let send_path = format!("/v23.0/{T3_PAGE}/messages");
    graph.always(
        &send_path,
        200,
        "application/json",
        br#"{"recipient_id":"5384937120339286333","message_id":"m_reply_t3"}"#,
    );
    let inbound = read_topic(
        &broker.bootstrap(),
        "omni.inbound.v1",
        3,
        Duration::from_secs(20),
        Duration::from_millis(300),
    );
    let event: Value = inbound
        .iter()
        .map(|r| r.value.clone())
        .find(|v| v["data"]["channel"]["kind"] == "messenger")
        .expect("t3's Messenger message published");
    let reply = json!({
        "conversation_id": event["subject"],
        "channel": event["data"]["channel"],
        "recipient": event["data"]["contact"]["id"],
        "agent_id": "agent-3",
        "text": "Dạ, shop kiểm tra ngay ạ",
    });
    let (status, body) = post_json(
        &daemon.url("/v1/tenants/t3/replies"),
        "t3-agent-token",
        &reply,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let sent = graph.wait_for(&send_path, 1, Duration::from_secs(20)).await;
    assert_eq!(
        sent[0].json()["message"]["text"],
        "Dạ, shop kiểm tra ngay ạ"
    );
    assert_eq!(sent[0].headers["authorization"], "Bearer PAGE-TOKEN-T3");
}
